"""OCR cost per item: `read` one clip at a time vs `read_batch`, with and without the skip-unchanged shortcuts.

Other-engine row: `read_batch` on the `ocr.engine` the loaded reader does not run (onnx2torch's torch modules on the
same device when it runs onnxruntime, and vice versa), and whether it reads the same lines.

Inputs: the 16 sample catalogue clips (320x240, no overlay text) and 4 generated 640x360 clips with two text lines, each
decoded once with `ocr.num_frames` OCR frames. Baseline row: rapidocr's stock `RapidOCR()` on the same frames.
Also: decode cost with vs without OCR frames (same call), and how far decord's CLIP frames move when OCR is on.
Usage: python bench/ocr.py [--repeats 3] [--no-write]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.decode import decode_file  # noqa: E402
from embedder.factory import load_model, resolve_device  # noqa: E402
from embedder.ocr import OcrReader  # noqa: E402
from embedder.types import OcrResult  # noqa: E402

TEXT_CLIPS = [
    ("Fresh pasta in ten minutes", "Subscribe for more recipes"),
    ("GOAL OF THE WEEK", "Top five saves"),
    ("Sea turtles at dawn", "Filmed off the reef"),
    ("Launch day countdown", "Watch the full stream"),
]


def median_ms(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """Median wall time of `fn` in ms over `repeats` runs (after one warm-up unless told not to), and its output."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), out


def text_clip(path: Path, lines: tuple[str, str], seconds: int = 4, fps: int = 25) -> str:
    """A 640x360 H.264 clip: moving discs on a gradient under two static white text lines (PyAV + Pillow)."""
    import av
    from PIL import Image, ImageDraw, ImageFont

    fonts = glob.glob("/usr/share/fonts/**/DejaVuSans-Bold.ttf", recursive=True)
    font = ImageFont.truetype(fonts[0], 30) if fonts else ImageFont.load_default(size=30)
    x = np.linspace(0, 1, 640)[None, :, None]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        for n in range(seconds * fps):
            t = n / fps
            base = (40 + 60 * x + 20 * np.sin(2 * np.pi * (x + t / 4))) * np.array([0.6, 0.9, 1.4])
            img = Image.fromarray(np.broadcast_to(base, (360, 640, 3)).clip(0, 255).astype(np.uint8))
            d = ImageDraw.Draw(img)
            for i in range(0, 640, 80):
                cx = (i + 40 * t) % 640
                d.ellipse((cx, 180, cx + 30, 210), fill=(210, 130, 40))
            d.text((40, 30), lines[0], font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
            d.text((40, 290), lines[1], font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
            for packet in s.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return str(path)


def bench_reader(reader: OcrReader, clips: list, repeats: int) -> list[tuple[str, float, str, list]]:
    """(variant, ms per item, work done, results) for read vs read_batch, skip on and off."""
    rows = []
    for skip in (True, False):
        reader.skip_identical = skip
        for name, fn in (
            ("read (one clip at a time)", lambda: [reader.read(f, t) for f, t in clips]),
            ("read_batch (all clips)", lambda: reader.read_batch(clips)),
        ):
            # The first variant warms the sessions up; the others reuse them.
            ms, out = median_ms(fn, repeats, warmup=not rows)
            ms /= len(clips)
            if name.startswith("read_batch"):
                st = reader.stats
                work = f"{st['frames_read']}/{st['frames']} frames, {st['boxes_recognized']}/{st['boxes']} boxes"
            else:
                work = "-"
            rows.append((f"{name}, skip {'on' if skip else 'off'}", ms, work, out))
    reader.skip_identical = True
    return rows


def other_engine(reader: OcrReader, cfg: Any) -> OcrReader:
    """The same card and settings on the engine `reader` does not run (torch <-> onnxruntime)."""
    engine = "torch" if reader.engine == "onnxruntime" else "onnxruntime"
    return OcrReader(
        reader.card,
        reader.card.resolve(cfg.models.models_dir),
        cfg.ocr.model_copy(update={"engine": engine}),
        resolve_device(cfg.models),
        cfg.models.torch_threads,
        skip_identical=cfg.ocr.skip_unchanged,
        dedup_similarity=cfg.ocr.dedup_similarity,
        min_chars=cfg.ocr.min_chars,
    )


def agreement(out: list[OcrResult], reference: list[OcrResult]) -> str:
    """Whether two engines read the same lines (text and span), and how far their confidences are apart."""
    spans = [[(ln.text, ln.first_s, ln.last_s) for ln in r.lines] for r in out]
    if spans != [[(ln.text, ln.first_s, ln.last_s) for ln in r.lines] for r in reference]:
        return "DIFFERENT lines from first row"
    diffs = [
        abs(a.confidence - b.confidence)
        for x, y in zip(out, reference, strict=True)
        for a, b in zip(x.lines, y.lines, strict=True)
    ]
    diff = max(diffs, default=0.0)
    return f"same lines as first row, confidence within {diff:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update bench/RESULTS.md")
    args = ap.parse_args()
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    cfg = load_config()
    reader = load_model(cfg.models.ocr.card, cfg)
    assert isinstance(reader, OcrReader)
    alt = other_engine(reader, cfg)
    # The catalogue clips (`topic_NN.mp4`); other helpers' clips in the folder are not part of this benchmark.
    found = sorted(glob.glob(str(ROOT / "samples/clips/*.mp4")))
    samples = [p for p in found if re.fullmatch(r"[a-z]+_\d+", Path(p).stem)]
    with tempfile.TemporaryDirectory() as tmp:
        texts = [text_clip(Path(tmp) / f"text{i}.mp4", lines) for i, lines in enumerate(TEXT_CLIPS)]
        sets = {
            f"samples/clips ({len(samples)} clips, 320x240, no overlay)": samples,
            f"generated ({len(texts)} clips, 640x360, 2 text lines)": texts,
        }
        decoded = {k: [decode_file(p, cfg.decode, cfg.limits, cfg.ocr) for p in v] for k, v in sets.items()}
        dec_rows = []
        for k, paths in sets.items():
            plain, plain_out = median_ms(
                lambda paths=paths: [decode_file(p, cfg.decode, cfg.limits) for p in paths], args.repeats
            )
            with_ocr, _ = median_ms(
                lambda paths=paths: [decode_file(p, cfg.decode, cfg.limits, cfg.ocr) for p in paths], args.repeats
            )
            moved = np.mean(
                [
                    np.abs(a.frames.astype(int) - m.frames.astype(int)).mean()
                    for a, m in zip(plain_out, decoded[k], strict=True)
                ]
            )
            dec_rows.append((k, plain / len(paths), with_ocr / len(paths), moved))

    from rapidocr_onnxruntime import RapidOCR

    stock = RapidOCR()
    lines = [
        f"## ocr — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{command()}` · {platform.machine()}, {os.cpu_count()} cores, OCR engine {reader.providers} "
        f"(other-engine row: {alt.providers}), intra-op threads {cfg.models.torch_threads or 'default'} · "
        f"card {reader.card.id} · "
        f"ocr.num_frames={cfg.ocr.num_frames}, short_side={cfg.ocr.short_side}, batch_size={cfg.ocr.batch_size} · "
        f"median of {args.repeats} · 1-min load average {load_start:.1f} at start",
        "",
        "| clips | variant | ms per item | work (last batch) | lines read |",
        "|---|---|---|---|---|",
    ]
    for k, items in decoded.items():
        clips = [(m.ocr_frames, m.ocr_timestamps_s) for m in items]
        rows = bench_reader(reader, clips, args.repeats)
        reference = rows[0][3]
        for name, ms, work, out in rows:
            same = "same as first row" if out == reference else "DIFFERS from first row"
            lines.append(f"| {k} | {name} | {ms:.0f} | {work} | {sum(len(r.lines) for r in out)} ({same}) |")
        ms, out = median_ms(lambda clips=clips: alt.read_batch(clips), args.repeats)
        row = f"read_batch (all clips), skip on, engine {alt.providers[0]}"
        n = sum(len(r.lines) for r in out)
        lines.append(f"| {k} | {row} | {ms / len(clips):.0f} | - | {n} ({agreement(out, reference)}) |")
        # Baseline on the first 4 clips only (it is the slow one); RapidOCR takes BGR like cv2.imread.
        frames = [f[:, :, :, ::-1] for f, _ in clips[:4]]
        ms = median_ms(lambda frames=frames: [stock(x) for f in frames for x in f], args.repeats)[0] / len(frames)
        row = "baseline: stock RapidOCR() per frame (det at min side 736, cls on), first 4 clips"
        lines.append(f"| {k} | {row} | {ms:.0f} | - | - |")
    lines += [
        "",
        "Decode (in-process `decode_file`, decord) with OCR frames from the same call vs without:",
        "",
        "| clips | ms per item, no OCR frames | ms per item, + OCR frames | CLIP frames mean abs pixel change |",
        "|---|---|---|---|",
    ]
    for k, plain, with_ocr, moved in dec_rows:
        lines.append(f"| {k} | {plain:.0f} | {with_ocr:.0f} | {moved:.2f} |")
    took = time.perf_counter() - t_start
    lines += ["", f"Run took {took:.0f} s; 1-min load average {os.getloadavg()[0]:.1f} at end."]
    publish("ocr", "\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
