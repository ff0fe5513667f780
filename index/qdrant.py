"""Qdrant server backend (qdrant-client): one collection per version, the stable name is a collection alias.

`cfg.url == ":memory:"` uses one process-wide in-memory client (so every open and catalog call in the process
sees the same data, like a server would); tests inject their own `client=` for isolation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedder.config import IndexConfig
from embedder.types import ConfigError, StoreError
from index.base import (
    HIT_PAYLOAD_EXCLUDE,
    PAYLOAD_INDEXES,
    RRF_K,
    FilterTerms,
    Hit,
    PointData,
    Record,
    VectorIndex,
    collection_name,
)

log = logging.getLogger(__name__)

_SCHEMA = {"keyword": qm.PayloadSchemaType.KEYWORD, "float": qm.PayloadSchemaType.FLOAT}
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ResponseHandlingException,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
_memory_client: QdrantClient | None = None
_memory_lock = threading.Lock()


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Transport failures and 5xx become StoreError('unreachable'); other refusals StoreError('rejected')."""
    try:
        yield
    except StoreError:
        raise
    except _TRANSPORT_ERRORS as e:
        raise StoreError("unreachable", f"{what}: Qdrant server unreachable: {e}") from e
    except UnexpectedResponse as e:
        reason = "unreachable" if e.status_code >= 500 else "rejected"
        raise StoreError(reason, f"{what}: HTTP {e.status_code}: {e.content!r}") from e


def make_client(cfg: IndexConfig) -> tuple[QdrantClient, bool]:
    """(client, owned): the shared in-memory client for ':memory:', else a new client we must close."""
    global _memory_client
    if not cfg.url:
        raise ConfigError("invalid", "index.url: required when index.backend is qdrant")
    if cfg.url == ":memory:":
        with _memory_lock:
            if _memory_client is None:
                _memory_client = QdrantClient(":memory:")
            return _memory_client, False
    client = QdrantClient(
        url=cfg.url,
        api_key=cfg.api_key,
        timeout=max(1, math.ceil(cfg.timeout_s)),
        # The first real call (collection_exists) reports an unreachable server as StoreError instead.
        check_compatibility=False,
    )
    return client, True


def _is_local(client: QdrantClient) -> bool:
    """qdrant-client local mode (`:memory:` or `path=`): exhaustive search, no payload indexes."""
    opts = client.init_options
    return opts.get("location") == ":memory:" or bool(opts.get("path"))


# ---- catalog ----------------------------------------------------------------------------------------


def list_server_versions(cfg: IndexConfig, client: QdrantClient) -> list[str]:
    prefix = f"{cfg.collection}__"
    with _errors("list collections"):
        names = [c.name for c in client.get_collections().collections]
    return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


def server_alias(cfg: IndexConfig, client: QdrantClient) -> str | None:
    """The version the alias `cfg.collection` points to, or None."""
    prefix = f"{cfg.collection}__"
    with _errors("list aliases"):
        aliases = client.get_aliases().aliases
    for a in aliases:
        if a.alias_name == cfg.collection and a.collection_name.startswith(prefix):
            return a.collection_name[len(prefix) :]
    return None


def set_server_alias(cfg: IndexConfig, version: str, client: QdrantClient) -> None:
    """Repoint the alias in one `update_collection_aliases` call (delete + create = an atomic swap)."""
    target = collection_name(cfg, version)
    with _errors("update alias"):
        if not client.collection_exists(target):
            raise StoreError("unknown_version", f"no collection {target!r}")
        ops: list[Any] = []
        if server_alias(cfg, client) is not None:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=cfg.collection)))
        ops.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name=cfg.collection))
        )
        client.update_collection_aliases(change_aliases_operations=ops)


def _server_filter(terms: FilterTerms) -> qm.Filter | None:
    """The only place a FilterTerms becomes a qdrant-client filter."""
    if terms.empty:
        return None
    must: list[Any] = []
    if terms.creator_id is not None:
        must.append(qm.FieldCondition(key="creator_id", match=qm.MatchValue(value=terms.creator_id)))
    if terms.language is not None:
        must.append(qm.FieldCondition(key="language", match=qm.MatchValue(value=terms.language)))
    if terms.ts_gte is not None or terms.ts_lt is not None:
        must.append(qm.FieldCondition(key="created_at_ts", range=qm.Range(gte=terms.ts_gte, lt=terms.ts_lt)))
    must_not: list[Any] = []
    if terms.exclude_point_ids:
        must_not.append(qm.HasIdCondition(has_id=list(terms.exclude_point_ids)))
    return qm.Filter(must=must or None, must_not=must_not or None)


class QdrantServerIndex(VectorIndex):
    """A version as the collection `<cfg.collection>__<version>` (server, or qdrant-client local mode)."""

    def __init__(
        self,
        cfg: IndexConfig,
        dims: dict[str, int],
        version: str,
        create: bool = True,
        client: QdrantClient | None = None,
    ) -> None:
        super().__init__(cfg, dims, version)
        if client is not None:
            self._client, self._owns_client = client, False
        else:
            self._client, self._owns_client = make_client(cfg)
        try:
            self._open_or_create(create)
        except BaseException:
            self._close()
            raise
        # Local mode searches exhaustively and warns on every query given search params, so give none.
        self._params = None if _is_local(self._client) else qm.SearchParams(hnsw_ef=cfg.search_ef)

    @property
    def client(self) -> QdrantClient:
        return self._client

    def _open_or_create(self, create: bool) -> None:
        name = self._collection
        with _errors(f"open {name}"):
            if self._client.collection_exists(name):
                self._check_schema()
                return
            if not create:
                raise StoreError("unknown_version", f"no collection {name!r}")
            self._client.create_collection(
                name,
                vectors_config={n: qm.VectorParams(size=d, distance=qm.Distance.COSINE) for n, d in self._dims.items()},
                hnsw_config=qm.HnswConfigDiff(m=self._cfg.hnsw_m, ef_construct=self._cfg.hnsw_ef_construct),
            )
            if not _is_local(self._client):  # local mode has no payload indexes (and warns if asked)
                for field, kind in PAYLOAD_INDEXES.items():
                    self._client.create_payload_index(name, field, _SCHEMA[kind], wait=True)
        log.info("created collection %s with vectors %s", name, self._dims)

    def _check_schema(self) -> None:
        vectors = self._client.get_collection(self._collection).config.params.vectors
        have = {n: p.size for n, p in vectors.items()} if isinstance(vectors, dict) else {}
        if have != self._dims:
            raise StoreError(
                "schema_mismatch",
                f"collection {self._collection} has vectors {have}, caller expects {self._dims}",
            )

    # ---- writes ---------------------------------------------------------------------------------------

    def _upsert(self, points: list[PointData]) -> None:
        structs = [
            qm.PointStruct(id=p.id, vector={n: v.tolist() for n, v in p.vectors.items()}, payload=p.payload)
            for p in points
        ]
        with _errors(f"upsert into {self._collection}"):
            self._client.upsert(self._collection, structs, wait=True)

    def _delete(self, point_ids: list[str]) -> None:
        with _errors(f"delete from {self._collection}"):
            self._client.delete(self._collection, qm.PointIdsList(points=list(point_ids)), wait=True)

    def _optimize(self) -> None:
        # The server's optimizers run on their own after writes; there is nothing to trigger.
        log.debug("optimize() is a no-op for %s", self._collection)

    def _close(self) -> None:
        if self._owns_client:
            self._client.close()

    # ---- reads ----------------------------------------------------------------------------------------

    def _retrieve(self, point_ids: list[str], with_payload: bool, with_vectors: bool | list[str]) -> list[Record]:
        with _errors(f"retrieve from {self._collection}"):
            records = self._client.retrieve(
                self._collection, point_ids, with_payload=with_payload, with_vectors=with_vectors
            )
        out = []
        for r in records:
            vec = r.vector if isinstance(r.vector, dict) else {}
            out.append(
                Record(
                    id=str(r.id),
                    vectors={n: np.asarray(v, dtype=np.float32) for n, v in vec.items()},
                    payload=dict(r.payload or {}),
                )
            )
        return out

    def _run(self, terms: FilterTerms, k: int, **query: Any) -> list[Hit]:
        with _errors(f"query {self._collection}"):
            resp = self._client.query_points(
                self._collection,
                query_filter=_server_filter(terms),
                search_params=self._params,
                limit=k,
                with_payload=qm.PayloadSelectorExclude(exclude=HIT_PAYLOAD_EXCLUDE),
                with_vectors=False,
                **query,
            )
        return [self._hit(p.payload, p.score) for p in resp.points]

    def _search(self, vector: np.ndarray, using: str, k: int, terms: FilterTerms) -> list[Hit]:
        return self._run(terms, k, query=vector.tolist(), using=using)

    def _search_multi(
        self, vectors: dict[str, np.ndarray], k: int, prefetch_limit: int, terms: FilterTerms
    ) -> list[Hit]:
        flt = _server_filter(terms)
        prefetch = [
            qm.Prefetch(query=v.tolist(), using=name, limit=prefetch_limit, filter=flt, params=self._params)
            for name, v in vectors.items()
        ]
        return self._run(terms, k, prefetch=prefetch, query=qm.RrfQuery(rrf=qm.Rrf(k=RRF_K)))

    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]:
        # Example vectors, not ids: the base class already fetched them (and checked they exist), and
        # the examples are excluded through the filter, so both backends behave the same.
        query = qm.RecommendQuery(
            recommend=qm.RecommendInput(
                positive=[v.tolist() for v in positive],
                negative=[v.tolist() for v in negative],
                strategy=qm.RecommendStrategy(self._cfg.recommend_strategy),
            )
        )
        return self._run(terms, k, query=query, using=using)

    def _count(self) -> int:
        with _errors(f"count {self._collection}"):
            return int(self._client.count(self._collection, exact=True).count)
