"""Semantic IDs over an index version: fit residual-quantization codebooks on the stored fused vectors, save them
next to the data with the embedding-schema version, and write `semantic_id` into every item's payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedder.config import ReelvecConfig
from embedder.semantic_ids import SemanticIdModel, fit, prefix_purity
from embedder.types import FUSED, ConfigError


def model_dir(cfg: ReelvecConfig, collection: str) -> Path:
    """Where one index version's codebooks live (`data_dir/semantic_ids/<collection>__<version>`)."""
    return Path(cfg.data_dir) / "semantic_ids" / collection


def load_model(cfg: ReelvecConfig, collection: str, schema_version: str) -> SemanticIdModel | None:
    """The fitted model for this version, or None when `semantic-ids fit` has not run for it."""
    directory = model_dir(cfg, collection)
    if not directory.exists():
        return None
    try:
        return SemanticIdModel.load(directory, schema_version)
    except ConfigError as e:
        if e.reason == "semantic_ids_missing":
            return None
        raise


def _all_fused(index: Any) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    blocks = []
    for batch_ids, vecs in index.iter_vectors(FUSED):
        ids += batch_ids
        blocks.append(vecs)
    if not ids:
        raise ConfigError("semantic_ids_bad_input", "the index has no items to fit semantic IDs on")
    return ids, np.concatenate(blocks)


def assign_all(index: Any, model: SemanticIdModel) -> int:
    """Write `semantic_id` into every stored item's payload; returns how many items were updated."""
    ids, vecs = _all_fused(index)
    codes = model.assign(vecs)
    index.set_payload({i: {"semantic_id": [int(c) for c in row]} for i, row in zip(ids, codes, strict=True)})
    return len(ids)


def fit_index(cfg: ReelvecConfig, index: Any, schema_version: str, levels: int, codebook_size: int) -> dict[str, Any]:
    """Fit on every stored fused vector, save, assign; report codebook sizes and, where items carry a `topic`
    attribute, the prefix purity per level."""
    ids, vecs = _all_fused(index)
    model = fit(vecs, levels=levels, codebook_size=codebook_size, seed=cfg.semantic_ids.seed)
    model.save(model_dir(cfg, index.collection), schema_version)
    codes = model.assign(vecs)
    index.set_payload({i: {"semantic_id": [int(c) for c in row]} for i, row in zip(ids, codes, strict=True)})
    report: dict[str, Any] = {
        "items": len(ids),
        "levels": model.levels,
        "codebook_sizes": list(model.codebook_sizes),
        "path": str(model_dir(cfg, index.collection)),
    }
    topics = [(index.get(i).payload.get("metadata") or {}).get("topic") for i in ids]
    if all(topics):
        report["prefix_purity"] = {
            str(d): round(prefix_purity(codes, topics, d), 4) for d in range(1, model.levels + 1)
        }
    return report
