"""The one index owner: every write of every consumer (CLI ingest, the Serve `IndexWriter`, the backfill's
writer actor) goes through `IndexOwner.write` — relations (duplicate, remix, reused sound), semantic ID,
created/replaced decided by the engine, version guard — and comes back as one `WriteReport`.
`index/` below it is storage only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.audio_fp import align_audio
from embedder.config import DedupConfig, ReelvecConfig
from embedder.pipeline import EmbeddingSpec
from embedder.relations import AUDIO_PAYLOAD, VIDEO_PAYLOAD, ItemPrints, Relation, audio_segments, relate, strongest
from embedder.types import FUSED, ItemEmbedding, ItemFailure, StoreError
from index import VectorIndex, open_index
from index.base import FP_AUDIO, FP_VISUAL, SparseVec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What happened to one stored item."""

    item_id: str
    status: str  # created | replaced
    relation: dict[str, Any] | None = None  # Relation.to_dict(of=...): the strongest relation found at ingest
    semantic_id: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class WriteReport:
    """Per item: written (created/replaced, with its relations) or failed (refused, stale, invalid)."""

    written: list[Written] = field(default_factory=list)
    failed: list[ItemFailure] = field(default_factory=list)

    @property
    def created(self) -> list[str]:
        return [w.item_id for w in self.written if w.status == "created"]

    @property
    def replaced(self) -> list[str]:
        return [w.item_id for w in self.written if w.status == "replaced"]

    @property
    def relations(self) -> dict[str, dict[str, Any]]:
        """Item id -> its relation, for the items written with one (duplicates, remixes, reused sounds)."""
        return {w.item_id: w.relation for w in self.written if w.relation}

    def to_json(self) -> dict[str, Any]:
        return {"written": [w.to_json() for w in self.written], "failed": [f.__dict__ for f in self.failed]}


def stored_prints(index: VectorIndex, item_ids: list[str], cfg: DedupConfig) -> dict[str, ItemPrints]:
    """The comparable prints stored with these items (items without prints, or hashed another way, left out)."""
    got = index.payloads(item_ids, [VIDEO_PAYLOAD, AUDIO_PAYLOAD])
    prints = {i: ItemPrints.from_payload(p, cfg) for i, p in got.items()}
    return {i: p for i, p in prints.items() if p is not None}


def candidates(index: VectorIndex, prints: ItemPrints, k: int, exclude: str, visual: bool = True) -> list[str]:
    """Stored items worth the exact check: nearest by the pooled visual print (unless `visual` is false) and by
    shared audio hashes, on whichever of the two vectors the index has."""
    aux = index.aux_vectors
    pooled, audio = prints.candidates
    dense = pooled if visual and FP_VISUAL in aux else None
    sparse = SparseVec.of(audio) if FP_AUDIO in aux else None
    if dense is None and sparse is None:
        return []
    return index.relation_candidates(dense, sparse, k, exclude_ids=[exclude])


def mark_relations(index: VectorIndex, items: list[ItemEmbedding], cfg: DedupConfig) -> None:
    """Set each item's `relation`: the strongest one to a stored item (found through the index's candidates) or
    to an earlier item of the same batch, checked exactly on the aligned prints."""
    seen: dict[str, ItemPrints] = {}
    for item in items:
        item.relation = None
        if item.prints is None:
            continue
        others = stored_prints(index, candidates(index, item.prints, cfg.candidates, item.item_id), cfg)
        others.update({i: p for i, p in seen.items() if i != item.item_id})
        found: dict[str, Relation] = {i: relate(item.prints, p, cfg) for i, p in others.items()}
        best = strongest(found)
        if best is not None:
            item.relation = best[1].to_dict(of=best[0])
        seen[item.item_id] = item.prints


DUPLICATE_KINDS = ("duplicate_of", "remix_of")  # what `reelvec dups` groups: the same visuals


def shared_sound(index: VectorIndex, item_id: str, cfg: DedupConfig, k: int) -> list[dict[str, Any]]:
    """Stored clips whose sound aligns with `item_id`'s (audio score >= `dedup.audio_threshold`), best first, with
    the seconds of `item_id` they share; found through the audio-hash candidates, then checked exactly."""
    stored = index.payloads([item_id], [VIDEO_PAYLOAD, AUDIO_PAYLOAD])
    if item_id not in stored:
        raise StoreError("unknown_item", f"no item {item_id!r} in {index.collection}")
    mine = ItemPrints.from_payload(stored[item_id], cfg)
    if mine is None or mine.audio is None:
        return []
    ids = candidates(index, mine, max(k, cfg.candidates), item_id, visual=False)
    found = []
    for other, prints in stored_prints(index, ids, cfg).items():
        if prints.audio is None:
            continue
        aa = align_audio(mine.audio, prints.audio, cfg)
        if aa.score >= cfg.audio_threshold:
            segs = [s.to_dict() for s in audio_segments(aa)]
            found.append({"item_id": other, "audio_score": round(aa.score, 4), "segments": segs})
    return sorted(found, key=lambda f: -f["audio_score"])[:k]


def relation_line(rel: dict[str, Any]) -> str:
    """One human line for a relation: scores and the copied seconds."""
    audio = "no audio" if rel.get("audio_score") is None else f"audio {rel['audio_score']:.3f}"
    spans = ", ".join(f"{s['new_s'][0]:.1f}-{s['new_s'][1]:.1f}s" for s in rel.get("segments") or []) or "-"
    return f"visual {rel['visual_score']:.3f}, {audio}; copied {spans}"


class IndexOwner:
    """Owns one open index version and the write protocol over it; reads pass straight to the storage."""

    def __init__(self, index: VectorIndex, dedup: DedupConfig, semantic: Any = None) -> None:
        self.index, self.dedup, self.semantic = index, dedup, semantic

    @classmethod
    def open(
        cls, cfg: ReelvecConfig, spec: EmbeddingSpec, version: str | None = None, create: bool = True
    ) -> IndexOwner:
        """Open the version the alias serves (or `version`) with the semantic-ID codebooks fitted for it."""
        from serving.semantic import load_model

        index = open_index(cfg.index, spec.dims, spec.schema_version, version=version, create=create)
        try:
            return cls(index, cfg.dedup, load_model(cfg, index.collection, spec.schema_version))
        except BaseException:
            index.close()
            raise

    def write(self, items: list[ItemEmbedding]) -> WriteReport:
        """Re-upload check against the index and the batch, semantic IDs, then one version-guarded write that says
        created or replaced per item. Policy `reject` refuses duplicates (`duplicate`, naming the original)."""
        if self.semantic is not None and items:
            codes = self.semantic.assign(np.stack([it.vectors[FUSED] for it in items]))
            for it, row in zip(items, codes, strict=True):
                it.semantic_id = [int(c) for c in row]
        if self.dedup.enabled:
            mark_relations(self.index, items, self.dedup)
        report = WriteReport()
        dups = [it for it in items if it.duplicate_of] if self.dedup.policy == "reject" else []
        if dups:
            report.failed = [
                ItemFailure(it.item_id, "dedup", "duplicate", f"re-upload of {it.duplicate_of!r}") for it in dups
            ]
            items = [it for it in items if not it.duplicate_of]
        if not items:
            return report
        stored = self.index.upsert_checked(items)
        report.failed += stored.failed + stored.refused
        by_id = {it.item_id: it for it in items}
        for item_id in stored.written:
            it = by_id[item_id]
            status = "created" if item_id in stored.created else "replaced"
            report.written.append(Written(item_id, status, it.relation, it.semantic_id))
        return report

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> IndexOwner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
