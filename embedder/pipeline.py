"""ItemEmbedder: the one place that runs decode → transcribe → encode → fuse for one item or a batch.

The stage helpers here (`validate_item`, `caption_text`, `transcript_text`, `assemble`, `load_optional`)
are what the Ray Serve deployments and the Ray Data backfill call too, so every path gives the same vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.asr import Transcriber
from embedder.cards import load_card
from embedder.config import LimitsConfig, ModelRef, ReelvecConfig
from embedder.decode import Decoder
from embedder.fusion import fuse, fused_dim
from embedder.types import (
    FUSED,
    MODALITIES,
    DecodedMedia,
    ItemEmbedding,
    ItemFailure,
    ItemInput,
    MediaError,
    ModelUnavailableError,
    ReelvecError,
    Transcript,
)

if TYPE_CHECKING:
    from embedder.encoders.clip import ClipEncoder
    from embedder.encoders.text import TextEncoder

log = logging.getLogger(__name__)

# Bump when the meaning of stored vectors changes in a way cards and fusion weights do not capture.
EMBEDDING_SCHEMA = 1


@dataclass(frozen=True)
class EmbeddingSpec:
    """What the index needs before any model loads: vector dims, fusion weights, model versions."""

    dims: dict[str, int]
    weights: dict[str, float]
    models: dict[str, str]
    schema_version: str


def embedding_spec(cfg: ReelvecConfig) -> EmbeddingSpec:
    """Dims and schema version from the model cards and fusion config (no weights are read)."""
    clip = load_card(cfg.models.clip.card, cfg.models.cards_dir)
    text = load_card(cfg.models.text.card, cfg.models.cards_dir)
    asr = load_card(cfg.models.asr.card, cfg.models.cards_dir)
    for c in (clip, text):
        if c.dims is None:
            raise ReelvecError("invalid_card", f"card {c.id} must state dims")
    dims = {"visual": int(clip.dims), "caption": int(text.dims), "transcript": int(text.dims)}  # type: ignore[arg-type]
    dims[FUSED] = fused_dim(dims)
    models = {c.id: c.version for c in (clip, text, asr)}
    weights = dict(cfg.fusion.weights)
    basis = json.dumps(
        {"schema": EMBEDDING_SCHEMA, "models": models, "dims": dims, "weights": weights, "order": MODALITIES},
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


def validate_item(item: ItemInput, limits: LimitsConfig) -> None:
    """Reject ids, captions and hashtags over the configured limits before any decoding."""
    if not item.item_id or not item.item_id.strip():
        raise MediaError("bad_item_id", "item_id is empty")
    if len(item.item_id) > limits.max_item_id_chars:
        raise MediaError("bad_item_id", f"item_id longer than limits.max_item_id_chars={limits.max_item_id_chars}")
    if len(item.caption) > limits.max_caption_chars:
        raise MediaError(
            "caption_too_long", f"{len(item.caption)} chars > limits.max_caption_chars={limits.max_caption_chars}"
        )
    if len(item.hashtags) > limits.max_hashtags:
        raise MediaError("too_many_hashtags", f"{len(item.hashtags)} > limits.max_hashtags={limits.max_hashtags}")


def caption_text(item: ItemInput) -> str:
    """What the caption modality embeds: the caption followed by its hashtags."""
    tags = " ".join(f"#{t}" for t in normalize_hashtags(item.hashtags))
    return " ".join(f"{item.caption.strip()} {tags}".split())


def transcript_text(transcript: Transcript, max_chars: int) -> str:
    from embedder.encoders.text import truncate_words

    return truncate_words(transcript.text, max_chars)


def assemble(
    item: ItemInput,
    decoded: DecodedMedia,
    transcript: Transcript,
    vectors: dict[str, np.ndarray],
    spec: EmbeddingSpec,
    models_used: dict[str, str],
    timings_ms: dict[str, float],
) -> ItemEmbedding:
    """Fuse the modality vectors and build the ItemEmbedding; an item with no modality at all is an error."""
    present = [m for m in MODALITIES if m in vectors]
    if not present:
        raise MediaError(
            "no_content",
            "nothing to embed: no caption, no speech and no visual model available for this item",
        )
    t0 = time.perf_counter()
    out = {m: np.asarray(vectors[m], dtype=np.float32) for m in present}
    out[FUSED] = fuse(out, spec.weights, spec.dims)
    timings = {**timings_ms, "fuse_ms": (time.perf_counter() - t0) * 1000}
    return ItemEmbedding(
        item_id=item.item_id,
        vectors=out,
        modalities=present,
        transcript=transcript,
        caption=item.caption,
        hashtags=normalize_hashtags(item.hashtags),
        creator_id=item.creator_id,
        created_at=item.created_at,
        duration_s=decoded.probe.duration_s,
        models=models_used,
        schema_version=spec.schema_version,
        decoder=decoded.decoder,
        frame_timestamps_s=decoded.timestamps_s,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
        metadata=item.metadata,
    )


def check_query(text: str) -> None:
    """A search query must have some text."""
    if not text.strip():
        raise MediaError("empty_query", "query text is empty")


def query_vectors(spec: EmbeddingSpec, visual: np.ndarray | None, text: np.ndarray | None) -> dict[str, np.ndarray]:
    """Query vectors per modality plus fused: the CLIP text-tower vector vs `visual`, the text-encoder
    query vector vs both `caption` and `transcript` (shared by `ItemEmbedder` and the Serve ingress)."""
    vecs: dict[str, np.ndarray] = {}
    if visual is not None:
        vecs["visual"] = visual
    if text is not None:
        vecs["caption"] = text
        vecs["transcript"] = text
    vecs[FUSED] = fuse(vecs, spec.weights, spec.dims)
    return vecs


class ItemEmbedder:
    """Loads decoder and models once; embeds items one by one or in batches (encoders batched across items)."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.cfg = cfg
        self.spec = embedding_spec(cfg)
        self.decoder = Decoder(cfg.decode, cfg.limits)
        self.clip: ClipEncoder | None = load_optional(cfg.models.clip, cfg)
        self.text: TextEncoder | None = load_optional(cfg.models.text, cfg)
        self.asr: Transcriber | None = load_optional(cfg.models.asr, cfg)

    @property
    def unavailable(self) -> list[str]:
        """Configured models that are not loaded (their modalities are off)."""
        loaded = {"clip": self.clip, "text": self.text, "asr": self.asr}
        return [getattr(self.cfg.models, k).card for k, v in loaded.items() if v is None]

    @property
    def models_used(self) -> dict[str, str]:
        return {m.card.id: m.card.version for m in (self.clip, self.text, self.asr) if m is not None}

    def embed(self, item: ItemInput) -> ItemEmbedding:
        """Embed one item; raises the item's `ReelvecError`."""
        result = self.embed_batch([item])[0]
        if isinstance(result, ItemFailure):
            raise MediaError(result.reason, result.detail)
        return result

    def embed_batch(self, items: Sequence[ItemInput]) -> list[ItemEmbedding | ItemFailure]:
        """Embed many items; a bad item becomes an `ItemFailure` in its slot and never stops the batch."""
        results: list[ItemEmbedding | ItemFailure | None] = [None] * len(items)
        decoded: dict[int, DecodedMedia] = {}
        transcripts: dict[int, Transcript] = {}
        timings: dict[int, dict[str, float]] = {}
        for i, item in enumerate(items):
            stage = "validate"
            try:
                validate_item(item, self.cfg.limits)
                stage = "decode"
                t0 = time.perf_counter()
                decoded[i] = self.decoder.decode(item.media)
                t1 = time.perf_counter()
                stage = "asr"
                transcripts[i] = self.asr.transcribe(decoded[i].audio) if self.asr else Transcript.empty()
                timings[i] = {"decode_ms": (t1 - t0) * 1000, "asr_ms": (time.perf_counter() - t1) * 1000}
            except ReelvecError as e:
                results[i] = ItemFailure(item.item_id, stage, e.reason, e.detail)
        ok = [i for i in range(len(items)) if results[i] is None]
        vectors: dict[int, dict[str, np.ndarray]] = {i: {} for i in ok}
        if self.clip is not None and ok:
            t0 = time.perf_counter()
            vis = self.clip.encode_frames([decoded[i].frames for i in ok])
            share = (time.perf_counter() - t0) * 1000 / len(ok)
            for row, i in enumerate(ok):
                vectors[i]["visual"] = vis[row]
                timings[i]["clip_ms"] = share
        if self.text is not None and ok:
            texts: list[tuple[int, str, str]] = []
            for i in ok:
                if cap := caption_text(items[i]):
                    texts.append((i, "caption", cap))
                if tr := transcript_text(transcripts[i], self.cfg.text.transcript_max_chars):
                    texts.append((i, "transcript", tr))
            t0 = time.perf_counter()
            enc = self.text.encode([t for _, _, t in texts], kind="document")
            share = (time.perf_counter() - t0) * 1000 / len(ok)
            for row, (i, modality, _) in enumerate(texts):
                vectors[i][modality] = enc[row]
            for i in ok:
                timings[i]["text_ms"] = share
        for i in ok:
            try:
                results[i] = assemble(
                    items[i], decoded[i], transcripts[i], vectors[i], self.spec, self.models_used, timings[i]
                )
            except ReelvecError as e:
                results[i] = ItemFailure(items[i].item_id, "fuse", e.reason, e.detail)
        return [r for r in results if r is not None]

    def encode_query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → CLIP text tower (vs `visual`), text encoder (vs `caption`/`transcript`), and fused."""
        check_query(text)
        visual = self.clip.encode_text([text])[0] if self.clip is not None else None
        textual = self.text.encode([text], kind="query")[0] if self.text is not None else None
        return query_vectors(self.spec, visual, textual)

    def close(self) -> None:
        self.decoder.close()
