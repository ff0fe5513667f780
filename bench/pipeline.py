"""Per-stage throughput of the embedding pipeline, each against its baseline in the same run.

decode: decord sampled (K frames) vs. the sampled PyAV path (our fallback decoder); ASR real-time factor; CLIP images/s
(ViT-B-32 *architecture*, random init, because no CLIP weights ship offline — throughput only, no output
used); text encodings/s (MiniLM); end to end items/s, `embed_batch` vs. a one-by-one loop; OCR ms per item and
its share of the end-to-end time.
Usage: python bench/pipeline.py [--repeats 3]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.decode import decode_file  # noqa: E402
from embedder.pipeline import ItemEmbedder  # noqa: E402
from embedder.types import ItemInput  # noqa: E402


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


LONG_S, LONG_W, LONG_H, LONG_FPS = 30, 1280, 720, 30


def make_long_clip(path: Path) -> Path:
    """A synthetic 30 s 720p H.264 clip (moving pattern + grain; x264 `veryfast`: CABAC, B-frames, GOP 2 s)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:LONG_H, 0:LONG_W]
    base = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.int16)
    # Grain, so the stream has the residual bits of camera footage and not only motion vectors.
    grain = np.random.default_rng(0).integers(-12, 13, size=(4, LONG_H, LONG_W, 3), dtype=np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=LONG_FPS)
        stream.width, stream.height, stream.pix_fmt = LONG_W, LONG_H, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(2 * LONG_FPS)}
        for i in range(LONG_S * LONG_FPS):
            rgb = np.clip(np.roll(base, (2 * i, 4 * i), axis=(0, 1)) + grain[i % 4], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    cfg = load_config()
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    paths = [str(ROOT / "samples/clips" / r["file"]) for r in rows]
    items = [ItemInput(r["item_id"], p, r["caption"], r["hashtags"]) for r, p in zip(rows, paths, strict=True)]
    emb = ItemEmbedder(cfg)
    table: list[tuple[str, str, str, str]] = []

    # The fair baseline is the PyAV path a user would write: decode, keep only the sampled frames, resize them
    # (our own fallback decoder, `decode.backend: pyav`), not a full-frame RGB conversion of every frame.
    pyav_cfg = cfg.decode.model_copy(update={"backend": "pyav"})
    t_sampled = median_time(lambda: [decode_file(p, cfg.decode, cfg.limits) for p in paths], args.repeats)
    t_full = median_time(lambda: [decode_file(p, pyav_cfg, cfg.limits) for p in paths], args.repeats)
    n = len(paths)
    table.append(
        (
            "decode (clips/s)",
            f"decord sampled K={cfg.decode.num_frames}: {n / t_sampled:.1f}",
            f"PyAV sampled K={cfg.decode.num_frames}: {n / t_full:.1f}",
            f"{t_full / t_sampled:.2f}x",
        )
    )

    # The sample clips are 3-5 s at 320x240; uploads are often 30-60 s at 720p, where sampling pays off most.
    long_clip = make_long_clip(Path(tempfile.mkdtemp(prefix="rvbench-")) / "long.mp4")
    t_ls = median_time(lambda: decode_file(str(long_clip), cfg.decode, cfg.limits), args.repeats)
    t_lf = median_time(lambda: decode_file(str(long_clip), pyav_cfg, cfg.limits), args.repeats)
    table.append(
        (
            f"decode, one {LONG_S} s {LONG_W}x{LONG_H} {LONG_FPS} fps clip (s)",
            f"decord sampled K={cfg.decode.num_frames}: {t_ls:.2f}",
            f"PyAV sampled K={cfg.decode.num_frames}: {t_lf:.2f}",
            f"{t_lf / t_ls:.2f}x",
        )
    )
    shutil.rmtree(long_clip.parent, ignore_errors=True)

    media = [decode_file(p, cfg.decode, cfg.limits) for p in paths]
    audio_s = sum(len(m.audio) / cfg.decode.audio_sample_rate for m in media if m.audio is not None)
    assert emb.models.get("asr") is not None
    t_asr = median_time(lambda: [emb.models["asr"].transcribe(m.audio) for m in media], args.repeats)
    table.append(("ASR real-time factor", f"whisper tiny.en int8: {t_asr / audio_s:.3f}", "1.0 = real time", "-"))

    import open_clip

    torch.manual_seed(0)
    clip_arch = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    frames = torch.randn(32, 3, 224, 224)

    def clip_batch() -> None:
        with torch.inference_mode():
            clip_arch.encode_image(frames)

    def clip_single() -> None:
        with torch.inference_mode():
            for i in range(32):
                clip_arch.encode_image(frames[i : i + 1])

    t_cb, t_c1 = median_time(clip_batch, args.repeats), median_time(clip_single, args.repeats)
    table.append(
        (
            "CLIP ViT-B-32 images/s (arch only)",
            f"batch 32: {32 / t_cb:.1f}",
            f"batch 1: {32 / t_c1:.1f}",
            f"{t_c1 / t_cb:.2f}x",
        )
    )

    assert emb.models.get("text") is not None
    texts = [r["caption"] or r["speech"] for r in rows] * 4
    t_tb = median_time(lambda: emb.models["text"].encode(texts), args.repeats)
    t_t1 = median_time(lambda: [emb.models["text"].encode([t]) for t in texts], args.repeats)
    table.append(
        (
            "text encodings/s (MiniLM)",
            f"batch {cfg.text.batch_size}: {len(texts) / t_tb:.1f}",
            f"batch 1: {len(texts) / t_t1:.1f}",
            f"{t_t1 / t_tb:.2f}x",
        )
    )

    t_eb = median_time(lambda: emb.embed_batch(items), args.repeats)
    t_e1 = median_time(lambda: [emb.embed(i) for i in items], args.repeats)
    table.append(
        ("end to end items/s", f"embed_batch: {n / t_eb:.2f}", f"one by one: {n / t_e1:.2f}", f"{t_e1 / t_eb:.2f}x")
    )
    if emb.models.get("ocr") is not None:
        ocr_media = [decode_file(p, cfg.decode, cfg.limits, ocr=cfg.ocr) for p in paths]
        clips = [(m.ocr_frames, m.ocr_timestamps_s) for m in ocr_media]
        t_ocr = median_time(lambda: emb.models["ocr"].read_batch(clips), args.repeats)
        table.append(
            (
                f"OCR ms/item (PP-OCRv4, ocr.num_frames={cfg.ocr.num_frames}, short side {cfg.ocr.short_side})",
                f"{t_ocr * 1000 / n:.0f} ms",
                f"share of end-to-end embed_batch: {t_ocr / t_eb * 100:.0f}%",
                "-",
            )
        )
    emb.close()

    header = "| stage | reelvec | baseline | ratio (baseline time / reelvec time) |\n|---|---|---|---|\n"
    body = "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in table)
    section = (
        f"\n## pipeline — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {n} sample clips · medians of {args.repeats} runs after a warm-up · "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, device cpu\n\n" + header + body
    )
    publish("pipeline", section, write=not args.no_write)


if __name__ == "__main__":
    main()
