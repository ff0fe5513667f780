"""The Serve deployment that owns the index: every read and write of the online path goes through it, and every
write through `IndexOwner` (the same protocol as the CLI and the backfill)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from ray import serve

from embedder.config import ReelvecConfig
from embedder.pipeline import EmbeddingSpec
from embedder.types import ItemEmbedding, StoreError
from index import SearchFilter
from serving.metrics import ServeMetrics
from serving.owner import IndexOwner, Written, shared_sound

log = logging.getLogger("ray.serve.reelvec")


@serve.deployment
class IndexWriter:
    """Owns the VectorIndex: with the embedded (edge) backend only one process may open the path, so every
    read and write goes through this single replica; against a Qdrant server it may run several."""

    def __init__(self, cfg: ReelvecConfig, spec: EmbeddingSpec) -> None:
        self.cfg, self.spec = cfg, spec
        self.metrics = ServeMetrics()
        self._owner: IndexOwner | None = None
        self._open_lock = asyncio.Lock()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._count: int | None = None
        try:
            self._owner = self._open_now()
        except StoreError as e:  # stay up and report not-ready; the next call retries the open
            log.warning("index not open yet (%s): %s", e.reason, e.detail)

    def _open_now(self) -> IndexOwner:
        owner = IndexOwner.open(self.cfg, self.spec)
        log.info("index open: collection=%s version=%s", owner.index.collection, owner.index.version)
        self._count = owner.index.count()
        return owner

    async def _open(self) -> IndexOwner:
        """The open index; (re)tries the open off the event loop, one attempt at a time (locked → 503)."""
        if self._owner is None:
            async with self._open_lock:
                if self._owner is None:
                    self._owner = await asyncio.to_thread(self._open_now)
        return self._owner

    async def _run(self, _name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a VectorIndex method in a worker thread (the engines block; reads may run concurrently)."""
        owner = await self._open()
        return await asyncio.to_thread(getattr(owner.index, _name), *args, **kwargs)

    @asynccontextmanager
    async def _item_lock(self, item_id: str) -> AsyncIterator[None]:
        """Serialize work on one item id in this replica (the engine decides created vs replaced atomically)."""
        lock, users = self._locks.setdefault(item_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[item_id]

    async def writable(self) -> bool:
        """Raises the open error (e.g. `locked` → 503); the ingress asks until the first success."""
        await self._open()
        return True

    async def write(self, emb: ItemEmbedding) -> Written:
        """Write one item through `IndexOwner.write`; returns what happened to it, or raises its refusal."""
        owner = await self._open()
        async with self._item_lock(emb.item_id):
            report = await asyncio.to_thread(owner.write, [emb])
        if report.failed:
            raise StoreError(report.failed[0].reason, report.failed[0].detail)
        written = report.written[0]
        self.metrics.indexed.inc(tags={"outcome": written.status})
        if written.status == "created" and self._count is not None:
            self._count += 1
            self.metrics.index_items.set(self._count)
        return written

    async def delete(self, item_id: str) -> int:
        async with self._item_lock(item_id):
            deleted = await self._run("delete", [item_id])
        if deleted and self._count is not None:
            self._count -= deleted
            self.metrics.index_items.set(self._count)
        return deleted

    async def get(self, item_id: str, with_vectors: bool) -> dict[str, Any]:
        stored = await self._run("get", item_id)
        vectors = {k: np.asarray(v).tolist() for k, v in stored.vectors.items()} if with_vectors else None
        return {"item_id": stored.item_id, "payload": stored.payload, "vectors": vectors}

    async def search(self, vector: np.ndarray, using: str, k: int, flt: SearchFilter) -> list[dict[str, Any]]:
        hits = await self._run("search", vector, using=using, k=k, flt=flt)
        return [h.to_json() for h in hits]

    async def search_multi(
        self, vectors: dict[str, np.ndarray], method: str, k: int, flt: SearchFilter
    ) -> list[dict[str, Any]]:
        hits = await self._run("search_multi", vectors, k=k, flt=flt, method=method)
        return [h.to_json() for h in hits]

    async def recommend(
        self, positive: list[str], negative: list[str], using: str, k: int, flt: SearchFilter
    ) -> list[dict[str, Any]]:
        hits = await self._run("recommend", positive, negative, using=using, k=k, flt=flt)
        return [h.to_json() for h in hits]

    async def search_like(self, item_id: str, using: str, k: int, flt: SearchFilter) -> list[dict[str, Any]]:
        hits = await self._run("search_like", item_id, using=using, k=k, flt=flt)
        return [h.to_json() for h in hits]

    async def moment_inputs(self, item_ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Full payloads (segments, OCR lines, frame times) and per-frame vectors of search hits."""
        return await self._run("moment_inputs", item_ids)

    async def count(self) -> int:
        return await self._run("count")

    async def relation_groups(self, kinds: list[str]) -> list[list[str]]:
        return await self._run("relation_groups", kinds)

    async def shared_sound(self, item_id: str, k: int) -> list[dict[str, Any]]:
        """Stored clips that share `item_id`'s sound (as `reelvec sounds`)."""
        owner = await self._open()
        return await asyncio.to_thread(shared_sound, owner.index, item_id, self.cfg.dedup, k)

    async def ping(self) -> dict[str, Any]:
        count = await self._run("count")
        return {"reachable": True, "count": count}

    def __del__(self) -> None:
        if self._owner is not None:
            self._owner.close()
