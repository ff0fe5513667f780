"""How a new clip relates to a stored one (issue 17): a duplicate, a remix (same visuals, new sound), a reuse of
its sound (new visuals), or nothing; with the copied segments. Pure functions over fingerprints, no index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from embedder.audio_fp import HOP_S, AudioAlignment, AudioPrint, align_audio
from embedder.config import DedupConfig
from embedder.fingerprint import VideoAlignment, VideoPrint, align_video

RelationKind = Literal["duplicate_of", "remix_of", "sound_of"]
_AUDIO_GAP_S = 1.5  # matched landmarks further apart than this start a new audio segment
_IN_STEP_S = 0.5  # visual and audio offsets this close say the picture and the sound were copied together


@dataclass(frozen=True)
class ItemPrints:
    """Everything relations need of one item: its visual print and its audio print (None: no or silent audio)."""

    video: VideoPrint
    audio: AudioPrint | None


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

    def to_dict(self) -> dict[str, object]:
        """The JSON shape for a payload, an HTTP answer or `ingest --json`."""
        return {
            "kind": self.kind,
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
