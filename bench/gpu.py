"""The GPU path end to end: N generated 15-s 1080p clips → decode on CPU threads → CLIP ViT-B-32 fp16 batched,
Whisper (CTranslate2 float16 on CUDA), text encoder, OCR (CUDA provider if installed) → fused vectors.

CLIP runs with RANDOM weights of the real ViT-B-32 architecture, written to a temporary card (no CLIP weights
ship offline): the figures are throughput only, never retrieval quality. Every stage runs through the same
`embedder.pipeline` steps as ingest; items/s is end to end over the whole batch (decode included), and each
stage's share of the wall time and the GPU's mean utilisation while it runs (NVML, when available) are printed.
Goal (issue 3/4): ≥ 30 videos/s on one H100 (Cosmos-Embed1 NIM publishes 28.57 videos/s for 15-s 1080p clips).
Without a CUDA device it records "not run: no GPU" and measures nothing.
Usage: python bench/gpu.py [--clips 64] [--seconds 15] [--workers 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402


def make_clip(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (1920, 1080)) -> None:
    """A 1080p H.264 clip with moving shapes, an overlay line and a tone (PyAV only, no ffmpeg binary)."""
    import av
    from PIL import Image, ImageDraw

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * fps)):
            img = Image.new("RGB", size, (20 + i % 200, 40, 90))
            d = ImageDraw.Draw(img)
            x = (i * 17) % (w - 300)
            d.ellipse((x, h // 3, x + 300, h // 3 + 300), fill=(230, 200, 40))
            d.text((80, h - 160), "Homemade pasta in ten minutes", fill=(255, 255, 255), font_size=72)
            for p in vs.encode(av.VideoFrame.from_image(img)):
                out.mux(p)
        t = np.arange(int(seconds * 16000)) / 16000
        tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in aus.encode(frame):
            out.mux(p)
        for s in (vs, aus):
            for p in s.encode():
                out.mux(p)


class GpuMeter:
    """Mean GPU utilisation (NVML) sampled every 50 ms while a stage runs; None without NVML."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:
            self._nvml = None
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> GpuMeter:
        self.samples, self._stop = [], threading.Event()
        if self._nvml is not None:
            threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def random_vit_b32_card(d: Path) -> Path:
    """ViT-B-32 architecture with random weights, behind a card of its own (never presented as a model)."""
    import hashlib

    import open_clip
    import torch
    import yaml

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), d / "random_vit_b32.pt")
    digest = hashlib.sha256((d / "random_vit_b32.pt").read_bytes()).hexdigest()
    card = {
        "id": "random-vit-b-32",
        "family": "open_clip",
        "version": "random-init",
        "modality": "visual",
        "dims": 512,
        "source": {"kind": "local", "path": "."},
        "files": [{"path": "random_vit_b32.pt", "sha256": digest}],
        "params": {"arch": "ViT-B-32"},
        "intended_use": "throughput benchmark only: random weights, never a real model",
    }
    (d / "random-vit-b-32.yaml").write_text(yaml.safe_dump(card))
    return d / "random-vit-b-32.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=16, help="decode threads (each with its own decode worker)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        publish(
            "gpu",
            f"\n## gpu — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nCommand: `{command()}` · **not run: no GPU** "
            "(no CUDA device on this machine; no figure is estimated).\n",
            write=not args.no_write,
        )
        return

    from embedder.config import load_config
    from embedder.decode import Decoder
    from embedder.pipeline import (
        ItemEmbedder,
        Work,
        asr_step,
        decode_step,
        finish,
        ocr_step,
        text_step,
        visual_step,
    )
    from embedder.types import ItemEmbedding, ItemInput

    tmp = Path(tempfile.mkdtemp(prefix="rvgpu-"))
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            paths = [tmp / f"clip_{i:03d}.mp4" for i in range(min(args.clips, 8))]
            list(pool.map(lambda p: make_clip(p, args.seconds), paths))
        # the same 8 generated clips repeated: generating 64 × 1080p on the CPU would dominate the run
        clips = [paths[i % len(paths)] for i in range(args.clips)]
        gen_s = time.perf_counter() - t0
        card = random_vit_b32_card(tmp)
        cfg = load_config(
            environ={
                "REELVEC__DATA_DIR": str(tmp),
                "REELVEC__INDEX__PATH": str(tmp / "index"),
                "REELVEC__MODELS__CLIP__CARD": str(card),
                "REELVEC__MODELS__DEVICE": "cuda",
                "REELVEC__ASR__COMPUTE_TYPE": "float16",
            }
        )
        emb = ItemEmbedder(cfg)  # loads every model once (CLIP fp16 on cuda via models.dtype=auto)
        m = emb.models
        decoders = [Decoder(cfg.decode, cfg.limits, ocr=cfg.ocr if m.ocr else None) for _ in range(args.workers)]
        works = [Work(ItemInput(f"gpu_{i:03d}", str(p))) for i, p in enumerate(clips)]
        meter = GpuMeter()
        stage_s: dict[str, float] = {}
        util: dict[str, float | None] = {}
        t_all = time.perf_counter()
        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            chunks = [works[i :: args.workers] for i in range(args.workers)]
            list(pool.map(lambda dc: decode_step(dc[0], dc[1]), zip(decoders, chunks, strict=True)))
        stage_s["decode (CPU threads)"] = time.perf_counter() - t
        steps = [
            ("ASR (Whisper, CT2 float16)", lambda: asr_step(m.asr, works)),
            ("OCR", lambda: ocr_step(m.ocr, works)),
            ("CLIP ViT-B-32 fp16 (random weights)", lambda: visual_step(m.clip, works)),
            ("text encoder", lambda: text_step(m.text, works, cfg.text.transcript_max_chars)),
        ]
        for name, run in steps:
            with meter:
                t = time.perf_counter()
                run()
                torch.cuda.synchronize()
                stage_s[name] = time.perf_counter() - t
            util[name] = meter.mean
        results = finish(works, emb.spec, m.unavailable)
        wall = time.perf_counter() - t_all
        ok = sum(isinstance(r, ItemEmbedding) for r in results)
        for dcd in decoders:
            dcd.close()
        emb.close()
        gpu = torch.cuda.get_device_name(0)
        rows = "".join(
            f"| {k} | {v:.2f} | {v / wall * 100:.0f}% | {'n/a' if util.get(k) is None else f'{util[k]:.0f}%'} |\n"
            for k, v in stage_s.items()
        )
        target = "met" if ok / wall >= 30 else "missed"
        section = (
            f"\n## gpu — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{command()}` · {gpu} · {args.clips} clips of {args.seconds:.0f} s 1080p "
            f"({ok} embedded; clip generation {gen_s:.0f} s, not timed) · CLIP = ViT-B-32 architecture with random "
            "weights (throughput only)\n\n"
            f"**{ok / wall:.2f} videos/s end to end** (wall {wall:.1f} s); target ≥ 30 videos/s: {target}.\n\n"
            "| stage | s | share of wall | mean GPU util |\n|---|---|---|---|\n" + rows
        )
        publish("gpu", section, write=not args.no_write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
