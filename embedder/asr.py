"""Speech to text with faster-whisper, from the model card's bundled CTranslate2 weights, batched across items.

A speech gate (Silero VAD, shipped inside faster-whisper) skips Whisper for clips without a voice, so music or
silence yields an empty transcript rather than Whisper's hallucinated filler. Whisper pads every window to 30 s,
so short clips are transcribed several per model call (`asr.batch_mode`): `pack` puts several clips back to back
in one stream and splits the words back by timestamp; `generate` decodes several clips' padded windows in one batch.
`asr.backend` runs faster-whisper on CTranslate2, or on torch (embedder/asr_torch.py, the GPU path under CUDA 13);
on torch, `pack` decodes every window of the batch together (embedder/asr_batch.py) unless `asr.torch_batched` is off.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from embedder.cards import ModelCard
from embedder.config import AsrConfig
from embedder.types import ConfigError, Segment, Transcript

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Below this RMS the clip is treated as silent without running any model (cheap early exit).
_SILENCE_RMS = 1e-4
BATCH_MODES = ("pack", "generate", "none")
# A packed segment is split across clips only when it covers this much of each clip's audio (see _split_segment).
_SPLIT_MIN_S = 0.5


@dataclass(frozen=True)
class _Piece:
    """A run of one clip's samples copied into a packed buffer."""

    clip: int
    buf_start: int
    clip_start: int
    length: int


@dataclass(frozen=True)
class _Word:
    """A word placed back on its clip's own timeline."""

    clip: int
    start_s: float
    end_s: float
    text: str


class Transcriber:
    """faster-whisper model loaded once; takes 16 kHz mono float32 audio, one clip or many."""

    def __init__(self, card: ModelCard, weights: Path, cfg: AsrConfig, device: str) -> None:
        self.card = card
        self.cfg = cfg
        self.device = device if cfg.device == "auto" else cfg.device
        self.backend = cfg.backend if cfg.backend != "auto" else ("torch" if self.device == "cuda" else "ctranslate2")
        self.model = self._load(Path(weights))
        langs = card.params.get("languages")
        self.language = cfg.language or (langs[0] if langs and len(langs) == 1 else None)
        self.window_s = float(self.model.feature_extractor.chunk_length)
        self._batched: Any = None

    def _load(self, weights: Path) -> Any:
        """faster-whisper's WhisperModel on the configured runtime (CTranslate2, or torch via embedder.asr_torch)."""
        if self.backend == "torch":
            from embedder.asr_torch import build_torch_whisper

            digest = next((f.sha256 for f in self.card.files if f.path == "model.bin" and f.sha256), None)
            key = f"{self.card.id}-{(digest or 'unpinned')[:12]}"
            return build_torch_whisper(weights, Path(self.cfg.torch_cache_dir or "converted"), key, self.device)
        from faster_whisper import WhisperModel

        return WhisperModel(
            str(weights),
            device=self.device,
            compute_type=self.cfg.compute_type if self.device == "cpu" else "float16",
            cpu_threads=self.cfg.cpu_threads,
            local_files_only=True,
        )

    # -- speech gate ---------------------------------------------------------------------------------------------

    def speech_seconds(self, audio: np.ndarray) -> float:
        """Seconds of voice Silero VAD finds (unpadded, so a click does not count as speech)."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        chunks = get_speech_timestamps(_f32(audio), VadOptions(speech_pad_ms=0), sampling_rate=SAMPLE_RATE)
        return sum(c["end"] - c["start"] for c in chunks) / SAMPLE_RATE

    def has_speech(self, audio: np.ndarray | None) -> bool:
        """Whether the clip holds at least `asr.min_speech_s` of voice; False for missing or silent audio."""
        if audio is None or audio.size == 0 or _rms(audio) < _SILENCE_RMS:
            return False
        return self.speech_seconds(audio) >= self.cfg.min_speech_s

    # -- public transcription ------------------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray | None) -> Transcript:
        """Transcript with timestamped segments; empty for missing, silent or speechless audio."""
        return self.transcribe_batch([audio])[0]

    def transcribe_batch(self, audios: list[np.ndarray | None], mode: str | None = None) -> list[Transcript]:
        """One transcript per clip, several clips per model call (`mode` overrides `asr.batch_mode`)."""
        mode = mode or self.cfg.batch_mode
        if mode not in BATCH_MODES:
            raise ConfigError("invalid_batch_mode", f"asr.batch_mode must be one of {', '.join(BATCH_MODES)}")
        out: list[Transcript] = []
        todo: dict[int, np.ndarray] = {}  # position in `audios` → audio Whisper must hear
        for i, audio in enumerate(audios):
            if audio is None:
                out.append(Transcript.empty(speech=None))
            elif self.cfg.speech_gate and not self.has_speech(audio):
                out.append(Transcript.empty(speech=False))
            elif audio.size == 0 or _rms(audio) < _SILENCE_RMS:
                out.append(Transcript.empty(speech=None))
            else:
                out.append(Transcript.empty())
                todo[i] = audio
        speech = True if self.cfg.speech_gate else None
        clips = list(todo.values())
        # Batching shares one decoding language across clips, so a model left to detect it goes one by one.
        if len(clips) <= 1 or mode == "none" or self.language is None:
            batched: dict[int, Transcript] = {}
        elif mode == "generate":
            batched = self._generate(clips)
        else:
            batched = self._pack(clips)
        for k, (i, audio) in enumerate(todo.items()):
            t = batched.get(k) or self._transcribe_one(audio)
            out[i] = Transcript(t.text, t.language, t.segments, speech=speech)
        return out

    # -- one by one ----------------------------------------------------------------------------------------------

    def _transcribe_one(self, audio: np.ndarray) -> Transcript:
        """The reference path: one clip, Whisper's own VAD and segmentation."""
        with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread: see `_run`
            segments, info = self.model.transcribe(
                _f32(audio), vad_filter=self.cfg.vad_filter, **self._decode_options()
            )
            segs = tuple(Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip())
        return self._transcript(segs, info.language)

    # -- batched -------------------------------------------------------------------------------------------------

    def _pack(self, audios: list[np.ndarray]) -> dict[int, Transcript]:
        """Clips back to back (`pack_gap_s` of silence between), `batch_size` per call, words split back by time."""
        spans = [self._speech_spans(a) for a in audios]
        if self.backend == "torch" and self.cfg.torch_batched:
            return self._pack_batched(audios, spans)
        limit = int(self.window_s * SAMPLE_RATE)
        # Clips longer than a window (or with nothing to hear) go one by one.
        packable = [k for k, sp in enumerate(spans) if 0 < sum(length for _, length in sp) <= limit]
        size = self.cfg.batch_size
        groups = [g for g in (packable[i : i + size] for i in range(0, len(packable), size)) if len(g) > 1]
        if not groups:
            return {}
        # One long stream per group, not one padded window per group: Whisper leaves a segment near a window's end
        # for the next window and faster-whisper seeks there, so fixed ≤30-s windows paid a second, nearly empty
        # encoder pass for their last clip, while a stream's next window starts at that clip and is full (16 sample
        # clips: 6 encoder passes as windows, 5 as streams, 16 one by one).
        buf, pieces, ranges = _layout(audios, spans, groups, int(self.cfg.pack_gap_s * SAMPLE_RATE))
        options = dict(self._decode_options(), word_timestamps=True)
        segments = self._run(
            lambda: [
                _shift(s, start / SAMPLE_RATE)
                for start, end in ranges
                for s in self.model.transcribe(buf[start:end], vad_filter=False, **options)[0]
            ]
        )
        return self._per_clip(segments, pieces, groups)

    def _pack_batched(self, audios: list[np.ndarray], spans: list[list[tuple[int, int]]]) -> dict[int, Transcript]:
        """The same streams as `_pack` (`batch_size` clips each), all decoded together window by window (torch).

        A clip longer than a window, or alone in its group, is a stream of its own in the same batched rounds, so
        nothing here goes through faster-whisper's per-window loop.
        """
        from embedder.asr_batch import transcribe_streams

        gap = int(self.cfg.pack_gap_s * SAMPLE_RATE)
        groups = _fill([k for k, sp in enumerate(spans) if sp], spans, int(self.window_s * SAMPLE_RATE), gap, self.cfg)
        if not groups:
            return {}
        buf, pieces, ranges = _layout(audios, spans, groups, gap)
        streams = [buf[start:end] for start, end in ranges]
        decoded = self._run(lambda: transcribe_streams(self.model, streams, self.language, self.cfg.torch_max_windows))
        segments = [
            _shift(s, start / SAMPLE_RATE) for (start, _), segs in zip(ranges, decoded, strict=True) for s in segs
        ]
        return self._per_clip(segments, pieces, groups)

    def _per_clip(self, segments: list[Any], pieces: list[_Piece], groups: list[list[int]]) -> dict[int, Transcript]:
        """Packed segments split back onto their clips, as one transcript per clip of `groups`."""
        per_clip: dict[int, list[Segment]] = {k: [] for g in groups for k in g}
        for seg in segments:
            for clip, words, text in _split_segment(seg, pieces):
                if text:
                    per_clip[clip].append(Segment(words[0].start_s, words[-1].end_s, text))
        return {k: self._transcript(tuple(segs)) for k, segs in per_clip.items()}

    def _generate(self, audios: list[np.ndarray]) -> dict[int, Transcript]:
        """Each clip's own padded window, `batch_size` windows per CTranslate2 `generate` call."""
        spans = [self._speech_spans(a) for a in audios]
        limit = int(self.window_s * SAMPLE_RATE)
        keep = [k for k, sp in enumerate(spans) if 0 < sum(length for _, length in sp) <= limit]
        if len(keep) <= 1:
            return {}
        gap = int(self.cfg.pack_gap_s * SAMPLE_RATE)
        buf, pieces, ranges = _layout(audios, spans, [[k] for k in keep], gap)
        options = self._decode_options()
        segments = self._run(lambda: self._batched_transcribe(buf, ranges, options))
        starts = [start for start, _ in ranges]
        per_clip: dict[int, list[Segment]] = {k: [] for k in keep}
        for seg in segments:
            text = seg.text.strip()
            if not text:
                continue
            # A segment belongs to the window it starts in; its times can overrun the clip, so clamp them.
            w = max(0, bisect.bisect_right(starts, int(seg.start * SAMPLE_RATE)) - 1)
            clip = keep[w]
            mine = [p for p in pieces if p.clip == clip]
            per_clip[clip].append(Segment(_clip_time(seg.start, mine), _clip_time(seg.end, mine), text))
        return {k: self._transcript(tuple(segs)) for k, segs in per_clip.items()}

    def _batched_transcribe(self, buf: np.ndarray, ranges: list[tuple[int, int]], options: dict[str, Any]) -> list:
        """faster-whisper's batched pipeline over the given sample ranges of `buf`, one padded window each."""
        from faster_whisper import BatchedInferencePipeline

        if self._batched is None:
            self._batched = BatchedInferencePipeline(self.model)
        clip_timestamps = [{"start": s / SAMPLE_RATE, "end": e / SAMPLE_RATE} for s, e in ranges]
        segments, _ = self._batched.transcribe(
            buf,
            clip_timestamps=clip_timestamps,
            batch_size=self.cfg.batch_size,
            without_timestamps=False,
            **options,
        )
        return list(segments)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _decode_options(self) -> dict[str, Any]:
        # No temperature fallback: sampling made the same clip transcribe differently run to run, and the endpoint
        # and the backfill must store identical vectors for identical input.
        return {
            "language": self.language,
            "beam_size": self.cfg.beam_size,
            "temperature": 0.0,
            "condition_on_previous_text": False,
        }

    def _run(self, fn: Callable[[], Iterable[Any]]) -> list[Any]:
        # One BLAS thread for the mel features: OpenBLAS's thread count (Ray workers get OMP_NUM_THREADS=1, a shell
        # gets every core) moves them by 1 ulp, which flipped greedy tokens on a sample clip ("egg and" vs
        # "eggplant"), so the backfill and `embed` stored different transcripts for the same clip.
        with threadpool_limits(limits=1, user_api="blas"):
            return list(fn())

    def _speech_spans(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """(start, length) runs of the clip Whisper should hear: Whisper's own VAD chunks, or the whole clip."""
        if not self.cfg.vad_filter:
            return [(0, int(audio.size))]
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        # The same VadOptions() the one-by-one path's `vad_filter=True` uses, so both hear the same audio.
        chunks = get_speech_timestamps(_f32(audio), VadOptions(), sampling_rate=SAMPLE_RATE)
        return [(int(c["start"]), int(c["end"] - c["start"])) for c in chunks]

    def _transcript(self, segs: tuple[Segment, ...], language: str | None = None) -> Transcript:
        text = " ".join(s.text for s in segs).strip()
        return Transcript(text=text, language=(language or self.language) if text else None, segments=segs)


def _f32(audio: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(audio, dtype=np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _layout(
    audios: list[np.ndarray], spans: list[list[tuple[int, int]]], groups: list[list[int]], gap: int
) -> tuple[np.ndarray, list[_Piece], list[tuple[int, int]]]:
    """One buffer holding each group's clips (speech runs back to back, `gap` zeros after each clip)."""
    parts: list[np.ndarray] = []
    pieces: list[_Piece] = []
    ranges: list[tuple[int, int]] = []
    pos = 0
    for group in groups:
        start = pos
        for j, k in enumerate(group):
            if j:
                parts.append(np.zeros(gap, dtype=np.float32))
                pos += gap
            for clip_start, length in spans[k]:
                parts.append(_f32(audios[k][clip_start : clip_start + length]))
                pieces.append(_Piece(k, pos, clip_start, length))
                pos += length
        parts.append(np.zeros(gap, dtype=np.float32))
        pos += gap
        ranges.append((start, pos))
    return np.concatenate(parts), pieces, ranges


def _fill(
    clips: list[int], spans: list[list[tuple[int, int]]], window: int, gap: int, cfg: AsrConfig
) -> list[list[int]]:
    """Consecutive clips, `batch_size` per stream (within `pack_max_s` when set); a clip longer than a window alone."""
    cap = int(cfg.pack_max_s * SAMPLE_RATE) if cfg.pack_max_s else None
    groups: list[list[int]] = []
    used, open_ = 0, False
    for k in clips:
        speech = sum(length for _, length in spans[k])
        fits = open_ and speech <= window and len(groups[-1]) < cfg.batch_size
        if not fits or (cap is not None and used + speech + gap > cap):
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += speech + gap
        open_ = speech <= window
    return groups


def _shift(segment: Any, offset_s: float) -> Any:
    """A window's segment moved onto the packed buffer's timeline."""
    for w in segment.words or []:
        w.start += offset_s
        w.end += offset_s
    segment.start += offset_s
    segment.end += offset_s
    return segment


def _piece_at(t_s: float, pieces: list[_Piece]) -> _Piece:
    """The piece holding buffer time `t_s`, else the nearest one (words can spill a little into a gap)."""
    s = t_s * SAMPLE_RATE

    def distance(p: _Piece) -> float:
        return max(p.buf_start - s, s - (p.buf_start + p.length), 0.0)

    return min(pieces, key=distance)


def _clip_time(t_s: float, pieces: list[_Piece], piece: _Piece | None = None) -> float:
    """Buffer time → seconds on the clip's own timeline, clamped inside the piece."""
    p = piece or _piece_at(t_s, pieces)
    offset = min(max(t_s * SAMPLE_RATE - p.buf_start, 0.0), float(p.length))
    return round(float(p.clip_start + offset) / SAMPLE_RATE, 3)


def _split_segment(seg: Any, pieces: list[_Piece]) -> list[tuple[int, list[_Word], str]]:
    """A packed segment as (clip, its words on the clip's timeline, text) runs, usually one.

    Segment timestamps are decoded tokens and land in the silence between clips; word times come from
    cross-attention alignment, which can stretch a clip's last word over the gap onto the next clip (seen on
    cooking_03 + space_04: "stove" at the next clip's start). So a segment goes to one clip whole unless its own
    span covers `_SPLIT_MIN_S` of two clips' audio; only then is it split word by word.
    """
    words = list(seg.words or [])
    if not words:
        return []
    overlap: dict[int, float] = {}
    for p in pieces:
        start_s, end_s = p.buf_start / SAMPLE_RATE, (p.buf_start + p.length) / SAMPLE_RATE
        o = min(seg.end, end_s) - max(seg.start, start_s)
        if o > 0:
            overlap[p.clip] = overlap.get(p.clip, 0.0) + o
    if sum(o >= _SPLIT_MIN_S for o in overlap.values()) > 1:
        return [(c, ws, "".join(w.text for w in ws).strip()) for c, ws in _group_by_clip(_place_words(words, pieces))]
    clip = max(overlap, key=overlap.__getitem__) if overlap else _piece_at((seg.start + seg.end) / 2, pieces).clip
    mine = [p for p in pieces if p.clip == clip]
    placed = [_Word(clip, _clip_time(w.start, mine), _clip_time(w.end, mine), w.word) for w in words]
    return [(clip, placed, seg.text.strip())]


def _place_words(words: Iterable[Any], pieces: list[_Piece]) -> list[_Word]:
    """Each word to the clip whose audio holds its midpoint, with clip-relative times."""
    placed = []
    for w in words:
        p = _piece_at((w.start + w.end) / 2, pieces)
        placed.append(_Word(p.clip, _clip_time(w.start, pieces, p), _clip_time(w.end, pieces, p), w.word))
    return placed


def _group_by_clip(words: list[_Word]) -> list[tuple[int, list[_Word]]]:
    """Consecutive runs of words from the same clip (a segment spanning two clips becomes two)."""
    groups: list[tuple[int, list[_Word]]] = []
    for w in words:
        if groups and groups[-1][0] == w.clip:
            groups[-1][1].append(w)
        else:
            groups.append((w.clip, [w]))
    return groups
