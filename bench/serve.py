"""Online path latency and throughput over HTTP on 127.0.0.1, each against its baseline in the same run.

Starts a local Ray + Serve (temp data dir), then: uploads and text searches at client concurrency 1 / 4 / 8
with the configured `@serve.batch` (p50 / p99 latency, throughput, CPU s per request, batch sizes seen); the
bytes that cross the ingress per upload (media by reference vs the round-2 design that shipped the decoded
media through the ingress to every model); the same at the top level with
max_batch_size=1 (the batching gain as a ratio); and, with a tiny random-weight CLIP so frames are consumed,
uploads with the visual modality on. `--memory` instead measures the ingress replica's peak RSS while N
max-size uploads arrive at once (what the upload path holds per request).
Usage: python bench/serve.py [--levels 1,4,8] [--uploads 8,24,48] [--searches 40,80,160] [--no-write]
       python bench/serve.py --memory [--memory-uploads 16] [--max-bytes 20000000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.cputree import TreeCpu  # noqa: E402
from bench.results import command, publish  # noqa: E402
from embedder.config import ReelvecConfig, load_config  # noqa: E402
from embedder.steps import GRAPH  # noqa: E402

log = logging.getLogger("bench.serve")
APP = "reelvec-bench"
STEP_DEPLOYMENTS = [f"step_{s.name}" for s in GRAPH.configured(load_config()).steps if not s.serial]
QUERIES = ["cooking pasta", "soccer goal", "waves on the beach", "rocket launch", "chop vegetables", "stars"]


def wait_ready(base: str, timeout_s: float) -> None:
    """Poll `/readyz` until the app answers 200 (a fresh deploy loads its models first)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"service not ready after {timeout_s:g} s")
        time.sleep(0.5)


@dataclass
class Level:
    """One measured load level: latencies (s) of every request and the wall time of the whole level."""

    kind: str
    concurrency: int
    latencies: list[float]
    wall_s: float
    errors: int
    batches: dict[str, dict[int, int]]
    stages: list[dict[str, float]]
    cpu_s: float = 0.0  # user + sys of the whole process tree (Ray's workers, decode workers) during the level

    def stage_p50(self, stage: str) -> float:
        return float(np.median([s[stage] for s in self.stages if stage in s])) if self.stages else float("nan")

    def row(self, label: str) -> str:
        lat = np.asarray(self.latencies) * 1000
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        tput = len(self.latencies) / self.wall_s
        seen = "; ".join(f"{m}: {_mean_batch(h):.1f}" for m, h in sorted(self.batches.items()) if h) or "-"
        return (
            f"| {label} | {self.kind} | {self.concurrency} | {len(self.latencies)} | {p50:.0f} | {p99:.0f} "
            f"| {tput:.2f} | {self.cpu_s / max(len(self.latencies), 1):.2f} | {self.errors} | {seen} |"
        )


def _mean_batch(hist: dict[int, int]) -> float:
    n = sum(hist.values())
    return sum(size * c for size, c in hist.items()) / n if n else 0.0


def _diff(after: dict[str, dict[int, int]], before: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for method, hist in after.items():
        old = before.get(method, {})
        delta = {size: c - old.get(size, 0) for size, c in hist.items() if c - old.get(size, 0) > 0}
        if delta:
            out[method] = delta
    return out


def tiny_clip_card(directory: Path) -> Path:
    """A random-weight tiny open_clip card: throughput only, so frames have a consumer offline."""
    import open_clip
    import torch
    import yaml

    arch = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (directory / "bench-tiny-clip.json").write_text(json.dumps(arch))
    open_clip.add_model_config(directory / "bench-tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("bench-tiny-clip", pretrained=None).state_dict(), directory / "tiny.pt")
    card = {
        "id": "bench-tiny-clip",
        "family": "open_clip",
        "version": "bench-only",
        "modality": "visual",
        "dims": 32,
        "source": {"kind": "local", "path": "."},
        "files": [{"path": "tiny.pt", "sha256": hashlib.sha256((directory / "tiny.pt").read_bytes()).hexdigest()}],
        "params": {"arch": "bench-tiny-clip", "model_config": "bench-tiny-clip.json"},
    }
    path = directory / "bench-tiny-clip.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


class Bench:
    """Deploys variants of the app and drives load against it over HTTP."""

    def __init__(self, base: str, rows: list[dict[str, Any]]) -> None:
        self.base = base
        self.rows = rows
        self.media = {r["item_id"]: (ROOT / "samples/clips" / r["file"]).read_bytes() for r in rows}
        self.seq = 0

    def deploy(self, cfg: ReelvecConfig) -> None:
        from ray import serve

        from serving.service import build_app

        t0 = time.perf_counter()
        serve.run(build_app(cfg), name=APP, route_prefix="/")
        wait_ready(self.base, 120)
        log.info("deployed in %.1f s", time.perf_counter() - t0)

    def set_batching(self, config: dict[str, Any]) -> None:
        """Retune @serve.batch on the live step replicas (their `reconfigure` hook), nothing restarts."""
        from ray import serve

        for name in STEP_DEPLOYMENTS:
            serve.get_deployment_handle(name, APP).reconfigure.remote(config).result()

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        from ray import serve

        out: dict[str, dict[int, int]] = {}
        for name in STEP_DEPLOYMENTS:
            out.update(serve.get_deployment_handle(name, APP).batch_sizes.remote().result())
        return out

    async def _one(self, client: httpx.AsyncClient, kind: str) -> tuple[float, bool, dict[str, float]]:
        self.seq += 1
        row = self.rows[self.seq % len(self.rows)]
        t0 = time.perf_counter()
        if kind == "upload":
            r = await client.post(
                "/v1/items",
                data={"item_id": f"bench-{self.seq}", "caption": row["caption"], "metadata": json.dumps({})},
                files={"file": (row["file"], self.media[row["item_id"]], "video/mp4")},
            )
        else:
            r = await client.get("/v1/search", params={"q": QUERIES[self.seq % len(QUERIES)], "k": 10})
        ok = r.status_code < 300
        return time.perf_counter() - t0, ok, r.json().get("timings_ms", {}) if ok and kind == "upload" else {}

    async def _level(self, kind: str, concurrency: int, n: int) -> Level:
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.base, timeout=300, limits=limits) as client:

            async def go() -> tuple[float, bool, dict[str, float]]:
                async with sem:
                    return await self._one(client, kind)

            t0 = time.perf_counter()
            done = await asyncio.gather(*(go() for _ in range(n)))
            wall = time.perf_counter() - t0
        lat = [t for t, ok, _ in done if ok]
        errors = sum(not ok for _, ok, _ in done)
        return Level(kind, concurrency, lat, wall, errors, {}, [s for *_, s in done])

    def level(self, kind: str, concurrency: int, n: int) -> Level:
        before = self.batch_sizes()
        with TreeCpu() as cpu:
            lv = asyncio.run(self._level(kind, concurrency, n))
        lv.cpu_s = cpu.seconds
        lv.batches = _diff(self.batch_sizes(), before)
        log.info("%s c=%d n=%d: %s", kind, concurrency, n, lv.row(""))
        return lv

    def warm(self) -> None:
        self.level("upload", 2, 2)
        self.level("search", 4, 8)


class PeakRss:
    """A local process's peak RSS over a `with` block: the kernel's high-water mark (VmHWM), reset on entry
    through /proc/PID/clear_refs, so no sample can miss a short peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = 0

    def _kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for pid {self.pid}")

    def __enter__(self) -> PeakRss:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        self.base = self._kib("VmRSS")
        return self

    def __exit__(self, *_: object) -> None:
        self.peak = self._kib("VmHWM")


def _ingress_pid() -> int:
    """The local ingress replica's pid: Ray titles a replica's process `ray::ServeReplica:<app>:Ingress…`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().decode(errors="replace")
        except OSError:  # the process exited while we looked
            continue
        if title.startswith(f"ray::ServeReplica:{APP}:Ingress"):
            pids.append(int(cmdline.parent.name))
    if len(pids) != 1:
        raise RuntimeError(f"expected one ingress replica, found {len(pids)}")
    return pids[0]


async def _flood(base: str, n: int, media: bytes) -> list[int]:
    """`n` uploads of `media` sent at once; their status codes."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:

        async def one(i: int) -> int:
            files = {"file": ("big.mp4", media, "video/mp4")}
            r = await client.post("/v1/items", data={"item_id": f"mem-{i}", "caption": "big"}, files=files)
            return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def memory(n: int, max_bytes: int, write: bool) -> None:
    """Peak RSS of the ingress replica while `n` uploads of exactly limits.max_bytes arrive at once (a real
    sample clip padded with zeros: the ingress must take it in and hand it to decode whatever decode says)."""
    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="reelvec-bench-"))
    env = {
        "REELVEC__DATA_DIR": str(tmp),
        "REELVEC__INDEX__PATH": str(tmp / "index"),
        "REELVEC__LIMITS__MAX_BYTES": str(max_bytes),
    }
    cfg = load_config(environ=env)
    clip = (ROOT / "samples/clips/cooking_01.mp4").read_bytes()
    media = clip + b"\0" * (max_bytes - len(clip))
    port = 18000 + os.getpid() % 1000
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rvb-", dir="/tmp"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    rows: list[str] = []
    try:
        Bench(base, []).deploy(cfg)
        pid = _ingress_pid()
        asyncio.run(_flood(base, 1, clip))  # warm: first upload loads lazily-imported code paths
        for concurrency in (1, n):
            with PeakRss(pid) as rss:
                t0 = time.perf_counter()
                codes = asyncio.run(_flood(base, concurrency, media))
                wall = time.perf_counter() - t0
            grew = (rss.peak - rss.base) / 2**20
            rows.append(
                f"| {concurrency} | {max_bytes / 2**20:.1f} | {rss.base / 2**20:.0f} | {rss.peak / 2**20:.0f} "
                f"| {grew:.0f} | {grew / (concurrency * max_bytes / 2**20):.2f} | {wall:.1f} "
                f"| {dict(sorted(Counter(codes).items()))} |"
            )
            log.info("memory c=%d: %s", concurrency, rows[-1])
    finally:
        serve.shutdown()
        ray.shutdown()
    section = (
        f"\n## serve-memory — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · Ray {ray.__version__} local, Serve on 127.0.0.1 · {platform.machine()}, "
        f"{os.cpu_count()} cores · ingress replica's peak RSS (kernel VmHWM, reset before each row) while uploads "
        f"of exactly limits.max_bytes arrive at once (a sample clip zero-padded)\n\n"
        "| concurrent uploads | upload MiB | ingress RSS before MiB | peak MiB | grew MiB | grew / (uploads x size) "
        "| wall s | statuses |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    publish("serve-memory", section, write=write)


def ingress_bytes(cfg: ReelvecConfig, clip: Path) -> tuple[int, int, int]:
    """(upload body, bytes through the ingress now, bytes through it in round 2) for one upload of `clip`: the
    pickled size of everything the ingress sends to and receives from the step replicas, as Serve ships it.
    Now: decoded media go back as object references and each step is sent only the references it reads.
    Round 2: decode returned the frames, OCR frames and audio, and each model was sent its own media."""
    import pickle

    import ray

    from embedder.graph import load_step
    from embedder.items import build_item
    from embedder.work import MEDIA, Work

    body = clip.read_bytes()
    step = GRAPH["decode"]
    _, decoder = load_step(step, cfg)
    work = Work(build_item("probe", body, cfg.limits))
    try:
        step.run(decoder, [work], cfg)
    finally:
        decoder.close()
    size = lambda w: len(pickle.dumps(w, protocol=5))  # noqa: E731
    sent_decode = size(Work(build_item("probe", body, cfg.limits)))
    produced = {m: work.medium(m) for m in step.produces if work.medium(m) is not None}
    by_ref = work.slim().with_media({m: ray.put(v) for m, v in produced.items()})
    now = old = sent_decode
    now += size(by_ref)
    old += size(work.slim(keep=step.produces))
    for s in GRAPH.steps[1:]:
        reads = [m for m in s.reads if m in MEDIA]
        now += size(by_ref.slim(keep=reads)) + size(work.slim())
        old += size(work.slim(keep=reads)) + size(work.slim())
    return len(body), now, old


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,4,8", help="client concurrency levels")
    ap.add_argument("--uploads", default="8,24,48", help="uploads per level")
    ap.add_argument("--searches", default="40,80,160", help="searches per level")
    ap.add_argument("--transport-uploads", type=int, default=8, help="uploads with tiny CLIP on (c=1)")
    ap.add_argument("--memory", action="store_true", help="measure the ingress's peak RSS under max-size uploads")
    ap.add_argument("--memory-uploads", type=int, default=16, help="concurrent max-size uploads (--memory)")
    ap.add_argument("--max-bytes", type=int, default=20_000_000, help="limits.max_bytes and upload size (--memory)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.memory:
        memory(args.memory_uploads, args.max_bytes, write=not args.no_write)
        return
    levels, uploads, searches = _ints(args.levels), _ints(args.uploads), _ints(args.searches)

    import ray
    import torch
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="reelvec-bench-"))
    env = {"REELVEC__DATA_DIR": str(tmp), "REELVEC__INDEX__PATH": str(tmp / "index")}
    cfg = load_config(environ=env)
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if (ROOT / "samples/clips" / r["file"]).stat().st_size > 1000]
    port = 18000 + os.getpid() % 1000
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rvb-", dir="/tmp"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bench = Bench(f"http://127.0.0.1:{port}", rows)
    table: list[str] = []
    t_start = time.perf_counter()
    try:
        mbs = cfg.serve.max_batch_size
        bench.deploy(cfg)
        bench.warm()
        batched: dict[tuple[str, int], Level] = {}
        for c, nu, ns in zip(levels, uploads, searches, strict=True):
            for kind, n in (("upload", nu), ("search", ns)):
                batched[kind, c] = bench.level(kind, c, n)
                table.append(batched[kind, c].row(f"@serve.batch max_batch_size={mbs}"))

        top = max(levels)
        # Baseline: the same live replicas and admission limits, only the batch size set to 1.
        bench.set_batching({"max_batch_size": 1})
        gains = []
        for kind, n in (("upload", uploads[-1]), ("search", searches[-1])):
            lv = bench.level(kind, top, n)
            table.append(lv.row("max_batch_size=1 (baseline, same replicas)"))
            b = batched[kind, top]
            gains.append(
                f"{kind}: {len(b.latencies) / b.wall_s / (len(lv.latencies) / lv.wall_s):.2f}x throughput, "
                f"p50 {np.percentile(lv.latencies, 50) / np.percentile(b.latencies, 50):.2f}x lower"
            )

        bench.set_batching({"max_batch_size": mbs})
        body, now_b, old_b = ingress_bytes(cfg, ROOT / "samples/clips/cooking_01.mp4")
        clip_cfg = cfg.model_copy(deep=True)
        clip_dir = tmp / "tinyclip"
        clip_dir.mkdir()
        clip_cfg.models.clip.card = str(tiny_clip_card(clip_dir))
        clip_cfg.index.path = tmp / "index-clip"
        bench.deploy(clip_cfg)
        bench.warm()
        visual = bench.level("upload", 1, args.transport_uploads)
        table.append(visual.row("tiny CLIP on (frames reach the CLIP replica)"))
        elapsed = time.perf_counter() - t_start
    finally:
        serve.shutdown()
        ray.shutdown()

    header = (
        "| variant | request | concurrency | n | p50 ms | p99 ms | req/s | CPU s per request (process tree) | errors "
        "| mean batch size seen |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    section = (
        f"\n## serve — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · Ray {ray.__version__} local, Serve on 127.0.0.1, HTTP clients in the same "
        f"machine · {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, cpu · "
        f"default config (CLIP weights absent → visual off; text MiniLM, ASR whisper tiny.en, 1 replica each) · "
        f"{len(rows)} sample clips (3-5 s, 320x240) · run took {elapsed:.0f} s\n\n"
        + header
        + "\n".join(table)
        + "\n\n"
        + f"`@serve.batch` gain at concurrency {top} (max_batch_size={mbs} vs 1): "
        + "; ".join(gains)
        + ".\n\n"
        + f"Bytes through the ingress per upload of cooking_01.mp4 ({body / 1024:.0f} KiB body; pickled payloads "
        f"the ingress sends to and receives from the step replicas): {now_b / 1024:.0f} KiB now (media by "
        f"reference) vs {old_b / 1024:.0f} KiB with round 2's design (decoded media through the ingress to every "
        f"model): {old_b / now_b:.1f}x less, {now_b / body:.2f}x the upload body.\n\n"
        + f"With a tiny random CLIP (frames consumed, c=1): stage p50 decode {visual.stage_p50('decode_ms'):.0f} ms, "
        f"clip (frames to the CLIP replica + batch wait + encode) {visual.stage_p50('clip_ms'):.0f} ms.\n"
    )
    publish("serve", section, write=not args.no_write)


if __name__ == "__main__":
    main()
