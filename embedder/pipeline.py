"""The per-item steps, defined once: validate → decode → ASR → OCR → CLIP → text encoder → fuse.

Each step takes its model (None when absent) and a list of `Work` (one per item) and updates them in place;
a failing item records its error and is skipped by later steps. `ItemEmbedder` runs them in-process; the
Ray Serve deployments and the Ray Data backfill stages call the very same step functions on their batches,
so every path gives the same vectors, the same models record and the same error reasons.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.cards import load_card
from embedder.config import LimitsConfig, ModelRef, ReelvecConfig
from embedder.decode import Decoder
from embedder.fingerprint import FINGERPRINT_VERSION, fingerprint
from embedder.fusion import fuse, fused_dim
from embedder.items import validate_item
from embedder.moments import Moment, find_moments
from embedder.types import (
    FUSED,
    MODALITIES,
    DecodedMedia,
    Fingerprint,
    ItemEmbedding,
    ItemFailure,
    ItemInput,
    MediaError,
    ModelUnavailableError,
    OcrResult,
    ReelvecError,
    Transcript,
)

if TYPE_CHECKING:
    from embedder.asr import Transcriber
    from embedder.encoders.clip import ClipEncoder
    from embedder.encoders.text import TextEncoder
    from embedder.ocr import OcrReader

log = logging.getLogger(__name__)

# Bump when the meaning of stored vectors changes in a way cards and fusion weights do not capture.
EMBEDDING_SCHEMA = 2
ROLES = ("clip", "text", "asr", "ocr")  # configured model roles, `cfg.models.<role>`


@dataclass(frozen=True)
class EmbeddingSpec:
    """What the index needs before any model loads: vector dims, fusion weights, model versions."""

    dims: dict[str, int]
    weights: dict[str, float]
    models: dict[str, str]
    schema_version: str


def embedding_spec(cfg: ReelvecConfig) -> EmbeddingSpec:
    """Dims and schema version from the model cards and fusion config (no weights are read)."""
    cards = {role: load_card(getattr(cfg.models, role).card, cfg.models.cards_dir) for role in ROLES}
    clip, text = cards["clip"], cards["text"]
    for c in (clip, text):
        if c.dims is None:
            raise ReelvecError("invalid_card", f"card {c.id} must state dims")
    tdim = int(text.dims)  # type: ignore[arg-type]
    dims = {"visual": int(clip.dims), "caption": tdim, "transcript": tdim, "ocr": tdim}  # type: ignore[arg-type]
    dims[FUSED] = fused_dim(dims)
    models = {c.id: c.version for c in cards.values()}
    weights = dict(cfg.fusion.weights)
    basis = json.dumps(
        {
            "schema": EMBEDDING_SCHEMA,
            "models": models,
            "dims": dims,
            "weights": weights,
            "order": MODALITIES,
            "fingerprint": FINGERPRINT_VERSION,
        },
        sort_keys=True,
    )
    return EmbeddingSpec(
        dims, weights, models, f"v{EMBEDDING_SCHEMA}-{hashlib.sha256(basis.encode()).hexdigest()[:10]}"
    )


def load_optional(ref: ModelRef, cfg: ReelvecConfig) -> Any:
    """Load a model; when absent and optional, warn loudly and return None (required → raise)."""
    # torch-importing modules load on first use: Ray Data's decode/write workers import this module without them.
    from embedder.factory import load_model

    try:
        return load_model(ref.card, cfg)
    except ModelUnavailableError as e:
        if ref.required:
            raise
        log.warning(
            "MODEL UNAVAILABLE: %s — its modality is switched off and items are embedded without it. %s",
            ref.card,
            e.detail,
        )
        return None


def normalize_hashtags(tags: Sequence[str]) -> list[str]:
    return [t.strip().lstrip("#").lower() for t in tags if t.strip().lstrip("#")]


def caption_text(item: ItemInput) -> str:
    """What the caption modality embeds: the caption followed by its hashtags."""
    tags = " ".join(f"#{t}" for t in normalize_hashtags(item.hashtags))
    return " ".join(f"{item.caption.strip()} {tags}".split())


def document_texts(work: Work, max_chars: int) -> dict[str, str]:
    """Modality → the text the text encoder embeds for this item (caption, transcript, on-screen text)."""
    from embedder.encoders.text import truncate_words

    texts = {
        "caption": caption_text(work.item),
        "transcript": truncate_words(work.transcript.text, max_chars),
        "ocr": truncate_words(work.ocr.text, max_chars),
    }
    return {m: t for m, t in texts.items() if t}


def check_query(text: str, limits: LimitsConfig) -> None:
    """A search query must have some text and at most `limits.max_caption_chars` characters."""
    if not isinstance(text, str) or not text.strip():
        raise MediaError("empty_query", "query text is empty")
    if len(text) > limits.max_caption_chars:
        raise MediaError("bad_query", f"query longer than limits.max_caption_chars={limits.max_caption_chars}")


def query_vectors(spec: EmbeddingSpec, visual: np.ndarray | None, text: np.ndarray | None) -> dict[str, np.ndarray]:
    """Query vectors per modality plus fused: the CLIP text-tower vector vs `visual`, the text-encoder
    query vector vs every text modality (caption, transcript, ocr)."""
    vecs: dict[str, np.ndarray] = {}
    if visual is not None:
        vecs["visual"] = visual
    if text is not None:
        for m in ("caption", "transcript", "ocr"):
            vecs[m] = text
    vecs[FUSED] = fuse(vecs, spec.weights, spec.dims)
    return vecs


# ------------------------------------------------------------------------------------------- per-item work


@dataclass
class Work:
    """One item on its way through the steps: inputs, what each step produced, and its error if it failed."""

    item: ItemInput
    decoded: DecodedMedia | None = None
    transcript: Transcript = field(default_factory=Transcript.empty)
    ocr: OcrResult = field(default_factory=OcrResult.empty)
    fingerprint: Fingerprint | None = None
    frame_vectors: np.ndarray | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # card id -> version of every model that ran on it
    timings: dict[str, float] = field(default_factory=dict)
    stage: str = ""
    error: ReelvecError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure(self) -> ItemFailure:
        assert self.error is not None
        return ItemFailure(self.item.item_id, self.stage, self.error.reason, self.error.detail)

    def slim(self, keep: Sequence[str] = ()) -> Work:
        """A copy without the heavy media (frames, OCR frames, audio, upload bytes) except the parts in `keep`
        — what travels to a model that needs only its own input."""
        decoded = self.decoded
        if decoded is not None:
            decoded = replace(
                decoded,
                frames=decoded.frames if "frames" in keep else _NO_FRAMES,
                ocr_frames=decoded.ocr_frames if "ocr_frames" in keep else None,
                audio=decoded.audio if "audio" in keep else None,
            )
        item = self.item if "media" in keep else replace(self.item, media=b"")
        return replace(
            self,
            item=item,
            decoded=decoded,
            vectors=dict(self.vectors),
            models=dict(self.models),
            timings=dict(self.timings),
        )

    def merge(self, other: Work) -> None:
        """Take what a step produced on a copy of this item (`slim`) back into it."""
        self.vectors.update(other.vectors)
        self.models.update(other.models)
        self.timings.update(other.timings)
        if other.transcript.text or other.transcript.speech is not None:
            self.transcript = other.transcript
        if other.ocr.lines:
            self.ocr = other.ocr
        if other.frame_vectors is not None:
            self.frame_vectors = other.frame_vectors
        if other.fingerprint is not None:
            self.fingerprint = other.fingerprint
        if other.error is not None and self.error is None:
            self.error, self.stage = other.error, other.stage


_NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)


@contextmanager
def guard(works: Sequence[Work], stage: str) -> Iterator[None]:
    """The one error policy: a `ReelvecError` fails these items with its reason; anything else fails them as
    `internal_error` (logged with its traceback, never shown to clients). Other items go on."""
    try:
        yield
    except ReelvecError as e:
        for w in works:
            if w.ok:
                w.error, w.stage = e, stage
    except Exception:
        log.exception("unexpected error in stage %s for %s", stage, [w.item.item_id for w in works])
        err = ReelvecError("internal_error", f"unexpected error in the {stage} stage")
        for w in works:
            if w.ok:
                w.error, w.stage = err, stage


def live(works: Sequence[Work]) -> list[Work]:
    return [w for w in works if w.ok]


def _timed(works: Sequence[Work], key: str, t0: float) -> None:
    share = (time.perf_counter() - t0) * 1000 / max(len(works), 1)
    for w in works:
        w.timings[key] = w.timings.get(key, 0.0) + share


def _ran(works: Sequence[Work], model: Any) -> None:
    for w in works:
        w.models[model.card.id] = model.card.version


def validate_step(works: Sequence[Work], limits: LimitsConfig) -> None:
    for w in live(works):
        with guard([w], "validate"):
            validate_item(w.item, limits)


def decode_step(decoder: Decoder, works: Sequence[Work]) -> None:
    """Probe + sampled frames (+ OCR frames) + 16 kHz audio, one item at a time in the killable worker; then
    the frames' perceptual fingerprint (cheap, and every consumer needs it while the frames are at hand)."""
    for w in live(works):
        t0 = time.perf_counter()
        with guard([w], "decode"):
            w.decoded = decoder.decode(w.item.media)
        _timed([w], "decode_ms", t0)
    fingerprint_step(works)


def fingerprint_step(works: Sequence[Work]) -> None:
    """The perceptual fingerprint of the sampled frames (no model: DCT hashes), for re-upload detection."""
    for w in live(works):
        if w.decoded is None or not w.decoded.frames.size:
            continue
        t0 = time.perf_counter()
        with guard([w], "fingerprint"):
            w.fingerprint = fingerprint(w.decoded.frames, w.decoded.timestamps_s)
        _timed([w], "fingerprint_ms", t0)


def asr_step(asr: Transcriber | None, works: Sequence[Work]) -> None:
    """Speech gate + transcripts, batched across items; no ASR model → no transcript (modality off)."""
    todo = [w for w in live(works) if w.decoded is not None]
    if asr is None or not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "asr"):
        for w, tr in zip(todo, asr.transcribe_batch([w.decoded.audio for w in todo]), strict=True):  # type: ignore[union-attr]
            w.transcript = tr
        _ran(todo, asr)
    _timed(todo, "asr_ms", t0)


def ocr_step(ocr: OcrReader | None, works: Sequence[Work]) -> None:
    """On-screen text of every item's OCR frames in one batched call."""
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.ocr_frames is not None]
    if ocr is None or not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "ocr"):
        clips = [(w.decoded.ocr_frames, w.decoded.ocr_timestamps_s) for w in todo]  # type: ignore[union-attr]
        for w, res in zip(todo, ocr.read_batch(clips), strict=True):
            w.ocr = res
        _ran(todo, ocr)
    _timed(todo, "ocr_ms", t0)


def visual_step(clip: ClipEncoder | None, works: Sequence[Work]) -> None:
    """One CLIP call over every item's frames, mean-pooled per item."""
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.frames.size]
    if clip is None or not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "clip"):
        pooled, per_frame = clip.encode_clips([w.decoded.frames for w in todo])  # type: ignore[union-attr]
        for row, w in enumerate(todo):
            w.vectors["visual"] = pooled[row]
            w.frame_vectors = per_frame[row]
        _ran(todo, clip)
    _timed(todo, "clip_ms", t0)


def text_step(text: TextEncoder | None, works: Sequence[Work], max_chars: int) -> None:
    """One text-encoder call over every item's caption, transcript and on-screen text."""
    todo = live(works)
    if text is None or not todo:
        return
    jobs = [(w, m, t) for w in todo for m, t in document_texts(w, max_chars).items()]
    t0 = time.perf_counter()
    with guard(todo, "text"):
        enc = text.encode([t for _, _, t in jobs], kind="document") if jobs else []
        for row, (w, m, _) in enumerate(jobs):
            w.vectors[m] = enc[row]
        _ran(todo, text)
    _timed(todo, "text_ms", t0)


def assemble(work: Work, spec: EmbeddingSpec, unavailable: Sequence[str] = ()) -> ItemEmbedding:
    """Fuse the modality vectors and build the ItemEmbedding; an item with no modality at all is `no_content`."""
    present = [m for m in MODALITIES if m in work.vectors]
    if not present:
        raise MediaError(
            "no_content",
            "nothing to embed: no caption, no speech, no on-screen text and no visual model for this item",
        )
    assert work.decoded is not None
    t0 = time.perf_counter()
    out = {m: np.asarray(work.vectors[m], dtype=np.float32) for m in present}
    out[FUSED] = fuse(out, spec.weights, spec.dims)
    timings = {**work.timings, "fuse_ms": (time.perf_counter() - t0) * 1000}
    item = work.item
    return ItemEmbedding(
        item_id=item.item_id,
        vectors=out,
        modalities=present,
        transcript=work.transcript,
        caption=item.caption,
        hashtags=normalize_hashtags(item.hashtags),
        creator_id=item.creator_id,
        created_at=item.created_at,
        duration_s=work.decoded.probe.duration_s,
        models=dict(work.models),
        schema_version=spec.schema_version,
        decoder=work.decoded.decoder,
        frame_timestamps_s=work.decoded.timestamps_s,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
        metadata=item.metadata,
        ocr=work.ocr,
        models_unavailable=list(unavailable),
        fingerprint=work.fingerprint,
        frame_vectors=work.frame_vectors,
    )


def embedding_or_raise(work: Work, spec: EmbeddingSpec, unavailable: Sequence[str] = ()) -> ItemEmbedding:
    """The item's embedding, or its typed error raised (one item, e.g. an upload)."""
    if work.error is not None:
        raise work.error
    return assemble(work, spec, unavailable)


def finish(
    works: Sequence[Work], spec: EmbeddingSpec, unavailable: Sequence[str] = ()
) -> list[ItemEmbedding | ItemFailure]:
    """Each item's embedding, or its failure (in input order)."""
    out: list[ItemEmbedding | ItemFailure] = []
    for w in works:
        if w.ok:
            with guard([w], "fuse"):
                out.append(assemble(w, spec, unavailable))
                continue
        out.append(w.failure())
    return out


# ------------------------------------------------------------------------------------------------- models


@dataclass
class Models:
    """The configured models, each loaded once or None when optional and absent (its modality is off)."""

    clip: ClipEncoder | None = None
    text: TextEncoder | None = None
    asr: Transcriber | None = None
    ocr: OcrReader | None = None
    unavailable: list[str] = field(default_factory=list)  # card ids of configured models that are not loaded

    @classmethod
    def load(cls, cfg: ReelvecConfig, roles: Sequence[str] = ROLES) -> Models:
        loaded = {role: load_optional(getattr(cfg.models, role), cfg) for role in roles}
        missing = [getattr(cfg.models, r).card for r in roles if loaded[r] is None]
        return cls(**loaded, unavailable=missing)


def encode_query(models: Models, spec: EmbeddingSpec, text: str) -> dict[str, np.ndarray]:
    """Query text → CLIP text tower (vs `visual`), text encoder (vs the text modalities), and fused."""
    visual = models.clip.encode_text([text])[0] if models.clip is not None else None
    textual = models.text.encode([text], kind="query")[0] if models.text is not None else None
    return query_vectors(spec, visual, textual)


def unavailable_models(cfg: ReelvecConfig) -> list[str]:
    """Card ids of configured models whose weights are absent, checked without loading them (the driver's view)."""
    out = []
    for role in ROLES:
        ref = getattr(cfg.models, role)
        try:
            load_card(ref.card, cfg.models.cards_dir).resolve(cfg.models.models_dir)
        except ModelUnavailableError:
            if ref.required:
                raise
            out.append(ref.card)
    return out


class ItemEmbedder:
    """Loads decoder and models once and runs every step in-process, for one item or a batch."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.cfg = cfg
        self.spec = embedding_spec(cfg)
        self.models = Models.load(cfg)
        self.decoder = Decoder(cfg.decode, cfg.limits, ocr=cfg.ocr if self.models.ocr is not None else None)

    @property
    def unavailable(self) -> list[str]:
        """Configured models that are not loaded (their modalities are off)."""
        return list(self.models.unavailable)

    def embed(self, item: ItemInput) -> ItemEmbedding:
        """Embed one item; raises the item's `ReelvecError`."""
        work = Work(item)
        self.run([work])
        return embedding_or_raise(work, self.spec, self.models.unavailable)

    def run(self, works: Sequence[Work]) -> None:
        """Every step over these items, in order (each step batched across them)."""
        m = self.models
        validate_step(works, self.cfg.limits)
        decode_step(self.decoder, works)
        asr_step(m.asr, works)
        ocr_step(m.ocr, works)
        visual_step(m.clip, works)
        text_step(m.text, works, self.cfg.text.transcript_max_chars)
        for w in works:
            if w.decoded is not None:  # the media has served every step; do not hold it past the batch
                w.decoded = replace(w.decoded, frames=_NO_FRAMES, ocr_frames=None, audio=None)

    def embed_batch(self, items: Sequence[ItemInput]) -> list[ItemEmbedding | ItemFailure]:
        """Embed many items; a bad item becomes an `ItemFailure` in its slot and never stops the batch."""
        works = [Work(item) for item in items]
        self.run(works)
        return finish(works, self.spec, self.models.unavailable)

    def encode_query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → CLIP text tower (vs `visual`), text encoder (vs the text modalities), and fused."""
        check_query(text, self.cfg.limits)
        return encode_query(self.models, self.spec, text)

    def moments(
        self, query: dict[str, np.ndarray], payloads: list[dict[str, Any]], frames: dict[str, np.ndarray]
    ) -> list[Moment | None]:
        """Where in each hit (its stored payload with `item_id`) the query matches best (`embedder.moments`)."""
        text = self.models.text
        encode = (lambda t: text.encode(t, kind="document")) if text is not None else (lambda t: np.zeros((0, 1)))
        return find_moments(payloads, query, encode, frames)

    def close(self) -> None:
        self.decoder.close()
