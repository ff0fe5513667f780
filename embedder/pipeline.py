"""What the step graph's results become: the embedding spec (dims, weights, schema version), the fused
`ItemEmbedding` of an item, query vectors, and `ItemEmbedder`, the in-process runner of the graph."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.audio_fp import AUDIO_PRINT_VERSION
from embedder.cards import load_card
from embedder.config import LimitsConfig, ReelvecConfig
from embedder.fingerprint import VIDEO_PRINT_VERSION
from embedder.fusion import fuse
from embedder.graph import Graph, close_models, load_steps, run_steps
from embedder.items import normalize_hashtags
from embedder.moments import Moment, find_moments
from embedder.steps import GRAPH
from embedder.types import (
    FUSED,
    ItemEmbedding,
    ItemFailure,
    ItemInput,
    MediaError,
    ModelUnavailableError,
)
from embedder.work import Work, guard

log = logging.getLogger(__name__)

# Bump when the meaning of stored vectors changes in a way cards and fusion weights do not capture.
EMBEDDING_SCHEMA = 2


@dataclass(frozen=True)
class EmbeddingSpec:
    """What the index needs before any model loads: vector dims, fusion weights, model versions."""

    dims: dict[str, int]
    weights: dict[str, float]
    models: dict[str, str]
    schema_version: str

    @property
    def modalities(self) -> list[str]:
        """The modality vectors, in fused-block order."""
        return [m for m in self.dims if m != FUSED]


def embedding_spec(cfg: ReelvecConfig, graph: Graph = GRAPH) -> EmbeddingSpec:
    """Dims and schema version from the graph, its model cards and the fusion config (no weights are read)."""
    cards = {s.name: load_card(c, cfg.models.cards_dir) for s in graph.steps if (c := s.card(cfg)) is not None}
    dims = graph.modality_dims(cfg, {name: c.dims for name, c in cards.items()})
    models = {c.id: c.version for c in cards.values()}
    given = {**graph.default_weights(), **cfg.fusion.weights}
    weights = {m: float(given.get(m, 0.0)) for m in dims if m != FUSED}
    basis = json.dumps(
        {
            "schema": EMBEDDING_SCHEMA,
            "models": models,
            "dims": dims,
            "weights": weights,
            "order": [m for m in dims if m != FUSED],
            "fingerprint": f"{VIDEO_PRINT_VERSION}+{AUDIO_PRINT_VERSION}",
        },
        sort_keys=True,
    )
    return EmbeddingSpec(
        dims, weights, models, f"v{EMBEDDING_SCHEMA}-{hashlib.sha256(basis.encode()).hexdigest()[:10]}"
    )


def check_query(text: str, limits: LimitsConfig) -> None:
    """A search query must have some text and at most `limits.max_caption_chars` characters."""
    if not isinstance(text, str) or not text.strip():
        raise MediaError("empty_query", "query text is empty")
    if len(text) > limits.max_caption_chars:
        raise MediaError("bad_query", f"query longer than limits.max_caption_chars={limits.max_caption_chars}")


def query_vectors(spec: EmbeddingSpec, parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-modality query vectors (each step's `query` output for one text) plus their fused vector."""
    vecs = {m: np.asarray(v, dtype=np.float32) for part in parts for m, v in part.items() if m in spec.dims}
    vecs[FUSED] = fuse(vecs, spec.weights, spec.dims)
    return vecs


def assemble(work: Work, spec: EmbeddingSpec, unavailable: Sequence[str] = ()) -> ItemEmbedding:
    """Fuse the modality vectors and build the ItemEmbedding; an item with no modality at all is `no_content`."""
    present = [m for m in spec.modalities if m in work.vectors]
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
        prints=work.prints,
        frame_vectors=work.frame_vectors,
        fields=dict(work.fields),
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


def unavailable_models(cfg: ReelvecConfig, graph: Graph = GRAPH) -> list[str]:
    """Card ids of configured models whose weights are absent, checked without loading them (the driver's view)."""
    out = []
    for step in graph.steps:
        ref = getattr(cfg.models, step.role) if step.role else None
        if ref is None:
            continue
        try:
            load_card(ref.card, cfg.models.cards_dir).resolve(cfg.models.models_dir)
        except ModelUnavailableError:
            if ref.required:
                raise
            out.append(ref.card)
    return out


def encode_query(graph: Graph, models: Mapping[str, Any], spec: EmbeddingSpec, text: str) -> dict[str, np.ndarray]:
    """Query text → every loaded step's query vectors (CLIP text tower vs `visual`, the text encoder vs the text
    modalities), and fused."""
    steps = [s for s in graph.steps if s.query is not None and s.name in models]
    parts = [{m: v[0] for m, v in s.query(models[s.name], [text]).items()} for s in steps]  # type: ignore[misc]
    return query_vectors(spec, parts)


def documents_step(graph: Graph) -> str | None:
    """The step whose model encodes stored texts for moments (the text encoder), if any."""
    return next((s.name for s in graph.steps if s.documents is not None), None)


class ItemEmbedder:
    """Loads the decoder and models once and runs the step graph in-process, for one item or a batch."""

    def __init__(self, cfg: ReelvecConfig, graph: Graph = GRAPH, steps: Sequence[str] | None = None) -> None:
        self.cfg, self.graph = cfg, graph.configured(cfg)
        self.spec = embedding_spec(cfg, graph)
        self.models = load_steps(graph, cfg, steps)
        wanted = [s for s in graph.steps if s.card(cfg) and (steps is None or s.name in steps)]
        self.unavailable = [s.card(cfg) for s in wanted if s.name not in self.models]

    def embed(self, item: ItemInput) -> ItemEmbedding:
        """Embed one item; raises the item's `ReelvecError`."""
        work = Work(item)
        self.run([work])
        return embedding_or_raise(work, self.spec, self.unavailable)  # type: ignore[arg-type]

    def run(self, works: Sequence[Work]) -> None:
        """Every step over these items (independent steps concurrently, each batched across the items)."""
        run_steps(self.graph, self.models, works, self.cfg)

    def embed_batch(self, items: Sequence[ItemInput]) -> list[ItemEmbedding | ItemFailure]:
        """Embed many items; a bad item becomes an `ItemFailure` in its slot and never stops the batch."""
        works = [Work(item) for item in items]
        self.run(works)
        return finish(works, self.spec, self.unavailable)  # type: ignore[arg-type]

    def encode_query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → per-modality and fused query vectors."""
        check_query(text, self.cfg.limits)
        return encode_query(self.graph, self.models, self.spec, text)

    def moments(
        self, query: dict[str, np.ndarray], payloads: list[dict[str, Any]], frames: dict[str, np.ndarray]
    ) -> list[Moment | None]:
        """Where in each hit (its stored payload with `item_id`) the query matches best (`embedder.moments`)."""
        name = documents_step(self.graph)
        if name is None or name not in self.models:
            return find_moments(payloads, query, lambda t: np.zeros((0, 1)), frames)
        step, model = self.graph[name], self.models[name]
        return find_moments(payloads, query, lambda t: step.documents(model, t), frames)  # type: ignore[misc]

    def close(self) -> None:
        close_models(self.models)
