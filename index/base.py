"""The vector-index contract shared by every backend: types, point ids, payload, validation.

Backends (`index.edge.EdgeIndex`, `index.qdrant.QdrantServerIndex`) implement only the `_`-prefixed hooks;
every check on what callers pass lives here, once, so both backends refuse the same inputs the same way.

Besides the modalities' dense vectors every collection has auxiliary named vectors: `fp_visual` (a dense pooled
visual fingerprint) and `fp_audio` (a sparse vector of audio landmark hashes), which only fetch candidates for
relations (re-upload, remix, reused sound; the exact check runs on the prints in the payload), and `frames` (a
MaxSim multivector of per-frame visual vectors, for moment search). A collection created before them gets them
added in place when opened (both engines can add a named vector to a live collection); its old points simply lack
them until re-embedded. Where the engine refuses, the collection works as before and only the features needing
them raise `StoreError('unsupported')`.
"""

from __future__ import annotations

import abc
import json
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedder.config import IndexConfig
from embedder.fingerprint import POOLED_DIM
from embedder.relations import AUDIO_PAYLOAD, RELATION_KINDS, VIDEO_PAYLOAD
from embedder.types import FUSED, ConfigError, ItemEmbedding, ItemFailure, StoreError, relation_fields

log = logging.getLogger(__name__)

# Fixed forever: changing it would re-key every stored point.
REELVEC_NAMESPACE = uuid.UUID("8d0f4c52-3b1e-5a57-9c1a-6e2f7b4d9a30")
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")  # versions and cfg.collection: safe as paths and names
# Payload field -> index kind ("keyword" | "float" | "integer"); each backend maps the kind to its own schema type.
PAYLOAD_INDEXES: dict[str, str] = {
    "item_id": "keyword",
    "creator_id": "keyword",
    "language": "keyword",
    "created_at_ts": "float",
    "modalities": "keyword",
    "duplicate_of": "keyword",
    "remix_of": "keyword",
    "sound_of": "keyword",
    "schema_seq": "integer",
}
FP_VISUAL, FP_AUDIO = "fp_visual", "fp_audio"  # relation candidates: pooled visual print, audio landmark hashes
FRAMES = "frames"  # MaxSim multivector (cosine per row) of the per-frame visual vectors
MULTIVECTORS: tuple[str, ...] = (FRAMES,)
AUX_VECTORS: tuple[str, ...] = (FP_VISUAL, FP_AUDIO, FRAMES)
# Named vectors of older versions that a shard may still hold (loaded as they are, never written again).
LEGACY_MULTIVECTORS: dict[str, int] = {"fingerprint": 192}


@dataclass(frozen=True)
class AuxVector:
    """A named vector besides the modalities: a MaxSim multivector, a plain dense vector, or a sparse one."""

    kind: Literal["multi", "dense", "sparse"]
    size: int = 0  # row or vector size; 0 for sparse


@dataclass(frozen=True)
class SparseVec:
    """A sparse vector as the backends write and query it (indices unique, values finite)."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, pair: tuple[list[int], list[float]] | None) -> SparseVec | None:
        """From an (indices, values) pair such as `ItemPrints.candidates`' audio side (None stays None)."""
        return None if pair is None else cls(tuple(pair[0]), tuple(pair[1]))


# The embedding-schema generation N of a version "vN-<hash>", stored so older embeddings never overwrite newer.
SCHEMA_SEQ = "schema_seq"
_SEQ_RE = re.compile(r"v(\d+)(?:-|$)")
_VECTOR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Fields `set_payload` may not touch: identity, the write guard and the create token.
RESERVED_PAYLOAD = frozenset({"item_id", "schema_version", SCHEMA_SEQ})
RRF_K = 60  # the usual RRF constant (Cormack et al.); set explicitly so both backends fuse identically
# Late fusion of one prefetch per named vector, done by the engine: reciprocal rank, or distribution-based
# score fusion (each list's scores normalized by mean +- 3 sample std, then summed).
FusionMethod = Literal["rrf", "dbsf"]
FUSION_METHODS: tuple[str, ...] = ("rrf", "dbsf")
# The big vectors that `index.quantization: int8` quantizes (the per-modality text vectors are small).
QUANTIZED_VECTORS: tuple[str, ...] = (FUSED, "visual")
# Payload key of the token an `upsert_checked` insert writes: whoever finds its own token created the point.
CREATE_TOKEN = "_create_token"
HIT_FIELDS = (
    "caption",
    "hashtags",
    "creator_id",
    "created_at",
    "language",
    "duration_s",
    "modalities",
    "speech",
    "ocr_text",
    "schema_version",
    "metadata",
    "duplicate_of",
    "remix_of",
    "sound_of",
    "semantic_id",
)
# Hits carry the payload minus the (long) transcript, thumbnails and prints; `get()` all but the internal fields.
HIT_PAYLOAD_EXCLUDE = ["transcript", CREATE_TOKEN, "thumbs", VIDEO_PAYLOAD, AUDIO_PAYLOAD]
_INTERNAL_PAYLOAD = frozenset({CREATE_TOKEN, VIDEO_PAYLOAD, AUDIO_PAYLOAD})  # opaque: the token and the raw prints
# The payload fields `build_payload` always writes (a step's extra fields may not replace them).
_BASE_PAYLOAD = frozenset(
    {
        "item_id", "caption", "hashtags", "transcript", "language", "duration_s", "creator_id", "created_at",
        "created_at_ts", "speech", "segments", "ocr_text", "ocr_lines", "frame_timestamps_s", "modalities", "models",
        "models_unavailable", "schema_version", SCHEMA_SEQ, "duplicate_of", "duplicate_score", "semantic_id",
        "remix_of", "sound_of", "relation", VIDEO_PAYLOAD, AUDIO_PAYLOAD, "metadata", CREATE_TOKEN,
    }
)  # fmt: skip
_RETRIEVE_CHUNK = 1000
_SCROLL_BATCH = 1000  # points per page when `relation_groups` reads the stored relations


def point_id(item_id: str) -> str:
    """Stable Qdrant point id of an item: uuid5 in the reelvec namespace (ids are arbitrary strings)."""
    return str(uuid.uuid5(REELVEC_NAMESPACE, item_id))


def schema_seq(schema_version: str) -> int:
    """The generation N of an embedding-schema version `vN-<hash>`; any other version ranks 0 (the oldest)."""
    m = _SEQ_RE.match(schema_version) if isinstance(schema_version, str) else None
    return int(m.group(1)) if m else 0


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
    """What an upsert did; `created`/`replaced` split `written` only for `upsert_checked` (else empty).
    `refused` items were valid but lost to a newer embedding schema already stored (version-guarded writes)."""

    written: list[str] = field(default_factory=list)
    failed: list[ItemFailure] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    # Not errors: a point embedded with a newer schema is stored under the id (reason 'stale_schema').
    refused: list[ItemFailure] = field(default_factory=list)


@dataclass(frozen=True)
class VectorStorage:
    """How the engine stores one named vector, as it reports it (not as we asked)."""

    size: int
    quantization: str | None  # "int8" or None
    always_ram: bool | None  # quantized copy pinned in RAM
    on_disk: bool | None  # original vectors mmapped from disk


@dataclass(frozen=True)
class Probe:
    """One prefetch of a late-fusion query: nearest to `positive[0]`, or a recommend over examples."""

    using: str
    positive: tuple[np.ndarray, ...]
    negative: tuple[np.ndarray, ...] = ()
    recommend: bool = False


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


def build_payload(item: ItemEmbedding, transcript_chars: int, ocr_chars: int = 1000) -> dict[str, Any]:
    """The one payload both backends store for an item (dates twice: RFC3339 for humans, epoch for ranges)."""
    created = item.created_at
    lines, used = [], 0
    for line in item.ocr.lines:
        used += len(line.text)
        if used > ocr_chars:
            break
        lines.append({"text": line.text, "first_s": line.first_s, "last_s": line.last_s})
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
        "speech": item.transcript.speech,
        "segments": [{"start_s": sg.start_s, "end_s": sg.end_s, "text": sg.text} for sg in item.transcript.segments][
            :200
        ],
        "ocr_text": item.ocr.text[:ocr_chars],
        "ocr_lines": lines,
        "frame_timestamps_s": [round(float(t), 3) for t in item.frame_timestamps_s],
        "modalities": list(item.modalities),
        "models": dict(item.models),
        "models_unavailable": list(item.models_unavailable),
        "schema_version": item.schema_version,
        SCHEMA_SEQ: schema_seq(item.schema_version),
        **relation_fields(item.relation),
        "relation": item.relation,
        **(item.prints.payload() if item.prints is not None else {VIDEO_PAYLOAD: None, AUDIO_PAYLOAD: None}),
        "semantic_id": None if item.semantic_id is None else [int(c) for c in item.semantic_id],
        "metadata": dict(item.metadata),
        # Fields a step added (thumbnails); never one of the fields above.
        **{k: v for k, v in item.fields.items() if k not in _BASE_PAYLOAD},
    }


def _with_token(p: PointData, token: str) -> PointData:
    return PointData(p.id, p.vectors, {**p.payload, CREATE_TOKEN: token})


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


def _multivector_problem(v: Any, dim: int) -> str | None:
    """Why `v` cannot be stored or queried as a MaxSim multivector of `dim`-d cosine rows, or None."""
    try:
        a = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        return "not a numeric array"
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != dim:
        return f"shape {a.shape}, expected (n>=1, {dim})"
    if not np.isfinite(a).all():
        return "non-finite values"
    if not a.any(axis=1).all():
        return "an all-zero row (no cosine direction)"
    return None


def _seq_of(payload: Mapping[str, Any]) -> int:
    seq = payload.get(SCHEMA_SEQ)
    return int(seq) if isinstance(seq, int | float) and not isinstance(seq, bool) else 0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class VectorIndex(abc.ABC):
    """One version (collection) of the item index; safe for concurrent reads, usable as a context manager."""

    def __init__(self, cfg: IndexConfig, dims: Mapping[str, int], version: str) -> None:
        reserved = (*AUX_VECTORS, *LEGACY_MULTIVECTORS)
        bad = [n for n in dims if not _VECTOR_NAME.fullmatch(str(n)) or n in reserved]
        if bad or FUSED not in dims or any(int(d) < 1 for d in dims.values()):
            raise ValueError(
                f"dims must map modality names (with {FUSED!r}; none of {list(reserved)}) to sizes >= 1, "
                f"got {dict(dims)}"
            )
        self._cfg = cfg
        # Modalities in fused-block order (the graph's), then `fused`.
        self._dims = {**{n: int(d) for n, d in dims.items() if n != FUSED}, FUSED: int(dims[FUSED])}
        # Auxiliary vectors this collection has; a backend drops the ones its engine refused to add (module doc).
        self._aux = {FP_VISUAL: AuxVector("dense", POOLED_DIM), FP_AUDIO: AuxVector("sparse")}
        if "visual" in self._dims:
            self._aux[FRAMES] = AuxVector("multi", self._dims["visual"])
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

    @property
    def _modalities(self) -> list[str]:
        return [m for m in self._dims if m != FUSED]

    @property
    def multivectors(self) -> dict[str, int]:
        """The MaxSim multivectors this collection stores (name -> row size)."""
        return {n: a.size for n, a in self._aux.items() if a.kind == "multi"}

    @property
    def aux_vectors(self) -> dict[str, AuxVector]:
        """Every auxiliary named vector this collection stores (fingerprint candidates, frames)."""
        return dict(self._aux)

    def upsert(self, items: list[ItemEmbedding]) -> UpsertReport:
        """Validate every item first, then write the valid ones (one engine call per schema generation, whole
        points replaced); an item older than the stored point's schema is `refused`, never written over it."""
        report, valid = self._prepare(items)
        stale = self._write_guarded(valid) if valid else set()
        self._refuse(report, valid, stale)
        report.written = [i for i in valid if i not in stale]
        return report

    def _write_guarded(self, points: Mapping[str, PointData]) -> set[str]:
        """Write `points` (by item id) so none replaces a point of a newer schema; the item ids that lost.

        The engine applies the guard atomically per point (a conditional upsert); a read-back then tells which
        ones it skipped, or which a newer writer replaced right after us (the same outcome for the caller)."""
        by_seq: dict[int, list[PointData]] = defaultdict(list)
        for p in points.values():
            by_seq[int(p.payload[SCHEMA_SEQ])].append(p)
        for seq, batch in sorted(by_seq.items()):
            self._upsert(batch, guard_seq=seq)
        pids = {p.id: item_id for item_id, p in points.items()}
        stored = self._retrieve_all(list(pids), with_payload=[SCHEMA_SEQ], with_vectors=False)
        return {pids[r.id] for r in stored if _seq_of(r.payload) > int(points[pids[r.id]].payload[SCHEMA_SEQ])}

    def _refuse(self, report: UpsertReport, valid: Mapping[str, PointData], stale: Iterable[str]) -> None:
        for item_id in stale:
            seq = valid[item_id].payload[SCHEMA_SEQ]
            report.refused.append(
                ItemFailure(item_id, "index", "stale_schema", f"a newer embedding schema than v{seq} is stored")
            )
            log.info("index %s: %r not written: a newer embedding schema is stored", self._collection, item_id)

    def upsert_checked(self, items: list[ItemEmbedding]) -> UpsertReport:
        """Upsert that says per item whether it `created` the point or `replaced` one; among concurrent writers
        of a new id exactly one gets `created` (the engine's insert-only write decides, not a prior read).

        An insert-only write tagged with a fresh token goes first; the point carrying our token is ours.
        Existing points are then replaced keeping their token, so a creator that reads back late still
        finds its own. A plain `upsert()` of the same id at the same moment drops the token (no guarantee).
        """
        report, valid = self._prepare(items)
        pending = dict(valid)
        stale: set[str] = set()
        for _ in range(3):  # a point deleted between our insert and our read is inserted again
            if not pending:
                break
            token = uuid.uuid4().hex
            self._upsert([_with_token(p, token) for p in pending.values()], insert_only=True)
            pids = {p.id: item_id for item_id, p in pending.items()}
            records = self._retrieve_all(list(pids), with_payload=[CREATE_TOKEN, SCHEMA_SEQ], with_vectors=False)
            found = {pids[r.id]: r for r in records}
            replace: dict[str, PointData] = {}
            for item_id, p in list(pending.items()):
                if item_id not in found:
                    continue
                theirs = found[item_id].payload.get(CREATE_TOKEN)
                if theirs == token:
                    report.created.append(item_id)
                elif _seq_of(found[item_id].payload) > int(p.payload[SCHEMA_SEQ]):
                    stale.add(item_id)
                else:
                    replace[item_id] = _with_token(p, theirs) if isinstance(theirs, str) else p
                del pending[item_id]
            if replace:
                lost = self._write_guarded(replace)
                stale |= lost
                report.replaced += [i for i in replace if i not in lost]
        if pending:
            raise StoreError("write_conflict", f"{len(pending)} item(s) vanished repeatedly while being created")
        self._refuse(report, valid, [i for i in valid if i in stale])
        report.written = [i for i in valid if i in report.created or i in report.replaced]
        return report

    def _prepare(self, items: list[ItemEmbedding]) -> tuple[UpsertReport, dict[str, PointData]]:
        """Validate every item: the failures in a report, and the writable points by item id."""
        self._check_open()
        report = UpsertReport()
        valid: dict[str, PointData] = {}  # a repeated id in one batch: the last one wins
        for item in items:
            problem = self._item_problem(item)
            payload: dict[str, Any] = {}
            if problem is None:
                try:
                    payload = build_payload(item, self._cfg.transcript_payload_chars, self._cfg.ocr_payload_chars)
                    json.dumps(payload, allow_nan=False)
                except (TypeError, ValueError, AttributeError) as e:
                    problem = ("bad_payload", f"payload is not finite JSON ({type(e).__name__})")
            if problem is not None:
                report.failed.append(ItemFailure(str(getattr(item, "item_id", "")), "index", *problem))
                continue
            vectors = {n: np.asarray(v, dtype=np.float32) for n, v in item.vectors.items()}
            vectors.update(self._item_aux_vectors(item))
            valid.pop(item.item_id, None)
            valid[item.item_id] = PointData(point_id(item.item_id), vectors, payload)
        for f in report.failed:
            log.warning("index %s: not writing %r: %s (%s)", self._collection, f.item_id, f.reason, f.detail)
        return report, valid

    def delete(self, item_ids: list[str]) -> int:
        """Delete items; returns how many of them existed."""
        present = self.existing(item_ids)
        if present:
            self._delete([point_id(i) for i in present])
        return len(present)

    def get(self, item_id: str) -> StoredItem:
        """A stored item with every vector it has: dense ones (d,), multivectors (n, d)."""
        self._check_open()
        records = self._retrieve([point_id(item_id)], with_payload=True, with_vectors=True)
        if not records:
            raise StoreError("unknown_item", f"no item {item_id!r} in {self._collection}")
        r = records[0]
        payload = {k: v for k, v in r.payload.items() if k not in _INTERNAL_PAYLOAD}
        return StoredItem(item_id=item_id, vectors=r.vectors, payload=payload)

    def search(self, vector: np.ndarray, using: str = FUSED, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """Top-k items by cosine on one named vector."""
        self._check_open()
        self._check_k(k)
        vec = self._check_query_vector(using, vector)
        return self._search(vec, using, k, filter_terms(flt))

    def search_multi(
        self,
        vectors: dict[str, np.ndarray],
        k: int = 10,
        flt: SearchFilter | None = None,
        method: FusionMethod = "rrf",
    ) -> list[Hit]:
        """One prefetch per named vector given, fused by the engine (`rrf` or `dbsf`; scores are the fusion's)."""
        self._check_open()
        self._check_k(k)
        self._check_method(method)
        if not vectors:
            raise StoreError("bad_query", "search_multi needs at least one named vector")
        probes = [Probe(name, (self._check_query_vector(name, v),)) for name, v in vectors.items()]
        return self._fused(probes, k, self._prefetch_limit(k), filter_terms(flt), method)

    def search_like(
        self,
        item_id: str,
        using: str = FUSED,
        k: int = 10,
        flt: SearchFilter | None = None,
        fusion: FusionMethod | None = None,
    ) -> list[Hit]:
        """More like a stored item: cosine search with its stored `using` vector, or (`fusion`) late fusion of
        one prefetch per modality vector it has; the item itself never comes back."""
        self._check_open()
        self._check_k(k)
        stored = self.get(item_id)
        terms = filter_terms(flt, extra_exclude=[item_id])
        if fusion is not None:
            self._check_method(fusion)
            names = [m for m in self._modalities if m in stored.vectors]
            if not names:
                raise StoreError("bad_query", f"item {item_id!r} has no modality vector to fuse")
            probes = [Probe(m, (self._check_query_vector(m, stored.vectors[m]),)) for m in names]
            return self._fused(probes, k, self._prefetch_limit(k), terms, fusion)
        self._check_using(using)
        if using not in stored.vectors:
            raise StoreError("bad_query", f"item {item_id!r} has no {using!r} vector")
        vec = self._check_query_vector(using, stored.vectors[using])
        return self._search(vec, using, k, terms)

    def recommend(
        self,
        positive: list[str],
        negative: list[str] | None = None,
        using: str = FUSED,
        k: int = 10,
        flt: SearchFilter | None = None,
        fusion: FusionMethod | None = None,
    ) -> list[Hit]:
        """Items like the positives, unlike the negatives (`index.recommend_strategy`); examples never come back.
        With `fusion`: one recommend prefetch per modality that every example has, fused by the engine."""
        self._check_open()
        self._check_k(k)
        negative = list(negative or [])
        if not positive:
            raise StoreError("bad_query", "recommend needs at least one positive item id")
        if fusion is None:
            self._check_using(using)
        else:
            self._check_method(fusion)
        names = self._modalities if fusion is not None else [using]
        examples = list(dict.fromkeys([*positive, *negative]))
        pids = {point_id(i): i for i in examples}
        found = {pids[r.id]: r for r in self._retrieve_all(list(pids), with_payload=False, with_vectors=names)}
        missing = [i for i in examples if i not in found]
        if missing:
            raise StoreError("unknown_item", f"unknown example item(s) in {self._collection}: {missing}")
        terms = filter_terms(flt, extra_exclude=examples)
        if fusion is not None:
            shared = [m for m in names if all(m in found[i].vectors for i in examples)]
            if not shared:
                raise StoreError("bad_query", "the example items share no modality vector to fuse")
            probes = [
                Probe(
                    m,
                    tuple(found[i].vectors[m] for i in positive),
                    tuple(found[i].vectors[m] for i in negative),
                    recommend=True,
                )
                for m in shared
            ]
            return self._fused(probes, k, self._prefetch_limit(k), terms, fusion)
        no_vec = [i for i in examples if using not in found[i].vectors]
        if no_vec:
            raise StoreError("bad_query", f"example item(s) {no_vec} have no {using!r} vector")
        pos = [found[i].vectors[using] for i in positive]
        neg = [found[i].vectors[using] for i in negative]
        return self._recommend(pos, neg, using, k, terms)

    def count(self) -> int:
        self._check_open()
        return self._count()

    def existing(
        self, item_ids: list[str], schema_version: str | None = None, require_models: Iterable[str] = ()
    ) -> set[str]:
        """The subset of `item_ids` stored in this version (for resumable backfills); with `schema_version`, only
        those embedded with it; with `require_models`, only those not embedded while one of these model cards
        was unavailable (an item embedded without CLIP or OCR is redone once the model is there). One batched
        retrieve, no vectors."""
        self._check_open()
        required = set(require_models)
        pids = {point_id(i): i for i in item_ids}
        with_payload = schema_version is not None or bool(required)
        records = self._retrieve_all(list(pids), with_payload=with_payload, with_vectors=False)
        return {
            pids[r.id]
            for r in records
            if (schema_version is None or r.payload.get("schema_version") == schema_version)
            and not required & set(r.payload.get("models_unavailable") or ())
        }

    def relation_candidates(
        self, visual: np.ndarray | None, audio: SparseVec | None, k: int, exclude_ids: Iterable[str] = ()
    ) -> list[str]:
        """Item ids that may be related to an item with these candidate vectors: the `k` nearest by the pooled
        visual print and the `k` sharing most audio landmark hashes (one engine call; visual ones first)."""
        self._check_open()
        self._check_k(k)
        queries: list[tuple[str, np.ndarray | SparseVec]] = []
        if visual is not None:
            self._require(FP_VISUAL)
            problem = _vector_problem(visual, POOLED_DIM)
            if problem:
                raise StoreError("bad_query", f"{FP_VISUAL}: {problem}")
            queries.append((FP_VISUAL, np.asarray(visual, dtype=np.float32)))
        if audio is not None and audio.indices:
            self._require(FP_AUDIO)
            queries.append((FP_AUDIO, audio))
        results = self._search_batch(queries, k, filter_terms(None, extra_exclude=exclude_ids)) if queries else []
        return list(dict.fromkeys(h.item_id for hits in results for h in hits))

    def payloads(self, item_ids: Iterable[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """These payload fields of the stored items among `item_ids` (one batched retrieve, no vectors)."""
        self._check_open()
        pids = {point_id(i): i for i in item_ids}
        records = self._retrieve_all(list(pids), with_payload=list(fields), with_vectors=False)
        return {pids[r.id]: dict(r.payload) for r in records}

    def relation_groups(self, kinds: Iterable[str]) -> list[list[str]]:
        """Groups (sorted, >= 2 ids each) of items linked by the relations recorded at ingest (e.g. duplicate_of,
        remix_of), transitively; read from the payload, nothing recomputed."""
        self._check_open()
        kinds = list(kinds)
        if not kinds or any(k not in RELATION_KINDS for k in kinds):
            raise StoreError("bad_query", f"relation kinds must be among {list(RELATION_KINDS)}, got {kinds!r}")
        groups = _UnionFind()
        for records in self._scroll_pages(FUSED, _SCROLL_BATCH, ["item_id", *kinds], vectors=False):
            for r in records:
                for kind in kinds:
                    other = r.payload.get(kind)
                    if isinstance(other, str) and other:
                        groups.union(str(r.payload.get("item_id", "")), other)
        members: dict[str, list[str]] = defaultdict(list)
        for item_id in list(groups.parent):
            members[groups.find(item_id)].append(item_id)
        return sorted(sorted(g) for g in members.values() if len(g) >= 2)

    def set_payload(self, values: Mapping[str, Mapping[str, Any]]) -> int:
        """Set payload fields per item (`{item_id: {"semantic_id": [3, 17, 5]}}`), keeping the others; every
        item must exist and identity/guard fields (`item_id`, `schema_version`, `schema_seq`) are refused."""
        self._check_open()
        if not isinstance(values, Mapping):
            raise StoreError("bad_payload", "set_payload takes {item_id: {field: value}}")
        for item_id, fields in values.items():
            if not isinstance(item_id, str) or not isinstance(fields, Mapping) or not fields:
                raise StoreError("bad_payload", f"item {item_id!r}: fields must be a non-empty mapping")
            bad = sorted(k for k in fields if not isinstance(k, str) or k in RESERVED_PAYLOAD or k == CREATE_TOKEN)
            if bad:
                raise StoreError("bad_payload", f"item {item_id!r}: fields {bad} cannot be set")
            try:
                json.dumps(dict(fields), allow_nan=False)
            except (TypeError, ValueError) as e:
                raise StoreError("bad_payload", f"item {item_id!r}: not finite JSON ({type(e).__name__})") from e
        missing = sorted(set(values) - self.existing(list(values)))
        if missing:
            raise StoreError("unknown_item", f"no item(s) {missing[:10]} in {self._collection}")
        if values:
            self._set_payload([(point_id(i), dict(f)) for i, f in values.items()])
        return len(values)

    def iter_vectors(self, using: str, batch: int = 1000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Scroll (item ids, n×d array) of one named dense vector over every item that has it (e.g. `fused`
        for fitting semantic ids); order is the engine's, each item once."""
        self._check_open()
        self._check_using(using)
        self._check_k(batch)
        for ids, vectors in self._scroll_multi(using, batch):
            yield ids, np.stack(vectors).astype(np.float32, copy=False)

    def frame_vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored per-frame visual vectors (T×d, unit rows) of those items that have them."""
        self._check_open()
        self._require(FRAMES)
        pids = {point_id(i): i for i in item_ids}
        records = self._retrieve_all(list(pids), with_payload=False, with_vectors=[FRAMES])
        return {pids[r.id]: r.vectors[FRAMES] for r in records if FRAMES in r.vectors}

    def moment_inputs(self, item_ids: list[str]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """What moment search needs of some hits, in one retrieve: their payloads (segments, OCR lines, frame
        times; in the order given) and their per-frame visual vectors where stored."""
        self._check_open()
        pids = {point_id(i): i for i in item_ids}
        vectors: bool | list[str] = [FRAMES] if FRAMES in self.multivectors else False
        records = {pids[r.id]: r for r in self._retrieve_all(list(pids), with_payload=True, with_vectors=vectors)}
        payloads = [
            {k: v for k, v in records[i].payload.items() if k != CREATE_TOKEN} for i in item_ids if i in records
        ]
        frames = {i: r.vectors[FRAMES] for i, r in records.items() if r.vectors and FRAMES in r.vectors}
        return payloads, frames

    def _scroll_pages(self, using: str, batch: int, payload: list[str], vectors: bool = True) -> Iterator[list[Record]]:
        """Every page of points that have vector `using` (see `_scroll`), until the engine says there is no more."""
        offset: Any = None
        while True:
            records, offset = self._scroll(using, batch, offset, payload, vectors)
            if records:
                yield records
            if offset is None or not records:
                return

    def _scroll_multi(self, using: str, batch: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        for records in self._scroll_pages(using, batch, ["item_id"]):
            pairs = [(str(r.payload.get("item_id", "")), r.vectors[using]) for r in records if using in r.vectors]
            if pairs:
                yield [i for i, _ in pairs], [v for _, v in pairs]

    def optimize(self) -> None:
        """Build/merge index structures now (after a bulk load); a no-op where the engine does it itself."""
        self._check_open()
        self._optimize()

    def vector_storage(self) -> dict[str, VectorStorage]:
        """Per named vector: size, quantization and on-disk placement as the engine reports them."""
        self._check_open()
        return self._vector_storage()

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
    def _check_method(method: str) -> None:
        if method not in FUSION_METHODS:
            raise StoreError("bad_query", f"fusion must be one of {list(FUSION_METHODS)}, got {method!r}")

    @staticmethod
    def _prefetch_limit(k: int) -> int:
        return max(50, 4 * k)

    @staticmethod
    def _check_k(k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise StoreError("bad_query", f"k must be an integer >= 1, got {k!r}")

    def _require(self, name: str) -> None:
        if name not in self._aux:
            raise StoreError("unsupported", f"index {self._collection} has no {name!r} vectors")

    def _item_aux_vectors(self, item: ItemEmbedding) -> dict[str, Any]:
        """The item's auxiliary vectors this collection stores: fingerprint candidates and frames."""
        prints, frames = getattr(item, "prints", None), getattr(item, "frame_vectors", None)
        out: dict[str, Any] = {}
        if prints is not None:
            visual, audio = prints.candidates
            if FP_VISUAL in self._aux:
                out[FP_VISUAL] = np.asarray(visual, dtype=np.float32)
            if audio is not None and FP_AUDIO in self._aux:
                out[FP_AUDIO] = SparseVec.of(audio)
        if frames is not None and FRAMES in self._aux:
            out[FRAMES] = np.asarray(frames, dtype=np.float32)
        return out

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
        frames = getattr(item, "frame_vectors", None)
        if frames is not None:
            if "visual" not in self._dims:
                return "unknown_vector", f"vector {FRAMES!r} is not in this index (no visual vector)"
            problem = _multivector_problem(frames, self._dims["visual"])
            if problem:
                return "bad_vector", f"{FRAMES}: {problem}"
        return None

    def _retrieve_all(
        self, ids: list[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[Record]:
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
    def _upsert(self, points: list[PointData], insert_only: bool = False, guard_seq: int | None = None) -> None:
        """Write whole points; `insert_only` leaves existing ids untouched, atomically per point; `guard_seq`
        replaces an existing point only if its `schema_seq` is absent or <= guard_seq (atomically per point)."""

    @abc.abstractmethod
    def _delete(self, point_ids: list[str]) -> None: ...

    @abc.abstractmethod
    def _retrieve(
        self, point_ids: list[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[Record]:
        """Existing points among `point_ids` (absent ones are skipped, order not guaranteed)."""

    @abc.abstractmethod
    def _set_payload(self, values: list[tuple[str, dict[str, Any]]]) -> None:
        """Set these fields on these (existing) points, keeping their other fields."""

    @abc.abstractmethod
    def _scroll(
        self, using: str, limit: int, offset: Any, payload: list[str], vectors: bool = True
    ) -> tuple[list[Record], Any]:
        """One page of points that have vector `using`: records with these payload fields (and that vector
        unless `vectors` is false), and the next offset."""

    @abc.abstractmethod
    def _search(self, vector: np.ndarray, using: str, k: int, terms: FilterTerms) -> list[Hit]: ...

    @abc.abstractmethod
    def _search_batch(
        self, queries: list[tuple[str, np.ndarray | SparseVec]], k: int, terms: FilterTerms
    ) -> list[list[Hit]]:
        """Top-k per (named vector, dense or sparse query), one engine call."""

    @abc.abstractmethod
    def _fused(
        self, probes: list[Probe], k: int, prefetch_limit: int, terms: FilterTerms, method: FusionMethod
    ) -> list[Hit]:
        """One prefetch per probe (each filtered by `terms`), fused by `method` in the engine."""

    @abc.abstractmethod
    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]: ...

    @abc.abstractmethod
    def _count(self) -> int: ...

    @abc.abstractmethod
    def _optimize(self) -> None: ...

    @abc.abstractmethod
    def _vector_storage(self) -> dict[str, VectorStorage]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
