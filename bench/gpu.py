"""The GPU path end to end: N generated 15-s 1080p clips → decode on CPU worker processes → CLIP ViT-B-32 fp16
batched, Whisper (CTranslate2 float16 on CUDA), text encoder, OCR (onnxruntime CUDA provider, or torch via
onnx2torch, on the GPU when available) → fused vectors.

CLIP runs with RANDOM weights of the real ViT-B-32 architecture, written to a temporary card (no CLIP weights
ship offline): the figures are throughput only, never retrieval quality. Every stage runs through the same
`embedder.pipeline` steps as ingest. Printed: per-stage time, clips/s alone and mean GPU utilisation (NVML) with
stages one after another; then end to end with decode overlapped with the models, for the full pipeline and for
video only (the signals Cosmos-Embed1 gives), each with exact sampled frames and with `decode.keyframe_snap_s`.
Goal (issue 3/4): ≥ 30 videos/s on one H100 (Cosmos-Embed1 NIM publishes 28.57 videos/s for 15-s 1080p clips).
Without a CUDA device it records "not run: no GPU" and measures nothing (`--smoke` runs it on the CPU, unwritten).
Usage: python bench/gpu.py [--clips 64] [--seconds 15] [--gop 30] [--snap 0.5] [--workers 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402


def make_clip(path: Path, seconds: float, gop: int = 30, fps: int = 30, size: tuple[int, int] = (1920, 1080)) -> None:
    """A 1080p H.264 clip with moving shapes, an overlay line and a tone (PyAV only, no ffmpeg binary); a keyframe
    every `gop` frames (phone cameras record with a ~1-s keyframe interval)."""
    import av
    from PIL import Image, ImageDraw

    w, h = size
    with av.open(str(path), "w") as out:
        opts = {"preset": "ultrafast", "crf": "28", "g": str(gop), "keyint_min": str(gop)}
        vs = out.add_stream("libx264", rate=fps, options=opts)
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


def local_text_card(d: Path, model_dir: Path) -> Path:
    """A card for a HF text-encoder folder carried to the machine (e.g. the bundled MiniLM saved as float16)."""
    import hashlib

    import yaml

    base = yaml.safe_load((ROOT / "model_cards" / "minilm-l6-v2.yaml").read_text())
    weights = model_dir / "model.safetensors"
    card = {
        **base,
        "id": "minilm-l6-v2-local",
        "version": f"{base['version']} (weights copied to {model_dir.name})",
        "source": {"kind": "local", "path": str(model_dir.resolve())},
        "files": [{"path": "model.safetensors", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}],
    }
    (d / "minilm-l6-v2-local.yaml").write_text(yaml.safe_dump(card))
    return d / "minilm-l6-v2-local.yaml"


def model_steps(m, cfg) -> list[tuple[str, Any, Callable[[list], None]]]:
    """The model steps after decode, in pipeline order, each batched over the items it is given (None = off)."""
    from embedder.pipeline import asr_step, ocr_step, text_step, visual_step

    return [
        ("ASR (speech gate + Whisper)", m.asr, lambda ws: asr_step(m.asr, ws)),
        (f"OCR (PP-OCRv4 on {m.ocr.providers[0] if m.ocr else '-'})", m.ocr, lambda ws: ocr_step(m.ocr, ws)),
        ("CLIP ViT-B-32 (random weights)", m.clip, lambda ws: visual_step(m.clip, ws)),
        ("text encoder", m.text, lambda ws: text_step(m.text, ws, cfg.text.transcript_max_chars)),
    ]


def item(item_id: str, path: Path):
    """An upload as the service sees it: the clip plus a caption and hashtags (so the text encoder has work)."""
    from embedder.types import ItemInput

    return ItemInput(item_id, str(path), caption=f"Homemade pasta in ten minutes, take {item_id}", hashtags=["food"])


def stages_in_turn(emb, decoders, clips, workers, meter, sync) -> tuple[float, dict, dict, list]:
    """Every clip decoded first (CPU threads), then each model step over all of them: per-stage time and GPU use."""
    from embedder.pipeline import Work, decode_step

    works = [Work(item(f"a_{i:03d}", p)) for i, p in enumerate(clips)]
    stage_s: dict[str, float] = {}
    util: dict[str, float | None] = {}
    t_all = time.perf_counter()
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        chunks = [works[i::workers] for i in range(workers)]
        list(pool.map(lambda dc: decode_step(dc[0], dc[1]), zip(decoders, chunks, strict=True)))
    stage_s["decode + fingerprint (CPU threads)"] = time.perf_counter() - t
    for name, model, run in model_steps(emb.models, emb.cfg):
        if model is None:
            continue
        with meter:
            t = time.perf_counter()
            run(works)
            sync()
            stage_s[name] = time.perf_counter() - t
        util[name] = meter.mean
    return time.perf_counter() - t_all, stage_s, util, works


def overlapped(emb, models, decoders, clips, workers, chunk, meter, sync, tag="b") -> tuple[float, float | None, list]:
    """Decode threads run ahead while the model steps take each decoded chunk of `chunk` items in turn."""
    from embedder.pipeline import Work, decode_step

    works = [Work(item(f"{tag}_{i:03d}", p)) for i, p in enumerate(clips)]
    free: queue.Queue = queue.Queue()
    for d in decoders:
        free.put(d)

    def decode_one(w) -> None:
        d = free.get()
        try:
            decode_step(d, [w])
        finally:
            free.put(d)

    steps = model_steps(models, emb.cfg)
    t_all = time.perf_counter()
    with meter, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(decode_one, w) for w in works]
        for start in range(0, len(works), chunk):
            for f in futures[start : start + chunk]:
                f.result()
            for _, _, run in steps:
                run(works[start : start + chunk])
        sync()
    return time.perf_counter() - t_all, meter.mean, works


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--gop", type=int, default=30, help="keyframe interval of the generated clips, in frames")
    ap.add_argument("--snap", type=float, default=0.5, help="decode.keyframe_snap_s of the snapped runs")
    ap.add_argument("--workers", type=int, default=16, help="decode threads (each with its own decode worker)")
    ap.add_argument("--chunk", type=int, default=16, help="items per model call in the overlapped runs")
    ap.add_argument("--repeat", type=int, default=3, help="overlapped runs per row (the median is reported)")
    ap.add_argument("--text-dir", type=Path, help="a HF text-encoder folder to use instead of the bundled card")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions, printed in the section")
    ap.add_argument("--smoke", action="store_true", help="run on the CPU with whatever is given; never writes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    write = not (args.no_write or args.smoke)

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        publish(
            "gpu",
            f"\n## gpu — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nCommand: `{command()}` · **not run: no GPU** "
            "(no CUDA device on this machine; no figure is estimated).\n",
            write=write,
        )
        return
    device = "cpu" if args.smoke else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    import onnxruntime

    from embedder.config import load_config
    from embedder.decode import Decoder
    from embedder.pipeline import ItemEmbedder, finish
    from embedder.types import ItemEmbedding

    tmp = Path(tempfile.mkdtemp(prefix="rvgpu-"))
    try:
        t0 = time.perf_counter()
        paths = [tmp / f"clip_{i:03d}.mp4" for i in range(min(args.clips, 8))]
        with ProcessPoolExecutor(len(paths)) as pool:
            list(pool.map(make_clip, paths, [args.seconds] * len(paths), [args.gop] * len(paths)))
        # the same 8 generated clips repeated: generating 64 × 1080p on the CPU would dominate the run
        clips = [paths[i % len(paths)] for i in range(args.clips)]
        gen_s = time.perf_counter() - t0
        env = {
            "REELVEC__DATA_DIR": str(tmp),
            "REELVEC__INDEX__PATH": str(tmp / "index"),
            "REELVEC__MODELS__CLIP__CARD": str(random_vit_b32_card(tmp)),
            "REELVEC__MODELS__DEVICE": device,
            "REELVEC__ASR__COMPUTE_TYPE": "float16" if device == "cuda" else "int8",
        }
        if args.text_dir:
            env["REELVEC__MODELS__TEXT__CARD"] = str(local_text_card(tmp, args.text_dir))
        cfg = load_config(environ=env)
        t = time.perf_counter()
        emb = ItemEmbedder(cfg)  # every model once (CLIP and text fp16 on cuda via models.dtype=auto)
        load_s = time.perf_counter() - t
        m = emb.models
        n = len(clips)
        meter = GpuMeter()
        exact = cfg.decode.model_copy(update={"keyframe_snap_s": 0.0})
        snapped = cfg.decode.model_copy(update={"keyframe_snap_s": args.snap})

        def pool_of(dcfg, with_ocr: bool) -> list[Decoder]:
            return [Decoder(dcfg, cfg.limits, ocr=cfg.ocr if with_ocr else None) for _ in range(args.workers)]

        # Per stage, all clips one after another (exact frames, then keyframe-snapped): where the time goes.
        tables = {}
        for label, dcfg in (("exact frames", exact), (f"keyframe-snapped ({args.snap} s)", snapped)):
            decs = pool_of(dcfg, m.ocr is not None)
            stages_in_turn(emb, decs, clips[: min(4, n)], args.workers, meter, sync)  # warm-up, not timed
            tables[label] = stages_in_turn(emb, decs, clips, args.workers, meter, sync)
            for d in decs:
                d.close()
        # End to end with decode overlapped with the models: the full pipeline and the signals Cosmos-Embed1
        # gives (video only: no OCR frames decoded, no OCR, no ASR), each with exact and snapped frames.
        video_only = dataclasses.replace(m, ocr=None, asr=None)
        rows = []
        failures: set[str] = set()
        for what, models in (("all loaded models", m), ("video only (CLIP + caption text)", video_only)):
            for label, dcfg in (("exact", exact), (f"snapped {args.snap} s", snapped)):
                decs = pool_of(dcfg, models.ocr is not None)
                overlapped(emb, models, decs, clips[: min(4, n)], args.workers, args.chunk, meter, sync, "w")
                rates, utils = [], []
                for r in range(args.repeat):
                    wall, u, works = overlapped(
                        emb, models, decs, clips, args.workers, args.chunk, meter, sync, f"r{r}"
                    )
                    res = finish(works, emb.spec, m.unavailable)
                    failures |= {x.reason for x in res if not isinstance(x, ItemEmbedding)}
                    rates.append(sum(isinstance(x, ItemEmbedding) for x in res) / wall)
                    utils.append(u)
                for d in decs:
                    d.close()
                med_u = [u for u in utils if u is not None]
                rows.append(
                    (what, label, float(np.median(rates)), min(rates), max(rates), np.median(med_u) if med_u else None)
                )
        emb.close()
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)"
        off = ", ".join(m.unavailable) or "none"
        ocr_engine = m.ocr.providers if m.ocr is not None else "off"
        full_best = max(r[2] for r in rows if r[0] == "all loaded models")
        video_best = max(r[2] for r in rows if r[0] != "all loaded models")
        e2e = "".join(
            f"| {what} | {label} | **{med:.2f}** | {lo:.2f}–{hi:.2f} | {_pct(u)} |\n"
            for what, label, med, lo, hi, u in rows
        )
        stage_tables = ""
        for label, (wall_a, stage_s, util, works_a) in tables.items():
            ok_a = sum(isinstance(r, ItemEmbedding) for r in finish(works_a, emb.spec, m.unavailable))
            stage_tables += (
                f"\nStages one after another, {label}: {ok_a}/{n} in {wall_a:.1f} s = {ok_a / wall_a:.2f} videos/s.\n\n"
                "| stage | s | clips/s alone | share of wall | mean GPU util |\n|---|---|---|---|---|\n"
                + "".join(
                    f"| {k} | {v:.2f} | {n / v:.1f} | {v / wall_a * 100:.0f}% | {_pct(util.get(k))} |\n"
                    for k, v in stage_s.items()
                )
            )
        section = (
            f"\n## gpu — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{command()}` · {name} · torch {torch.__version__} · onnxruntime {onnxruntime.__version__} "
            f"providers {onnxruntime.get_available_providers()} · OCR engine {ocr_engine} · {os.cpu_count()} CPU "
            f"cores · {n} clips of {args.seconds:.0f} s 1080p30 H.264, keyframe every {args.gop} frames "
            f"({len(paths)} distinct, repeated; generated in {gen_s:.0f} s, not timed) · decode backend "
            f"{cfg.decode.backend}, {args.workers} decode workers · models loaded in {load_s:.1f} s (not timed) · "
            f"CLIP = ViT-B-32 architecture with RANDOM weights (throughput only) · models not loaded (modality off): "
            f"{off}" + (f" · {args.note}" if args.note else "") + "\n\n"
            f"End to end (decode overlapped with the models, chunks of {args.chunk}; median of {args.repeat} runs "
            f"of {n} clips, after a warm-up): best full pipeline **{full_best:.2f} videos/s**, best video-only "
            f"**{video_best:.2f} videos/s**. Target ≥ 30 videos/s (Cosmos-Embed1 NIM publishes 28.57 for video "
            f"only): full pipeline {'met' if full_best >= 30 else 'missed'}, video only "
            f"{'met' if video_best >= 30 else 'missed'}."
            + (f" Item failures: {', '.join(sorted(failures))}." if failures else "")
            + "\n\n| signals | frames | videos/s (median) | range | mean GPU util |\n|---|---|---|---|---|\n"
            + e2e
            + stage_tables
        )
        publish("gpu", section, write=write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


if __name__ == "__main__":
    main()
