"""The one index owner: every write of every consumer (CLI ingest, the Serve `IndexWriter`, the backfill's
writer actor) goes through `IndexOwner.write` — re-upload check, semantic ID, created/replaced decided by the
engine, version guard — and comes back as one `WriteReport`. `index/` below it is storage only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.config import DedupConfig, ReelvecConfig
from embedder.pipeline import EmbeddingSpec
from embedder.types import FUSED, ItemEmbedding, ItemFailure
from index import VectorIndex, open_index
from index.base import FINGERPRINT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What happened to one stored item."""

    item_id: str
    status: str  # created | replaced
    duplicate_of: str | None = None
    duplicate_score: float | None = None
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
    def duplicates(self) -> dict[str, tuple[str, float]]:
        return {w.item_id: (w.duplicate_of, w.duplicate_score) for w in self.written if w.duplicate_of}  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return {"written": [w.to_json() for w in self.written], "failed": [f.__dict__ for f in self.failed]}


def mark_duplicates(index: VectorIndex, items: list[ItemEmbedding], threshold: float) -> dict[str, tuple[str, float]]:
    """Set `duplicate_of` / `duplicate_score` on every item whose fingerprint matches a stored item (or an earlier
    item of the same batch) at `threshold` or more; returns item id -> (original, score)."""
    from embedder.fingerprint import similarity

    found: dict[str, tuple[str, float]] = {}
    seen: list[ItemEmbedding] = []
    for item in items:
        item.duplicate_of, item.duplicate_score = None, None
        if item.fingerprint is None:
            continue
        best: tuple[str, float] | None = None
        if FINGERPRINT in index.multivectors:
            hits = index.find_duplicates(item.fingerprint, k=1, exclude_ids=[item.item_id])
            best = hits[0] if hits else None
        for other in seen:
            if other.item_id != item.item_id and other.fingerprint is not None:
                score = similarity(item.fingerprint, other.fingerprint)
                if best is None or score > best[1]:
                    best = (other.item_id, score)
        seen.append(item)
        if best is not None and best[1] >= threshold:
            item.duplicate_of, item.duplicate_score = best[0], round(float(best[1]), 4)
            found[item.item_id] = (best[0], item.duplicate_score)
    return found


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
        dups = mark_duplicates(self.index, items, self.dedup.threshold) if self.dedup.enabled else {}
        report = WriteReport()
        if self.dedup.policy == "reject" and dups:
            report.failed = [
                ItemFailure(i, "dedup", "duplicate", f"re-upload of {orig!r} (similarity {score:.3f})")
                for i, (orig, score) in dups.items()
            ]
            items = [it for it in items if it.item_id not in dups]
        if not items:
            return report
        stored = self.index.upsert_checked(items)
        report.failed += stored.failed + stored.refused
        by_id = {it.item_id: it for it in items}
        for item_id in stored.written:
            it = by_id[item_id]
            status = "created" if item_id in stored.created else "replaced"
            report.written.append(Written(item_id, status, it.duplicate_of, it.duplicate_score, it.semantic_id))
        return report

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> IndexOwner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
