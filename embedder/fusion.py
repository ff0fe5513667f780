"""Fuse per-modality vectors into one item vector whose cosine is a weighted sum of modality cosines.

fused = concat_m( sqrt(w_m / W) * v_m ), v_m L2-normalized, W = sum of the weights of the modalities
present; an absent modality contributes a zero block. Hence ||fused|| = 1 and, for two items with the same
modalities present, cos(fused_a, fused_b) = sum_m (w_m / W) * cos(v_m^a, v_m^b). When the present sets
differ, a modality only one side has contributes 0 and the shared ones are weighted
sqrt(w_m/W_a * w_m/W_b) — a missing modality neither crashes nor counts as a match.
"""

from __future__ import annotations

import math

import numpy as np

from embedder.types import FUSED


def l2_normalize(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / max(float(np.linalg.norm(v)), eps)


def effective_weights(present: list[str] | set[str], weights: dict[str, float]) -> dict[str, float]:
    """Weights of the present modalities renormalized to sum to 1 (zero-weight modalities dropped)."""
    total = sum(weights[m] for m in present if weights.get(m, 0) > 0)
    if total <= 0:
        return {}
    return {m: weights[m] / total for m in present if weights.get(m, 0) > 0}


def fuse(vectors: dict[str, np.ndarray], weights: dict[str, float], dims: dict[str, int]) -> np.ndarray:
    """Fused vector of length sum(dims) in the order of `dims` (its modality blocks); raises ValueError if nothing is
    present."""
    order = [m for m in dims if m != FUSED]
    eff = effective_weights([m for m in order if m in vectors], weights)
    if not eff:
        raise ValueError("no modality with a positive weight is present")
    blocks = []
    for m in order:
        if m in eff:
            v = np.asarray(vectors[m], dtype=np.float32)
            if v.shape != (dims[m],):
                raise ValueError(f"{m} vector has shape {v.shape}, expected ({dims[m]},)")
            blocks.append(math.sqrt(eff[m]) * l2_normalize(v))
        else:
            blocks.append(np.zeros(dims[m], dtype=np.float32))
    return np.concatenate(blocks).astype(np.float32)


def late_fusion(using: str, mode: str) -> bool:
    """Whether a search over `using` with fusion `mode` is Qdrant's late fusion (RRF/DBSF over one prefetch per
    modality) rather than one cosine search of a single named vector."""
    return using == FUSED and mode != "vector"
