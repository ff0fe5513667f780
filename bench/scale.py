"""Scale of the Edge index on this machine, and a Qdrant cluster sizing for 10 M / 100 M items derived from it.

Why: the issue asks for memory per item and search p99 at 1 M fused points with int8 scalar quantization
(rescoring on), recall@10 vs exact, and a sizing table built from those measurements, not from guesses.
What: synthetic clustered items (bench/search.py's generator: 200 Gaussian clusters per modality, fused with the
real `fuse()` into 1664-d), written through the real `open_index(...)` / `VectorIndex.upsert` into a Qdrant Edge
shard under a temp dir (index.quantization=int8, quantization_rescore=true, on_disk_vectors=true), then
`optimize()` (HNSW + quantization, built in a child process on a copy). An optional probe at a small size first
measures upsert rate and optimize time and shrinks N to what fits the time budget (N log N for the HNSW build).
By default every item stores the fused vector + full payload only (`--stored fused`); `--stored full` also stores
the per-modality vectors. RSS (anon / file-backed) before data, after load, after optimize, peak of the optimizer
child, and in a fresh process that reopens the index and serves the queries; on-disk size by component.
Search: held-out queries from the same clusters, k=10, one at a time through `VectorIndex.search`, p50/p99 and
recall@10 vs exact numpy top-10 over the stored fused vectors, with (a) int8 + rescoring (the configured
search), (b) quantization ignored (float32 originals, HNSW), (c) `exact=True` full-precision scan (fewer queries).
Usage: python bench/scale.py [--items 1000000] [--probe 30000] [--budget-s 3000] [--queries 300] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from bench.search import CLUSTERS, DIMS, Generator, machine  # noqa: E402
from embedder.config import IndexConfig  # noqa: E402
from embedder.types import FUSED  # noqa: E402
from index import open_index  # noqa: E402

log = logging.getLogger("bench.scale")

K = 10
VERSION = "scale"
GIB = 1024**3
# Sizing assumptions (stated in the section): points per shard, replication, headroom, node RAM.
SHARD_MAX_POINTS = 10_000_000
REPLICATION = 2
HEADROOM = 1.3
NODE_RAM_GIB = 64
SERVE_RESERVE_S = 600.0  # what the probe keeps aside for reopen, searches and exact truth when it picks N


def index_dims(stored: str) -> dict[str, int]:
    """The named vectors of the collection: all of them (`full`), or only `fused` (`fused`: a dense named
    vector takes a slot per point on disk even where the point lacks it, so absent ones are not configured)."""
    return dict(DIMS) if stored == "full" else {FUSED: DIMS[FUSED]}


# ---- measurements ----------------------------------------------------------------------------------------


def rss() -> dict[str, int]:
    """This process's resident memory in bytes: total, anonymous (heap) and file-backed (mmapped files)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(val.split()[0]) * 1024
    return {"rss": out["VmRSS"], "anon": out["RssAnon"], "file": out["RssFile"] + out.get("RssShmem", 0)}


def child_peak_rss() -> int:
    """Peak RSS (bytes) of the largest child process waited for so far (the Edge optimizer child)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# Which on-disk file belongs to which part of the shard (first matching pattern wins; by path component names).
_PARTS = (
    ("quantized vectors", ("quantiz",)),
    ("HNSW graph", ("hnsw", "graph", "links")),
    ("payload index", ("field_index", "payload_index", "fields")),
    ("payload", ("payload",)),
    ("vectors (float32 originals)", ("vector",)),
    ("id tracker / versions", ("id_tracker", "mapping", "version")),
    ("WAL", ("wal",)),
)


def disk_usage(path: Path) -> dict[str, int]:
    """Bytes on disk (allocated blocks) under `path`, split by component from the file path."""
    parts: dict[str, int] = {}
    for f in path.rglob("*"):
        if not f.is_file() or f.is_symlink():
            continue
        size = f.stat().st_blocks * 512
        rel = str(f.relative_to(path)).lower()
        name = next((n for n, pats in _PARTS if any(p in rel for p in pats)), "other")
        parts[name] = parts.get(name, 0) + size
    return parts


def config(args: argparse.Namespace, path: Path) -> IndexConfig:
    return IndexConfig(
        backend="edge",
        path=path,
        quantization="int8",
        quantization_rescore=True,
        on_disk_vectors=True,
        optimize_after_upserts=10**9,  # one explicit optimize() after the load
    )


def serve_in_child(args: argparse.Namespace, path: Path, queries_file: Path, n_exact: int) -> dict[str, Any]:
    """Reopen the index at `path` in a fresh process (`serve`) and return what it measured."""
    out_file = path.parent / f"{path.name}-serve.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-child", str(path), str(queries_file)]
    subprocess.run([*cmd, str(out_file), str(n_exact), str(args.warmup), args.stored], check=True)
    return json.loads(out_file.read_text())


def probe(args: argparse.Namespace, workdir: Path, started: float, queries_file: Path) -> dict[str, Any]:
    """Upsert + optimize `args.probe` items and serve them; extrapolate and pick the largest N (<= args.items)
    that fits. The probe's serving RSS also gives the per-item slope of the serving process's memory."""
    p = args.probe
    cfg = config(args, workdir / "probe")
    times = load_measured(args, cfg, p, {})
    served = serve_in_child(args, Path(cfg.path), queries_file, 2)
    shutil.rmtree(cfg.path, ignore_errors=True)
    spent = time.perf_counter() - started
    left = args.budget_s - spent - SERVE_RESERVE_S

    def predict(n: int) -> float:
        up = (times["upsert_s"] + times["generate_s"]) * n / p
        opt = times["optimize_s"] * (n * math.log(n)) / (p * math.log(p))
        return up + opt

    chosen = args.items
    while chosen > p and predict(chosen) > left:
        chosen -= 100_000 if chosen > 100_000 else 10_000
    chosen = max(chosen, p)
    log.info(
        "probe %d: %s; predicted %.0fs for %d, %.0fs left -> N=%d",
        p,
        times,
        predict(args.items),
        args.items,
        left,
        chosen,
    )
    return {
        "n": p,
        **times,
        "served": served,
        "predict_requested_s": predict(args.items),
        "predict_chosen_s": predict(chosen),
        "left_s": left,
        "chosen": chosen,
    }


# ---- serving, in a fresh process -------------------------------------------------------------------------


OVERSAMPLING = IndexConfig().quantization_oversampling  # the configured default
MODES = {
    "int8 + rescore, oversampling 1": "os1",
    f"int8 + rescore, oversampling {OVERSAMPLING:g} (configured default)": "default",
    "quantization ignored (float32, HNSW)": "ignore",
    "exact=True (float32 full scan)": "exact",
}


def serve(path: Path, queries_file: Path, out_file: Path, n_exact: int, n_warm: int, stored: str) -> None:
    """Child entry: reopen the index fresh, measure RSS, run the queries in each mode; results as JSON."""
    import qdrant_edge as qe

    from index.edge import EdgeIndex

    res: dict[str, Any] = {"rss_start": rss()}
    cfg = IndexConfig(backend="edge", path=path, quantization="int8", quantization_rescore=True, on_disk_vectors=True)
    t = time.perf_counter()
    index = open_index(cfg, index_dims(stored), VERSION, create=False)
    res["open_s"] = time.perf_counter() - t
    res["rss_open"] = rss()
    res["count"] = index.count()
    res["storage"] = {n: vars(s) for n, s in index.vector_storage().items()}
    assert isinstance(index, EdgeIndex)
    loaded = np.load(queries_file)
    queries, warm = loaded[: len(loaded) - n_warm], loaded[len(loaded) - n_warm :]  # warm-ups: extra queries
    configured = index._params
    # No public knob for per-query quantization params: the script swaps the handle's SearchParams.
    params = {
        "default": configured,
        "os1": qe.SearchParams(
            hnsw_ef=cfg.search_ef, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=1.0)
        ),
        "ignore": qe.SearchParams(hnsw_ef=cfg.search_ef, quantization=qe.QuantizationSearchParams(ignore=True)),
        "exact": qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True)),
    }
    res["modes"] = {}
    for label, key in MODES.items():
        index._params = params[key]
        nq = min(len(queries), n_exact) if key == "exact" else len(queries)
        for w in warm:  # not counted, and not among the measured queries
            index.search(w, k=K)
        lat, ids = [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        for j in range(nq):
            t = time.perf_counter()
            hits = index.search(queries[j], using=FUSED, k=K)
            lat.append(time.perf_counter() - t)
            ids.append([int(h.item_id.split("-")[1]) for h in hits])
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults
        res["modes"][label] = {"lat": lat, "ids": ids, "major_faults": faults}
        res[f"rss_after_{key}"] = rss()
        log.info("%s: %d queries, p50 %.2f ms", label, nq, float(np.percentile(lat, 50)) * 1000)
    index._params = configured
    index.close()
    out_file.write_text(json.dumps(res))


def exact_truth(args: argparse.Namespace, n: int, queries: np.ndarray) -> np.ndarray:
    """Exact top-K item indices per query over the stored fused vectors, regenerated batch by batch (the
    generator is deterministic per batch start; no 6.6 GB copy on a disk the optimizer needs)."""
    gen = Generator()
    best_s = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), K), dtype=np.int64)
    for start in range(0, n, args.batch):
        _, block, _ = gen.chunk(start, min(args.batch, n - start), "fused")
        s = queries @ block.T  # Q x m
        m = len(block)
        top = np.argpartition(-s, K, axis=1)[:, :K] if m > K else np.tile(np.arange(m), (len(queries), 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i


# ---- report ----------------------------------------------------------------------------------------------


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def gib(x: float) -> str:
    return f"{x / GIB:,.1f} GiB"


def sizing(schemas: list[tuple[str, float, float]]) -> str:
    """Rows per (schema label, RAM bytes/item, disk bytes/item) for 10 M and 100 M items."""
    head = (
        "| schema | items | shards | replication | nodes | RAM per node (incl. 30% headroom) | "
        "disk per node (incl. 30%) | quantization |\n" + "|---" * 8 + "|\n"
    )
    rows = []
    for (label, ram_pt, disk_pt), total in itertools.product(schemas, (10_000_000, 100_000_000)):
        ram = total * ram_pt * REPLICATION * HEADROOM
        disk = total * disk_pt * REPLICATION * HEADROOM
        nodes = max(REPLICATION, math.ceil(ram / (NODE_RAM_GIB * GIB)))
        # A multiple of the node count, so every node holds the same number of shard replicas.
        shards = nodes * math.ceil(max(math.ceil(total / SHARD_MAX_POINTS), nodes) / nodes)
        rows.append(
            f"| {label} | {total:,} | {shards} ({total / shards / 1e6:.1f} M points each) | {REPLICATION} | {nodes} | "
            f"{gib(ram / nodes)} | {gib(disk / nodes)} | int8 scalar on `fused` (always_ram), float32 originals "
            "on disk (`on_disk: true`), rescore on |"
        )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000, help="requested N (the probe may lower it)")
    ap.add_argument("--probe", type=int, default=30_000, help="probe size to extrapolate from (0: no probe)")
    ap.add_argument("--budget-s", type=float, default=3000.0, help="wall-time budget the probe plans N for")
    ap.add_argument("--stored", choices=("fused", "full"), default="fused", help="vectors stored per item")
    ap.add_argument("--batch", type=int, default=2000, help="items per upsert call")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--exact-queries", type=int, default=20, help="queries for the exact=True scan")
    ap.add_argument("--warmup", type=int, default=20, help="uncounted warm-up queries per mode")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir parent (default: the temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    ap.add_argument("--serve-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("index").setLevel(logging.WARNING)
    if args.serve_child:
        path, qf, of, ne, nw, stored = args.serve_child
        serve(Path(path), Path(qf), Path(of), int(ne), int(nw), stored)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="reelvec-scale-", dir=args.workdir))
    try:
        section = run(args, workdir, started, load_before)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    publish("scale", section, write=not args.no_write)


def run(args: argparse.Namespace, workdir: Path, started: float, load_before: tuple[float, ...]) -> str:
    queries = Generator().queries(args.queries + args.warmup)
    queries_file = workdir / "queries.npy"
    np.save(queries_file, queries)
    plan = probe(args, workdir, started, queries_file) if args.probe else None
    n = plan["chosen"] if plan else args.items
    cfg = config(args, workdir / "index")

    mem: dict[str, dict[str, int]] = {"before data": rss()}
    times = load_measured(args, cfg, n, mem)
    optimizer_peak = child_peak_rss()
    disk = disk_usage(Path(cfg.path))
    disk_total = sum(disk.values())

    t = time.perf_counter()
    res = serve_in_child(args, Path(cfg.path), queries_file, args.exact_queries)
    serve_wall = time.perf_counter() - t
    assert res["count"] == n, (res["count"], n)
    t = time.perf_counter()
    truth = exact_truth(args, n, queries[: args.queries])
    truth_s = time.perf_counter() - t

    rows = []
    for label, m in res["modes"].items():
        lat = np.array(m["lat"]) * 1000
        rec = float(np.mean([len(set(ids) & set(truth[j].tolist())) / K for j, ids in enumerate(m["ids"])]))
        rows.append(
            f"| {label} | {len(lat)} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | "
            f"{lat.max():.2f} | {rec:.3f} | {m['major_faults']:,} |"
        )
    search_table = (
        "| search (fused, k=10, one at a time) | queries | p50 ms | p99 ms | max ms | recall@10 vs exact | "
        "major page faults |\n" + "|---" * 7 + "|\n" + "\n".join(rows) + "\n"
    )

    base = mem["before data"]
    serve_keys = [("serving process, after open", "rss_open")] + [
        (f"serving process, after {label}", f"rss_after_{key}") for label, key in MODES.items()
    ]

    def mem_row(name: str, r: dict, base: dict) -> str:
        return (
            f"| {name} | {mib(r['rss'])} | {mib(r['anon'])} | {mib(r['file'])} | "
            f"{(r['rss'] - base['rss']) / n:,.0f} | {(r['anon'] - base['anon']) / n:,.0f} |"
        )

    mem_rows = [mem_row(name, r, base) for name, r in mem.items()]
    mem_rows.append(
        "| optimizer child process, peak (ru_maxrss: anon + mmapped files) | "
        f"{mib(optimizer_peak)} | - | - | {optimizer_peak / n:,.0f} | - |"
    )
    sbase = res["rss_start"]
    mem_rows += [mem_row(name, res[key], sbase) for name, key in serve_keys]
    mem_table = (
        "| memory (RSS) | total | anon | file-backed (mmap) | bytes/item over baseline, total | "
        "bytes/item over baseline, anon |\n" + "|---" * 6 + "|\n" + "\n".join(mem_rows) + "\n"
    )
    disk_rows = [f"| {k} | {mib(v)} | {v / n:,.0f} |" for k, v in sorted(disk.items(), key=lambda kv: -kv[1])]
    disk_rows.append(f"| **total** | {mib(disk_total)} | {disk_total / n:,.0f} |")
    disk_table = "| on disk (optimized shard) | size | bytes/item |\n|---|---|---|\n" + "\n".join(disk_rows) + "\n"

    # Sizing inputs: RAM per item = what must stay resident (quantized vectors, HNSW graph, payload index,
    # id tracker) from the on-disk sizes, or the serving process's anon RSS growth, whichever is larger.
    resident = sum(
        disk.get(k, 0) for k in ("quantized vectors", "HNSW graph", "payload index", "id tracker / versions")
    )
    served = res["rss_after_default"]
    serve_anon_pt = (served["anon"] - sbase["anon"]) / n
    slope_note = ""
    if plan and n > plan["n"]:
        small = plan["served"]["rss_after_default"]
        slope = (served["anon"] - small["anon"]) / (n - plan["n"])
        fixed = small["anon"] - plan["served"]["rss_start"]["anon"] - slope * plan["n"]
        slope_note = (
            f" Marginal serving anon RSS between the probe's serving process ({plan['n']:,} items, "
            f"{mib(small['anon'])} anon) and this one: **{slope:,.0f} B/item** (fixed part {mib(fixed)}); the "
            "sizing uses the larger of that slope and the on-disk resident parts."
        )
        serve_anon_pt = slope
    serve_total_pt = (served["rss"] - sbase["rss"]) / n
    how_anon = " (marginal, see below)" if slope_note else " (growth over baseline / N)"
    ram_pt = max(resident / n, serve_anon_pt)  # with a probe: the slope; without: growth over baseline / n
    disk_pt = disk_total / n
    d = DIMS[FUSED]
    m_links = IndexConfig().hnsw_m
    storage = res["storage"].get(FUSED, {})
    schemas = [(f"as measured ({args.stored})", ram_pt, disk_pt)]
    full_note = ""
    if args.stored == "fused":
        # The production schema adds visual 512 (int8) and caption/transcript/ocr 384 (float32), each with its own
        # HNSW graph: scale the measured per-dimension costs of `fused` (frames/fingerprint multivectors excluded).
        orig_dim = disk.get("vectors (float32 originals)", 0) / n / d
        quant_dim = disk.get("quantized vectors", 0) / n / d
        graph = disk.get("HNSW graph", 0) / n
        other = DIMS["visual"] + 3 * DIMS["caption"]
        extra_ram = DIMS["visual"] * quant_dim + 4 * graph
        extra_disk = other * orig_dim + DIMS["visual"] * quant_dim + 4 * graph
        schemas.append(("full schema (extrapolated)", ram_pt + extra_ram, disk_pt + extra_disk))
        full_note = (
            f"Full schema row: + visual int8 {DIMS['visual']} dims × {quant_dim:.2f} B/dim + 4 more HNSW graphs × "
            f"{graph:,.0f} B in RAM (= +{extra_ram:,.0f} B), + {other} float32 dims × {orig_dim:.2f} B/dim on disk "
            f"(= +{extra_disk:,.0f} B incl. the RAM parts), per-dim costs measured on `fused`; `frames` and "
            "`fingerprint` multivectors not included (their size depends on frames per item); the per-modality "
            "vectors' float32 originals stay on disk, so their searches need page cache on top.\n"
        )

    stored_what = (
        "every item: the `fused` 1664-d vector + the full payload; the collection has only the `fused` named vector "
        "(+ the `fingerprint` multivector, empty), because a configured dense vector takes a disk slot per point "
        "even where absent and the 5-vector shard needed 32 GiB free disk to optimize at 1 M"
        if args.stored == "fused"
        else "every item: fused 1664-d + visual 512 (90%) + caption/transcript/ocr 384 + payload"
    )
    reached = f"N = {n:,}" + ("" if n == args.items else f" (requested {args.items:,}; reduced, see plan)")
    lines = [
        f"\n## scale — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"Command: `{command()}` · this machine: 2 cores / 24 GiB RAM (shared) · {machine()} · {reached} · "
        f"stored: {stored_what} · total {time.perf_counter() - started:.0f}s · 1-min load average "
        f"{load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n",
        f"Index: Qdrant Edge through `open_index` / `VectorIndex.upsert` (batches of {args.batch}, one flush each), "
        f"config `index.quantization: int8`, `index.quantization_rescore: true`, "
        f"`index.quantization_oversampling: {OVERSAMPLING:g}`, `index.on_disk_vectors: true`, "
        f"HNSW m={m_links}, ef_construct={IndexConfig().hnsw_ef_construct}, search ef={IndexConfig().search_ef}. "
        f"Engine reports for `fused`: {storage}. Items: {CLUSTERS} Gaussian clusters per modality, fused with the "
        f"real `fuse()`; {args.queries} held-out queries from the same clusters.\n",
    ]
    if plan:
        lines.append(
            f"Plan: probe of {plan['n']:,} items: upsert {plan['upsert_s']:.1f}s + generate {plan['generate_s']:.1f}s "
            f"(linear), optimize {plan['optimize_s']:.1f}s (scaled by N log N); predicted load+optimize for "
            f"{args.items:,}: {plan['predict_requested_s']:.0f}s against {plan['left_s']:.0f}s left of the "
            f"{args.budget_s:.0f}s budget (after {SERVE_RESERVE_S:.0f}s kept for serving) -> N = {plan['chosen']:,} "
            f"(predicted {plan['predict_chosen_s']:.0f}s)."
            + ("" if plan["chosen"] == args.items else f" **1 M not reached: {args.items:,} did not fit the budget.**")
            + "\n"
        )
    lines += [
        f"Timings: generate {times['generate_s']:.0f}s, upsert {times['upsert_s']:.0f}s "
        f"({n / times['upsert_s']:,.0f} items/s), optimize {times['optimize_s']:.0f}s (flush, copy, HNSW + int8 "
        f"in a child process, swap), reopen in a fresh process {res['open_s']:.2f}s, serving process wall "
        f"{serve_wall:.0f}s, exact truth (numpy, chunked) {truth_s:.0f}s.\n",
        "Search, in the fresh serving process, modes in the table's order (page cache: whatever load and optimize "
        "left, not dropped on this shared machine; `major page faults` = reads that went to disk during the "
        f"measured queries; {args.warmup} uncounted warm-up queries per mode, distinct from the measured ones):\n",
        search_table,
        "Memory: baseline = the process before any data (main) / before opening the index (serving process). "
        "`file-backed` is mmapped index files resident in page cache (reclaimable, shared), `anon` is heap.\n",
        mem_table,
        disk_table,
        "Sizing inputs (measured above): RAM per item = max(resident parts on disk: quantized vectors + HNSW "
        f"graph + payload index + id tracker = {resident / n:,.0f} B; serving anon RSS per item after the configured "
        f"searches{how_anon} = {serve_anon_pt:,.0f} B) = **{ram_pt:,.0f} B** (serving total RSS growth incl. page "
        f"cache: {serve_total_pt:,.0f} B); disk per item = whole optimized shard = **{disk_pt:,.0f} B**. For "
        f"reference, by formula: int8 fused = {d} B, HNSW level-0 links = 2·m·4 = {2 * m_links * 4} B, float32 fused = "
        f"{4 * d} B." + slope_note + "\n",
        f"Cluster formula: RAM = items × {ram_pt:,.0f} B × replication {REPLICATION} × headroom {HEADROOM}; "
        f"disk = items × {disk_pt:,.0f} B × {REPLICATION} × {HEADROOM}; nodes = max({REPLICATION}, "
        f"ceil(RAM / {NODE_RAM_GIB} GiB node)); shards = max(ceil(items / {SHARD_MAX_POINTS / 1e6:.0f} M), nodes) "
        "rounded up to a multiple of nodes (equal replicas per node). "
        "Page cache for rescoring (float32 originals of the oversampled candidates) comes out of the node RAM "
        "left over; the table does not add it. Config keys: `index.quantization: int8`, "
        "`index.quantization_rescore: true`, `index.on_disk_vectors: true` (on a server: the collection's "
        "`quantization_config.scalar` with `always_ram: true` and `vectors.fused.on_disk: true`).\n",
        full_note,
        sizing(schemas),
    ]
    return "\n".join(lines)


def load_measured(
    args: argparse.Namespace, cfg: IndexConfig, n: int, mem: dict[str, dict[str, int]]
) -> dict[str, float]:
    """Create the index, upsert n items in batches and optimize; RSS into `mem` after the upserts and after
    optimize (the index still open in this process)."""
    gen = Generator()
    t_gen = t_up = 0.0
    with open_index(cfg, index_dims(args.stored), VERSION) as index:
        for start in range(0, n, args.batch):
            t = time.perf_counter()
            items, _, _ = gen.chunk(start, min(args.batch, n - start), args.stored)
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            rep = index.upsert(items)
            t_up += time.perf_counter() - t
            assert not rep.failed and len(rep.written) == len(items), rep.failed[:3]
            if start // args.batch % 50 == 0:
                log.info("loaded %d/%d (upsert %.0fs, generate %.0fs)", start + len(items), n, t_up, t_gen)
        del items
        mem["after load (main process)"] = rss()
        t = time.perf_counter()
        index.optimize()
        t_opt = time.perf_counter() - t
        log.info("optimized %d points in %.0fs", n, t_opt)
        assert index.count() == n
        mem["after optimize (main process)"] = rss()
    return {"upsert_s": t_up, "generate_s": t_gen, "optimize_s": t_opt}


if __name__ == "__main__":
    main()
