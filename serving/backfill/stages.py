"""The Ray Data stages of the backfill: normalize (manifest rows → items), one generic `StepStage` per group of
graph steps, and write (fuse + one writer actor).

Every stage takes and returns `ROW_SCHEMA`: small status columns plus one pickled `embedder.work.Work` that
carries only the media the stages ahead of it still read (emptied once the row leaves the pipeline).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import pickle
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedder.config import ReelvecConfig
from embedder.graph import Graph, close_models, load_steps, run_steps
from embedder.items import json_phrase
from embedder.pipeline import EmbeddingSpec, finish
from embedder.types import ItemEmbedding, MediaError, ReelvecError
from embedder.work import MEDIA, Work
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


class StepStage:
    """The one Ray Data stage: a `map_batches` actor that loads its steps' models once and runs those steps of the
    graph over the pending rows' work; it then drops the media no later stage reads and turns failed work into
    failed rows. `steps` is one step, or several run in-process concurrently (`run_steps`)."""

    def __init__(self, cfg: ReelvecConfig, graph: Graph, steps: list[str], keep: list[str]) -> None:
        self.cfg, self.keep = cfg, keep
        self.graph = graph.only(steps)
        self.models = load_steps(self.graph, cfg)
        # Ray Data calls `__del__` only on a graceful pool shutdown; an actor that exits any other non-forced way
        # still runs atexit (the decoder's worker process). A killed actor's worker sees EOF and exits on its own.
        atexit.register(self.close)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pending = [r for r in rows if r["status"] == "pending"]
        works: list[Work] = [pickle.loads(r["work"]) for r in pending]
        if works:
            run_steps(self.graph, self.models, works, self.cfg)
        for r, w in zip(pending, works, strict=True):
            if w.ok:
                w.drop([m for m in MEDIA if m not in self.keep])
                r["work"] = pickle.dumps(w, protocol=5)
            else:
                _failed(r, w.stage, w.error.reason, w.error.detail)  # type: ignore[union-attr]
        return _table(rows)

    def close(self) -> None:
        """Release what the models hold (the decode worker process) now; idempotent."""
        close_models(self.models)

    def __del__(self) -> None:
        self.close()


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
            report = _call(writer.write.remote([e for _, e in embs]))
            refused = {f.item_id: (f.reason, f.detail) for f in report.failed}
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
