"""Fusion: cosine of fused vectors = weighted sum of modality cosines; missing modalities renormalize."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.fusion import effective_weights, fuse, l2_normalize
from embedder.types import MODALITIES

DIMS = {"visual": 8, "caption": 6, "transcript": 6, "ocr": 5}
WEIGHTS = {"visual": 0.4, "caption": 0.3, "transcript": 0.2, "ocr": 0.1}


def _vecs(rng: np.random.Generator, present: list[str]) -> dict[str, np.ndarray]:
    return {m: rng.normal(size=DIMS[m]).astype(np.float32) for m in present}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(l2_normalize(a), l2_normalize(b)))


def test_fused_is_unit_and_blocks_in_order() -> None:
    rng = np.random.default_rng(0)
    v = _vecs(rng, list(MODALITIES))
    f = fuse(v, WEIGHTS, DIMS)
    assert f.shape == (25,)
    assert math.isclose(float(np.linalg.norm(f)), 1.0, rel_tol=1e-5)
    assert np.allclose(f[:8], math.sqrt(0.4) * l2_normalize(v["visual"]), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    w=st.tuples(*[st.floats(0.01, 5.0) for _ in MODALITIES]),
    present=st.sets(st.sampled_from(MODALITIES), min_size=1),
)
def test_cosine_is_weighted_sum_when_same_modalities(seed: int, w: tuple[float, ...], present: set[str]) -> None:
    rng = np.random.default_rng(seed)
    weights = dict(zip(MODALITIES, w, strict=True))
    order = [m for m in MODALITIES if m in present]
    a, b = _vecs(rng, order), _vecs(rng, order)
    eff = effective_weights(order, weights)
    expected = sum(eff[m] * _cos(a[m], b[m]) for m in order)
    got = float(np.dot(fuse(a, weights, DIMS), fuse(b, weights, DIMS)))
    assert math.isclose(got, expected, abs_tol=1e-5)
    assert math.isclose(sum(eff.values()), 1.0, rel_tol=1e-9)


def test_missing_modality_contributes_zero_and_shared_are_weighted() -> None:
    rng = np.random.default_rng(1)
    a = _vecs(rng, ["visual", "caption", "transcript"])
    b = {"caption": a["caption"].copy()}  # only caption, identical to a's caption
    fa, fb = fuse(a, WEIGHTS, DIMS), fuse(b, WEIGHTS, DIMS)
    assert np.all(fb[:8] == 0) and np.all(fb[14:] == 0)
    assert math.isclose(float(np.linalg.norm(fb)), 1.0, rel_tol=1e-5)
    # shared modality weighted sqrt(w_a * w_b): caption weight 0.3 / 0.9 for a (ocr absent), 1.0 for b
    assert math.isclose(float(np.dot(fa, fb)), math.sqrt(0.3 / 0.9 * 1.0), abs_tol=1e-5)


def test_zero_weight_modality_is_ignored() -> None:
    rng = np.random.default_rng(2)
    v = _vecs(rng, list(MODALITIES))
    f = fuse(v, {"visual": 0.0, "caption": 1.0, "transcript": 1.0, "ocr": 1.0}, DIMS)
    assert np.all(f[:8] == 0)


def test_nothing_present_raises() -> None:
    with pytest.raises(ValueError, match="no modality"):
        fuse({}, WEIGHTS, DIMS)


def test_wrong_dims_raise() -> None:
    with pytest.raises(ValueError, match="caption"):
        fuse({"caption": np.ones(5, dtype=np.float32)}, WEIGHTS, DIMS)
