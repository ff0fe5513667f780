"""The vector-index contract shared by every backend: types, point ids, payload, validation.

Backends (`index.edge.EdgeIndex`, `index.qdrant.QdrantServerIndex`) implement only the `_`-prefixed hooks;
every check on what callers pass lives here, once, so both backends refuse the same inputs the same way.
"""

from __future__ import annotations

import abc
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedder.config import IndexConfig
from embedder.types import FUSED, MODALITIES, ConfigError, ItemEmbedding, ItemFailure, StoreError

log = logging.getLogger(__name__)

# Fixed forever: changing it would re-key every stored point.
REELVEC_NAMESPACE = uuid.UUID("8d0f4c52-3b1e-5a57-9c1a-6e2f7b4d9a30")
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")  # versions and cfg.collection: safe as paths and names
# Payload field -> index kind ("keyword" | "float"); each backend maps the kind to its own schema type.
PAYLOAD_INDEXES: dict[str, str] = {
    "item_id": "keyword",
    "creator_id": "keyword",
    "language": "keyword",
    "created_at_ts": "float",
    "modalities": "keyword",
}
RRF_K = 60  # the usual RRF constant (Cormack et al.); set explicitly so both backends fuse identically
HIT_FIELDS = (
    "caption",
    "hashtags",
    "creator_id",
    "created_at",
    "language",
    "duration_s",
    "modalities",
    "schema_version",
    "metadata",
)
# Hits carry the payload minus the (long) transcript; `get()` returns everything.
HIT_PAYLOAD_EXCLUDE = ["transcript"]
_RETRIEVE_CHUNK = 1000


def point_id(item_id: str) -> str:
    """Stable Qdrant point id of an item: uuid5 in the reelvec namespace (ids are arbitrary strings)."""
    return str(uuid.uuid5(REELVEC_NAMESPACE, item_id))


def check_version(version: str) -> str:
    if not isinstance(version, str) or not NAME_RE.fullmatch(version):
        raise StoreError("bad_version", f"version {version!r} must match [A-Za-z0-9._-]+")
    return version


def collection_name(cfg: IndexConfig, version: str) -> str:
    """Physical name of one version: `<collection>__<version>` (a Qdrant collection or an Edge shard dir)."""
    if not NAME_RE.fullmatch(cfg.collection):
        raise ConfigError("invalid", f"index.collection: {cfg.collection!r} must match [A-Za-z0-9._-]+")
    return f"{cfg.collection}__{check_version(version)}"


def _utc(dt: datetime) -> datetime:
    # Naive datetimes are taken as UTC, the convention of every timestamp reelvec writes.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def rfc3339(dt: datetime) -> str:
    return _utc(dt).isoformat().replace("+00:00", "Z")


class SearchFilter(BaseModel):
    """Payload restrictions of a query; `since <= created_at < until`, items without a date never match."""

    model_config = ConfigDict(extra="forbid")

    creator_id: str | None = None
    language: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    exclude_ids: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class FilterTerms:
    """A `SearchFilter` lowered to what the engines filter on (epoch seconds, point ids)."""

    creator_id: str | None = None
    language: str | None = None
    ts_gte: float | None = None
    ts_lt: float | None = None
    exclude_point_ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return (
            self.creator_id is None
            and self.language is None
            and self.ts_gte is None
            and self.ts_lt is None
            and not self.exclude_point_ids
        )


def filter_terms(flt: SearchFilter | None, extra_exclude: Iterable[str] = ()) -> FilterTerms:
    flt = flt or SearchFilter()
    excluded = dict.fromkeys([*flt.exclude_ids, *extra_exclude])
    return FilterTerms(
        creator_id=flt.creator_id,
        language=flt.language,
        ts_gte=_utc(flt.since).timestamp() if flt.since else None,
        ts_lt=_utc(flt.until).timestamp() if flt.until else None,
        exclude_point_ids=tuple(point_id(i) for i in excluded),
    )


@dataclass
class Hit:
    """One search result: the item, its score (higher is closer) and its payload (transcript left out)."""

    item_id: str
    score: float
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "score": self.score, **{k: self.payload.get(k) for k in HIT_FIELDS}}


@dataclass
class StoredItem:
    """A point as stored: only the named vectors it has (L2-normalized by Cosine) and its payload."""

    item_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


@dataclass
class UpsertReport:
    written: list[str] = field(default_factory=list)
    failed: list[ItemFailure] = field(default_factory=list)


@dataclass(frozen=True)
class PointData:
    """What a backend writes: uuid5 point id, the present named vectors (float32) and the payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Record:
    """What a backend reads back; vectors/payload are empty when not requested."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


def build_payload(item: ItemEmbedding, transcript_chars: int) -> dict[str, Any]:
    """The one payload both backends store for an item (dates twice: RFC3339 for humans, epoch for ranges)."""
    created = item.created_at
    return {
        "item_id": item.item_id,
        "caption": item.caption,
        "hashtags": list(item.hashtags),
        "transcript": item.transcript.text[:transcript_chars],
        "language": item.transcript.language,
        "duration_s": float(item.duration_s),
        "creator_id": item.creator_id,
        "created_at": rfc3339(created) if created else None,
        "created_at_ts": _utc(created).timestamp() if created else None,
        "modalities": list(item.modalities),
        "models": dict(item.models),
        "schema_version": item.schema_version,
        "metadata": dict(item.metadata),
    }


def _vector_problem(v: Any, dim: int) -> str | None:
    """Why `v` cannot be stored or queried as a `dim`-d cosine vector, or None."""
    try:
        a = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        return "not a numeric array"
    if a.shape != (dim,):
        return f"shape {a.shape}, expected ({dim},)"
    if not np.isfinite(a).all():
        return "non-finite values"
    if not a.any():
        return "all zeros (no cosine direction)"
    return None


class VectorIndex(abc.ABC):
    """One version (collection) of the item index; safe for concurrent reads, usable as a context manager."""

    def __init__(self, cfg: IndexConfig, dims: Mapping[str, int], version: str) -> None:
        unknown = set(dims) - {*MODALITIES, FUSED}
        if unknown or FUSED not in dims or any(int(d) < 1 for d in dims.values()):
            raise ValueError(
                f"dims must map a subset of {[*MODALITIES, FUSED]} (with {FUSED!r}) to sizes >= 1, got {dict(dims)}"
            )
        self._cfg = cfg
        self._dims = {name: int(dims[name]) for name in [*MODALITIES, FUSED] if name in dims}
        self._version = check_version(version)
        self._collection = collection_name(cfg, version)
        self._closed = False

    # ---- public API ---------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._version

    @property
    def collection(self) -> str:
        """Physical name of this version (`<cfg.collection>__<version>`), not the stable alias."""
        return self._collection

    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def upsert(self, items: list[ItemEmbedding]) -> UpsertReport:
        """Validate every item first, then write the valid ones in one engine call (whole points replaced)."""
        self._check_open()
        report = UpsertReport()
        valid: dict[str, PointData] = {}  # a repeated id in one batch: the last one wins
        for item in items:
            problem = self._item_problem(item)
            payload: dict[str, Any] = {}
            if problem is None:
                try:
                    payload = build_payload(item, self._cfg.transcript_payload_chars)
                    json.dumps(payload, allow_nan=False)
                except (TypeError, ValueError, AttributeError) as e:
                    problem = ("bad_payload", f"payload is not finite JSON: {e}")
            if problem is not None:
                report.failed.append(ItemFailure(str(getattr(item, "item_id", "")), "index", *problem))
                continue
            vectors = {n: np.asarray(v, dtype=np.float32) for n, v in item.vectors.items()}
            valid.pop(item.item_id, None)
            valid[item.item_id] = PointData(point_id(item.item_id), vectors, payload)
        if valid:
            self._upsert(list(valid.values()))
        report.written = list(valid)
        for f in report.failed:
            log.warning("index %s: not writing %r: %s (%s)", self._collection, f.item_id, f.reason, f.detail)
        return report

    def delete(self, item_ids: list[str]) -> int:
        """Delete items; returns how many of them existed."""
        present = self.existing(item_ids)
        if present:
            self._delete([point_id(i) for i in present])
        return len(present)

    def get(self, item_id: str) -> StoredItem:
        self._check_open()
        records = self._retrieve([point_id(item_id)], with_payload=True, with_vectors=True)
        if not records:
            raise StoreError("unknown_item", f"no item {item_id!r} in {self._collection}")
        r = records[0]
        return StoredItem(item_id=item_id, vectors=r.vectors, payload=r.payload)

    def search(self, vector: np.ndarray, using: str = FUSED, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """Top-k items by cosine on one named vector."""
        self._check_open()
        self._check_k(k)
        vec = self._check_query_vector(using, vector)
        return self._search(vec, using, k, filter_terms(flt))

    def search_multi(self, vectors: dict[str, np.ndarray], k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """One prefetch per named vector given, fused by reciprocal rank (scores are RRF, not cosines)."""
        self._check_open()
        self._check_k(k)
        if not vectors:
            raise StoreError("bad_query", "search_multi needs at least one named vector")
        checked = {name: self._check_query_vector(name, v) for name, v in vectors.items()}
        return self._search_multi(checked, k, max(50, 4 * k), filter_terms(flt))

    def search_like(self, item_id: str, using: str = FUSED, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """More like a stored item: cosine search with its stored vector; the item itself never comes back."""
        self._check_open()
        self._check_k(k)
        self._check_using(using)
        stored = self.get(item_id)
        if using not in stored.vectors:
            raise StoreError("bad_query", f"item {item_id!r} has no {using!r} vector")
        vec = self._check_query_vector(using, stored.vectors[using])
        return self._search(vec, using, k, filter_terms(flt, extra_exclude=[item_id]))

    def recommend(
        self,
        positive: list[str],
        negative: list[str] | None = None,
        using: str = FUSED,
        k: int = 10,
        flt: SearchFilter | None = None,
    ) -> list[Hit]:
        """Items like the positives, unlike the negatives (`index.recommend_strategy`); examples never come back."""
        self._check_open()
        self._check_k(k)
        negative = list(negative or [])
        if not positive:
            raise StoreError("bad_query", "recommend needs at least one positive item id")
        self._check_using(using)
        examples = list(dict.fromkeys([*positive, *negative]))
        pids = {point_id(i): i for i in examples}
        found = {pids[r.id]: r for r in self._retrieve_all(list(pids), with_payload=False, with_vectors=[using])}
        missing = [i for i in examples if i not in found]
        if missing:
            raise StoreError("unknown_item", f"unknown example item(s) in {self._collection}: {missing}")
        no_vec = [i for i in examples if using not in found[i].vectors]
        if no_vec:
            raise StoreError("bad_query", f"example item(s) {no_vec} have no {using!r} vector")
        pos = [found[i].vectors[using] for i in positive]
        neg = [found[i].vectors[using] for i in negative]
        return self._recommend(pos, neg, using, k, filter_terms(flt, extra_exclude=examples))

    def count(self) -> int:
        self._check_open()
        return self._count()

    def existing(self, item_ids: list[str], schema_version: str | None = None) -> set[str]:
        """The subset of `item_ids` stored in this version (for resumable backfills); with `schema_version`, only
        those whose payload says they were embedded with it (one batched retrieve, no vectors)."""
        self._check_open()
        pids = {point_id(i): i for i in item_ids}
        records = self._retrieve_all(list(pids), with_payload=schema_version is not None, with_vectors=False)
        return {
            pids[r.id] for r in records if schema_version is None or r.payload.get("schema_version") == schema_version
        }

    def optimize(self) -> None:
        """Build/merge index structures now (after a bulk load); a no-op where the engine does it itself."""
        self._check_open()
        self._optimize()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._collection!r})"

    # ---- validation ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("closed", f"index {self._collection} is closed")

    @staticmethod
    def _check_k(k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise StoreError("bad_query", f"k must be an integer >= 1, got {k!r}")

    def _check_using(self, using: str) -> None:
        if using not in self._dims:
            raise StoreError("bad_query", f"unknown vector {using!r}; known: {list(self._dims)}")

    def _check_query_vector(self, using: str, vector: Any) -> np.ndarray:
        self._check_using(using)
        problem = _vector_problem(vector, self._dims[using])
        if problem:
            raise StoreError("bad_query", f"{using} query vector: {problem}")
        return np.asarray(vector, dtype=np.float32)

    def _item_problem(self, item: ItemEmbedding) -> tuple[str, str] | None:
        """(reason, detail) why `item`'s id or vectors cannot be written, or None."""
        if not isinstance(getattr(item, "item_id", None), str) or not item.item_id.strip():
            return "bad_item_id", "item_id must be a non-empty string"
        if FUSED not in item.vectors:
            return "missing_vector", f"no {FUSED!r} vector"
        for name, v in item.vectors.items():
            if name not in self._dims:
                return "unknown_vector", f"vector {name!r} is not in this index ({list(self._dims)})"
            problem = _vector_problem(v, self._dims[name])
            if problem:
                return "bad_vector", f"{name}: {problem}"
        return None

    def _retrieve_all(self, ids: list[str], with_payload: bool, with_vectors: bool | list[str]) -> list[Record]:
        out: list[Record] = []
        for start in range(0, len(ids), _RETRIEVE_CHUNK):
            out.extend(self._retrieve(ids[start : start + _RETRIEVE_CHUNK], with_payload, with_vectors))
        return out

    @staticmethod
    def _hit(payload: dict[str, Any] | None, score: float) -> Hit:
        payload = payload or {}
        return Hit(item_id=str(payload.get("item_id", "")), score=float(score), payload=payload)

    # ---- backend hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _upsert(self, points: list[PointData]) -> None: ...

    @abc.abstractmethod
    def _delete(self, point_ids: list[str]) -> None: ...

    @abc.abstractmethod
    def _retrieve(self, point_ids: list[str], with_payload: bool, with_vectors: bool | list[str]) -> list[Record]:
        """Existing points among `point_ids` (absent ones are skipped, order not guaranteed)."""

    @abc.abstractmethod
    def _search(self, vector: np.ndarray, using: str, k: int, terms: FilterTerms) -> list[Hit]: ...

    @abc.abstractmethod
    def _search_multi(
        self, vectors: dict[str, np.ndarray], k: int, prefetch_limit: int, terms: FilterTerms
    ) -> list[Hit]: ...

    @abc.abstractmethod
    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]: ...

    @abc.abstractmethod
    def _count(self) -> int: ...

    @abc.abstractmethod
    def _optimize(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
