"""The Ray Data stages of the backfill: each schedules one `embedder.pipeline` step over a batch of rows.

Every stage takes and returns `ROW_SCHEMA`: small status columns plus one pickled `embedder.pipeline.Work`
(emptied once the row leaves the pipeline). A stage never re-implements a step; it only unpickles the pending
rows' work, calls the step, drops the media no later stage needs, and turns failed work into failed rows.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import pickle
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embedder.config import ReelvecConfig
from embedder.decode import Decoder
from embedder.items import json_phrase
from embedder.pipeline import (
    EmbeddingSpec,
    Work,
    asr_step,
    decode_step,
    finish,
    load_optional,
    ocr_step,
    text_step,
    validate_step,
    visual_step,
)
from embedder.types import ItemEmbedding, MediaError, ReelvecError
from serving.backfill.ledger import clean_detail
from serving.manifest import ManifestInfo, csv_convert, json_object, parse_row

log = logging.getLogger(__name__)

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


def read_manifest(info: ManifestInfo, num_cpus: float, rows_per_block: int) -> Any:
    """The manifest as a Ray Dataset of raw rows (JSONL stays one text column so mixed types cannot break it)."""
    import ray.data

    path = str(info.path)
    # Ray's readers filter by extension (read_parquet drops `.pq` otherwise): accept exactly this file's.
    # The same CPU request as the normalize stage lets Ray Data fuse read and normalize into one task.
    # Blocks of about `rows_per_block` rows straight from the read, so decode batches pipeline through the stages
    # (a streaming repartition would do it too, but its task reserves a whole CPU that a small cluster lacks).
    blocks = max(1, math.ceil(info.rows / rows_per_block))
    opts = {"file_extensions": [info.path.suffix[1:]], "num_cpus": num_cpus, "override_num_blocks": blocks}
    if info.format == "jsonl":
        return ray.data.read_text(path, drop_empty_lines=True, **opts)
    if info.format == "csv":
        return ray.data.read_csv(path, convert_options=csv_convert(info.columns), **opts)
    return ray.data.read_parquet(path, **opts)


def _row(item_id: str, uri: str, status: str = "pending", **kw: Any) -> dict[str, Any]:
    base = {"stage": "", "reason": "", "detail": "", "timings": "", "work": b""}
    return {"item_id": item_id, "uri": uri, "status": status, **base, **kw}


def _failed(row: dict[str, Any], stage: str, reason: str, detail: str) -> None:
    row.update(status="failed", stage=stage, reason=reason, detail=clean_detail(detail), work=b"")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _call(ref: Any) -> Any:
    from serving.backfill.writer import call

    return call(ref)


def normalize_batch(
    batch: pa.Table, base_dir: str, fmt: str, roots: list[str], writer: Any, force: bool, cfg: ReelvecConfig
) -> pa.Table:
    """Raw manifest rows → pending rows through the shared item builder; a repeated id becomes a failed
    `manifest/duplicate_id` row; rows already stored in the target version become `skipped` (unless force)."""
    out: list[dict[str, Any]] = []
    for raw in batch.to_pylist():
        item_id, uri = str(raw.get("item_id") or ""), str(raw.get("uri") or "")
        try:
            if fmt == "jsonl":
                text = raw["text"]
                try:
                    raw = json_object(text, cfg.limits)
                except ValueError as e:
                    raise MediaError("bad_row", f"manifest line {json_phrase(e)}") from e
                item_id, uri = str(raw.get("item_id") or ""), str(raw.get("uri") or "")
            item = parse_row(raw, Path(base_dir), cfg.limits, [Path(r) for r in roots])
            out.append(_row(item.item_id, uri, work=pickle.dumps(Work(item), protocol=5)))
        except ReelvecError as e:
            row = _row(item_id, uri)
            _failed(row, "manifest", e.reason, e.detail)
            out.append(row)
    pending = [r["item_id"] for r in out if r["status"] == "pending"]
    if pending:
        duplicates, done = _call(writer.admit.remote(pending, force))
        seen_here: set[str] = set()
        for r in out:
            if r["status"] != "pending":
                continue
            if r["item_id"] in seen_here or r["item_id"] in duplicates:
                _failed(r, "manifest", "duplicate_id", "an earlier manifest row has the same item_id")
            elif r["item_id"] in done:
                r.update(status="skipped", work=b"")
            seen_here.add(r["item_id"])
    return _table(out)


class _Stage:
    """A `map_batches` UDF: `run` sees only pending rows' work; failed work becomes a failed row."""

    def run(self, works: list[Work]) -> None:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pending = [r for r in rows if r["status"] == "pending"]
        works: list[Work] = [pickle.loads(r["work"]) for r in pending]
        if pending:
            self.run(works)
        for r, w in zip(pending, works, strict=True):
            if w.ok:
                r["work"] = pickle.dumps(w, protocol=5)
            else:
                _failed(r, w.stage, w.error.reason, w.error.detail)  # type: ignore[union-attr]
        return _table(rows)


class DecodeStage(_Stage):
    """Validate, then decode with a long-lived `Decoder` (its worker process is reused across batches)."""

    def __init__(self, cfg: ReelvecConfig, keep_frames: bool, ocr_frames: bool) -> None:
        self.cfg = cfg
        self.keep_frames = keep_frames
        self.decoder = Decoder(cfg.decode, cfg.limits, ocr=cfg.ocr if ocr_frames else None)
        # Ray Data calls `__del__` only on a graceful pool shutdown; an actor that exits any other non-forced way
        # still runs atexit. A killed actor's worker sees EOF on its socket and exits on its own.
        atexit.register(self.decoder.close)

    def run(self, works: list[Work]) -> None:
        validate_step(works, self.cfg.limits)
        decode_step(self.decoder, works)
        if not self.keep_frames:
            for w in works:
                if w.decoded is not None:
                    w.decoded = replace(w.decoded, frames=_NO_FRAMES)

    def close(self) -> None:
        """Stop the decode worker process now (idempotent)."""
        self.decoder.close()
        atexit.unregister(self.decoder.close)

    def __del__(self) -> None:
        self.close()


class _ModelStage(_Stage):
    """Loads `cfg.models.<role>` once per actor."""

    role = ""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.cfg = cfg
        self.model: Any = load_optional(getattr(cfg.models, self.role), cfg)


class AsrStage(_ModelStage):
    role = "asr"

    def run(self, works: list[Work]) -> None:
        asr_step(self.model, works)
        for w in works:
            if w.decoded is not None:
                w.decoded = replace(w.decoded, audio=None)


class OcrStage(_ModelStage):
    role = "ocr"

    def run(self, works: list[Work]) -> None:
        ocr_step(self.model, works)
        for w in works:
            if w.decoded is not None:
                w.decoded = replace(w.decoded, ocr_frames=None)


class ClipStage(_ModelStage):
    role = "clip"

    def run(self, works: list[Work]) -> None:
        visual_step(self.model, works)
        for w in works:
            if w.decoded is not None:
                w.decoded = replace(w.decoded, frames=_NO_FRAMES)


class TextStage(_ModelStage):
    role = "text"

    def run(self, works: list[Work]) -> None:
        text_step(self.model, works, self.cfg.text.transcript_max_chars)


MODEL_STAGES: dict[str, type[_ModelStage]] = {"asr": AsrStage, "ocr": OcrStage, "clip": ClipStage, "text": TextStage}


def write_batch(batch: pa.Table, writer: Any, spec: EmbeddingSpec, unavailable: list[str]) -> pa.Table:
    """Fuse each pending item (`finish`) and upsert the batch through the writer actor; rows leave ok/failed."""
    rows = batch.to_pylist()
    pending = [r for r in rows if r["status"] == "pending"]
    works: list[Work] = [pickle.loads(r["work"]) for r in pending]
    embs: list[tuple[dict[str, Any], ItemEmbedding]] = []
    for row, result, w in zip(pending, finish(works, spec, unavailable), works, strict=True):
        if isinstance(result, ItemEmbedding):
            embs.append((row, result))
        else:
            _failed(row, result.stage, result.reason, result.detail)
            row["timings"] = json.dumps(w.timings)
    for row in rows:
        row["work"] = b""
    if embs:
        t0 = time.perf_counter()
        try:
            answer = _call(writer.upsert.remote([e for _, e in embs]))
            refused = {i: (reason, detail) for i, reason, detail in answer}
        except ReelvecError as e:  # the whole batch failed to write: each item is ledgered, the job goes on
            refused = {emb.item_id: (e.reason, e.detail) for _, emb in embs}
        except Exception:
            log.exception("index writer failed on a batch of %d items", len(embs))
            refused = {emb.item_id: ("write_failed", "the index writer failed on this batch") for _, emb in embs}
        write_ms = (time.perf_counter() - t0) * 1000 / len(embs)
        for row, emb in embs:
            row["timings"] = json.dumps({**emb.timings_ms, "write_ms": round(write_ms, 3)})
            if emb.item_id in refused:
                _failed(row, "write", *refused[emb.item_id])
            else:
                row["status"] = "ok"
    return _table(rows)
