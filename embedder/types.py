"""Types that cross module lines: media, transcripts, item inputs/outputs and the typed errors.

Every layer (index, serving) speaks these; nothing here imports a model library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

# Modalities an item can carry, in the fixed order of the fused vector's blocks.
MODALITIES: tuple[str, ...] = ("visual", "caption", "transcript", "ocr")
# The relations recorded at ingest between a new item and a stored one, strongest first (embedder/relations.py).
RELATION_KINDS: tuple[str, ...] = ("duplicate_of", "remix_of", "sound_of")
# Modalities of optional steps (off unless their model is configured), e.g. `omni` (`models.omni`).
OPTIONAL_MODALITIES: tuple[str, ...] = ("omni",)
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
    decoder: str  # "decord", "pyav" or "pyav-nvdec"
    decodable_frames: int
    # A few frames at `ocr.short_side` for on-screen text (None when OCR is off), from the same decode call.
    ocr_frames: np.ndarray | None = None
    ocr_timestamps_s: list[float] = field(default_factory=list)
    # Grayscale T×S×S uint8 frames for fingerprints (`fingerprint.size`, at most `fingerprint.fps` a second over the
    # whole clip; None unless asked), from the same decode pass.
    fp_frames: np.ndarray | None = None
    fp_timestamps_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What was said. `speech` is the speech gate's verdict: False = no voice found (Whisper skipped),
    None = not checked (no audio track, or no ASR model)."""

    text: str
    language: str | None
    segments: tuple[Segment, ...] = ()
    speech: bool | None = None

    @classmethod
    def empty(cls, speech: bool | None = None) -> Transcript:
        return cls(text="", language=None, segments=(), speech=speech)


@dataclass(frozen=True)
class OcrLine:
    """One line of on-screen text: its most confident reading, that confidence, and when it first and last
    appears among the frames read."""

    text: str
    confidence: float
    first_s: float
    last_s: float


@dataclass(frozen=True)
class OcrResult:
    """On-screen text of one clip: de-duplicated lines in reading order of first appearance."""

    lines: tuple[OcrLine, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(line.text for line in self.lines)

    @classmethod
    def empty(cls) -> OcrResult:
        return cls(lines=())


@dataclass(frozen=True)
class Fingerprint:
    """Perceptual video fingerprint (`embedder.fingerprint`): `frame_bits` (K×D, ±1) is the query multivector,
    `index_bits` ((3K)×D, ±1) the one stored, `vector` (D, unit norm) the pooled clip vector."""

    frame_bits: np.ndarray
    index_bits: np.ndarray
    vector: np.ndarray
    timestamps_s: tuple[float, ...]


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
    ocr: OcrResult = field(default_factory=OcrResult.empty)
    models_unavailable: list[str] = field(default_factory=list)  # configured cards that were not loaded
    prints: Any = None  # embedder.relations.ItemPrints: the visual and audio fingerprints, for relations
    frame_vectors: np.ndarray | None = None  # per-frame visual vectors (T×d) for moment search
    relation: dict[str, Any] | None = None  # set at ingest: Relation.to_dict(of=stored id), the strongest found
    semantic_id: list[int] | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # extra payload fields from the steps (thumbnails)

    @property
    def duplicate_of(self) -> str | None:
        return relation_fields(self.relation)["duplicate_of"]

    def to_json(self, vectors: bool = True) -> dict[str, Any]:
        """JSON-ready view (what `reelvec embed --json` prints; an upload's response is this less the vectors)."""
        out = {
            "item_id": self.item_id,
            "modalities": self.modalities,
            "transcript": self.transcript.text,
            "language": self.transcript.language,
            "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in self.transcript.segments],
            "speech": self.transcript.speech,
            "ocr_text": self.ocr.text,
            "ocr_lines": [
                {"text": x.text, "confidence": x.confidence, "first_s": x.first_s, "last_s": x.last_s}
                for x in self.ocr.lines
            ],
            "caption": self.caption,
            "hashtags": self.hashtags,
            "duration_s": self.duration_s,
            "models": self.models,
            "models_unavailable": self.models_unavailable,
            **relation_fields(self.relation),
            "relation": self.relation,
            "semantic_id": self.semantic_id,
            "schema_version": self.schema_version,
            "decoder": self.decoder,
            "frame_timestamps_s": self.frame_timestamps_s,
            "timings_ms": self.timings_ms,
        }
        if vectors:
            out["vectors"] = {k: [float(x) for x in v] for k, v in self.vectors.items()}
        return out


def relation_fields(relation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The flat fields a recorded relation (`Relation.to_dict(of=...)`) implies, for payloads and answers: the stored
    id under its kind (the other kinds None) and, for a duplicate, its visual score as `duplicate_score`."""
    kind = relation.get("kind") if relation else None
    out: dict[str, Any] = {k: relation["of"] if k == kind else None for k in RELATION_KINDS}  # type: ignore[index]
    out["duplicate_score"] = relation["visual_score"] if kind == "duplicate_of" else None  # type: ignore[index]
    return out


@dataclass(frozen=True)
class ItemFailure:
    """One item that could not be embedded or written, and why (reused by ledger and HTTP)."""

    item_id: str
    stage: str
    reason: str
    detail: str
