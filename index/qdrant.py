"""Qdrant server backend (qdrant-client): one collection per version, the stable name is a collection alias.

`cfg.url == ":memory:"` uses one process-wide in-memory client (so every open and catalog call in the process
sees the same data, like a server would); tests inject their own `client=` for isolation.

Native in qdrant-client 1.20 (server and local mode alike): MaxSim multivectors, `create_vector_name` (an older
collection gets the `fingerprint`/`frames` multivectors on open), `upsert(update_filter=...)` for
version-guarded writes, batched `set_payload`, `scroll`, `query_batch_points`. Local mode applies the update
filter in Python, under the process-wide local write lock like every other local-mode write.
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
    AUX_VECTORS,
    FRAMES,
    HIT_PAYLOAD_EXCLUDE,
    LEGACY_MULTIVECTORS,
    PAYLOAD_INDEXES,
    QUANTIZED_VECTORS,
    RRF_K,
    SCHEMA_SEQ,
    AuxVector,
    FilterTerms,
    FusionMethod,
    Hit,
    PointData,
    Probe,
    Record,
    SparseVec,
    VectorIndex,
    VectorStorage,
    collection_name,
)

log = logging.getLogger(__name__)

_SCHEMA = {
    "keyword": qm.PayloadSchemaType.KEYWORD,
    "float": qm.PayloadSchemaType.FLOAT,
    "integer": qm.PayloadSchemaType.INTEGER,
}
_MAXSIM = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ResponseHandlingException,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
_memory_client: QdrantClient | None = None
_memory_lock = threading.Lock()
# Local mode checks "id exists?" and then writes in Python, so two threads could both insert one id:
# every local-mode write in this process goes through this lock (a server decides atomically itself).
_local_write_lock = threading.Lock()


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Transport failures and 5xx become StoreError('unreachable'); other refusals StoreError('rejected')."""
    try:
        yield
    except StoreError:
        raise
    except _TRANSPORT_ERRORS as e:
        log.error("%s: Qdrant server unreachable: %s", what, e)
        raise StoreError("unreachable", f"{what}: Qdrant server unreachable") from e
    except UnexpectedResponse as e:
        reason = "unreachable" if e.status_code >= 500 else "rejected"
        log.error("%s: HTTP %s from Qdrant: %r", what, e.status_code, e.content)
        raise StoreError(reason, f"{what}: the Qdrant server answered HTTP {e.status_code}") from e


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
        api_key=cfg.api_key.get_secret_value() if cfg.api_key is not None else None,
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


def _guard(seq: int) -> qm.Filter:
    """Matches points a write of schema generation `seq` may replace: older or equal, or unversioned."""
    return qm.Filter(
        should=[
            qm.FieldCondition(key=SCHEMA_SEQ, range=qm.Range(lte=seq)),
            qm.IsEmptyCondition(is_empty=qm.PayloadField(key=SCHEMA_SEQ)),
        ]
    )


def _server_vec(v: np.ndarray | SparseVec) -> Any:
    return qm.SparseVector(indices=list(v.indices), values=list(v.values)) if isinstance(v, SparseVec) else v.tolist()


def _record(r: Any) -> Record:
    vec = r.vector if isinstance(r.vector, dict) else {}
    vec = {n: v for n, v in vec.items() if not isinstance(v, qm.SparseVector)}
    return Record(
        id=str(r.id),
        vectors={n: np.asarray(v, dtype=np.float32) for n, v in vec.items()},
        payload=dict(r.payload or {}),
    )


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
        self._local = _is_local(self._client)
        quant = (
            qm.QuantizationSearchParams(rescore=cfg.quantization_rescore, oversampling=cfg.quantization_oversampling)
            if cfg.quantization == "int8"
            else None
        )
        # Local mode searches exhaustively and warns on every query given search params, so give none.
        self._params = None if self._local else qm.SearchParams(hnsw_ef=cfg.search_ef, quantization=quant)

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
            int8 = qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True))
            on_disk = True if self._cfg.on_disk_vectors else None
            vectors = {
                n: qm.VectorParams(
                    size=d,
                    distance=qm.Distance.COSINE,
                    on_disk=on_disk,
                    quantization_config=int8 if self._cfg.quantization == "int8" and n in QUANTIZED_VECTORS else None,
                )
                for n, d in self._dims.items()
            }
            for n, a in self._aux.items():
                if a.kind != "sparse":
                    # `frames` is only ever retrieved by id, never searched: no HNSW graph (m=0).
                    vectors[n] = qm.VectorParams(
                        size=a.size,
                        distance=qm.Distance.COSINE,
                        on_disk=on_disk,
                        multivector_config=_MAXSIM if a.kind == "multi" else None,
                        hnsw_config=qm.HnswConfigDiff(m=0) if n == FRAMES else None,
                    )
            sparse = {n: qm.SparseVectorParams() for n, a in self._aux.items() if a.kind == "sparse"}
            self._client.create_collection(
                name,
                vectors_config=vectors,
                sparse_vectors_config=sparse,
                hnsw_config=qm.HnswConfigDiff(m=self._cfg.hnsw_m, ef_construct=self._cfg.hnsw_ef_construct),
            )
            if not _is_local(self._client):  # local mode has no payload indexes (and warns if asked)
                for field, kind in PAYLOAD_INDEXES.items():
                    self._client.create_payload_index(name, field, _SCHEMA[kind], wait=True)
        log.info("created collection %s with vectors %s", name, self._dims)

    def _check_schema(self) -> None:
        """Dense modality vectors must match exactly; missing auxiliary vectors are added (or left out as
        unsupported); vectors of older versions (`LEGACY_MULTIVECTORS`) are left as they are."""
        info = self._client.get_collection(self._collection)
        vectors = info.config.params.vectors
        params = vectors if isinstance(vectors, dict) else {}
        have = {n: p.size for n, p in params.items()} | dict.fromkeys(info.config.params.sparse_vectors or {}, 0)
        dense = {n: s for n, s in have.items() if n in params and n not in self._aux and n not in LEGACY_MULTIVECTORS}
        wrong = {n: s for n, s in have.items() if n in self._aux and s != self._aux[n].size}
        if dense != self._dims or wrong:
            raise StoreError(
                "schema_mismatch",
                f"collection {self._collection} has vectors {have}, caller expects {self._dims}",
            )
        for name, a in list(self._aux.items()):
            if name not in have:
                self._add_aux_vector(name, a)
        self._aux = {n: self._aux[n] for n in AUX_VECTORS if n in self._aux}
        if not _is_local(self._client):  # a collection from before a payload index was added to PAYLOAD_INDEXES
            for field, kind in PAYLOAD_INDEXES.items():
                if field not in (info.payload_schema or {}):
                    self._client.create_payload_index(self._collection, field, _SCHEMA[kind], wait=True)

    def _add_aux_vector(self, name: str, a: AuxVector) -> None:
        try:
            if a.kind == "sparse":
                config = qm.SparseVectorNameConfig(sparse=qm.SparseVectorConfig())
                self._client.create_vector_name(self._collection, name, config)
            else:
                multi = _MAXSIM if a.kind == "multi" else None
                dense = qm.DenseVectorConfig(size=a.size, distance=qm.Distance.COSINE, multivector_config=multi)
                self._client.create_vector_name(self._collection, name, qm.DenseVectorNameConfig(dense=dense))
            log.info("added vector %r to %s", name, self._collection)
        except Exception as e:  # an older server, or no rights to change the schema
            log.error("cannot add vector %r to %s (features unsupported): %s", name, self._collection, e)
            del self._aux[name]

    # ---- writes ---------------------------------------------------------------------------------------

    def _upsert(self, points: list[PointData], insert_only: bool = False, guard_seq: int | None = None) -> None:
        structs = [
            qm.PointStruct(id=p.id, vector={n: _server_vec(v) for n, v in p.vectors.items()}, payload=p.payload)
            for p in points
        ]
        mode = qm.UpdateMode.INSERT_ONLY if insert_only else None
        guard = _guard(guard_seq) if guard_seq is not None else None
        with _errors(f"upsert into {self._collection}"), self._write_guard():
            self._client.upsert(self._collection, structs, wait=True, update_mode=mode, update_filter=guard)

    def _set_payload(self, values: list[tuple[str, dict[str, Any]]]) -> None:
        ops = [qm.SetPayloadOperation(set_payload=qm.SetPayload(payload=f, points=[pid])) for pid, f in values]
        with _errors(f"set payload in {self._collection}"), self._write_guard():
            self._client.batch_update_points(self._collection, ops, wait=True)

    def _write_guard(self) -> contextlib.AbstractContextManager[Any]:
        return _local_write_lock if self._local else contextlib.nullcontext()

    def _delete(self, point_ids: list[str]) -> None:
        with _errors(f"delete from {self._collection}"), self._write_guard():
            self._client.delete(self._collection, qm.PointIdsList(points=list(point_ids)), wait=True)

    def _optimize(self) -> None:
        # The server's optimizers run on their own after writes; there is nothing to trigger.
        log.debug("optimize() is a no-op for %s", self._collection)

    def _close(self) -> None:
        if self._owns_client:
            self._client.close()

    # ---- reads ----------------------------------------------------------------------------------------

    def _retrieve(
        self, point_ids: list[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[Record]:
        with _errors(f"retrieve from {self._collection}"):
            records = self._client.retrieve(
                self._collection, point_ids, with_payload=with_payload, with_vectors=with_vectors
            )
        return [_record(r) for r in records]

    def _scroll(
        self, using: str, limit: int, offset: Any, payload: list[str], vectors: bool = True
    ) -> tuple[list[Record], Any]:
        with _errors(f"scroll {self._collection}"):
            records, next_offset = self._client.scroll(
                self._collection,
                scroll_filter=qm.Filter(must=[qm.HasVectorCondition(has_vector=using)]),
                limit=limit,
                offset=offset,
                with_payload=payload,
                with_vectors=[using] if vectors else False,
            )
        return [_record(r) for r in records], next_offset

    def _search_batch(
        self, queries: list[tuple[str, np.ndarray | SparseVec]], k: int, terms: FilterTerms
    ) -> list[list[Hit]]:
        flt = _server_filter(terms)
        requests = [
            qm.QueryRequest(
                query=_server_vec(v), using=using, limit=k, filter=flt, params=self._params, with_payload=["item_id"]
            )
            for using, v in queries
        ]
        with _errors(f"query {self._collection}"):
            responses = self._client.query_batch_points(self._collection, requests=requests)
        return [[self._hit(p.payload, p.score) for p in r.points] for r in responses]

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

    def _fused(
        self, probes: list[Probe], k: int, prefetch_limit: int, terms: FilterTerms, method: FusionMethod
    ) -> list[Hit]:
        flt = _server_filter(terms)
        prefetch = [
            qm.Prefetch(
                query=self._recommend_query(list(p.positive), list(p.negative))
                if p.recommend
                else p.positive[0].tolist(),
                using=p.using,
                limit=prefetch_limit,
                filter=flt,
                params=self._params,
            )
            for p in probes
        ]
        # RRF with our k (Fusion.RRF would use the engine default k); DBSF has no parameter.
        fusion = qm.RrfQuery(rrf=qm.Rrf(k=RRF_K)) if method == "rrf" else qm.FusionQuery(fusion=qm.Fusion.DBSF)
        return self._run(terms, k, prefetch=prefetch, query=fusion)

    def _recommend_query(self, positive: list[np.ndarray], negative: list[np.ndarray]) -> qm.RecommendQuery:
        # Example vectors, not ids: the base class already fetched them (and checked they exist), and
        # the examples are excluded through the filter, so both backends behave the same.
        return qm.RecommendQuery(
            recommend=qm.RecommendInput(
                positive=[v.tolist() for v in positive],
                negative=[v.tolist() for v in negative],
                strategy=qm.RecommendStrategy(self._cfg.recommend_strategy),
            )
        )

    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]:
        return self._run(terms, k, query=self._recommend_query(positive, negative), using=using)

    def _vector_storage(self) -> dict[str, VectorStorage]:
        with _errors(f"describe {self._collection}"):
            vectors = self._client.get_collection(self._collection).config.params.vectors
        out = {}
        for name, params in (vectors or {}).items() if isinstance(vectors, dict) else []:
            q = params.quantization_config
            scalar = q.scalar if isinstance(q, qm.ScalarQuantization) else None
            out[name] = VectorStorage(
                size=params.size,
                quantization=scalar.type.value if scalar else None,
                always_ram=scalar.always_ram if scalar else None,
                on_disk=params.on_disk,
            )
        return out

    def _count(self) -> int:
        with _errors(f"count {self._collection}"):
            return int(self._client.count(self._collection, exact=True).count)
