"""OCR cost per item: `read` one clip at a time vs `read_batch`, with and without the skip-unchanged shortcuts.

Other-engine row: `read_batch` on the `ocr.engine` the loaded reader does not run (onnx2torch's torch modules on the
same device when it runs onnxruntime, and vice versa), and whether it reads the same lines.

Inputs: the 16 sample catalogue clips (320x240, no overlay text) and 4 generated 640x360 clips with two text lines, each
decoded once with `ocr.num_frames` OCR frames. Baseline row: rapidocr's stock `RapidOCR()` on the same frames.
Also: decode cost with vs without OCR frames (same call), and how far decord's CLIP frames move when OCR is on.
Text gate: every sample clip (catalogue + overlay clips), read_batch with `ocr.text_gate` off vs on side by side:
ms per item, frames that skipped the detector, recall of the captions.jsonl overlay lines; plus the two candidate
gates' separation on those frames (edge density vs the detector's map at a reduced scale).
Usage: python bench/ocr.py [--repeats 3] [--smoke] [--no-write]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import difflib
import glob
import itertools
import json
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
from embedder.ocr import OcrReader, normalize_text  # noqa: E402
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


def overlay_recall(results: list[OcrResult], expected: list[list[str]]) -> tuple[int, int]:
    """(found, total) overlay lines: a line is found when one read line, or two consecutive ones (PP-OCR splits
    long lines), match its normalized text at >= 0.8 similarity."""
    found = total = 0
    for res, lines in zip(results, expected, strict=True):
        read = [normalize_text(ln.text) for ln in res.lines]
        candidates = read + [a + b for a, b in itertools.pairwise(read)]
        for line in lines:
            key = normalize_text(line)
            total += 1
            found += any(difflib.SequenceMatcher(None, key, c, autojunk=False).ratio() >= 0.8 for c in candidates)
    return found, total


def edge_score(rgb: np.ndarray) -> float:
    """Candidate gate: densest horizontal run of strong Sobel edges at ~180 px short side (12-px blocks, 6 wide)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    k = max(1, min(gray.shape) // 180)
    g = cv2.resize(gray, (gray.shape[1] // k, gray.shape[0] // k), interpolation=cv2.INTER_AREA)
    mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    strong = (mag > 600).astype(np.float32)
    dens = cv2.resize(strong, (strong.shape[1] // 12, strong.shape[0] // 12), interpolation=cv2.INTER_AREA)
    return float(cv2.blur(dens, (6, 1)).max())


def detector_pixels(reader: OcrReader, rgb: np.ndarray, scale: float) -> int:
    """Candidate gate: pixels above the card's det_thresh in the detector's map at `scale` of the frame."""
    import cv2

    x = reader._det_input(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale)
    return int((reader._run_det(x[None])[0] > float(reader.card.params.get("det_thresh", 0.3))).sum())


def gate_rows(reader: OcrReader, cfg: Any, repeats: int, smoke: bool) -> list[str]:
    """The text gate on every sample clip: cost, skipped frames and overlay recall with the gate off vs on."""
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    if smoke:
        rows = [r for r in rows if r["overlay"]][:3] + [r for r in rows if not r["overlay"]][:3]
    media = [decode_file(str(ROOT / "samples/clips" / r["file"]), cfg.decode, cfg.limits, cfg.ocr) for r in rows]
    clips = [(m.ocr_frames, m.ocr_timestamps_s) for m in media]
    expected = [r["overlay"] for r in rows]
    n_text = sum(bool(e) for e in expected)
    lines = [
        "",
        f"Text gate on the samples ({len(rows)} clips: {n_text} with overlay lines, {len(rows) - n_text} without; "
        f"read_batch, skip-unchanged on; gate_scale {cfg.ocr.gate_scale}, gate_min_pixels {cfg.ocr.gate_min_pixels}):",
        "",
        "| text gate | ms per item | frames skipping the detector | overlay lines found | lines vs gate off |",
        "|---|---|---|---|---|",
    ]
    results = {}
    for gate in (False, True):
        reader.cfg = reader.cfg.model_copy(update={"text_gate": gate})
        ms, out = median_ms(lambda: reader.read_batch(clips), repeats)
        results[gate] = out
        st = reader.stats
        found, total = overlay_recall(out, expected)
        same = "-" if not gate else ("same" if out == results[False] else "DIFFERENT")
        lines.append(
            f"| {'on' if gate else 'off'} | {ms / len(clips):.1f} | {st['frames_gated']}/{st['frames_read']} | "
            f"{found}/{total} | {same} |"
        )
    reader.cfg = cfg.ocr
    text_frames = [f for (frames, _), e in zip(clips, expected, strict=True) if e for f in frames]
    empty_frames = [f for (frames, _), e in zip(clips, expected, strict=True) if not e for f in frames]
    lines += [
        "",
        "Gate candidates on the same frames (a safe gate needs every overlay frame above every text-free one):",
        "",
        "| candidate | min over overlay frames | max over text-free frames | text-free frames at 0 |",
        "|---|---|---|---|",
    ]
    text_edges, empty_edges = [edge_score(f) for f in text_frames], [edge_score(f) for f in empty_frames]
    lines.append(
        f"| edge density (strong Sobel edges per 12-px block, 6-block run) | {min(text_edges):.3f} | "
        f"{max(empty_edges):.3f} | {sum(e == 0 for e in empty_edges)}/{len(empty_edges)} |"
    )
    for scale in (0.25, 0.33, 0.5):
        tp = [detector_pixels(reader, f, scale) for f in text_frames]
        ep = [detector_pixels(reader, f, scale) for f in empty_frames]
        lines.append(
            f"| detector map at scale {scale}: pixels > det_thresh | {min(tp)} | {max(ep)} | "
            f"{sum(e == 0 for e in ep)}/{len(ep)} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update bench/RESULTS.md")
    ap.add_argument("--smoke", action="store_true", help="the text-gate part only, on 6 clips, 1 repeat, print only")
    args = ap.parse_args()
    if args.smoke:
        cfg = load_config()
        reader = load_model(cfg.models.ocr.card, cfg)
        assert isinstance(reader, OcrReader)
        publish("ocr", "\n".join(["## ocr — smoke", *gate_rows(reader, cfg, 1, smoke=True)]) + "\n", write=False)
        return
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
    lines += gate_rows(reader, cfg, args.repeats, smoke=False)
    took = time.perf_counter() - t_start
    lines += ["", f"Run took {took:.0f} s; 1-min load average {os.getloadavg()[0]:.1f} at end."]
    publish("ocr", "\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
