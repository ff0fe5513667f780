"""The decode stage against a bare PyAV keyframe loop, on the same generated clips and cores, in one run.

Clips: 15-s 1080p30 H.264 with a keyframe every 30 frames and an AAC track (the issue-16 probe's shape), a few
distinct ones repeated to `--clips`. Rows, interleaved run by run, medians of `--repeat`:
- bare loop: one process per core, each clip opened with `skip_frame="NONKEY"` and every keyframe converted to RGB
  at a 224-px short side (what a hand-written loop does; no audio, no OCR or fingerprint frames);
- reelvec `Decoder` with `decode.sampling: keyframes` (worker processes, one per core): probe, limits, CLIP frames,
  OCR frames, fingerprint frames and 16 kHz audio from one pass; then without OCR/fingerprint frames;
- reelvec with exact sampling (decord), the default, for scale.
Target (issue 16): the keyframe decode stage ≥ 0.8× the bare loop's clips/s.
Usage: python bench/decode.py [--clips 64] [--distinct 8] [--seconds 15] [--workers N] [--repeat 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402


def make_clip(
    path: Path,
    seconds: float,
    gop: int = 30,
    fps: int = 30,
    size: tuple[int, int] = (1920, 1080),
    audio: np.ndarray | None = None,
) -> None:
    """An H.264 clip with moving shapes and an overlay line (PyAV only, no ffmpeg binary), a keyframe every `gop`
    frames (phone cameras record with a ~1-s interval), and `audio` (16 kHz mono float32; a tone when None)."""
    import av
    from PIL import Image, ImageDraw

    w, h = size
    with av.open(str(path), "w") as out:
        opts = {"preset": "ultrafast", "crf": "28", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        vs = out.add_stream("libx264", rate=fps, options=opts)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * fps)):
            img = Image.new("RGB", size, (20 + i % 200, 40, 90))
            d = ImageDraw.Draw(img)
            x = (i * 17) % (w - w // 6)
            d.ellipse((x, h // 3, x + w // 6, h // 3 + w // 6), fill=(230, 200, 40))
            d.text((w // 24, h - h // 7), "Homemade pasta in ten minutes", fill=(255, 255, 255), font_size=h // 15)
            for p in vs.encode(av.VideoFrame.from_image(img)):
                out.mux(p)
        n = int(seconds * 16000)
        if audio is None:
            audio = (0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000)).astype(np.float32)
        track = np.zeros(n, np.float32)
        track[: min(n, len(audio))] = audio[:n]
        frame = av.AudioFrame.from_ndarray(track[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in aus.encode(frame):
            out.mux(p)
        for s in (vs, aus):
            for p in s.encode():
                out.mux(p)


def make_clips(d: Path, distinct: int, total: int, seconds: float, gop: int, audios: list | None = None) -> list[Path]:
    """`distinct` generated clips (in parallel processes), repeated to `total` paths."""
    paths = [d / f"clip_{i:03d}.mp4" for i in range(distinct)]
    audios = audios or [None] * distinct
    with ProcessPoolExecutor(min(distinct, os.cpu_count() or 1)) as pool:
        list(
            pool.map(
                make_clip,
                paths,
                [seconds] * distinct,
                [gop] * distinct,
                [30] * distinct,
                [(1920, 1080)] * distinct,
                audios,
            )
        )
    return [paths[i % distinct] for i in range(total)]


def bare_keyframes(path: str, short_side: int = 224) -> int:
    """The baseline: open, decode keyframes only, convert each to RGB at a `short_side` short side."""
    import av

    n = 0
    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.codec_context.skip_frame = "NONKEY"
        w, h = vs.codec_context.width, vs.codec_context.height
        scale = short_side / min(w, h)
        size = {"width": round(w * scale / 2) * 2, "height": round(h * scale / 2) * 2}
        for frame in c.decode(vs):
            frame.to_ndarray(format="rgb24", **size)
            n += 1
    return n


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def timed(run: Callable[[], int], n: int, pids: Callable[[], list[int]]) -> tuple[float, float]:
    """clips/s of one run over `n` clips, and clips per CPU-second of this process plus its worker processes
    (the second is what more cores buy; the first also counts time lost to other load on the machine)."""
    ids = pids()
    c0, p0, t = time.process_time(), proc_cpu_s(ids), time.perf_counter()
    ok = run()
    dt = time.perf_counter() - t
    cpu = time.process_time() - c0 + proc_cpu_s(ids) - p0
    if ok != n:
        raise RuntimeError(f"{n - ok} of {n} clips failed")
    return n / dt, n / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=8, help="distinct generated clips, repeated to --clips")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (both sides)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-exact", action="store_true", help="skip the exact-sampling row (slow on few cores)")
    ap.add_argument("--note", default="")
    ap.add_argument("--smoke", action="store_true", help="4 clips of 3 s, one run; never writes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.clips, args.distinct, args.seconds, args.repeat = 4, 2, 3.0, 1
    write = not (args.no_write or args.smoke)

    from embedder.config import load_config
    from embedder.decode import Decoder

    cfg = load_config(environ={})
    tmp = Path(tempfile.mkdtemp(prefix="rvdecode-"))
    try:
        t0 = time.perf_counter()
        clips = [str(p) for p in make_clips(tmp, args.distinct, args.clips, args.seconds, args.gop)]
        gen_s = time.perf_counter() - t0
        n, N = len(clips), args.workers
        kf = cfg.decode.model_copy(update={"sampling": "keyframes", "workers": N})
        exact = cfg.decode.model_copy(update={"sampling": "exact", "workers": N})
        decoders = {
            "reelvec keyframes: CLIP + OCR + fingerprint frames + audio": Decoder(
                kf, cfg.limits, cfg.ocr, cfg.fingerprint
            ),
            "reelvec keyframes: CLIP frames + audio": Decoder(kf, cfg.limits),
        }
        if not args.no_exact:
            decoders["reelvec exact (decord, default): CLIP + OCR + fingerprint frames + audio"] = Decoder(
                exact, cfg.limits, cfg.ocr, cfg.fingerprint
            )
        bare_name = f"bare PyAV keyframe loop, {N} processes (no audio)"
        with ProcessPoolExecutor(N) as pool:
            runs = {
                bare_name: (
                    lambda: sum(x > 0 for x in pool.map(bare_keyframes, clips)),
                    lambda: list(pool._processes),
                )
            }
            for name, dec in decoders.items():
                runs[name] = (
                    lambda dec=dec: sum(not isinstance(r, Exception) for r in dec.decode_many(clips)),
                    lambda dec=dec: [w.proc.pid for w in [*dec._idle, *dec._busy]],
                )
            for name, (run, _) in runs.items():  # warm-up: workers started, clips in the page cache
                print(f"warm-up: {name}", flush=True)
                run()
            rates: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
            for r in range(args.repeat):
                for name, (run, pids) in runs.items():
                    rates[name].append(timed(run, n, pids))
                    w, c = rates[name][-1]
                    print(f"run {r + 1}/{args.repeat}: {name}: {w:.2f} clips/s, {c:.2f} per CPU-s", flush=True)
        for dec in decoders.values():
            dec.close()
        wall = {k: [w for w, _ in v] for k, v in rates.items()}
        cpu = {k: [c for _, c in v] for k, v in rates.items()}
        base, cpu_base = float(np.median(wall[bare_name])), float(np.median(cpu[bare_name]))
        key = "reelvec keyframes: CLIP + OCR + fingerprint frames + audio"
        ratio = float(np.median(wall[key])) / base
        cpu_ratio = float(np.median(cpu[key])) / cpu_base
        table = (
            "| decode | clips/s (median) | range | × bare loop | clips per CPU-second (median) | × bare loop |\n"
            "|---|---|---|---|---|---|\n"
            + "".join(
                f"| {k} | **{np.median(v):.2f}** | {min(v):.2f}–{max(v):.2f} | {np.median(v) / base:.2f} | "
                f"{np.median(cpu[k]):.2f} | {np.median(cpu[k]) / cpu_base:.2f} |\n"
                for k, v in wall.items()
            )
        )
        section = (
            f"\n## decode — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{command()}` · {os.cpu_count()} CPU cores, {N} processes on each side · {n} clips of "
            f"{args.seconds:.0f} s 1080p30 H.264 + AAC, keyframe every {args.gop} frames ({args.distinct} distinct, "
            f"repeated; generated in {gen_s:.0f} s, not timed) · reelvec frames: CLIP {cfg.decode.short_side} px, "
            f"OCR {cfg.ocr.num_frames} at {cfg.ocr.short_side} px, fingerprint {cfg.fingerprint.size}² gray at "
            f"≤ {cfg.fingerprint.fps:g}/s · rows interleaved, median of {args.repeat} runs after a warm-up"
            + (f" · {args.note}" if args.note else "")
            + f"\n\nThe keyframe decode stage with every output runs at **{ratio:.2f}×** the bare loop's clips/s "
            f"(target ≥ 0.8×: {'met' if ratio >= 0.8 else 'missed'}) and **{cpu_ratio:.2f}×** its clips per CPU-second "
            "(CPU of the driver and of every worker process: what the cores of an unloaded machine would give).\n\n"
            + table
        )
        publish("decode", section, write=write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
