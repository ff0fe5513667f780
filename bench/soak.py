"""Upload soak: many small uploads against one serve app, with the RSS of every Serve process along the way.

Starts a local Ray + Serve (temp data dir, the shipped config), uploads the sample clips under fresh ids at a
fixed client concurrency, and at each checkpoint records the resident memory (VmRSS) of every Serve replica
process and of the decode worker (the replica's child, the one alive at that checkpoint). The baseline is each
process's own RSS at 0 uploads, in the same run; a process that grows by more than `--bound-mb` over the run is
flagged (issue 18: the decode worker grew 167 → 222 MB over 160 uploads). A poller also follows the decode
workers every second: how many there were (`decode.recycle_after` replaces one after N decodes) and the peak RSS
any of them reached.
Usage: python bench/soak.py [--uploads 1000] [--concurrency 4] [--checkpoints 0,250,500,1000] [--bound-mb 100]
                            [--recycle-after N]   # decode.recycle_after (0 = never): section soak-recycle-N
       python bench/soak.py --smoke        # 12 uploads, checkpoints 0,6,12 (a correctness run, not a number)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.results import command, publish  # noqa: E402
from bench.serve import wait_ready  # noqa: E402
from embedder.config import load_config  # noqa: E402

log = logging.getLogger("bench.soak")
APP = "reelvec-soak"
CLIPS = sorted((ROOT / "samples/clips").glob("*.mp4"))


def serve_processes() -> dict[str, int]:
    """Name → pid of every replica of this app (Ray titles them `ray::ServeReplica:<app>:<deployment>`) and of
    each replica's child processes (the decode worker)."""
    title = {}
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = stat.read_bytes().split(b"\0")[0].decode(errors="replace")
            ppid = int((stat.parent / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        title[int(stat.parent.name)] = text
        parent[int(stat.parent.name)] = ppid
    out = {}
    prefix = f"ray::ServeReplica:{APP}:"
    for pid, text in sorted(title.items()):
        if text.startswith(prefix):
            # The title ends with the method running now (`DecodeDeployment.check_health`): keep the deployment.
            name = text[len(prefix) :].split()[0].split(".")[0] or str(pid)
            name = name if name not in out else f"{name} {pid}"
            out[name] = pid
            children = sorted(child for child, ppid in parent.items() if ppid == pid)
            for k, child in enumerate(children):  # the decode workers; recycled ones come and go
                out[f"{name} child" + (f" {k + 1}" if k else "")] = child
    return out


class WorkerWatch:
    """Polls the replicas' child processes (decode workers) once a second: every pid seen and its peak RSS."""

    def __init__(self) -> None:
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        for name, pid in serve_processes().items():
            rss = rss_mb(pid)
            if " child" in name and rss == rss:  # NaN: gone meanwhile
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MiB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def upload_range(base: str, start: int, stop: int, concurrency: int, codes: Counter[int]) -> None:
    """Uploads number `start`..`stop - 1` (fresh ids, sample clips in turn), `concurrency` at a time."""
    media = [p.read_bytes() for p in CLIPS]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, stop):
        queue.put_nowait(i)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            while not queue.empty():
                i = queue.get_nowait()
                files = {"file": (f"soak{i}.mp4", media[i % len(media)], "video/mp4")}
                r = await http.post("/v1/items", data={"item_id": f"soak-{i}", "caption": "soak"}, files=files)
                codes[r.status_code] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))


def deploy(base: str, recycle_after: int | None) -> None:
    from ray import serve

    from serving.service import build_app

    tmp = Path(tempfile.mkdtemp(prefix="reelvec-soak-"))
    env = {"REELVEC__DATA_DIR": str(tmp), "REELVEC__INDEX__PATH": str(tmp / "index")}
    if recycle_after is not None:
        env["REELVEC__DECODE__RECYCLE_AFTER"] = str(recycle_after)
    cfg = load_config(environ=env)
    serve.run(build_app(cfg), name=APP, route_prefix="/")
    wait_ready(base, 300)


def soak(
    uploads: int, concurrency: int, checkpoints: list[int], recycle_after: int | None, watch: WorkerWatch
) -> tuple[dict[str, list[float]], Counter[int], float]:
    """Run the uploads; RSS of every Serve process at each checkpoint, HTTP status counts, wall seconds."""
    import ray
    from ray import serve

    port = 19000 + os.getpid() % 1000
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="rvk-", dir="/tmp"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    codes: Counter[int] = Counter()
    series: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    try:
        deploy(base, recycle_after)
        asyncio.run(upload_range(base, -1, 0, 1, Counter()))  # warm: lazily loaded code paths
        done = 0
        with watch:
            for mark in checkpoints:
                asyncio.run(upload_range(base, done, mark, concurrency, codes))
                done = mark
                procs = serve_processes()
                watch.sample()
                for name, pid in procs.items():
                    series.setdefault(name, [float("nan")] * checkpoints.index(mark)).append(rss_mb(pid))
                log.info("after %d uploads: %s", mark, {n: round(v[-1]) for n, v in series.items()})
    finally:
        serve.shutdown()
        ray.shutdown()
    return series, codes, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--checkpoints", default="0,250,500,1000")
    ap.add_argument("--bound-mb", type=float, default=100.0, help="Flag a process growing more over the run.")
    ap.add_argument("--recycle-after", type=int, help="Override decode.recycle_after (0 = never recycle).")
    ap.add_argument("--smoke", action="store_true", help="12 uploads, checkpoints 0,6,12.")
    ap.add_argument("--no-write", action="store_true", help="Print, do not write bench/RESULTS.md.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uploads, marks = (12, [0, 6, 12]) if args.smoke else (args.uploads, [int(x) for x in args.checkpoints.split(",")])
    marks = sorted({m for m in marks if m <= uploads} | {0, uploads})
    recycle = load_config().decode.recycle_after if args.recycle_after is None else args.recycle_after
    watch = WorkerWatch()
    load0 = os.getloadavg()[0]
    series, codes, wall = soak(uploads, args.concurrency, marks, args.recycle_after, watch)
    load = f"1-min load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end"
    first = next((v[0] for n, v in sorted(series.items()) if n.endswith(" child")), float("nan"))
    peak = max(watch.peak.values(), default=float("nan"))
    workers = f"decode.recycle_after={recycle}: " + (
        f"{len(watch.peak)} decode worker process(es) over the run (polled each second), peak RSS of any one "
        f"{peak:.0f} MiB ({peak - first:+.0f} over the first worker's RSS at 0 uploads; "
        f"{'over' if peak - first > args.bound_mb else 'within'} the bound)."
        if watch.peak
        else "no decode worker process seen."
    )
    log.info(workers)
    # An overridden recycle_after is a variant: its own section, next to the shipped config's.
    name = ("soak-smoke" if args.smoke else "soak") + (f"-recycle-{recycle}" if args.recycle_after is not None else "")
    rows = []
    for proc, values in sorted(series.items()):
        values = values + [float("nan")] * (len(marks) - len(values))  # a process gone before the end
        grew = values[-1] - values[0]
        flag = "over bound" if grew > args.bound_mb else "ok"
        per100 = grew / uploads * 100 if uploads else float("nan")
        cells = " | ".join(f"{v:.0f}" for v in values)
        rows.append(f"| {proc} | {cells} | {grew:+.0f} | {per100:+.1f} | {flag} |")
    head = " | ".join(f"RSS MiB @{m}" for m in marks)
    section = (
        f"\n## {name} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {uploads} uploads of the sample clips (fresh ids) at concurrency "
        f"{args.concurrency} against one local Serve app · {platform.machine()}, {os.cpu_count()} cores · "
        f"HTTP statuses {dict(sorted(codes.items()))} · wall {wall:.0f} s · {load} · baseline: each process's RSS at 0 "
        f"uploads; bound {args.bound_mb:g} MiB over the run. {workers}\n"
        + ("Smoke run: too few uploads to say anything about growth.\n" if args.smoke else "")
        + f"\n| process | {head} | growth MiB | MiB per 100 uploads | vs bound |\n"
        + "|---|"
        + "---:|" * (len(marks) + 2)
        + "---|\n"
        + "\n".join(rows)
        + "\n"
    )
    publish(name, section, write=not args.no_write)


if __name__ == "__main__":
    main()
