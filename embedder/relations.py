"""How a new clip relates to a stored one (issue 17): a duplicate, a remix (same visuals, new sound), a reuse of
its sound (new visuals), or nothing; with the copied segments. Pure functions over fingerprints, no index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from embedder.audio_fp import (
    AUDIO_PRINT_VERSION,
    HOP_S,
    AudioAlignment,
    AudioPrint,
    align_audio,
    audio_print_from_payload,
    audio_print_payload,
    sparse_hashes,
)
from embedder.config import DedupConfig
from embedder.fingerprint import (
    VIDEO_PRINT_VERSION,
    VideoAlignment,
    VideoPrint,
    align_video,
    pooled_vector,
    video_print_from_payload,
    video_print_payload,
)
from embedder.types import RELATION_KINDS

RelationKind = Literal["duplicate_of", "remix_of", "sound_of"]
VIDEO_PAYLOAD, AUDIO_PAYLOAD = "vfp", "afp"  # payload keys of the stored prints (never indexed, never in hits)
_AUDIO_GAP_S = 1.5  # matched landmarks further apart than this start a new audio segment
_IN_STEP_S = 0.5  # visual and audio offsets this close say the picture and the sound were copied together


@dataclass(frozen=True)
class ItemPrints:
    """Everything relations need of one item: its visual print and its audio print (None: no or silent audio)."""

    video: VideoPrint
    audio: AudioPrint | None
    fan_out: int = 5  # `dedup.audio_fan_out` the audio hashes are made with

    @classmethod
    def of(cls, video: VideoPrint, audio: AudioPrint | None, cfg: DedupConfig) -> ItemPrints:
        return cls(video, audio, cfg.audio_fan_out)

    def payload(self) -> dict[str, object]:
        """The stored form: both prints as compact JSON under VIDEO_PAYLOAD / AUDIO_PAYLOAD."""
        audio = None if self.audio is None else audio_print_payload(self.audio)
        return {VIDEO_PAYLOAD: video_print_payload(self.video), AUDIO_PAYLOAD: audio}

    @classmethod
    def from_payload(cls, payload: Mapping[str, object], cfg: DedupConfig) -> ItemPrints | None:
        """The prints stored with an item; None when absent, unreadable or hashed another way (not comparable)."""
        v, a = payload.get(VIDEO_PAYLOAD), payload.get(AUDIO_PAYLOAD)
        try:
            video = video_print_from_payload(v)  # type: ignore[arg-type]
            audio = None if a is None else audio_print_from_payload(a)  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError):
            return None
        same = video.version == VIDEO_PRINT_VERSION and video.hash_size == cfg.hash_size
        return (
            cls(video, audio, cfg.audio_fan_out)
            if same and (audio is None or audio.version == AUDIO_PRINT_VERSION)
            else None
        )

    @cached_property
    def candidates(self) -> tuple[np.ndarray, tuple[list[int], list[float]] | None]:
        """What the index searches for candidates: the pooled visual vector and the landmark-hash sparse vector
        (computed once: the owner queries with them and the index stores them)."""
        sparse = None
        if self.audio is not None:
            idx, val = sparse_hashes(self.audio, self.fan_out)
            sparse = ([int(i) for i in idx], [float(x) for x in val]) if len(idx) else None
        return pooled_vector(self.video), sparse


@dataclass(frozen=True)
class CopiedSegment:
    """Seconds [a, b] of the new clip that copy seconds [c, d] of the stored clip."""

    new_s: tuple[float, float]
    stored_s: tuple[float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"new_s": [round(x, 2) for x in self.new_s], "stored_s": [round(x, 2) for x in self.stored_s]}


@dataclass(frozen=True)
class Relation:
    """The verdict for one (new, stored) pair; `visual_score`/`audio_score` are None where not comparable."""

    kind: RelationKind | None
    visual_score: float
    audio_score: float | None
    segments: tuple[CopiedSegment, ...] = field(default_factory=tuple)
    mirrored: bool = False
    speed: float = 1.0

    def to_dict(self, of: str | None = None) -> dict[str, object]:
        """The JSON shape for a payload, an HTTP answer or `ingest --json` (`of`: the stored item's id)."""
        return {
            "kind": self.kind,
            "of": of,
            "visual_score": round(self.visual_score, 4),
            "audio_score": None if self.audio_score is None else round(self.audio_score, 4),
            "segments": [s.to_dict() for s in self.segments],
            "mirrored": self.mirrored,
            "speed": round(self.speed, 3),
        }


def relate(new: ItemPrints, stored: ItemPrints, cfg: DedupConfig) -> Relation:
    """Compare two items: visuals match when the aligned visual score reaches `visual_threshold` (or
    `visual_threshold_with_audio` when the audio matches on the same offset), audio when the aligned landmark share
    reaches `audio_threshold`; one side without audio leaves the visuals to decide."""
    va = align_video(new.video, stored.video, cfg)
    aa = align_audio(new.audio, stored.audio, cfg) if new.audio is not None and stored.audio is not None else None
    a_score = None if aa is None else aa.score
    th = (cfg.visual_threshold, cfg.audio_threshold, cfg.visual_threshold_with_audio)
    kind = verdict(va.score, a_score, *th, in_step=in_step(va, aa))
    segments: tuple[CopiedSegment, ...] = ()
    if kind in ("duplicate_of", "remix_of"):
        segments = video_segments(va, new.video.step_s, stored.video.step_s, cfg.frame_match)
    elif kind == "sound_of" and aa is not None:
        segments = audio_segments(aa)
    return Relation(kind, va.score, None if aa is None else aa.score, segments, va.mirrored, va.speed)


def strongest(found: Mapping[str, Relation]) -> tuple[str, Relation] | None:
    """The relation to record among those found (stored id -> relation): the strongest kind, then the best
    score on the side that decided it; None when nothing is related."""
    ranked = [
        (RELATION_KINDS.index(r.kind), -(r.audio_score or 0.0) if r.kind == "sound_of" else -r.visual_score, i)
        for i, r in found.items()
        if r.kind is not None
    ]
    if not ranked:
        return None
    item_id = min(ranked)[2]
    return item_id, found[item_id]


def verdict(
    visual_score: float,
    audio_score: float | None,
    visual_t: float,
    audio_t: float,
    visual_t_with_audio: float,
    in_step: bool = False,
) -> RelationKind | None:
    """The relation two scores mean. Matching audio whose alignment agrees with the visual one (`in_step`) is
    evidence too: the visuals then need only reach `visual_t_with_audio` to make a duplicate. `audio_score` None:
    a side without audio, the visuals decide alone."""
    audio = None if audio_score is None else audio_score >= audio_t
    if visual_score >= visual_t or (audio and in_step and visual_score >= visual_t_with_audio):
        return "duplicate_of" if audio is not False else "remix_of"
    return "sound_of" if audio else None


def in_step(va: VideoAlignment, aa: AudioAlignment | None) -> bool:
    """Whether picture and sound align on the same offset (within _IN_STEP_S): true of a copy, chance otherwise."""
    return aa is not None and aa.score > 0 and abs(va.offset_s - aa.offset_s) <= _IN_STEP_S


def video_segments(va: VideoAlignment, new_step: float, stored_step: float, frame_match: float) -> tuple:
    """Runs of aligned frames that agree at least `frame_match` (one weak frame inside a run is bridged)."""
    good = [p for p in va.pairs if p[2] >= frame_match]
    runs: list[list[tuple[float, float, float]]] = []
    for p in good:
        if runs and p[0] - runs[-1][-1][0] <= 2.01 * new_step:
            runs[-1].append(p)
        else:
            runs.append([p])
    return tuple(
        CopiedSegment((r[0][0], r[-1][0] + new_step), (min(r[0][1], r[-1][1]), max(r[0][1], r[-1][1]) + stored_step))
        for r in runs
        if len(r) >= 2
    )


def audio_segments(aa: AudioAlignment) -> tuple[CopiedSegment, ...]:
    """Runs of matched landmarks closer than _AUDIO_GAP_S, as copied segments."""
    runs: list[list[tuple[float, float]]] = []
    for m in aa.matches:
        if runs and m[0] - runs[-1][-1][0] <= _AUDIO_GAP_S:
            runs[-1].append(m)
        else:
            runs.append([m])
    return tuple(
        CopiedSegment((r[0][0], r[-1][0] + HOP_S), (min(x[1] for x in r), max(x[1] for x in r) + HOP_S))
        for r in runs
        if len(r) >= 3
    )
