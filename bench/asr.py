"""Batched ASR across items and the speech gate: clips/s for one by one vs `generate` vs `pack`, and word error rates.

Speech set: the 16 sample clips. Mixed set: 8 of them plus 8 clips without speech (music-like chords, noise,
silence, made with numpy), so half the items have no voice. WER is word edit distance over the whole set after
lowercasing and dropping punctuation, against the one-by-one transcripts and against the spoken sentences.
Usage: python bench/asr.py [--repeats 3] [--threads 2] [--no-write]   (writes its section of bench/RESULTS.md)
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

import numpy as np

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


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each `fn` over `repeats` rounds after a warm-up round; rounds interleave the fns so a
    change in machine load hits every variant alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(asr: Transcriber, audios: list[np.ndarray | None], mode: str, gate: bool, vad: bool = True) -> list[Transcript]:
    """Transcripts of `audios` with this batch mode, speech gate and Whisper VAD filter."""
    asr.cfg = asr.cfg.model_copy(update={"speech_gate": gate, "vad_filter": vad})
    return asr.transcribe_batch(audios, mode=mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CTranslate2 threads (asr.cpu_threads)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    cfg = load_config(environ={**os.environ, "REELVEC__ASR__CPU_THREADS": str(args.threads)})
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if SAMPLE_CLIP.fullmatch(r["file"])]
    speech = [decode_file(str(ROOT / "samples/clips" / r["file"]), cfg.decode, cfg.limits).audio for r in rows]
    spoken = [r["speech"] for r in rows]
    kinds = ["music", "music", "music", "music", "noise", "noise", "silence", "music"]
    mixed: list[np.ndarray | None] = []
    for k, kind in enumerate(kinds):
        mixed += [speech[2 * k], no_speech_audio(kind, 4.5, seed=k)]
    asr = load_model(cfg.models.asr.card, cfg)
    assert isinstance(asr, Transcriber)

    modes = ["none", "generate", "pack"]
    out = {m: run(asr, speech, m, gate=True) for m in modes}
    t_speech = median_times({m: lambda m=m: run(asr, speech, m, gate=True) for m in modes}, args.repeats)
    ref = [t.text for t in out["none"]]
    n = len(speech)
    table = []
    for m in modes:
        table.append(
            (
                f"speech: {m}",
                f"{n / t_speech[m]:.2f}",
                f"{t_speech['none'] / t_speech[m]:.2f}x",
                f"{wer(ref, [t.text for t in out[m]]):.1f}",
                f"{wer(spoken, [t.text for t in out[m]]):.1f}",
                "-",
            )
        )

    nm = len(mixed)
    no_voice = [i for i in range(nm) if i % 2 == 1]
    combos = {
        "none, gate off": ("none", False, True),
        "none, gate off, Whisper VAD off": ("none", False, False),
        "none, gate on": ("none", True, True),
        "generate, gate on": ("generate", True, True),
        "pack, gate off": ("pack", False, True),
        "pack, gate on": ("pack", True, True),
    }
    mixed_out = {name: run(asr, mixed, *c) for name, c in combos.items()}
    t_mixed = median_times({name: lambda c=c: run(asr, mixed, *c) for name, c in combos.items()}, args.repeats)
    voiced = [i for i in range(nm) if i % 2 == 0]
    ref_voiced = [mixed_out["none, gate off"][i].text for i in voiced]
    spoken_voiced = [spoken[i] for i in voiced]
    for name, res in mixed_out.items():
        hyp = [res[i].text for i in voiced]
        table.append(
            (
                f"mixed: {name}",
                f"{nm / t_mixed[name]:.2f}",
                f"{t_mixed['none, gate off'] / t_mixed[name]:.2f}x",
                f"{wer(ref_voiced, hyp):.1f}",
                f"{wer(spoken_voiced, hyp):.1f}",
                f"{sum(bool(res[i].text) for i in no_voice)}/{len(no_voice)}",
            )
        )

    header = (
        "| set: batch mode | clips/s | speed-up vs one by one | WER vs one by one (%) | WER vs spoken text (%) "
        "| no-voice clips given text |\n|---|---|---|---|---|---|\n"
    )
    body = "".join("| " + " | ".join(r) + " |\n" for r in table)
    section = (
        f"\n## asr — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · whisper tiny.en {cfg.asr.compute_type}, {args.threads} CTranslate2 threads, "
        f"beam {cfg.asr.beam_size}, batch_size {cfg.asr.batch_size}, pack_gap_s {cfg.asr.pack_gap_s}, "
        f"min_speech_s {cfg.asr.min_speech_s} · speech set: {n} sample clips (3-5 s); mixed set: 8 of them + 8 "
        f"no-voice clips of 4.5 s ({', '.join(sorted(set(kinds)))}) · medians of {args.repeats} runs after a "
        f"warm-up; one by one = batch mode none; WER over the set's speech clips · {platform.machine()}, "
        f"{os.cpu_count()} cores · 1-min load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end · "
        f"run took {time.perf_counter() - started:.0f} s\n\n" + header + body
    )
    publish("asr", section, write=not args.no_write)


if __name__ == "__main__":
    main()
