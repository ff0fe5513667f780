"""Batch backfill on Ray Data: manifest → decode → ASR / CLIP / text → fuse → one writer actor → index.

Resumable (rows already stored in the target version are skipped before decoding), never stopped by a bad
row (it goes to a JSONL failure ledger), and able to fill a new versioned collection while search keeps
serving the alias, then swap it. Every stage calls the helpers `ItemEmbedder` calls, so vectors match.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from embedder.cards import load_card
from embedder.config import ModelRef, ReelvecConfig, describe_errors
from embedder.decode import Decoder
from embedder.pipeline import (
    EmbeddingSpec,
    assemble,
    caption_text,
    embedding_spec,
    load_optional,
    transcript_text,
    validate_item,
)
from embedder.types import (
    ConfigError,
    DecodedMedia,
    ItemEmbedding,
    ItemInput,
    MediaError,
    ModelUnavailableError,
    ReelvecError,
    StoreError,
    Transcript,
)
from serving.schemas import ItemMetadata

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("item_id", "uri")
OPTIONAL_COLUMNS = ("caption", "metadata")
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
WRITER_NAMESPACE = "reelvec"

# Logical-CPU reservations per stage. Decoding runs in the Decoder's child process (outside Ray's accounting)
# and models mostly wait on each other in a pipeline, so small fractions keep every stage schedulable on a
# 2-core box without oversubscribing a real cluster by much.
_CPU_TASK = 0.1
_CPU_DECODE = 0.25
_CPU_MODEL = 0.5
_NORMALIZE_BATCH = 256  # rows per resume check (one `existing` round trip)


class ManifestError(ConfigError):
    """The manifest itself is unusable (missing, unreadable, wrong format, required column absent): exit 2."""


# --------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestInfo:
    """A manifest checked on the driver: absolute path, format, row count and columns."""

    path: Path
    format: str
    rows: int
    columns: tuple[str, ...]


def _missing(columns: list[str] | tuple[str, ...], path: Path, where: str) -> None:
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise ManifestError(
            "bad_manifest",
            f"{path}: {where} lacks required column(s) {absent}; expected {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
        )


def inspect_manifest(path: str | Path) -> ManifestInfo:
    """Check a manifest is readable and has the required columns, and count its rows (for the progress ETA)."""
    p = Path(path).expanduser().absolute()
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ManifestError("bad_manifest", f"{p}: unknown manifest format {p.suffix!r}; use .jsonl, .csv or .parquet")
    if not p.is_file():
        raise ManifestError("bad_manifest", f"manifest not found: {p}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            columns = tuple(pf.schema_arrow.names)
            _missing(columns, p, "schema")
            return ManifestInfo(p, fmt, pf.metadata.num_rows, columns)
        if fmt == "csv":
            return _inspect_csv(p)
        return _inspect_jsonl(p)
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
        raise ManifestError("bad_manifest", f"{p}: cannot read manifest as {fmt}: {e}") from e


def _json_object(line: str) -> dict[str, Any]:
    """One JSONL line as an object; the ValueError says why it is not one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _inspect_jsonl(p: Path) -> ManifestInfo:
    rows, columns = 0, ()
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if rows == 0:
                try:
                    columns = tuple(_json_object(line))
                except ValueError as e:
                    raise ManifestError("bad_manifest", f"{p}: line {lineno} is {e}; expected JSONL") from e
                _missing(columns, p, f"first row (line {lineno})")
            rows += 1
    return ManifestInfo(p, "jsonl", rows, columns)


def _inspect_csv(p: Path) -> ManifestInfo:
    import pyarrow.csv as pacsv

    with open(p, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    _missing(header, p, "header")
    rows = 0
    # Streaming parse of the whole file: a ragged or unparsable row fails here, before any work starts.
    with pacsv.open_csv(p, convert_options=_csv_convert(header)) as reader:
        for batch in reader:
            rows += batch.num_rows
    return ManifestInfo(p, "csv", rows, tuple(header))


def _csv_convert(header: list[str] | tuple[str, ...]) -> Any:
    import pyarrow.csv as pacsv

    # Every column as text: ids like "007" must not become integers, empty cells stay "".
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False)


def read_manifest(info: ManifestInfo) -> Any:
    """The manifest as a Ray Dataset of raw rows (JSONL stays one text column so mixed types cannot break it)."""
    import ray.data

    path = str(info.path)
    # Ray's readers filter by extension (read_parquet drops `.pq` otherwise): accept exactly this file's.
    # The same CPU request as the normalize stage lets Ray Data fuse read and normalize into one task.
    opts = {"file_extensions": [info.path.suffix[1:]], "num_cpus": _CPU_TASK}
    if info.format == "jsonl":
        return ray.data.read_text(path, drop_empty_lines=True, **opts)
    if info.format == "csv":
        return ray.data.read_csv(path, convert_options=_csv_convert(info.columns), **opts)
    return ray.data.read_parquet(path, **opts)


def _plain(v: Any) -> Any:
    """Arrow/numpy values → plain JSON-able Python (parquet structs, lists and scalars)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _metadata(raw: dict[str, Any]) -> ItemMetadata:
    """The row's metadata as the upload endpoint reads it (`ItemMetadata`), so both paths store the same payload.

    `metadata` may be a JSON string or an object; hashtags, creator_id and created_at may also be top-level
    columns (a flat CSV), and hashtags a space- or comma-separated string.
    """
    meta = raw.get("metadata")
    if meta is None or (isinstance(meta, str) and not meta.strip()):
        meta = {}
    elif isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise MediaError("bad_metadata", f"metadata is not valid JSON: {e}") from e
    meta = _plain(meta)
    if not isinstance(meta, dict):
        raise MediaError("bad_metadata", f"metadata must be a JSON object, got {type(meta).__name__}")
    for key in ("hashtags", "creator_id", "created_at"):
        if key not in meta and raw.get(key) not in (None, ""):
            meta[key] = _plain(raw[key])
    tags = meta.get("hashtags")
    if isinstance(tags, str):
        meta["hashtags"] = json.loads(tags) if tags.lstrip().startswith("[") else tags.replace(",", " ").split()
    try:
        return ItemMetadata.model_validate(meta)
    except ValidationError as e:
        raise MediaError("bad_metadata", f"metadata has the wrong shape: {describe_errors(e.errors())}") from e


def parse_row(raw: dict[str, Any], base_dir: Path) -> ItemInput:
    """One manifest row → ItemInput; relative uris resolve against `base_dir`, URLs are refused (MediaError)."""
    item_id = raw.get("item_id")
    if item_id is None:
        raise MediaError("bad_item_id", "row has no item_id")
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise MediaError("bad_uri", "row has no uri")
    uri = uri.strip()
    scheme = urlparse(uri).scheme
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise MediaError("bad_uri", f"uri must be a local file path, got a {scheme}: URL ({uri[:200]})")
    path = Path(uri).expanduser()
    meta = _metadata(raw)
    caption = raw.get("caption")
    return ItemInput(
        item_id=str(item_id),
        media=os.path.normpath(path if path.is_absolute() else base_dir / path),
        caption="" if caption is None else str(caption),
        hashtags=list(meta.hashtags),
        creator_id=meta.creator_id,
        created_at=meta.created_at,
        metadata=dict(meta.attributes),
    )


# ------------------------------------------------------------------------------------------------ row stream

# Every stage takes and returns this schema: small status columns plus one pickled `_Work` (empty once done).
ROW_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("uri", pa.string()),
        ("status", pa.string()),  # pending | ok | skipped | failed
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("timings", pa.string()),  # JSON {stage_ms: ms}, set when the row leaves the pipeline
        ("work", pa.large_binary()),
    ]
)
_NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)


@dataclass
class _Work:
    """What one item carries between stages; frames and audio are dropped once their model has used them."""

    item: ItemInput
    decoded: DecodedMedia | None = None
    transcript: Transcript = field(default_factory=Transcript.empty)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _row(item_id: str, uri: str, status: str = "pending", **kw: Any) -> dict[str, Any]:
    base = {"stage": "", "reason": "", "detail": "", "timings": "", "work": b""}
    return {"item_id": item_id, "uri": uri, "status": status, **base, **kw}


def _fail(row: dict[str, Any], stage: str, e: BaseException) -> None:
    if isinstance(e, ReelvecError):
        reason, detail = e.reason, e.detail
    else:  # an unexpected error is still one item's failure, never the job's
        log.exception("unexpected error in stage %s for item %s", stage, row["item_id"])
        reason, detail = "internal_error", f"{type(e).__name__}: {e}"
    row.update(status="failed", stage=stage, reason=reason, detail=detail[:2000], work=b"")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


class _Stage:
    """A `map_batches` UDF: `process` sees only pending rows (with their unpickled work); others pass through."""

    def process(self, rows: list[dict[str, Any]], works: list[_Work]) -> None:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pending = [r for r in rows if r["status"] == "pending"]
        works = [pickle.loads(r["work"]) for r in pending]
        if pending:
            self.process(pending, works)
        for r, w in zip(pending, works, strict=True):
            if r["status"] == "pending":
                r["work"] = pickle.dumps(w, protocol=5)
        return _table(rows)


def normalize_batch(batch: pa.Table, base_dir: str, fmt: str, writer: Any, force: bool) -> pa.Table:
    """Raw manifest rows → pending rows; rows already in the target version become `skipped` (unless force)."""
    out: list[dict[str, Any]] = []
    for raw in batch.to_pylist():
        item_id, uri = str(raw.get("item_id") or ""), str(raw.get("uri") or "")
        try:
            if fmt == "jsonl":
                text = raw["text"]
                try:
                    raw = _json_object(text)
                except ValueError as e:
                    raise MediaError("bad_row", f"{e}: {text[:200]}") from e
                item_id, uri = str(raw.get("item_id") or ""), str(raw.get("uri") or "")
            item = parse_row(raw, Path(base_dir))
            out.append(_row(item.item_id, str(item.media), work=pickle.dumps(_Work(item), protocol=5)))
        except Exception as e:
            row = _row(item_id, uri)
            _fail(row, "manifest", e)
            out.append(row)
    if not force:
        ids = [r["item_id"] for r in out if r["status"] == "pending"]
        done = set(_call(writer.existing.remote(ids))) if ids else set()
        for r in out:
            if r["status"] == "pending" and r["item_id"] in done:
                r.update(status="skipped", work=b"")
    return _table(out)


class DecodeStage(_Stage):
    """Validate then decode with a long-lived `Decoder` (its worker process is reused across batches)."""

    def __init__(self, cfg: ReelvecConfig, keep_frames: bool) -> None:
        self.cfg = cfg
        self.keep_frames = keep_frames
        self.decoder = Decoder(cfg.decode, cfg.limits)

    def process(self, rows: list[dict[str, Any]], works: list[_Work]) -> None:
        for row, w in zip(rows, works, strict=True):
            stage = "validate"
            try:
                validate_item(w.item, self.cfg.limits)
                stage = "decode"
                t0 = time.perf_counter()
                w.decoded = self.decoder.decode(w.item.media)
                w.timings["decode_ms"] = (time.perf_counter() - t0) * 1000
                if not self.keep_frames:
                    w.decoded.frames = _NO_FRAMES
            except Exception as e:
                _fail(row, stage, e)

    def __del__(self) -> None:
        self.decoder.close()


class AsrStage(_Stage):
    """Transcribe each item's audio (faster-whisper), then drop the audio."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.asr = load_optional(cfg.models.asr, cfg)

    def process(self, rows: list[dict[str, Any]], works: list[_Work]) -> None:
        for row, w in zip(rows, works, strict=True):
            assert w.decoded is not None
            t0 = time.perf_counter()
            try:
                w.transcript = self.asr.transcribe(w.decoded.audio) if self.asr else Transcript.empty()
            except Exception as e:
                _fail(row, "asr", e)
            w.timings["asr_ms"] = (time.perf_counter() - t0) * 1000
            w.decoded.audio = None
            if self.asr is not None:
                w.models[self.asr.card.id] = self.asr.card.version


class ClipStage(_Stage):
    """One CLIP call per batch: frames of every item batched together, mean-pooled per item."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.clip = load_optional(cfg.models.clip, cfg)

    def process(self, rows: list[dict[str, Any]], works: list[_Work]) -> None:
        if self.clip is not None:
            t0 = time.perf_counter()
            try:
                vis = self.clip.encode_frames([w.decoded.frames for w in works])  # type: ignore[union-attr]
            except Exception as e:
                for row in rows:
                    _fail(row, "clip", e)
                return
            share = (time.perf_counter() - t0) * 1000 / len(works)
            for i, w in enumerate(works):
                w.vectors["visual"] = vis[i]
                w.timings["clip_ms"] = share
                w.models[self.clip.card.id] = self.clip.card.version
        for w in works:
            w.decoded.frames = _NO_FRAMES  # type: ignore[union-attr]


class TextStage(_Stage):
    """One text-encoder call per batch over every caption and transcript, as `ItemEmbedder.embed_batch` does."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.cfg = cfg
        self.text = load_optional(cfg.models.text, cfg)

    def process(self, rows: list[dict[str, Any]], works: list[_Work]) -> None:
        if self.text is None:
            return
        texts: list[tuple[int, str, str]] = []
        for i, w in enumerate(works):
            if cap := caption_text(w.item):
                texts.append((i, "caption", cap))
            if tr := transcript_text(w.transcript, self.cfg.text.transcript_max_chars):
                texts.append((i, "transcript", tr))
        t0 = time.perf_counter()
        try:
            enc = self.text.encode([t for _, _, t in texts], kind="document")
        except Exception as e:
            for row in rows:
                _fail(row, "text", e)
            return
        share = (time.perf_counter() - t0) * 1000 / len(works)
        for n, (i, modality, _) in enumerate(texts):
            works[i].vectors[modality] = enc[n]
        for w in works:
            w.timings["text_ms"] = share
            w.models[self.text.card.id] = self.text.card.version


def write_batch(batch: pa.Table, writer: Any, spec: EmbeddingSpec) -> pa.Table:
    """Fuse each pending item (`assemble`) and upsert the batch through the writer actor; rows leave as ok/failed."""
    rows = batch.to_pylist()
    embs: list[tuple[dict[str, Any], ItemEmbedding]] = []
    for row in rows:
        if row["status"] != "pending":
            row["work"] = b""
            continue
        w: _Work = pickle.loads(row["work"])
        row["work"] = b""
        try:
            assert w.decoded is not None
            emb = assemble(w.item, w.decoded, w.transcript, w.vectors, spec, w.models, w.timings)
            embs.append((row, emb))
        except Exception as e:
            _fail(row, "fuse", e)
            row["timings"] = json.dumps(w.timings)
    if embs:
        t0 = time.perf_counter()
        try:
            refused = {i: (reason, detail) for i, reason, detail in _call(writer.upsert.remote([e for _, e in embs]))}
        except Exception as e:  # the whole batch failed to write: each item goes to the ledger, the job goes on
            refused = {emb.item_id: ("write_failed", f"{type(e).__name__}: {e}") for _, emb in embs}
        share = (time.perf_counter() - t0) * 1000 / len(embs)
        for row, emb in embs:
            row["timings"] = json.dumps({**emb.timings_ms, "write_ms": share})
            if emb.item_id in refused:
                reason, detail = refused[emb.item_id]
                row.update(status="failed", stage="write", reason=reason, detail=detail[:2000])
            else:
                row["status"] = "ok"
    return _table(rows)


# ---------------------------------------------------------------------------------------------------- writer


def _call(ref: Any) -> Any:
    """`ray.get` that re-raises a reelvec error from the remote side as itself (not wrapped in RayTaskError)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ReelvecError):
            raise e.cause from None
        raise


def writer_name(cfg: ReelvecConfig) -> str:
    """Name of the writer actor for an index: one backfill per index per cluster."""
    ix = cfg.index
    where = ix.url if ix.backend == "qdrant" else str(Path(ix.path).absolute())
    return "backfill-writer-" + hashlib.sha256(f"{ix.backend}|{where}|{ix.collection}".encode()).hexdigest()[:12]


class BackfillWriter:
    """The only opener of the index during a backfill (Qdrant Edge allows one process per version); serial calls."""

    def __init__(self, cfg: ReelvecConfig, dims: dict[str, int], schema_version: str, version: str | None) -> None:
        from index import open_index

        self.cfg = cfg
        self.schema_version = schema_version
        # Kept and raised by `version()`: an error raised here would reach the driver as an opaque ActorDiedError.
        self.error: ReelvecError | None = None
        deadline = time.monotonic() + cfg.index.timeout_s
        while True:
            try:
                self.index = open_index(cfg.index, dims, schema_version, version=version)
                break
            except StoreError as e:
                # A killed run's writer may still be exiting and holding the lock; wait for it briefly.
                if e.reason != "locked" or time.monotonic() > deadline:
                    self.error = e
                    return
                time.sleep(0.5)
            except ReelvecError as e:
                self.error = e
                return
        # A version named after this schema only ever holds this schema's vectors; any other (a custom
        # --target-version, or an alias left on an older schema) may hold stale ones, so resume checks payloads.
        self.check_schema = self.index.version != schema_version

    def version(self) -> str:
        """The version this writer holds open (raises the open error, if opening failed)."""
        if self.error is not None:
            raise self.error
        return str(self.index.version)

    def existing(self, ids: list[str]) -> list[str]:
        """The ids already stored in this version with the current embedding schema (resume skips them)."""
        return sorted(self.index.existing(ids, self.schema_version if self.check_schema else None))

    def upsert(self, items: list[ItemEmbedding]) -> list[tuple[str, str, str]]:
        """Write one batch (flushed by the index); returns (item_id, reason, detail) for items it refused."""
        report = self.index.upsert(items)
        return [(f.item_id, f.reason, f.detail) for f in report.failed]

    def count(self) -> int:
        return int(self.index.count())

    def optimize(self) -> None:
        self.index.optimize()

    def swap_alias(self) -> None:
        from index import set_active_version

        set_active_version(self.cfg.index, self.index.version)

    def alias(self) -> str | None:
        from index import active_version

        return active_version(self.cfg.index)

    def close(self) -> None:
        if self.error is None:
            self.index.close()


# ---------------------------------------------------------------------------------------------------- ledger


class Ledger:
    """Failure ledger: one JSON line per bad row (item_id, uri, stage, reason, detail), flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Truncated per run: failed rows are retried by every run, so the file is this run's complete list.
        self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115 — closed in `close`

    def write(self, row: dict[str, Any]) -> None:
        rec = {k: row[k] for k in ("item_id", "uri", "stage", "reason", "detail")}
        self._f.write(json.dumps({**rec, "ts": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class BackfillReport:
    """What a run did: counts, failures by stage/reason, throughput, per-stage time, version and alias."""

    manifest: str
    version: str
    schema_version: str
    total: int
    written: int = 0
    skipped: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "stage/reason" -> count
    max_failures: int = 0
    ledger: str = ""
    wall_s: float = 0.0
    optimize_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)  # summed per-item seconds (stages overlap)
    index_count: int | None = None
    alias_version: str | None = None
    swapped: bool = False
    unavailable_models: list[str] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        """Items embedded and written per second of wall time (skipped rows excluded)."""
        return self.written / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed > self.max_failures else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "version": self.version,
            "schema_version": self.schema_version,
            "total": self.total,
            "written": self.written,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "max_failures": self.max_failures,
            "ledger": self.ledger,
            "wall_s": round(self.wall_s, 3),
            "items_per_s": round(self.items_per_s, 3),
            "optimize_s": round(self.optimize_s, 3),
            "stage_s": {k: round(v, 3) for k, v in self.stage_s.items()},
            "index_count": self.index_count,
            "alias_version": self.alias_version,
            "swapped": self.swapped,
            "unavailable_models": self.unavailable_models,
            "exit_code": self.exit_code,
        }

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        ok = self.exit_code == 0
        head = Text(
            f"backfill {'done' if ok else 'FAILED'}: {self.written} written, {self.skipped} skipped (already "
            f"indexed), {self.failed} failed of {self.total} rows in {self.wall_s:.1f} s "
            f"({self.items_per_s:.2f} items/s)",
            style="bold green" if ok else "bold red",
        )
        info = Table.grid(padding=(0, 2))
        info.add_row("version", f"{self.version} (schema {self.schema_version})")
        alias = f"{self.alias_version}" + (" (swapped by this run)" if self.swapped else "")
        info.add_row("alias", alias)
        info.add_row("index count", str(self.index_count))
        if self.failed:
            info.add_row("ledger", f"{self.ledger} (max failures {self.max_failures})")
        if self.unavailable_models:
            info.add_row("modality off", ", ".join(self.unavailable_models))
        stages = Table("stage", "total s", "ms/item", title="per-stage time (summed over items; stages overlap)")
        n = max(self.written, 1)
        for k, v in self.stage_s.items():
            stages.add_row(k.removesuffix("_ms"), f"{v:.2f}", f"{v * 1000 / n:.1f}")
        stages.add_row("optimize", f"{self.optimize_s:.2f}", "-")
        parts: list[Any] = [head, info, stages]
        if self.failures:
            ft = Table("stage/reason", "count", title="failures")
            for k, v in sorted(self.failures.items(), key=lambda kv: -kv[1]):
                ft.add_row(k, str(v))
            parts.append(ft)
        return Group(*parts)


# ------------------------------------------------------------------------------------------------------- run


def _absolute(cfg: ReelvecConfig) -> ReelvecConfig:
    """Copy of cfg with every path absolute: Ray workers need not share the driver's working directory."""
    c = cfg.model_copy(deep=True)
    c.data_dir = Path(c.data_dir).expanduser().absolute()
    c.models.models_dir = Path(c.models.models_dir).expanduser().absolute()
    c.models.cards_dir = Path(c.models.cards_dir).expanduser().absolute()
    c.index.path = Path(c.index.path).expanduser().absolute()
    return c


def _available(ref: ModelRef, cfg: ReelvecConfig) -> bool:
    """Whether a model's weights are present, checked on the driver without loading them."""
    try:
        load_card(ref.card, cfg.models.cards_dir).resolve(cfg.models.models_dir)
        return True
    except ModelUnavailableError as e:
        if ref.required:
            raise
        log.warning(
            "MODEL UNAVAILABLE: %s — its modality is switched off for this whole backfill. %s", ref.card, e.detail
        )
        return False


def build_pipeline(
    cfg: ReelvecConfig, info: ManifestInfo, spec: EmbeddingSpec, writer: Any, force: bool, models: dict[str, bool]
) -> Any:
    """The Ray Data plan: read → normalize/resume → decode (actors) → ASR / CLIP / text (actors) → write."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    bf = cfg.backfill
    ds = read_manifest(info)
    ds = ds.map_batches(
        normalize_batch,
        batch_format="pyarrow",
        batch_size=_NORMALIZE_BATCH,
        fn_kwargs={"base_dir": str(info.path.parent), "fmt": info.format, "writer": writer, "force": force},
        num_cpus=_CPU_TASK,
    )
    # A map task handles whole input blocks, so a one-block manifest would run the whole job in one decode
    # actor, one batch after another; streaming repartition cuts it into batch-sized blocks that pipeline.
    ds = ds.repartition(target_num_rows_per_block=bf.batch_size)
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"cfg": cfg, "keep_frames": models["clip"]},
        batch_format="pyarrow",
        batch_size=bf.batch_size,
        compute=ActorPoolStrategy(size=bf.decode_concurrency),
        num_cpus=_CPU_DECODE,
    )
    model_stages: list[tuple[str, type[_Stage]]] = [("asr", AsrStage), ("clip", ClipStage), ("text", TextStage)]
    for name, stage in model_stages:
        if not models[name]:
            continue
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_format="pyarrow",
            batch_size=bf.batch_size,
            compute=ActorPoolStrategy(size=bf.encode_concurrency),
            num_cpus=_CPU_MODEL,
            num_gpus=bf.num_gpus,
        )
    return ds.map_batches(
        write_batch,
        batch_format="pyarrow",
        batch_size=bf.upsert_batch_size,
        fn_kwargs={"writer": writer, "spec": spec},
        num_cpus=_CPU_TASK,
        compute=TaskPoolStrategy(size=2),
    )


def _start_ray(address: str | None, cfg: ReelvecConfig) -> bool:
    """Connect to `address` or start a local Ray; returns whether this call initialized Ray (and must shut it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        bf = cfg.backfill
        need = _CPU_TASK * 3 + _CPU_DECODE * bf.decode_concurrency + _CPU_MODEL * 3 * bf.encode_concurrency
        # Logical CPUs are scheduling tokens: never fewer than the pipeline reserves, so a small box still runs.
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need) + 1), include_dashboard=False, log_to_driver=False)
    return True


def _start_writer(cfg: ReelvecConfig, spec: EmbeddingSpec, version: str | None) -> Any:
    import ray

    actor = ray.remote(BackfillWriter).options(
        name=writer_name(cfg), namespace=WRITER_NAMESPACE, num_cpus=0, max_restarts=0, max_concurrency=1
    )
    deadline = time.monotonic() + cfg.index.timeout_s
    while True:
        try:
            writer = actor.remote(cfg, spec.dims, spec.schema_version, version)
            break
        except ValueError as e:  # the name is taken: another backfill on this index, or a killed one exiting
            if time.monotonic() > deadline:
                raise StoreError("locked", f"another backfill is writing to this index ({e})") from e
            time.sleep(0.5)
    try:
        version = _call(writer.version.remote())
    except ReelvecError:
        ray.kill(writer)
        raise
    except ray.exceptions.RayError as e:
        ray.kill(writer)
        raise StoreError("unreachable", f"index writer failed to start: {e}") from e
    log.info("index writer holds version %s", version)
    return writer


def _stop_writer(writer: Any) -> None:
    import ray

    try:
        _call(writer.close.remote())
    except Exception as e:  # closing is best effort; the actor is killed either way
        log.warning("index writer close failed: %s", e)
    ray.kill(writer, no_restart=True)
    # Wait until the actor is really gone so the path's lock is free when we return.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(writer.version.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.2)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="backfill", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _unwrapped(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Re-raise a job-level Ray failure as a reelvec error (one clear CLI line instead of a Ray traceback)."""
    import ray

    try:
        yield from rows
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ReelvecError):
            raise cause from e
        raise ReelvecError("backfill_failed", f"the Ray Data job failed: {e}") from e


def iter_results(ds: Any) -> Iterator[dict[str, Any]]:
    """Stream the final status rows as Ray Data produces them."""
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.drop_columns(["work"]).to_pylist()


def run_backfill(
    cfg: ReelvecConfig,
    manifest: str | Path,
    *,
    ledger: str | Path | None = None,
    max_failures: int | None = None,
    force: bool = False,
    target_version: str | None = None,
    swap_alias: bool = False,
    address: str | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BackfillReport:
    """(Re-)embed every manifest row into the target index version; see the module docstring.

    `on_row` is called on the driver for every finished row (tests use it to act mid-run).
    """
    import ray
    from ray.data import DataContext

    t_start = time.perf_counter()
    cfg = _absolute(cfg)
    info = inspect_manifest(manifest)
    spec = embedding_spec(cfg)
    models = {name: _available(getattr(cfg.models, name), cfg) for name in ("asr", "clip", "text")}
    ledger_path = Path(ledger).expanduser().absolute() if ledger else cfg.data_dir / "backfill" / "ledger.jsonl"
    report = BackfillReport(
        manifest=str(info.path),
        version="",
        schema_version=spec.schema_version,
        total=info.rows,
        max_failures=cfg.backfill.max_failures if max_failures is None else max_failures,
        ledger=str(ledger_path),
        unavailable_models=[getattr(cfg.models, k).card for k, ok in models.items() if not ok],
    )
    started = _start_ray(address, cfg)
    ctx = DataContext.get_current()
    saved_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # our own bar counts items; Ray's per-operator bars count blocks
    writer: Any = None
    sink: Ledger | None = None
    bar: Any = None
    failures: Counter[str] = Counter()
    stage_ms: Counter[str] = Counter()
    try:
        writer = _start_writer(cfg, spec, target_version)
        sink = Ledger(ledger_path)  # opened (and truncated) only once the index is ours
        bar = _progress_bar(info.rows, progress)
        report.version = _call(writer.version.remote())
        log.info("backfill of %s (%d rows) into version %s", info.path, info.rows, report.version)
        if target_version is None and report.version != spec.schema_version:
            log.warning(
                "the alias serves version %s but this config embeds schema %s: items are re-embedded into the "
                "live version and mix with older vectors; use --target-version NEW --swap-alias for an upgrade",
                report.version,
                spec.schema_version,
            )
        ds = build_pipeline(cfg, info, spec, writer, force, models)
        for row in _unwrapped(iter_results(ds)):
            status = row["status"]
            if status == "ok":
                report.written += 1
                stage_ms.update(json.loads(row["timings"] or "{}"))
            elif status == "skipped":
                report.skipped += 1
            else:
                report.failed += 1
                failures[f"{row['stage']}/{row['reason']}"] += 1
                sink.write(row)
            bar.update(1)
            bar.set_postfix(ok=report.written, skipped=report.skipped, failed=report.failed, refresh=False)
            if on_row is not None:
                on_row(row)
        t0 = time.perf_counter()
        _call(writer.optimize.remote())
        report.optimize_s = time.perf_counter() - t0
        report.index_count = _call(writer.count.remote())
        report.failures = dict(failures)
        report.stage_s = {k: v / 1000 for k, v in stage_ms.items()}
        if swap_alias:
            if report.exit_code == 0:
                _call(writer.swap_alias.remote())
                report.swapped = True
            else:
                log.warning("alias NOT swapped: %d failures > max_failures=%d", report.failed, report.max_failures)
        report.alias_version = _call(writer.alias.remote())
    finally:
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
        if writer is not None:
            _stop_writer(writer)
        ctx.enable_progress_bars = saved_bars
        report.wall_s = time.perf_counter() - t_start
        if started:
            ray.shutdown()
    return report
