"""The GPU path end to end, ASR included: N generated 15-s 1080p clips carrying the samples' speech → decode in
worker processes → ASR (speech gate + Whisper; the torch backend on cuda, fp16), OCR (PP-OCRv4), CLIP ViT-B-32
fp16 batched, text encoder → fused vectors.

CLIP runs with RANDOM weights of the real ViT-B-32 architecture, written to a temporary card (no CLIP weights
ship offline): the figures are throughput only, never retrieval quality. Every stage runs through the same
`embedder.pipeline` steps as ingest. Printed: per-stage time, clips/s alone and mean GPU utilisation (NVML) with
stages one after another; end to end with decode overlapped with the models, for the full pipeline and for video
only (the signals Cosmos-Embed1 gives), each with exact and keyframe sampling (`decode.sampling`), medians of 3;
then decode alone on the CPU and on NVDEC (`decode.device`). Targets (issue 16): full pipeline ≥ 60 videos/s on one
H200 (floor 30; Cosmos-Embed1 NIM publishes 28.57 for video only), video only ≥ 120.
Without a CUDA device it records "not run: no GPU" and measures nothing (`--smoke` runs it on the CPU, unwritten).
Usage: python bench/gpu.py [--clips 64] [--seconds 15] [--gop 30] [--workers 16] [--repeat 3]
[--asr-batch-size N] [--asr-pack-max-s S] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.decode import make_clips  # noqa: E402
from bench.results import command, publish  # noqa: E402


def speech_tracks(n: int, seconds: float) -> list[np.ndarray]:
    """`n` different `seconds`-long 16 kHz tracks of the samples' spoken lines back to back (0.5 s apart), so the
    speech gate lets Whisper run on every generated clip."""
    import json

    from embedder.decode import _read_audio

    rows = [json.loads(line) for line in (ROOT / "samples" / "clips" / "captions.jsonl").read_text().splitlines()]
    voices = [_read_audio(str(ROOT / "samples" / "clips" / r["file"]), 16000) for r in rows if r["audio"] == "speech"]
    voices = [v for v in voices if v is not None and v.size]
    gap = np.zeros(8000, np.float32)
    tracks = []
    for i in range(n):
        parts, total, k = [], 0, i
        while total < seconds * 16000:
            parts += [voices[k % len(voices)], gap]
            total += len(voices[k % len(voices)]) + len(gap)
            k += 1
        tracks.append(np.concatenate(parts)[: int(seconds * 16000)])
    return tracks


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
    """A card for a HF text-encoder folder carried to the machine. Without `model.safetensors` (only config and
    tokenizer carried) the MiniLM architecture is built with RANDOM weights and the card says so: speed only."""
    import hashlib

    import yaml

    base = yaml.safe_load((ROOT / "model_cards" / "minilm-l6-v2.yaml").read_text())
    weights = model_dir / "model.safetensors"
    what = f"weights copied to {model_dir.name}"
    if not weights.exists():
        import torch
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
        what = "architecture only, RANDOM weights: speed only"
    card = {
        **base,
        "id": "minilm-l6-v2-local",
        "version": f"{base['version']} ({what})",
        "source": {"kind": "local", "path": str(model_dir.resolve())},
        "files": [{"path": "model.safetensors", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}],
    }
    (d / "minilm-l6-v2-local.yaml").write_text(yaml.safe_dump(card))
    return d / "minilm-l6-v2-local.yaml"


def local_asr_card(d: Path, model_dir: Path) -> Path:
    """The bundled Whisper card pointing at a copy of its files carried to the machine (same pinned sha256)."""
    import yaml

    base = yaml.safe_load((ROOT / "model_cards" / "whisper-tiny-en.yaml").read_text())
    card = {**base, "id": "whisper-tiny-en", "source": {"kind": "local", "path": str(model_dir.resolve())}}
    (d / "whisper-tiny-en-local.yaml").write_text(yaml.safe_dump(card))
    return d / "whisper-tiny-en-local.yaml"


@dataclasses.dataclass
class Models:
    """The loaded models of the graph's model steps (None = off), by the role this bench reports them under."""

    asr: Any
    ocr: Any
    clip: Any
    text: Any
    unavailable: list[str]

    @classmethod
    def of(cls, emb: Any) -> Models:
        get = emb.models.get
        return cls(get("asr"), get("ocr"), get("visual"), get("text"), list(emb.unavailable))


def model_steps(m, cfg) -> list[tuple[str, Any, Callable[[list], None]]]:
    """The model steps after decode, in graph order, each batched over the items it is given (None = off)."""
    from embedder.steps import asr_step, ocr_step, text_step, visual_step

    asr_name = f"ASR {m.asr.card.id} ({getattr(m.asr, 'backend', 'ctranslate2')})" if m.asr else "ASR"
    return [
        (f"{asr_name}: speech gate + Whisper", m.asr, lambda ws: asr_step(m.asr, ws, cfg)),
        (f"OCR {m.ocr.card.id} ({m.ocr.providers[0]})" if m.ocr else "OCR", m.ocr, lambda ws: ocr_step(m.ocr, ws, cfg)),
        (
            f"CLIP {m.clip.card.id} (random weights)" if m.clip else "CLIP",
            m.clip,
            lambda ws: visual_step(m.clip, ws, cfg),
        ),
        (f"text {m.text.card.id}" if m.text else "text", m.text, lambda ws: text_step(m.text, ws, cfg)),
    ]


def item(item_id: str, path: Path):
    """An upload as the service sees it: the clip plus a caption and hashtags (so the text encoder has work)."""
    from embedder.types import ItemInput

    return ItemInput(item_id, str(path), caption=f"Homemade pasta in ten minutes, take {item_id}", hashtags=["food"])


def decode_all(decoder, works: list, workers: int, cfg: Any) -> None:
    """Decode (+ fingerprint) every item, `workers` at a time, through one Decoder's worker processes."""
    from embedder.steps import decode_step

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: decode_step(decoder, [w], cfg), works))


def stages_in_turn(emb, models, decoder, clips, workers, meter, sync, tag) -> tuple[float, dict, dict, list]:
    """Every clip decoded first, then each model step over all of them: per-stage time and GPU use."""
    from embedder.work import Work

    works = [Work(item(f"{tag}_{i:03d}", p)) for i, p in enumerate(clips)]
    stage_s: dict[str, float] = {}
    util: dict[str, float | None] = {}
    t_all = time.perf_counter()
    t = time.perf_counter()
    decode_all(decoder, works, workers, emb.cfg)
    stage_s[f"decode + fingerprint ({workers} worker processes)"] = time.perf_counter() - t
    for name, model, run in model_steps(models, emb.cfg):
        if model is None:
            continue
        with meter:
            t = time.perf_counter()
            run(works)
            sync()
            stage_s[name] = time.perf_counter() - t
        util[name] = meter.mean
    return time.perf_counter() - t_all, stage_s, util, works


def overlapped(emb, models, decoder, clips, workers, chunk, meter, sync, tag) -> tuple[float, float | None, list]:
    """Decode threads run ahead while the model steps take each decoded chunk of `chunk` items in turn."""
    from embedder.steps import decode_step
    from embedder.work import Work

    works = [Work(item(f"{tag}_{i:03d}", p)) for i, p in enumerate(clips)]
    steps = model_steps(models, emb.cfg)
    t_all = time.perf_counter()
    with meter, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(decode_step, decoder, [w], emb.cfg) for w in works]
        for start in range(0, len(works), chunk):
            for f in futures[start : start + chunk]:
                f.result()
            for _, model, run in steps:
                if model is not None:
                    run(works[start : start + chunk])
        sync()
    return time.perf_counter() - t_all, meter.mean, works


def decode_rows(cfg, clips, workers: int, repeat: int) -> list[tuple[str, str, str]]:
    """Decode alone (frames + OCR + fingerprint + audio), per sampling mode on the CPU and on NVDEC: clips/s."""
    from embedder.decode import Decoder
    from embedder.types import ReelvecError

    rows = []
    for sampling in ("exact", "keyframes"):
        for device in ("cpu", "cuda"):
            dcfg = cfg.decode.model_copy(update={"sampling": sampling, "device": device, "workers": workers})
            with Decoder(dcfg, cfg.limits, cfg.ocr, cfg.fingerprint) as dec:
                first = dec.decode_many(clips[:workers])
                err = next((r for r in first if isinstance(r, ReelvecError)), None)
                if err is not None:
                    rows.append((sampling, device, f"n/a ({err.reason})"))
                    print(f"decode {sampling} on {device}: {err.reason}", flush=True)
                    continue
                rates = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    ok = sum(not isinstance(r, ReelvecError) for r in dec.decode_many(clips))
                    rates.append(ok / (time.perf_counter() - t))
                rows.append((sampling, device, f"{np.median(rates):.2f}"))
                print(f"decode {sampling} on {device}: {np.median(rates):.2f} clips/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=8, help="distinct generated clips, repeated to --clips")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--gop", type=int, default=30, help="keyframe interval of the generated clips, in frames")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode worker processes")
    ap.add_argument("--chunk", type=int, default=16, help="items per model call in the overlapped runs")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (the median is reported)")
    ap.add_argument("--text-dir", type=Path, help="a HF text-encoder folder to use instead of the bundled card")
    ap.add_argument("--asr-dir", type=Path, help="a copy of the bundled Whisper files (where its pip package is not)")
    ap.add_argument("--asr-batch-size", type=int, help="asr.batch_size: clips packed per Whisper stream")
    ap.add_argument("--asr-pack-max-s", type=float, help="asr.pack_max_s: cap a packed stream's seconds (torch)")
    ap.add_argument("--no-nvdec", action="store_true", help="skip the decode-only CPU vs NVDEC rows")
    ap.add_argument("--budget-s", type=float, default=420, help="skip the optional rows past this many seconds")
    ap.add_argument("--note", default="", help="a sentence on the run's conditions, printed in the section")
    ap.add_argument("--smoke", action="store_true", help="on the CPU: 4 clips of 3 s, one run each; never writes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.clips, args.distinct, args.seconds, args.repeat = 4, 2, 3.0, 1
        args.workers, args.chunk, args.budget_s = min(args.workers, 2), 2, float("inf")
    write = not (args.no_write or args.smoke)
    started = time.perf_counter()

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

    from embedder.config import AsrConfig, load_config
    from embedder.decode import Decoder
    from embedder.pipeline import ItemEmbedder, finish
    from embedder.types import ItemEmbedding

    tmp = Path(tempfile.mkdtemp(prefix="rvgpu-"))
    try:
        t0 = time.perf_counter()
        print(f"generating {args.distinct} clips of {args.seconds:.0f} s with speech …", flush=True)
        tracks = speech_tracks(args.distinct, args.seconds)
        clips = make_clips(tmp, args.distinct, args.clips, args.seconds, args.gop, tracks)
        gen_s = time.perf_counter() - t0
        env = {
            "REELVEC__DATA_DIR": str(tmp),
            "REELVEC__INDEX__PATH": str(tmp / "index"),
            "REELVEC__MODELS__CLIP__CARD": str(random_vit_b32_card(tmp)),
            "REELVEC__MODELS__DEVICE": device,
        }
        # ASR on the GPU needs the torch backend (the CTranslate2 wheel links CUDA 12; the image has CUDA 13); the
        # smoke run takes the same path on the CPU (`pack` batched: every stream's windows in one decode per round).
        torch_asr = "backend" in AsrConfig.model_fields and "torch" in str(AsrConfig.model_fields["backend"].annotation)
        if torch_asr:
            env["REELVEC__ASR__BACKEND"] = "torch"
            if "torch_cache_dir" in AsrConfig.model_fields:
                env["REELVEC__ASR__TORCH_CACHE_DIR"] = str(tmp / "converted")
        elif device == "cuda":
            env["REELVEC__ASR__COMPUTE_TYPE"] = "float16"
        if args.asr_batch_size:
            env["REELVEC__ASR__BATCH_SIZE"] = str(args.asr_batch_size)
        if args.asr_pack_max_s:
            env["REELVEC__ASR__PACK_MAX_S"] = str(args.asr_pack_max_s)
        if args.text_dir:
            env["REELVEC__MODELS__TEXT__CARD"] = str(local_text_card(tmp, args.text_dir))
        if args.asr_dir:
            env["REELVEC__MODELS__ASR__CARD"] = str(local_asr_card(tmp, args.asr_dir))
        cfg = load_config(environ=env)
        print("loading models …", flush=True)
        t = time.perf_counter()
        emb = ItemEmbedder(cfg)  # every model once (CLIP and text fp16 on cuda via models.dtype=auto)
        load_s = time.perf_counter() - t
        m = Models.of(emb)
        n = len(clips)
        asr_note = (
            f"ASR {m.asr.card.id} on the {getattr(m.asr, 'backend', 'ctranslate2')} backend ({device}), "
            f"{_asr_mode(m.asr)}"
            if m.asr is not None
            else "**ASR off**: "
            + (
                "its model did not load"
                if torch_asr or device == "cpu"
                else "no torch ASR backend in this build and CTranslate2 needs CUDA 12"
            )
        )
        print(asr_note, flush=True)
        meter = GpuMeter()
        samplings = {
            "exact": cfg.decode.model_copy(update={"sampling": "exact", "workers": args.workers}),
            "keyframes": cfg.decode.model_copy(update={"sampling": "keyframes", "workers": args.workers}),
        }

        def decoder_for(sampling: str, with_ocr: bool) -> Decoder:
            return Decoder(samplings[sampling], cfg.limits, ocr=cfg.ocr if with_ocr else None)

        # Per stage, all clips one after another: where the time goes.
        tables = {}
        for sampling in samplings:
            with decoder_for(sampling, m.ocr is not None) as dec:
                print(f"stages one after another, {sampling} …", flush=True)
                stages_in_turn(emb, m, dec, clips[: min(4, n)], args.workers, meter, sync, "w")  # warm-up
                tables[sampling] = stages_in_turn(emb, m, dec, clips, args.workers, meter, sync, "a")
        # End to end with decode overlapped with the models: the full pipeline and video only (no OCR, no ASR).
        video_only = dataclasses.replace(m, ocr=None, asr=None)
        rows = []
        failures: set[str] = set()
        spoken: dict[str, str] = {}
        for what, models in (("full pipeline", m), ("video only (CLIP + caption text)", video_only)):
            for sampling in samplings:
                with decoder_for(sampling, models.ocr is not None) as dec:
                    overlapped(emb, models, dec, clips[: min(4, n)], args.workers, args.chunk, meter, sync, "w")
                    rates, utils = [], []
                    for r in range(args.repeat):
                        wall, u, works = overlapped(
                            emb, models, dec, clips, args.workers, args.chunk, meter, sync, f"r{r}"
                        )
                        res = finish(works, emb.spec, m.unavailable)
                        failures |= {x.reason for x in res if not isinstance(x, ItemEmbedding)}
                        done = [x for x in res if isinstance(x, ItemEmbedding)]
                        rates.append(len(done) / wall)
                        utils.append(u)
                        if what == "full pipeline":
                            spoken[sampling] = f"{sum(bool(x.transcript.text) for x in done)}/{len(done)}"
                        print(f"{what}, {sampling}, run {r + 1}: {rates[-1]:.2f} videos/s", flush=True)
                med_u = [u for u in utils if u is not None]
                rows.append(
                    (
                        what,
                        sampling,
                        float(np.median(rates)),
                        min(rates),
                        max(rates),
                        np.median(med_u) if med_u else None,
                    )
                )
        emb.close()
        nvdec = []
        if args.no_nvdec:
            nvdec_note = "not run (--no-nvdec)"
        elif time.perf_counter() - started > args.budget_s:
            nvdec_note = f"skipped: the run passed --budget-s {args.budget_s:.0f}"
        else:
            nvdec = decode_rows(cfg, clips[: min(n, 32)], args.workers, args.repeat)
            nvdec_note = f"{min(n, 32)} clips, median of {args.repeat}"
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)"
        off = ", ".join(m.unavailable) or "none"
        full_best = max(r[2] for r in rows if r[0] == "full pipeline")
        video_best = max(r[2] for r in rows if r[0] != "full pipeline")
        e2e = "".join(
            f"| {what} | {label} | **{med:.2f}** | {lo:.2f}–{hi:.2f} | {_pct(u)} |\n"
            for what, label, med, lo, hi, u in rows
        )
        stage_tables = ""
        for label, (wall_a, stage_s, util, works_a) in tables.items():
            ok_a = sum(isinstance(r, ItemEmbedding) for r in finish(works_a, emb.spec, m.unavailable))
            stage_tables += (
                f"\nStages one after another, {label} sampling: {ok_a}/{n} in {wall_a:.1f} s = "
                f"{ok_a / wall_a:.2f} videos/s.\n\n"
                "| stage | s | clips/s alone | share of wall | mean GPU util |\n|---|---|---|---|---|\n"
                + "".join(
                    f"| {k} | {v:.2f} | {n / v:.1f} | {v / wall_a * 100:.0f}% | {_pct(util.get(k))} |\n"
                    for k, v in stage_s.items()
                )
            )
        nvdec_table = (
            "\nDecode alone (CLIP + OCR + fingerprint frames + audio), clips/s, "
            + nvdec_note
            + ":\n\n| sampling | decode.device | clips/s |\n|---|---|---|\n"
            + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in nvdec)
        )
        section = (
            f"\n## gpu — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{command()}` · {name} · torch {torch.__version__} · onnxruntime {onnxruntime.__version__} "
            f"providers {onnxruntime.get_available_providers()} · {os.cpu_count()} CPU cores · {n} clips of "
            f"{args.seconds:.0f} s 1080p30 H.264 with the samples' speech as AAC, keyframe every {args.gop} frames "
            f"({args.distinct} distinct, repeated; generated in {gen_s:.0f} s, not timed) · {args.workers} decode "
            f"worker processes · models loaded in {load_s:.1f} s (not timed) · {asr_note}; clips with a transcript "
            f"(full pipeline): {', '.join(f'{k} {v}' for k, v in spoken.items())} · CLIP = ViT-B-32 architecture "
            f"with RANDOM weights (throughput only) · models not loaded (modality off): {off}"
            + (f" · {args.note}" if args.note else "")
            + "\n\n"
            f"End to end (decode overlapped with the models, chunks of {args.chunk}; median of {args.repeat} runs "
            f"of {n} clips, after a warm-up): best full pipeline **{full_best:.2f} videos/s**, best video-only "
            f"**{video_best:.2f} videos/s**. Targets (issue 16): full pipeline ≥ 60 (floor 30): "
            f"{'met' if full_best >= 60 else ('floor met' if full_best >= 30 else 'missed')}; video only ≥ 120: "
            f"{'met' if video_best >= 120 else 'missed'}."
            + (f" Item failures: {', '.join(sorted(failures))}." if failures else "")
            + "\n\n| signals | sampling | videos/s (median) | range | mean GPU util |\n|---|---|---|---|---|\n"
            + e2e
            + stage_tables
            + nvdec_table
        )
        publish("gpu", section, write=write)
        print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _asr_mode(asr: Any) -> str:
    """How ASR batches in this run, for the section's header."""
    asr_cfg = asr.cfg
    mode = f"batch_mode {asr_cfg.batch_mode}, batch_size {asr_cfg.batch_size}"
    if asr.backend == "torch" and asr_cfg.batch_mode == "pack" and getattr(asr_cfg, "torch_batched", False):
        mode += f", batched decode ({asr_cfg.torch_max_windows} windows per pass, pack_max_s {asr_cfg.pack_max_s})"
    return mode


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


if __name__ == "__main__":
    main()
