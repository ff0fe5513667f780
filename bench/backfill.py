"""Backfill throughput: the Ray Data job (`run_backfill`) vs. a naive sequential loop, same manifest, one run.

The loop is what a first script does: per row `ItemEmbedder.embed` (decode → transcribe → encode → fuse), then
`upsert([item])`. Each path fills a fresh index (and must store the same vectors); both are timed end to end
(model loads and actor start-up included, Ray cluster start excluded) and over the second half of the items
(pipeline full), which is the rate a backfill of millions of rows sees.
Usage: python bench/backfill.py [--repeat 3] [--encode-concurrency 1 2]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.results import command, publish  # noqa: E402
from embedder.config import ReelvecConfig, load_config  # noqa: E402
from embedder.pipeline import ItemEmbedder, embedding_spec  # noqa: E402
from serving.backfill import inspect_manifest, parse_row, run_backfill  # noqa: E402


def write_manifest(path: Path, repeat: int) -> list[str]:
    """The sample clips `repeat` times with distinct item ids (JSONL, absolute uris, metadata objects)."""
    clips = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    with open(path, "w") as f:
        for k in range(repeat):
            for c in clips:
                meta = {"hashtags": c["hashtags"], "creator_id": c["creator_id"], "created_at": c["created_at"]}
                row = {"item_id": f"{c['item_id']}-r{k}", "uri": str(ROOT / "samples/clips" / c["file"])}
                f.write(json.dumps({**row, "caption": c["caption"], "metadata": meta}) + "\n")
    return [f"{c['item_id']}-r{k}" for k in range(repeat) for c in clips]


def config(tmp: Path, name: str, **backfill: int) -> ReelvecConfig:
    env = {
        "REELVEC__DATA_DIR": str(tmp / name),
        "REELVEC__INDEX__PATH": str(tmp / name / "index"),
        **{f"REELVEC__BACKFILL__{k.upper()}": str(v) for k, v in backfill.items()},
    }
    return load_config(environ={**os.environ, **env})


@dataclass
class Run:
    """One timed path: wall time end to end and when each item finished (seconds from the start)."""

    label: str
    wall_s: float
    done_at: list[float]
    stage_s: dict[str, float]

    @property
    def items(self) -> int:
        return len(self.done_at)

    @property
    def startup_s(self) -> float:
        """Until the first item was stored: model loads, actor start-up, first batch."""
        return self.done_at[0] if self.done_at else self.wall_s

    @property
    def steady(self) -> float:
        """Items/s over the second half of the items, when the pipeline is full (start-up and fill excluded)."""
        half = len(self.done_at) // 2
        span = self.done_at[-1] - self.done_at[half] if len(self.done_at) > 2 else 0.0
        return (len(self.done_at) - 1 - half) / span if span > 0 else 0.0


def sequential(cfg: ReelvecConfig, manifest: Path) -> Run:
    """Naive loop, one item at a time: embed then upsert, optimize at the end."""
    from index import open_index

    info = inspect_manifest(manifest)
    t0 = time.perf_counter()
    emb = ItemEmbedder(cfg)
    spec = emb.spec
    index = open_index(cfg.index, spec.dims, spec.schema_version)
    done: list[float] = []
    try:
        for line in info.path.read_text().splitlines():
            item = parse_row(json.loads(line), info.path.parent)
            if index.upsert([emb.embed(item)]).written:
                done.append(time.perf_counter() - t0)
        index.optimize()
    finally:
        index.close()
        emb.close()
    return Run("sequential loop (ItemEmbedder.embed + upsert, one item at a time)", time.perf_counter() - t0, done, {})


def ray_job(cfg: ReelvecConfig, manifest: Path, label: str) -> Run:
    """`run_backfill` on the running cluster, recording when each row came back to the driver."""
    t0 = time.perf_counter()
    done: list[float] = []

    def seen(row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            done.append(time.perf_counter() - t0)

    report = run_backfill(cfg, manifest, progress=False, on_row=seen)
    assert report.written == len(done), report.to_json()
    return Run(label, report.wall_s, done, report.stage_s)


def same_vectors(a: ReelvecConfig, b: ReelvecConfig, item_id: str) -> bool:
    from index import open_index

    spec = embedding_spec(a)
    with (
        open_index(a.index, spec.dims, spec.schema_version) as ia,
        open_index(b.index, spec.dims, spec.schema_version) as ib,
    ):
        va, vb = ia.get(item_id).vectors, ib.get(item_id).vectors
    return set(va) == set(vb) and all(np.allclose(va[k], vb[k], atol=1e-5) for k in va)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="times the 16 sample clips appear (distinct ids)")
    ap.add_argument("--encode-concurrency", type=int, nargs="+", default=[1, 2], help="Ray runs to make")
    ap.add_argument("--decode-concurrency", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="rvbench-", dir="/tmp"))
    manifest = tmp / "manifest.jsonl"
    ids = write_manifest(manifest, args.repeat)
    n = len(ids)
    load_before = os.getloadavg()

    seq_cfg = config(tmp, "sequential")
    runs = [sequential(seq_cfg, manifest)]
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
    checks = []
    try:
        for enc in args.encode_concurrency:
            # Upserts as small as the batches, so items reach the driver (and its clock) as they finish.
            knobs = {"decode_concurrency": args.decode_concurrency, "encode_concurrency": enc}
            knobs |= {"batch_size": args.batch_size, "upsert_batch_size": args.batch_size}
            cfg = config(tmp, f"ray-enc{enc}", **knobs)
            label = f"Ray Data job (decode actors {args.decode_concurrency}, ASR/text actors {enc}, "
            label += f"batch {args.batch_size})"
            runs.append(ray_job(cfg, manifest, label))
            checks.append(all(same_vectors(seq_cfg, cfg, i) for i in ids[:: max(1, n // 4)]))
    finally:
        ray.shutdown()
    load_after = os.getloadavg()

    base = runs[0]
    header = (
        "| path | items | wall s | items/s end to end | vs. sequential | first item stored at s | items/s, 2nd half "
        "| vs. sequential |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.label} | {r.items} | {r.wall_s:.1f} | {r.items / r.wall_s:.2f} | "
        f"{(r.items / r.wall_s) / (base.items / base.wall_s):.2f}x | {r.startup_s:.1f} | {r.steady:.2f} | "
        f"{r.steady / base.steady:.2f}x |\n"
        for r in runs
    )
    stages = "".join(
        f"- {r.label}: per-stage seconds summed over items (stages overlap): "
        + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in r.stage_s.items())
        + "\n"
        for r in runs
        if r.stage_s
    )
    section = (
        f"\n## backfill — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · manifest of {n} rows (the 16 sample clips x {args.repeat}, distinct ids) · "
        f"{platform.machine()}, {os.cpu_count()} cores, device cpu, CLIP weights absent (modality off) · "
        f"Edge index per path · model loads and actor start-up included, Ray cluster start excluded · "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after · "
        f"stored vectors equal between paths: {all(checks)}\n\n" + header + body + "\n" + stages
    )
    shutil.rmtree(tmp, ignore_errors=True)
    publish("backfill", section, write=not args.no_write)


if __name__ == "__main__":
    main()
