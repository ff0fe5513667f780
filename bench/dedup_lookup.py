"""Relation candidate lookup at scale (issue 17): p50/p99 of what `IndexOwner.write` does per new item before the
exact check — one engine call for the nearest pooled visual prints and the items sharing most audio landmark
hashes (`relation_candidates`), then one retrieve of those candidates' stored prints (`stored_prints`) — against a
Qdrant Edge index of N items. Prints are synthetic but shaped like real ones (10-s clips: 40 frames × 3 crops of
256-bit hashes, 24 spectral peaks a second); the exact check's cost per pair is bench/dedup.py's.
Usage: python bench/dedup_lookup.py [--items 100000] [--queries 300] [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.audio_fp import AudioPrint  # noqa: E402
from embedder.config import DedupConfig, IndexConfig  # noqa: E402
from embedder.fingerprint import VideoPrint  # noqa: E402
from embedder.relations import ItemPrints  # noqa: E402
from embedder.types import ItemEmbedding, Transcript  # noqa: E402
from index import open_index  # noqa: E402
from serving.owner import candidates, stored_prints  # noqa: E402

DIMS = {"fused": 16}
CLIP_S, FP_FPS, PEAKS_PER_S, BATCH = 10.0, 4, 24, 500


def synthetic_prints(rng: np.random.Generator, cfg: DedupConfig) -> ItemPrints:
    """Random bits and peaks in the shapes and value ranges the real prints have."""
    t = int(CLIP_S * FP_FPS)
    bits = rng.integers(0, 256, (t, len(cfg.crops), cfg.hash_size**2 // 8), dtype=np.uint8)
    video = VideoPrint(bits, tuple(i / FP_FPS for i in range(t)), cfg.hash_size, tuple(cfg.crops))
    n = int(CLIP_S * PEAKS_PER_S)
    frames = np.sort(rng.integers(0, int(CLIP_S / 0.016), n))
    peaks = np.stack([frames, rng.integers(6, 320, n)], axis=1).astype(np.int32)
    return ItemPrints.of(video, AudioPrint(peaks, CLIP_S), cfg)


def item(i: int, rng: np.random.Generator, cfg: DedupConfig) -> ItemEmbedding:
    return ItemEmbedding(
        item_id=f"item-{i:07d}", vectors={"fused": rng.normal(size=16).astype(np.float32)}, modalities=[],
        transcript=Transcript("", None), caption="", hashtags=[], creator_id=None, created_at=None,
        duration_s=CLIP_S, models={}, schema_version="v1-bench", decoder="none", frame_timestamps_s=[],
        timings_ms={}, prints=synthetic_prints(rng, cfg),
    )  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="2,000 items, 50 queries, nothing written")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()
    if args.smoke:
        args.items, args.queries, args.no_write = 2000, 50, True
    cfg, rng = DedupConfig(), np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        # One optimize after the load (as a bulk backfill does), not one every 5,000 upserts.
        cfg_index = IndexConfig(backend="edge", path=Path(tmp), optimize_after_upserts=10**9)
        index = open_index(cfg_index, DIMS, "v1-bench")
        t0 = time.perf_counter()
        queries: list[ItemPrints] = []
        for start in range(0, args.items, BATCH):
            batch = [item(i, rng, cfg) for i in range(start, min(args.items, start + BATCH))]
            index.upsert(batch)
            queries += [b.prints for b in batch[: max(1, args.queries * BATCH // args.items + 1)]]
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.optimize()
        optimize_s = time.perf_counter() - t0
        search, full = [], []
        for prints in queries[: args.queries]:
            t0 = time.perf_counter()
            ids = candidates(index, prints, cfg.candidates, exclude="")
            t1 = time.perf_counter()
            stored_prints(index, ids, cfg)
            t2 = time.perf_counter()
            search.append(t1 - t0)
            full.append(t2 - t0)
        count = index.count()
        index.close()
    p99 = pct(full, 99)
    section = (
        f"\n## dedup lookup — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · Qdrant Edge, {count:,} items (synthetic prints of 10-s clips), "
        f"{len(full)} queries, candidates {cfg.candidates} per side · 2-core machine\n\n"
        f"Load {load_s:.0f} s ({count / load_s:,.0f} items/s), optimize {optimize_s:.0f} s.\n\n"
        "| step | p50 ms | p99 ms |\n|---|---|---|\n"
        f"| `relation_candidates` (pooled visual + audio hashes, one engine call) | {pct(search, 50):.2f} "
        f"| {pct(search, 99):.2f} |\n"
        f"| + retrieve the candidates' stored prints (the whole lookup) | {pct(full, 50):.2f} | {p99:.2f} |\n\n"
        f"Target p99 ≤ 20 ms at 100 k items: {'met' if p99 <= 20 and count >= 100_000 else 'MISSED'}"
        f"{'' if count >= 100_000 else ' (fewer than 100 k items: not the target run)'}. The exact check that "
        "follows costs bench/dedup.py's per-pair time for each candidate.\n"
    )
    publish("dedup lookup", section, write=not args.no_write)


if __name__ == "__main__":
    main()
