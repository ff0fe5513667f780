"""Semantic IDs: deterministic residual codes, in range, saved and reloaded, refused for another schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedder.semantic_ids import SemanticIdModel, fit, prefix_purity
from embedder.types import ConfigError


def blobs(n_per: int = 100, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated unit-norm Gaussian blobs and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 3
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) * 0.3 for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(4), n_per)


def test_codes_are_deterministic_and_in_range() -> None:
    x, _ = blobs()
    a, b = fit(x, levels=3, codebook_size=16, seed=7), fit(x, levels=3, codebook_size=16, seed=7)
    ca, cb = a.assign(x), b.assign(x)
    assert ca.shape == (400, 3) and np.array_equal(ca, cb)
    assert a.codebook_sizes == (16, 16, 16)
    assert ca.min() >= 0 and all(ca[:, i].max() < a.codebook_sizes[i] for i in range(3))
    # Residual levels refine: reconstruction error falls with each level used.
    errs = [np.linalg.norm(x - sum(a.codebooks[i][ca[:, i]] for i in range(d)), axis=1).mean() for d in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]


def test_blobs_share_a_level1_code() -> None:
    x, labels = blobs()
    codes = fit(x, levels=3, codebook_size=4, seed=0).assign(x)
    assert prefix_purity(codes, labels, depth=1) >= 0.95
    for blob in range(4):
        _, counts = np.unique(codes[labels == blob, 0], return_counts=True)
        assert counts.max() / counts.sum() >= 0.95
    assert len(set(codes[:, 0].tolist())) == 4


def test_prefix_purity_counts_majorities() -> None:
    codes = np.array([[0, 1], [0, 2], [0, 2], [1, 0]])
    assert prefix_purity(codes, ["a", "a", "b", "c"], depth=1) == 0.75
    assert prefix_purity(codes, ["a", "a", "b", "c"], depth=2) == 0.75
    assert prefix_purity(codes, ["a", "b", "b", "c"], depth=2) == 1.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, _ = blobs()
    model = fit(x, levels=2, codebook_size=8, seed=1)
    model.save(tmp_path / "sid", schema_version="v1-abc")
    back = SemanticIdModel.load(tmp_path / "sid", schema_version="v1-abc")
    assert back.codebook_sizes == (8, 8) and back.dim == 32 and back.requested_codebook_size == 8
    assert np.array_equal(back.assign(x), model.assign(x))


def test_stale_or_missing_model_is_refused(tmp_path: Path) -> None:
    x, _ = blobs()
    fit(x, levels=2, codebook_size=8).save(tmp_path, schema_version="v1-old")
    with pytest.raises(ConfigError) as e:
        SemanticIdModel.load(tmp_path, schema_version="v1-new")
    assert e.value.reason == "semantic_ids_stale" and str(tmp_path) not in e.value.detail
    with pytest.raises(ConfigError) as e:
        SemanticIdModel.load(tmp_path / "nowhere", schema_version="v1-old")
    assert e.value.reason == "semantic_ids_missing"


def test_codebook_shrinks_on_tiny_data() -> None:
    x, _ = blobs(n_per=3)
    model = fit(x, levels=3, codebook_size=256)
    assert model.codebook_sizes[0] == 12 and model.requested_codebook_size == 256
    assert all(k <= 12 for k in model.codebook_sizes)
    assert len({tuple(c) for c in model.assign(x).tolist()}) == 12  # every item still gets its own code


def test_wrong_dimension_is_a_config_error() -> None:
    x, _ = blobs()
    with pytest.raises(ConfigError) as e:
        fit(x, levels=1, codebook_size=4).assign(x[:, :16])
    assert e.value.reason == "semantic_ids_bad_input"
