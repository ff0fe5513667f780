"""Ray Serve deployments: one per model, plus the index owner. Each only schedules `embedder.pipeline` steps.

decode (upload → DecodedMedia) · asr · ocr · clip (frames + query text) · text (documents + queries): a
replica loads its model once; `@serve.batch` collects many requests' `Work` into one step call, exactly the
call `ItemEmbedder` and the backfill make. `IndexWriter` owns the `VectorIndex`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from ray import serve

from embedder.config import ReelvecConfig, ServeConfig
from embedder.decode import Decoder
from embedder.pipeline import Work, asr_step, decode_step, load_optional, ocr_step, text_step, visual_step
from embedder.types import ItemEmbedding, ModelUnavailableError, StoreError
from index import SearchFilter, VectorIndex, open_index
from serving.metrics import ServeMetrics

log = logging.getLogger("ray.serve.reelvec")  # a child of Serve's logger: lands in the replica logs, JSON-encoded

# The media each model step reads: the ingress sends a deployment only these (`Work.slim(keep=...)`).
STEP_INPUTS: dict[str, tuple[str, ...]] = {"asr": ("audio",), "ocr": ("ocr_frames",), "clip": ("frames",), "text": ()}

T = TypeVar("T")
R = TypeVar("R")


def batched(s: ServeConfig, fn: Callable[[list[T]], Awaitable[list[R]]]) -> Callable[[T], Awaitable[R]]:
    """`@serve.batch` applied per replica so max size, wait and concurrent batches all come from config."""
    return serve.batch(
        max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s,
        max_concurrent_batches=s.max_concurrent_batches,
    )(fn)


@dataclass(frozen=True)
class ModelInfo:
    """What a model deployment reports about itself (used for `/readyz` and the item's models record)."""

    role: str
    card: str
    version: str | None
    loaded: bool
    required: bool


@serve.deployment
class DecodeDeployment:
    """Upload bytes → DecodedMedia (+ OCR frames when OCR is on), in the killable decode worker."""

    def __init__(self, cfg: ReelvecConfig, ocr_frames: bool) -> None:
        self.decoder = Decoder(cfg.decode, cfg.limits, ocr=cfg.ocr if ocr_frames else None)
        self.metrics = ServeMetrics()

    async def decode(self, work: Work) -> Work:
        # Only bytes are decoded here: a str would be read as a server-side path.
        if not isinstance(work.item.media, bytes):
            raise TypeError("the decode deployment takes uploaded bytes only")
        t0 = time.perf_counter()
        await asyncio.to_thread(decode_step, self.decoder, [work])
        self.metrics.stage("decode_worker", (time.perf_counter() - t0) * 1000)
        return work.slim(keep=("frames", "ocr_frames", "audio"))

    def __del__(self) -> None:
        self.decoder.close()


class _ModelDeployment:
    """Loads `cfg.models.<role>` once (None when optional and absent) and runs its step over batches of Work."""

    role = ""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.cfg = cfg
        self.ref = getattr(cfg.models, self.role)
        self.model: Any = load_optional(self.ref, cfg)
        self.metrics = ServeMetrics()
        self.run = batched(cfg.serve, self._run)
        self._batch_handlers: list[Any] = [self.run]

    def step(self, works: Sequence[Work]) -> None:
        raise NotImplementedError

    async def _run(self, works: list[Work]) -> list[Work]:
        self.metrics.batch(f"{self.role}.run", len(works))
        t0 = time.perf_counter()
        await asyncio.to_thread(self.step, works)
        self.metrics.stage(f"{self.role}_model", (time.perf_counter() - t0) * 1000)
        return [w.slim() for w in works]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's `user_config` hook: retune `max_batch_size` / `batch_wait_timeout_s` live, without a reload."""
        for handler in self._batch_handlers:
            if "max_batch_size" in config:
                handler.set_max_batch_size(int(config["max_batch_size"]))
            if "batch_wait_timeout_s" in config:
                handler.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def info(self) -> ModelInfo:
        if self.model is None:
            return ModelInfo(self.role, self.ref.card, None, False, self.ref.required)
        return ModelInfo(self.role, self.model.card.id, self.model.card.version, True, self.ref.required)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        """Requests per batch actually seen, by method (the benchmark reports these)."""
        return {m: dict(t) for m, t in self.metrics.batch_sizes_seen.items()}

    def _loaded(self) -> Any:
        if self.model is None:
            raise ModelUnavailableError("missing", f"{self.ref.card} is not loaded (its modality is off)")
        return self.model


@serve.deployment
class AsrDeployment(_ModelDeployment):
    """Speech gate + transcripts (faster-whisper), batched across uploads."""

    role = "asr"

    def step(self, works: Sequence[Work]) -> None:
        asr_step(self.model, works)


@serve.deployment
class OcrDeployment(_ModelDeployment):
    """On-screen text (PP-OCR) of the OCR frames, batched across uploads."""

    role = "ocr"

    def step(self, works: Sequence[Work]) -> None:
        ocr_step(self.model, works)


@serve.deployment
class ClipDeployment(_ModelDeployment):
    """CLIP image tower over frames (batched) and text tower for queries (batched)."""

    role = "clip"

    def __init__(self, cfg: ReelvecConfig) -> None:
        super().__init__(cfg)
        self.encode_text = batched(cfg.serve, self._encode_text)
        self._batch_handlers.append(self.encode_text)

    def step(self, works: Sequence[Work]) -> None:
        visual_step(self.model, works)

    async def _encode_text(self, texts: list[str]) -> list[np.ndarray]:
        self.metrics.batch("clip.encode_text", len(texts))
        return list(await asyncio.to_thread(self._loaded().encode_text, texts))


@serve.deployment
class TextDeployment(_ModelDeployment):
    """Text encoder: caption + transcript + on-screen text of uploads (documents) and search queries, batched."""

    role = "text"

    def __init__(self, cfg: ReelvecConfig) -> None:
        super().__init__(cfg)
        self.encode_query = batched(cfg.serve, self._encode_query)
        self._batch_handlers.append(self.encode_query)

    async def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Document vectors for a list of texts in one call (moment candidates of a search's hits)."""
        return await asyncio.to_thread(self._loaded().encode, texts, "document")

    def step(self, works: Sequence[Work]) -> None:
        text_step(self.model, works, self.cfg.text.transcript_max_chars)

    async def _encode_query(self, texts: list[str]) -> list[np.ndarray]:
        self.metrics.batch("text.encode_query", len(texts))
        return list(await asyncio.to_thread(self._loaded().encode, texts, "query"))


@serve.deployment
class IndexWriter:
    """Owns the VectorIndex: with the embedded (edge) backend only one process may open the path, so every
    read and write goes through this single replica; against a Qdrant server it may run several."""

    def __init__(self, cfg: ReelvecConfig, dims: dict[str, int], schema_version: str) -> None:
        self.full_cfg, self.cfg, self.dims, self.schema_version = cfg, cfg.index, dims, schema_version
        self.metrics = ServeMetrics()
        self._index: VectorIndex | None = None
        self._semantic: Any = None
        self._open_lock = asyncio.Lock()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        try:
            self._index = self._open_now()
        except StoreError as e:  # stay up and report not-ready; the next call retries the open
            log.warning("index not open yet (%s): %s", e.reason, e.detail)

    def _open_now(self) -> VectorIndex:
        from serving.semantic import load_model

        index = open_index(self.cfg, self.dims, self.schema_version)
        log.info("index open: collection=%s version=%s", index.collection, index.version)
        self._semantic = load_model(self.full_cfg, index.collection, self.schema_version)
        return index

    async def _open(self) -> VectorIndex:
        """The open index; (re)tries the open off the event loop, one attempt at a time (locked → 503)."""
        if self._index is None:
            async with self._open_lock:
                if self._index is None:
                    self._index = await asyncio.to_thread(self._open_now)
        return self._index

    async def _run(self, _name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a VectorIndex method in a worker thread (the engines block; reads may run concurrently)."""
        index = await self._open()
        return await asyncio.to_thread(getattr(index, _name), *args, **kwargs)

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
        """Raises the open error (e.g. `locked` → 503) so an upload is refused before any decode or ASR."""
        await self._open()
        return True

    async def upsert(self, emb: ItemEmbedding) -> dict[str, Any]:
        """Write one item through `VectorIndex.ingest` (re-upload check, semantic ID, atomic created/replaced).
        Returns `{status: created|replaced, duplicate_of, duplicate_score, semantic_id}`; a refusal raises."""
        async with self._item_lock(emb.item_id):
            report = await self._run("ingest", [emb], self.full_cfg.dedup, self._semantic)
        if report.failed:
            raise StoreError(report.failed[0].reason, report.failed[0].detail)
        if report.refused:
            raise StoreError(report.refused[0].reason, report.refused[0].detail)
        outcome = "created" if emb.item_id in report.created else "replaced"
        dup = report.duplicates.get(emb.item_id)
        self.metrics.indexed.inc(tags={"outcome": outcome})
        self.metrics.index_items.set(await self._run("count"))
        return {
            "status": outcome,
            "duplicate_of": dup[0] if dup else None,
            "duplicate_score": dup[1] if dup else None,
            "semantic_id": emb.semantic_id,  # set by `ingest` when semantic IDs are fitted
        }

    async def delete(self, item_id: str) -> int:
        async with self._item_lock(item_id):
            return await self._run("delete", [item_id])

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

    async def duplicate_groups(self, threshold: float) -> list[list[str]]:
        return await self._run("duplicate_groups", threshold)

    async def ping(self) -> dict[str, Any]:
        count = await self._run("count")
        return {"reachable": True, "count": count}

    def __del__(self) -> None:
        if self._index is not None:
            self._index.close()
