"""Batched ASR across items and the speech gate: clips/s for one by one vs `generate` vs `pack`, and word error rates.

Speech set: the 16 sample clips. Mixed set: 8 of them plus 8 clips without speech (music-like chords, noise,
silence, made with numpy), so half the items have no voice; and the same 8 speech clips with synthetic music mixed
under the voice (speech+music, -6 dB). WER is word edit distance over the whole set after lowercasing and dropping
punctuation, against the one-by-one transcripts (same backend) and against the spoken sentences. Both runtimes run:
ctranslate2 (faster-whisper, int8) and torch (transformers Whisper from the same shipped weights, fp32 on CPU); on
torch, `pack` runs twice on the speech set: batched (every stream's windows in one decode per round, the default)
and through faster-whisper's per-window loop (`asr.torch_batched: false`), with 30-s windows encoded per second.
Usage: python bench/asr.py [--repeats 3] [--threads 2] [--backends ctranslate2,torch] [--smoke] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.asr import SAMPLE_RATE, Transcriber  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.decode import decode_file  # noqa: E402
from embedder.factory import load_model  # noqa: E402
from embedder.types import Transcript  # noqa: E402

# The catalogue's 16 topic clips (other helpers add clips with other names for other benchmarks).
SAMPLE_CLIP = re.compile(r"[a-z]+_\d\d\.mp4")


def words(text: str) -> list[str]:
    """Lowercase words without punctuation (so "Big Blue" and "big blue." count as the same words)."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate in percent: total edits over total reference words."""
    edits = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps, strict=True))
    total = sum(len(words(r)) for r in refs)
    return 100.0 * edits / max(total, 1)


def no_speech_audio(kind: str, seconds: float, seed: int) -> np.ndarray:
    """Audio without a voice: a chord progression with harmonics and noise (`music`), pink-ish noise, or silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    if kind == "silence":
        return np.zeros_like(t, dtype=np.float32)
    if kind == "noise":
        white = rng.standard_normal(t.size)
        return (0.1 * np.convolve(white, np.ones(8) / 8, mode="same")).astype(np.float32)
    out = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.5):
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        on = (t >= start) & (t < start + 0.5)
        env = np.exp(-3 * (t - start)) * on
        for ratio in (1.0, 1.25, 1.5):
            for h in (1, 2, 3):
                out += env * np.sin(2 * np.pi * root * ratio * h * t) / (h * 3)
    return (0.25 * out + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def median_times(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median wall time of each `fn` over `repeats` rounds after a warm-up round, and each fn's warm-up output;
    rounds interleave the fns so a change in machine load hits every variant alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outputs: dict[str, Any] = {}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            if r:
                times[k].append(time.perf_counter() - t0)
            else:
                outputs[k] = out
    return {k: statistics.median(v) for k, v in times.items()}, outputs


# Extra torch rows on the speech set: `pack` through faster-whisper's per-window loop (not batched), and batched
# `pack` with streams capped at one window (`asr.pack_max_s`: more streams per round on a GPU, fewer rounds).
LOOP = "pack, per-window loop"
CAPPED = "pack, streams <= 30 s"


def run(asr: Transcriber, audios: list[np.ndarray | None], mode: str, gate: bool, vad: bool = True) -> list[Transcript]:
    """Transcripts of `audios` with this batch mode, speech gate and Whisper VAD filter."""
    update = {"speech_gate": gate, "vad_filter": vad, "torch_batched": mode != LOOP, "pack_max_s": None}
    if mode == CAPPED:
        update["pack_max_s"] = 30.0
    asr.cfg = asr.cfg.model_copy(update=update)
    return asr.transcribe_batch(audios, mode="pack" if mode in (LOOP, CAPPED) else mode)


def windows_of(asr: Transcriber, fn: Callable[[], list[Transcript]]) -> Callable[[], tuple[list[Transcript], int]]:
    """`fn` returning its transcripts and how many 30-s windows Whisper encoded (torch runtime only; else -1)."""
    runtime = getattr(asr.model, "model", None)

    def counted() -> tuple[list[Transcript], int]:
        before = getattr(runtime, "windows", None)
        out = fn()
        return out, -1 if before is None else runtime.windows - before

    return counted


def speech_sets(cfg: Any, smoke: bool) -> tuple[list[np.ndarray], list[str], list[np.ndarray | None], list[np.ndarray]]:
    """Speech clips with their spoken text, the mixed voice / no-voice set, and speech with music under it."""
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if SAMPLE_CLIP.fullmatch(r["file"])][: 4 if smoke else None]
    speech = [decode_file(str(ROOT / "samples/clips" / r["file"]), cfg.decode, cfg.limits).audio for r in rows]
    kinds = ["music", "music", "music", "music", "noise", "noise", "silence", "music"][: len(speech) // 2]
    mixed: list[np.ndarray | None] = []
    for k, kind in enumerate(kinds):
        mixed += [speech[2 * k], no_speech_audio(kind, 4.5, seed=k)]
    under = [mix_music(speech[2 * k], seed=100 + k) for k in range(len(kinds))]
    return speech, [r["speech"] for r in rows], mixed, under


def mix_music(voice: np.ndarray, seed: int, db: float = -6.0) -> np.ndarray:
    """The voice with synthetic music under it at `db` relative to the voice's RMS."""
    music = no_speech_audio("music", voice.size / SAMPLE_RATE + 0.1, seed)[: voice.size]
    gain = 10 ** (db / 20) * np.sqrt(np.mean(voice**2)) / max(float(np.sqrt(np.mean(music**2))), 1e-9)
    return (voice + gain * music).astype(np.float32)


def backend_rows(
    asr: Transcriber, sets: tuple, repeats: int, full: bool, speech_only: bool = False
) -> tuple[list[tuple[str, ...]], dict[str, float]]:
    """Table rows for one runtime: speech set per batch mode, mixed set per mode and gate, speech+music per mode."""
    speech, spoken, mixed, under = sets
    name = asr.backend
    modes = ["none", "generate", "pack"] + ([LOOP, CAPPED] if name == "torch" else [])
    table: list[tuple[str, ...]] = []
    spoken_wer: dict[str, float] = {}
    fns = {m: windows_of(asr, lambda m=m: run(asr, speech, m, gate=True)) for m in modes}
    t_speech, counted = median_times(fns, repeats)
    out = {m: res for m, (res, _) in counted.items()}
    ref = [t.text for t in out["none"]]
    for m in modes:
        spoken_wer[f"speech: {m}"] = wer(spoken, [t.text for t in out[m]])
        label = f"{name} · speech: {m}" + (" (batched)" if name == "torch" and m == "pack" else "")
        n_win = counted[m][1]
        windows = "-" if n_win < 0 else f"{n_win} ({n_win / t_speech[m]:.2f}/s)"
        table.append((*_row(label, len(speech), t_speech, m, ref, spoken, out[m], "-"), windows))
    if speech_only:
        return table, spoken_wer

    nm = len(mixed)
    voiced, no_voice = list(range(0, nm, 2)), list(range(1, nm, 2))
    combos = {"none, gate on": ("none", True, True), "pack, gate on": ("pack", True, True)}
    if full:
        combos = {
            "none, gate off": ("none", False, True),
            "none, gate off, Whisper VAD off": ("none", False, False),
            **combos,
            "generate, gate on": ("generate", True, True),
            "pack, gate off": ("pack", False, True),
        }
    t_mixed, mixed_out = median_times({c: lambda a=a: run(asr, mixed, *a) for c, a in combos.items()}, repeats)
    base = "none, gate off" if full else "none, gate on"
    ref_voiced = [mixed_out[base][i].text for i in voiced]
    spoken_voiced = [spoken[2 * k] for k in range(len(voiced))]
    for c, res in mixed_out.items():
        hyp = [res[i] for i in voiced]
        given = f"{sum(bool(res[i].text) for i in no_voice)}/{len(no_voice)}"
        table.append((*_row(f"{name} · mixed: {c}", nm, t_mixed, c, ref_voiced, spoken_voiced, hyp, given, base), "-"))

    t_under, under_out = median_times({m: lambda m=m: run(asr, under, m, gate=True) for m in ("none", "pack")}, repeats)
    ref_under = [t.text for t in under_out["none"]]
    for m, res in under_out.items():
        spoken_wer[f"speech+music: {m}"] = wer(spoken_voiced, [t.text for t in res])
        row = _row(f"{name} · speech+music: {m}", len(under), t_under, m, ref_under, spoken_voiced, res, "-")
        table.append((*row, "-"))
    return table, spoken_wer


def _row(
    label: str,
    n: int,
    times: dict[str, float],
    key: str,
    ref: list[str],
    spoken: list[str],
    out: list[Transcript],
    given: str,
    base: str = "none",
) -> tuple[str, ...]:
    hyp = [t.text for t in out]
    return (
        label,
        f"{n / times[key]:.2f}",
        f"{times[base] / times[key]:.2f}x",
        f"{wer(ref, hyp):.1f}",
        f"{wer(spoken, hyp):.1f}",
        given,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CTranslate2 threads (asr.cpu_threads)")
    ap.add_argument("--backends", default="ctranslate2,torch", help="comma-separated asr.backend values")
    ap.add_argument("--smoke", action="store_true", help="4 clips, 1 repeat, print only")
    ap.add_argument(
        "--speech-only", action="store_true", help="only the speech-set rows, in their own section (asr-speech)"
    )
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.no_write = 1, True
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    cfg = load_config(environ={**os.environ, "REELVEC__ASR__CPU_THREADS": str(args.threads)})
    sets = speech_sets(cfg, args.smoke)
    table: list[tuple[str, ...]] = []
    spoken_wer: dict[str, dict[str, float]] = {}
    for k, backend in enumerate(args.backends.split(",")):
        run_cfg = cfg.model_copy(update={"asr": cfg.asr.model_copy(update={"backend": backend})})
        asr = load_model(cfg.models.asr.card, run_cfg)
        assert isinstance(asr, Transcriber)
        rows, spoken_wer[backend] = backend_rows(asr, sets, args.repeats, full=k == 0, speech_only=args.speech_only)
        table += rows
        del asr

    header = (
        "| runtime · set: batch mode | clips/s | speed-up vs one by one | WER vs one by one (%) "
        "| WER vs spoken text (%) | no-voice clips given text | 30-s windows encoded (per s) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body = "".join("| " + " | ".join(r) + " |\n" for r in table)
    verdict = ""
    if "ctranslate2" in spoken_wer and "torch" in spoken_wer:
        diffs = [f"{k} {spoken_wer['torch'][k] - v:+.1f}" for k, v in spoken_wer["ctranslate2"].items()]
        worst = max(spoken_wer["torch"][k] - v for k, v in spoken_wer["ctranslate2"].items())
        packed = spoken_wer["torch"]["speech: pack"] - spoken_wer["ctranslate2"]["speech: pack"]
        verdict = (
            f"\ntorch minus ctranslate2, WER vs spoken text (points): {'; '.join(diffs)} · target <= +1.0: "
            f"{'met' if worst <= 1.0 else 'MISSED'} · the batched torch pack vs ctranslate2 pack: {packed:+.1f} "
            f"({'met' if packed <= 1.0 else 'MISSED'})\n"
        )
    n, nm = len(sets[0]), len(sets[2])
    name = "asr-speech" if args.speech_only else "asr"  # the speech-set rows alone get a section of their own
    section = (
        f"\n## {name} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · whisper tiny.en: ctranslate2 {cfg.asr.compute_type} ({args.threads} threads), "
        f"torch float32 on CPU (torch threads {torch.get_num_threads()}) · beam {cfg.asr.beam_size}, batch_size "
        f"{cfg.asr.batch_size}, pack_gap_s {cfg.asr.pack_gap_s}, min_speech_s {cfg.asr.min_speech_s} · speech set: "
        f"{n} sample clips (3-5 s); mixed set: {nm // 2} of them + {nm // 2} no-voice clips of 4.5 s (music, noise, "
        f"silence); speech+music: the same {nm // 2} voices with synthetic music 6 dB under them · medians of "
        f"{args.repeats} runs after a warm-up; one by one = batch mode none; WER over the set's speech clips · "
        f"{platform.machine()}, {os.cpu_count()} cores, shared machine · 1-min load average {load_before:.1f} at "
        f"start, {os.getloadavg()[0]:.1f} at end · run took {time.perf_counter() - started:.0f} s\n\n"
        + header
        + body
        + verdict
    )
    publish(name, section, write=not args.no_write)


if __name__ == "__main__":
    main()
