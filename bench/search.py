"""Fused top-10 search latency of the index backends on synthetic clustered items, all in one run.

Items: 200 Gaussian clusters per modality (visual 512, caption/transcript/ocr 384; 10% lack `visual`), fused
with the real `fuse()` into 1664-d as in production; 10 creators so a `creator_id` filter keeps ~10%.
Contenders, all through `index.VectorIndex`: Qdrant Edge before `optimize()` (plain segments, exhaustive
scan), Edge after it (HNSW), and the baseline qdrant-client local mode (`QdrantClient(path=...)`, numpy
brute force, Python-side filters): its queries are bounded (50, and 60 s per measurement) and its upsert is
capped by a time budget (120 s); the table says where a cap applied.
Recall@10 is against exact numpy search over the same fused vectors.
Usage: python bench/search.py [--sizes 10000 100000] [--queries 200]   (writes its section of bench/RESULTS.md)
       python bench/search.py --optimize-stall --sizes 10000   (search latency in a thread while Edge optimizes:
       the engine's optimizer in-process, which holds the GIL, vs `optimize()`, a child process on a copy)
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as pkg_version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qdrant_client import QdrantClient  # noqa: E402

from bench.results import command, publish  # noqa: E402
from embedder.config import FusionConfig, IndexConfig  # noqa: E402
from embedder.fusion import fuse  # noqa: E402
from embedder.types import FUSED, MODALITIES, ItemEmbedding, Transcript  # noqa: E402
from index import SearchFilter, VectorIndex, open_index  # noqa: E402
from index.qdrant import QdrantServerIndex  # noqa: E402

log = logging.getLogger("bench.search")

DIMS = {"visual": 512, "caption": 384, "transcript": 384, "ocr": 384, FUSED: 1664}
CLUSTERS = 200
CREATORS = 10
NOISE = 0.9  # per-modality noise norm relative to a unit cluster center: intra-cluster cosine ~0.55
K = 10
BATCH = 1000


def synthetic_item(i: int, vectors: dict, modalities: list[str], cluster: int, creator: int) -> ItemEmbedding:
    """One synthetic item, its payload filled as production fills it (caption, hashtags, creator, transcript)."""
    return ItemEmbedding(
        item_id=f"item-{i:07d}",
        vectors=vectors,
        modalities=modalities,
        transcript=Transcript("synthetic transcript " * 8, "en"),
        caption=f"clip {i} of cluster {cluster}",
        hashtags=[f"#c{cluster}"],
        creator_id=f"creator-{creator}",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        duration_s=15.0,
        models={"bench": "0"},
        schema_version="bench",
        decoder="none",
        frame_timestamps_s=[],
        timings_ms={},
    )


@dataclass
class Data:
    items: list[ItemEmbedding]
    fused: np.ndarray  # N x 1280, unit rows (what the index stores)
    creators: np.ndarray  # N creator indices
    queries: np.ndarray  # Q x 1280 fresh samples from the clusters, not in the index


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


class Generator:
    """Synthetic clustered items, produced chunk by chunk (bench/scale.py's 1 M items would not fit in RAM at once)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.weights = FusionConfig().weights
        self.centers = {m: unit(rng.normal(size=(CLUSTERS, DIMS[m]))).astype(np.float32) for m in MODALITIES}

    def _sample(self, rng: np.random.Generator, cluster: np.ndarray) -> dict[str, np.ndarray]:
        return {
            m: self.centers[m][cluster] + NOISE * unit(rng.normal(size=(len(cluster), DIMS[m]))).astype(np.float32)
            for m in MODALITIES
        }

    def chunk(self, start: int, n: int, stored: str) -> tuple[list[ItemEmbedding], np.ndarray, np.ndarray]:
        """Items start..start+n (deterministic per start), their fused vectors (unit rows) and creator numbers;
        `stored` "full" keeps every modality's vector in the item, "fused" only the fused one."""
        rng = np.random.default_rng([self.seed, start])
        cluster = rng.integers(0, CLUSTERS, n)
        vecs = self._sample(rng, cluster)
        has_visual = rng.random(n) >= 0.1
        creators = rng.integers(0, CREATORS, n)
        items, fused = [], np.empty((n, DIMS[FUSED]), dtype=np.float32)
        for j in range(n):
            i = start + j
            present = {m: vecs[m][j] for m in MODALITIES if m != "visual" or has_visual[j]}
            fused[j] = fuse(present, self.weights, DIMS)
            vectors = {**present, FUSED: fused[j]} if stored == "full" else {FUSED: fused[j]}
            items.append(synthetic_item(i, vectors, list(present), cluster[j], creators[j]))
        return items, unit(fused).astype(np.float32), creators

    def queries(self, n: int) -> np.ndarray:
        """Held-out queries: fresh samples of the same clusters, all modalities, fused (never stored)."""
        rng = np.random.default_rng([self.seed, 10**9])
        qv = self._sample(rng, rng.integers(0, CLUSTERS, n))
        q = np.stack([fuse({m: qv[m][j] for m in MODALITIES}, self.weights, DIMS) for j in range(n)])
        return unit(q).astype(np.float32)


def make_data(n: int, n_queries: int, seed: int = 0) -> Data:
    gen = Generator(seed)
    items, fused, creators = gen.chunk(0, n, "full")
    return Data(items, fused, creators, gen.queries(n_queries))


def exact_topk(data: Data, q: np.ndarray, creator: int | None, limit: int | None = None) -> set[str]:
    """Exact top-k ids over the first `limit` items (all by default), optionally only one creator's."""
    scores = data.fused[:limit] @ unit(q)
    if creator is not None:
        scores = np.where(data.creators[:limit] == creator, scores, -np.inf)
    top = np.argpartition(-scores, K)[:K]
    return {data.items[i].item_id for i in top}


@dataclass
class Run:
    name: str
    size: int  # the size of this round
    points: int  # points actually loaded (the baseline may be capped)
    upsert_s: float | None = None
    optimize_s: float | None = None
    reopen_s: float | None = None
    lat: dict[str, list[float]] = field(default_factory=dict)  # "plain"/"filtered" -> seconds per query
    recall: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def p(self, kind: str, q: float) -> float | None:
        xs = self.lat.get(kind)
        return float(np.percentile(xs, q) * 1000) if xs else None


def upsert_all(index: VectorIndex, items: list[ItemEmbedding], budget_s: float | None = None) -> tuple[float, int]:
    """(seconds, points written) in batches of BATCH; stops after the batch that exceeds `budget_s`."""
    t0 = time.perf_counter()
    written = 0
    for start in range(0, len(items), BATCH):
        rep = index.upsert(items[start : start + BATCH])
        assert not rep.failed, rep.failed[:3]
        written += len(rep.written)
        if budget_s is not None and time.perf_counter() - t0 > budget_s and written < len(items):
            log.warning("upsert budget of %.0fs spent after %d points: capping", budget_s, written)
            break
    return time.perf_counter() - t0, written


def measure(
    run: Run,
    index: VectorIndex,
    data: Data,
    n_queries: int,
    truth: Callable[[int, int | None], set[str]],
    budget_s: float | None = None,
) -> None:
    """Latency of fused top-10 search without and with a creator filter, plus recall@10 against `truth`;
    each of the two stops early (after >= 5 queries) once `budget_s` is spent."""
    for kind in ("plain", "filtered"):
        index.search(data.queries[0], k=K)  # warm-up
        lat, rec = [], []
        started = time.perf_counter()
        for j in range(n_queries):
            creator = j % CREATORS if kind == "filtered" else None
            flt = SearchFilter(creator_id=f"creator-{creator}") if creator is not None else None
            t0 = time.perf_counter()
            hits = index.search(data.queries[j], using=FUSED, k=K, flt=flt)
            lat.append(time.perf_counter() - t0)
            rec.append(len({h.item_id for h in hits} & truth(j, creator)) / K)
            if budget_s is not None and j >= 4 and time.perf_counter() - started > budget_s:
                break
        run.lat[kind] = lat
        run.recall[kind] = float(np.mean(rec))
        log.info(
            "%s %s: %d queries, p50 %.2f ms, recall@10 %.3f",
            run.name,
            kind,
            len(lat),
            run.p(kind, 50),
            run.recall[kind],
        )


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> list[Run]:
    t0 = time.perf_counter()
    data = make_data(n, args.queries)
    log.info("generated %d items in %.1fs", n, time.perf_counter() - t0)
    cache: dict[tuple[int, int | None], set[str]] = {}

    def truth(j: int, creator: int | None) -> set[str]:
        if (j, creator) not in cache:
            cache[(j, creator)] = exact_topk(data, data.queries[j], creator)
        return cache[(j, creator)]

    runs = []
    # --- Qdrant Edge ------------------------------------------------------------------------------
    cfg = IndexConfig(backend="edge", path=workdir / f"edge-{n}", optimize_after_upserts=10**9)
    before, after = Run("edge, before optimize()", n, n), Run("edge, after optimize()", n, n)
    index = open_index(cfg, DIMS, "bench")
    before.upsert_s, _ = upsert_all(index, data.items)
    measure(before, index, data, args.queries, truth)
    t = time.perf_counter()
    index.optimize()
    after.optimize_s = time.perf_counter() - t
    after.upsert_s = before.upsert_s
    measure(after, index, data, args.queries, truth)
    index.close()
    t = time.perf_counter()
    with open_index(cfg, DIMS, "bench", create=False) as again:
        assert again.count() == n
        after.reopen_s = time.perf_counter() - t
        again.search(data.queries[0], k=K)
    runs += [before, after]

    # --- baseline: qdrant-client local mode ----------------------------------------------------------
    path = workdir / f"local-{n}"
    qcfg = IndexConfig(backend="qdrant")  # the client is injected; url unused
    base = Run("qdrant-client local (baseline)", n, n)
    client = QdrantClient(path=str(path))
    index = QdrantServerIndex(qcfg, DIMS, "bench", client=client)
    base.upsert_s, base.points = upsert_all(index, data.items, args.baseline_upsert_budget)
    if base.points < n:
        base.note = f"upsert capped at {base.points:,} points ({args.baseline_upsert_budget:.0f}s budget)"

    def base_truth(j: int, creator: int | None) -> set[str]:
        return truth(j, creator) if base.points == n else exact_topk(data, data.queries[j], creator, base.points)

    measure(base, index, data, args.baseline_queries, base_truth, args.baseline_query_budget)
    index.close()
    client.close()
    t = time.perf_counter()
    client = QdrantClient(path=str(path))
    with QdrantServerIndex(qcfg, DIMS, "bench", client=client, create=False) as again:
        assert again.count() == base.points
        base.reopen_s = time.perf_counter() - t
    client.close()
    runs.append(base)
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(cfg.path, ignore_errors=True)
    return runs


@dataclass
class Stall:
    """Searches from a reader thread while one optimize runs (each search waits 10 ms after the last)."""

    mode: str
    points: int
    optimize_s: float
    lat: list[float]  # seconds of every search that overlapped the optimize
    answered: int  # searches that started and finished inside the optimize
    longest_gap: float  # seconds: the longest time without a finished search, within the optimize window


def optimize_stall(n: int, mode: str, data: Data, workdir: Path) -> Stall:
    """Load `n` items into a fresh Edge index, then optimize it (`mode`) while a thread keeps searching."""
    from index.edge import EdgeIndex

    cfg = IndexConfig(backend="edge", path=workdir / f"stall-{mode}-{n}", optimize_after_upserts=10**9)
    index = open_index(cfg, DIMS, "bench")
    assert isinstance(index, EdgeIndex)
    upsert_all(index, data.items)
    spans: list[tuple[float, float]] = []
    stop = threading.Event()

    def reader() -> None:
        j = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            index.search(data.queries[j % len(data.queries)], k=K)
            spans.append((t0, time.perf_counter()))
            j += 1
            time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    if mode == "in-process":
        index._optimize_in_process()  # the engine's optimizer on the live handle (holds the GIL)
    else:
        index.optimize()
    t1 = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    thread.join()
    assert index.count() == n
    index.close()
    shutil.rmtree(cfg.path, ignore_errors=True)
    overlap = [b - a for a, b in spans if a < t1 and b > t0]
    answered = sum(1 for a, b in spans if a >= t0 and b <= t1)
    ends = [t0] + [b for _, b in spans if t0 < b <= t1] + [min([b for _, b in spans if b > t1], default=t1)]
    gap = max(y - x for x, y in itertools.pairwise(ends))
    log.info("%s at %d: optimize %.1fs, %d searches answered during it", mode, n, t1 - t0, answered)
    return Stall(mode, n, t1 - t0, overlap, answered, gap)


def stall_table(stalls: list[Stall]) -> str:
    head = (
        "| points | optimize | optimize s | searches answered during it | p50 ms | p99 ms | max ms | "
        "longest time without an answer ms |\n" + "|---" * 8 + "|\n"
    )
    rows = [
        f"| {s.points:,} | {s.mode} | {s.optimize_s:.1f} | {s.answered} | "
        f"{fmt(float(np.percentile(s.lat, 50)) * 1000 if s.lat else None)} | "
        f"{fmt(float(np.percentile(s.lat, 99)) * 1000 if s.lat else None)} | "
        f"{fmt(max(s.lat) * 1000 if s.lat else None, '.0f')} | {s.longest_gap * 1000:.0f} |"
        for s in stalls
    ]
    return head + "\n".join(rows) + "\n"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(runs: list[Run], args: argparse.Namespace) -> str:
    head = (
        "| points | backend | upsert s | optimize s | reopen s | queries plain/filtered | p50 ms | p99 ms | "
        "p50 ms filtered | p99 ms filtered | recall@10 | recall@10 filtered | note |\n" + "|---" * 13 + "|\n"
    )
    rows = []
    for r in runs:
        nq = f"{len(r.lat.get('plain', []))}/{len(r.lat.get('filtered', []))}"
        rows.append(
            f"| {r.points:,} | {r.name} | {fmt(r.upsert_s, '.1f')} | {fmt(r.optimize_s, '.1f')} | "
            f"{fmt(r.reopen_s)} | {nq} | {fmt(r.p('plain', 50))} | {fmt(r.p('plain', 99))} | "
            f"{fmt(r.p('filtered', 50))} | {fmt(r.p('filtered', 99))} | {r.recall['plain']:.3f} | "
            f"{r.recall['filtered']:.3f} | {r.note} |"
        )
    ratios = []
    for n in args.sizes:
        before, after, base = (
            next(r for r in runs if r.size == n and r.name.startswith(p))
            for p in ("edge, before", "edge, after", "qdrant-client")
        )
        parts = []
        for kind in ("plain", "filtered"):
            b, e0, e = base.p(kind, 50), before.p(kind, 50), after.p(kind, 50)
            assert b is not None and e0 is not None and e is not None
            parts.append(
                f"{kind} p50: baseline/edge-optimized {b / e:.1f}x, edge-unoptimized/edge-optimized {e0 / e:.1f}x"
            )
        assert base.upsert_s and after.upsert_s and base.reopen_s and after.reopen_s
        per_point = (base.upsert_s / base.points) / (after.upsert_s / n)
        parts.append(f"upsert time per point baseline/edge {per_point:.1f}x")
        parts.append(
            f"reopen baseline/edge {base.reopen_s / after.reopen_s:.1f}x"
            + (f" (baseline holds {base.points:,} points)" if base.note else "")
        )
        ratios.append(f"- {n:,} points: " + "; ".join(parts))
    return head + "\n".join(rows) + "\n\nRatios (medians):\n" + "\n".join(ratios) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"qdrant-edge-py {pkg_version('qdrant-edge-py')}, qdrant-client {pkg_version('qdrant-client')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200, help="queries per Edge measurement")
    ap.add_argument("--baseline-queries", type=int, default=50, help="queries per baseline measurement")
    ap.add_argument(
        "--baseline-query-budget",
        type=float,
        default=60.0,
        help="seconds after which a baseline measurement stops (its query count says how many ran)",
    )
    ap.add_argument(
        "--baseline-upsert-budget",
        type=float,
        default=180.0,
        help="seconds after which the baseline's upsert stops (its table row says so)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    ap.add_argument(
        "--optimize-stall", action="store_true", help="measure searches during an Edge optimize (only that)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("index").setLevel(logging.WARNING)
    if args.optimize_stall:
        main_stall(args)
        return

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="reelvec-bench-", dir=args.workdir))
    runs: list[Run] = []
    try:
        for n in args.sizes:
            runs += bench_size(n, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = (
        f"\n## search — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {machine()} · total {time.perf_counter() - t0:.0f}s · "
        f"1-min load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n\n"
        f"Fused (1280-d) top-{K} search through `VectorIndex.search`, one query at a time; "
        f"{CLUSTERS} Gaussian clusters per modality, 10% of items without `visual`; "
        "filter = `creator_id` keyword (~10% of points); "
        f"Edge HNSW m={IndexConfig().hnsw_m}, ef_construct={IndexConfig().hnsw_ef_construct}, "
        f"search ef={IndexConfig().search_ef}; upserts in batches of {BATCH} (one flush each). "
        "Recall@10 against exact numpy search over the same vectors.\n\n" + table(runs, args)
    )
    publish("search", section, write=not args.no_write)


def main_stall(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="reelvec-bench-", dir=args.workdir))
    stalls: list[Stall] = []
    try:
        for n in args.sizes:
            data = make_data(n, args.queries)
            for mode in ("in-process", "child process on a copy"):
                stalls.append(optimize_stall(n, mode, data, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = (
        f"\n## search-optimize — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {machine()} · total {time.perf_counter() - t0:.0f}s · "
        f"1-min load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n\n"
        "Fused top-10 searches from a reader thread (10 ms apart) while the main thread optimizes a freshly loaded "
        "Edge index. `in-process`: the engine's `EdgeShard.optimize()` on the live handle (holds the GIL); "
        "`child process on a copy`: `VectorIndex.optimize()` (flush, copy the shard, optimize the copy in a child "
        "process, swap it in). Latencies are of every search overlapping the optimize; the last column is the "
        "longest stretch inside the optimize in which no search finished (what a health check could wait).\n\n"
        + stall_table(stalls)
    )
    publish("search-optimize", section, write=not args.no_write)


if __name__ == "__main__":
    main()
