"""Backfill throughput: the Ray Data job (`run_backfill`) vs. `reelvec ingest`'s path vs. a naive loop, same rows.

- ingest: the honest sequential path — `ItemEmbedder.embed_batch` over `backfill.batch_size` items (each step
  batched across them) and one upsert per batch, as `reelvec ingest` does;
- naive: one item at a time through each model (`ItemEmbedder.embed`), one upsert per item;
- Ray: `run_backfill` in one Ray session started here (its start-up time is counted and shown), pools sized from
  the free cores, stages streaming so decode starts while the models load.
Each path fills a fresh index (stored vectors are compared) and is timed end to end (model loads included), by
its time to the first stored item, and over the second half of the items (pipeline full: the steady rate).
Usage: python bench/backfill.py [--items 48|256] [--skip-naive]   (writes its section of bench/RESULTS.md)
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

from bench.cputree import TreeCpu  # noqa: E402
from bench.results import command, publish  # noqa: E402
from embedder.config import ReelvecConfig, load_config  # noqa: E402
from embedder.pipeline import ItemEmbedder, embedding_spec  # noqa: E402
from embedder.types import ItemEmbedding, ItemInput  # noqa: E402
from serving.backfill import run_backfill  # noqa: E402
from serving.manifest import parse_row  # noqa: E402

SAMPLES = ROOT / "samples"
# Issue 1/5 (round 3): the Ray job's end-to-end speed-up over the ingest path, by manifest size; first item ≤ 20 s.
TARGETS = {48: 1.0, 256: 1.3}
FIRST_ITEM_S = 20.0


def write_manifest(path: Path, n: int) -> list[str]:
    """`n` rows cycling over the sample clips under new ids (JSONL, absolute uris, metadata objects)."""
    clips = [json.loads(x) for x in (SAMPLES / "clips/captions.jsonl").read_text().splitlines() if x.strip()]
    ids = []
    with open(path, "w") as f:
        for k in range(n):
            c = clips[k % len(clips)]
            meta = {"hashtags": c["hashtags"], "creator_id": c["creator_id"], "created_at": c["created_at"]}
            row = {"item_id": f"{c['item_id']}-r{k // len(clips)}", "uri": str(SAMPLES / "clips" / c["file"])}
            f.write(json.dumps({**row, "caption": c["caption"], "metadata": meta}) + "\n")
            ids.append(row["item_id"])
    return ids


def config(tmp: Path, name: str) -> ReelvecConfig:
    env = {
        "REELVEC__DATA_DIR": str(tmp / name),
        "REELVEC__INDEX__PATH": str(tmp / name / "index"),
        "REELVEC__BACKFILL__ALLOWED_ROOTS": json.dumps([str(SAMPLES)]),
    }
    return load_config(environ={**os.environ, **env})


@dataclass
class Run:
    """One timed path: wall time end to end and when each item was stored (seconds from the start)."""

    label: str
    wall_s: float
    done_at: list[float]
    note: str = ""
    cpu_s: float = 0.0  # user + sys of the whole process tree (Ray's workers and decode workers included)

    @property
    def items(self) -> int:
        return len(self.done_at)

    @property
    def rate(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def first_s(self) -> float:
        """Until the first item was stored: model loads, actor start-up, first batch."""
        return self.done_at[0] if self.done_at else self.wall_s

    @property
    def steady(self) -> float:
        """Items/s over the second half of the items, when the pipeline is full (start-up and fill excluded)."""
        half = len(self.done_at) // 2
        span = self.done_at[-1] - self.done_at[half] if len(self.done_at) > 2 else 0.0
        return (len(self.done_at) - 1 - half) / span if span > 0 else 0.0


def read_items(manifest: Path, cfg: ReelvecConfig) -> list[ItemInput]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [parse_row(r, manifest.parent, cfg.limits, cfg.backfill.allowed_roots) for r in rows]


def in_process(cfg: ReelvecConfig, manifest: Path, batch: int, label: str) -> Run:
    """`ItemEmbedder.embed_batch` over `batch` items at a time, one owner write per batch, as `reelvec ingest`."""
    from serving.owner import IndexOwner

    with TreeCpu() as cpu:
        t0 = time.perf_counter()
        items = read_items(manifest, cfg)
        emb = ItemEmbedder(cfg)
        owner = IndexOwner.open(cfg, emb.spec)
        done: list[float] = []
        try:
            for s in range(0, len(items), batch):
                good = [r for r in emb.embed_batch(items[s : s + batch]) if isinstance(r, ItemEmbedding)]
                now = time.perf_counter() - t0
                done += [now] * len(owner.write(good).written)
            owner.index.optimize()
        finally:
            owner.close()
            emb.close()
        wall = time.perf_counter() - t0
    return Run(label, wall, done, cpu_s=cpu.seconds)


def ray_job(cfg: ReelvecConfig, manifest: Path, tmp: Path) -> Run:
    """One Ray session started here (counted), then `run_backfill`, recording when each row reached the driver."""
    import ray

    cpu = TreeCpu()
    cpu.__enter__()
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
    init_s = time.perf_counter() - t0
    done: list[float] = []

    def seen(row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            done.append(time.perf_counter() - t0)

    try:
        report = run_backfill(cfg, manifest, progress=False, on_row=seen)
        wall = time.perf_counter() - t0
    finally:
        cpu.__exit__(None, None, None)  # before Ray's processes go: their CPU time is counted
        ray.shutdown()
    assert report.written == len(done), report.to_json()
    label = "Ray Data backfill (one Ray session, pools sized from free cores)"
    stages = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in report.stage_s.items())
    note = f"ray.init {init_s:.1f} s (included); per-stage seconds summed over items (stages overlap): {stages}"
    return Run(label, wall, done, note, cpu.seconds)


def same_vectors(a: ReelvecConfig, b: ReelvecConfig, ids: list[str]) -> bool:
    from index import open_index

    spec = embedding_spec(a)
    with (
        open_index(a.index, spec.dims, spec.schema_version) as ia,
        open_index(b.index, spec.dims, spec.schema_version) as ib,
    ):
        for i in ids:
            va, vb = ia.get(i).vectors, ib.get(i).vectors
            if set(va) != set(vb) or not all(np.allclose(va[k], vb[k], atol=1e-5) for k in va):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=48, help="manifest rows (the sample clips repeated, new ids)")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the one-item-at-a-time loop")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rvbench-", dir="/tmp"))
    manifest = tmp / "manifest.jsonl"
    ids = write_manifest(manifest, args.items)
    load_before = os.getloadavg()
    cfgs = {name: config(tmp, name) for name in ("ray", "ingest", "naive")}
    batch = cfgs["ingest"].backfill.batch_size
    runs = {"ray": ray_job(cfgs["ray"], manifest, tmp)}
    runs["ingest"] = in_process(cfgs["ingest"], manifest, batch, f"reelvec ingest path (embed_batch of {batch})")
    if not args.skip_naive:
        runs["naive"] = in_process(cfgs["naive"], manifest, 1, "naive loop (embed + upsert, one item at a time)")
    load_after = os.getloadavg()
    sample = ids[:: max(1, len(ids) // 8)]
    equal = {k: same_vectors(cfgs["ingest"], cfgs[k], sample) for k in runs if k != "ingest"}

    ray = runs["ray"]
    header = (
        "| path | items | wall s | items/s end to end | Ray speed-up over ingest (target) | first item stored at s "
        "| items/s, 2nd half | CPU s per item (process tree) |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    target = TARGETS.get(args.items)
    for key, r in runs.items():
        gain = "-"
        if key == "ray":
            x = ray.rate / runs["ingest"].rate
            gain = f"{x:.2f}x" + (f" (≥ {target}x: {'met' if x >= target else 'MISSED'})" if target else "")
        first = f"{r.first_s:.1f}"
        if key == "ray":
            first += f" (≤ {FIRST_ITEM_S:.0f}: {'met' if r.first_s <= FIRST_ITEM_S else 'MISSED'})"
        body += f"| {r.label} | {r.items} | {r.wall_s:.1f} | {r.rate:.2f} | {gain} | "
        body += f"{first} | {r.steady:.2f} | {r.cpu_s / max(r.items, 1):.2f} |\n"
    section = (
        f"\n## backfill {len(ids)} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {len(ids)} rows (the sample clips repeated under new ids) · "
        f"{platform.machine()}, {os.cpu_count()} cores, device cpu, CLIP weights absent (modality off) · "
        f"Edge index per path · model loads included · load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after · stored vectors equal to the ingest path's: {equal}\n\n"
        + header
        + body
        + f"\n- {ray.note}\n"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    publish(f"backfill {len(ids)}", section, write=not args.no_write)


if __name__ == "__main__":
    main()
