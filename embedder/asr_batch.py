"""One batched Whisper decode over every window of a batch of packed streams (torch backend, `asr.batch_mode: pack`).

faster-whisper transcribes a stream window by window: encode, greedy decode, split at timestamp tokens, align the
words, seek. This runs the same steps in lockstep over many streams: each round takes every unfinished stream's
next 30-s window, computes their log-mel in one STFT, encodes them in one batch, decodes them in one batched greedy
loop (KV cache), aligns their words in one decoder pass and one DTW, then seeks each stream as faster-whisper
would. A stream that fits one window (what `embedder.asr` packs) usually finishes in the first round.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class StreamSegment:
    """A decoded segment on its stream's timeline, with faster-whisper `Word`s (what `embedder.asr` splits)."""

    start: float
    end: float
    text: str
    words: list[Any] = field(default_factory=list)


@dataclass
class _Window:
    stream: int
    row: int
    offset_s: float
    segments: list[dict]
    single_ending: bool


def _defaults() -> dict[str, Any]:
    """faster-whisper's own `transcribe` defaults, so both paths apply the same thresholds."""
    from faster_whisper.transcribe import WhisperModel

    params = inspect.signature(WhisperModel.transcribe).parameters
    names = ("no_speech_threshold", "log_prob_threshold", "suppress_blank", "suppress_tokens")
    names += ("max_initial_timestamp", "prepend_punctuations", "append_punctuations")
    return {n: params[n].default for n in names}


@torch.inference_mode()
def transcribe_streams(model: Any, streams: list[np.ndarray], language: str | None, max_windows: int) -> list:
    """Segments of each 16 kHz stream (greedy, no previous-text prompt, word timestamps), `max_windows` per call."""
    from faster_whisper.tokenizer import Tokenizer

    if not streams:
        return []
    tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
    feats, frames = model.feature_extractor.batch(streams)
    state = _Streams(model, tok, feats, [f - 1 for f in frames])
    while todo := [s for s in range(len(streams)) if state.seek[s] < state.content[s]]:
        for i in range(0, len(todo), max_windows):
            state.round(todo[i : i + max_windows])
    return state.out


class _Streams:
    """Seek positions, last speech times and decoded segments of every stream, advanced one round at a time."""

    def __init__(self, model: Any, tok: Any, feats: torch.Tensor, content: list[int]) -> None:
        from faster_whisper.transcribe import get_suppressed_tokens

        self.m, self.tok, self.feats, self.content = model, tok, feats, content
        self.d = _defaults()
        self.seek = [0] * len(content)
        self.last_speech = [0.0] * len(content)
        self.out: list[list[StreamSegment]] = [[] for _ in content]
        self.prompt = model.get_prompt(tok, [], without_timestamps=False)
        self.gen = {
            "max_length": model.max_length,
            "beam_size": 1,
            "suppress_blank": self.d["suppress_blank"],
            "suppress_tokens": get_suppressed_tokens(tok, self.d["suppress_tokens"]),
            "max_initial_timestamp_index": round(self.d["max_initial_timestamp"] / model.time_precision),
        }

    def round(self, streams: list[int]) -> None:
        """Encode, decode and align the next window of each of `streams` together, then seek each."""
        fe = self.m.feature_extractor
        sizes = [min(fe.nb_max_frames, self.content[s] - self.seek[s]) for s in streams]
        x = self.feats.new_zeros(len(streams), self.feats.shape[1], fe.nb_max_frames)
        for k, s in enumerate(streams):
            x[k, :, : sizes[k]] = self.feats[s, :, self.seek[s] : self.seek[s] + sizes[k]]
        enc = self.m.encode(x)
        results = self.m.model.generate(enc, [self.prompt] * len(streams), **self.gen)
        windows = []
        for k, (s, r) in enumerate(zip(streams, results, strict=True)):
            tokens = r.sequences_ids[0]
            if self._no_speech(r.no_speech_prob, r.scores[0] * len(tokens) / (len(tokens) + 1)):
                self.seek[s] += sizes[k]
                continue
            offset = self.seek[s] * fe.time_per_frame
            segs, self.seek[s], single = self.m._split_segments_by_timestamps(
                self.tok, tokens, offset, sizes[k], sizes[k] * fe.time_per_frame, self.seek[s]
            )
            windows.append(_Window(s, k, offset, segs, single))
        if not windows:
            return
        rows = [w.row for w in windows]
        punctuation = (self.d["prepend_punctuations"], self.d["append_punctuations"])
        self.m.add_word_timestamps_batch(
            [w.segments for w in windows], self.tok, enc[rows], [sizes[k] for k in rows],
            [self.last_speech[w.stream] for w in windows], punctuation,
        )  # fmt: skip
        for w in windows:
            self._keep(w)

    def _no_speech(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """faster-whisper's skip: likely silence and not a confident decode."""
        threshold, min_logprob = self.d["no_speech_threshold"], self.d["log_prob_threshold"]
        if threshold is None or no_speech_prob <= threshold:
            return False
        return min_logprob is None or avg_logprob <= min_logprob

    def _keep(self, w: _Window) -> None:
        """A window's segments into its stream's output; an unfinished window resumes after its last word."""
        from faster_whisper.transcribe import Word
        from faster_whisper.utils import get_end

        end = get_end(w.segments)
        if not w.single_ending and end is not None and end > w.offset_s:
            self.seek[w.stream] = round(end * self.m.frames_per_second)
        if end is not None:
            self.last_speech[w.stream] = end
        for seg in w.segments:
            text = self.tok.decode(seg["tokens"])
            if seg["start"] != seg["end"] and text.strip():
                words = [Word(**word) for word in seg.get("words") or []]
                self.out[w.stream].append(StreamSegment(seg["start"], seg["end"], text, words))
