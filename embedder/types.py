"""Types that cross module lines: media, transcripts, item inputs/outputs and the typed errors.

Every layer (index, serving) speaks these; nothing here imports a model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

# Modalities an item can carry, in the fixed order of the fused vector's blocks.
MODALITIES: tuple[str, ...] = ("visual", "caption", "transcript")
FUSED = "fused"

MediaReason = Literal[
    "empty",
    "truncated",
    "not_a_video",
    "no_video_stream",
    "too_large",
    "too_long",
    "too_many_pixels",
    "decode_timeout",
    "caption_too_long",
    "not_found",
]


class ReelvecError(Exception):
    """Base of every error reelvec raises on purpose; `reason` is a stable machine-readable code."""

    reason: str = "error"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Errors cross process boundaries (decode worker, Ray tasks); keep (reason, detail) intact.
        return (type(self), (self.reason, self.detail))


class MediaError(ReelvecError):
    """The input media cannot be used (bad bytes, over a limit, undecodable). Maps to HTTP 4xx."""


class ModelUnavailableError(ReelvecError):
    """A model's weights are missing or do not match their card. Maps to HTTP 503 / CLI exit 3."""


class StoreError(ReelvecError):
    """The vector index refused or failed: `unknown_item` (404), `locked`/`unreachable` (503), `bad_query` (400)."""


class ConfigError(ReelvecError):
    """A configuration file, env override or model card is invalid; `detail` names the dotted key."""


@dataclass(frozen=True)
class Probe:
    """What a container says about itself before any frame is decoded."""

    duration_s: float
    fps: float
    width: int
    height: int
    num_frames: int
    has_audio: bool
    video_codec: str
    size_bytes: int


@dataclass
class DecodedMedia:
    """Sampled frames (uint8 RGB, T×H×W×3) and 16 kHz mono float32 audio (None when silent)."""

    probe: Probe
    frames: np.ndarray
    timestamps_s: list[float]
    frame_indices: list[int]
    audio: np.ndarray | None
    decoder: str  # "decord" or "pyav"
    decodable_frames: int


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    segments: tuple[Segment, ...] = ()

    @classmethod
    def empty(cls) -> Transcript:
        return cls(text="", language=None, segments=())


@dataclass
class ItemInput:
    """One upload or manifest row: media (path or bytes) plus creator-supplied text and metadata."""

    item_id: str
    media: bytes | str
    caption: str = ""
    hashtags: list[str] = field(default_factory=list)
    creator_id: str | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemEmbedding:
    """Per-modality vectors plus `fused`, with everything needed to index and explain them."""

    item_id: str
    vectors: dict[str, np.ndarray]
    modalities: list[str]
    transcript: Transcript
    caption: str
    hashtags: list[str]
    creator_id: str | None
    created_at: datetime | None
    duration_s: float
    models: dict[str, str]  # card id -> version
    schema_version: str
    decoder: str
    frame_timestamps_s: list[float]
    timings_ms: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready view (what `reelvec embed --json` prints)."""
        return {
            "item_id": self.item_id,
            "modalities": self.modalities,
            "transcript": self.transcript.text,
            "language": self.transcript.language,
            "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in self.transcript.segments],
            "caption": self.caption,
            "hashtags": self.hashtags,
            "duration_s": self.duration_s,
            "vectors": {k: [float(x) for x in v] for k, v in self.vectors.items()},
            "models": self.models,
            "schema_version": self.schema_version,
            "decoder": self.decoder,
            "frame_timestamps_s": self.frame_timestamps_s,
            "timings_ms": self.timings_ms,
        }


@dataclass(frozen=True)
class ItemFailure:
    """One item that could not be embedded or written, and why (reused by ledger and HTTP)."""

    item_id: str
    stage: str
    reason: str
    detail: str
