"""Encoders through the model-card path: MiniLM, a tiny decoder (last-token), a tiny open_clip checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.cards import load_card, status
from embedder.config import ReelvecConfig
from embedder.encoders.text import pool
from embedder.factory import load_model
from embedder.pipeline import ItemEmbedder, embedding_spec
from embedder.types import ModelUnavailableError
from tests.conftest import make_config, write_card


def test_minilm_paraphrase_beats_unrelated(session_cfg: ReelvecConfig) -> None:
    enc = load_model(session_cfg.models.text.card, session_cfg)
    v = enc.encode(
        [
            "A man is cooking pasta in the kitchen.",
            "Someone prepares spaghetti at the stove.",
            "The rocket launched into space.",
        ]
    )
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_last_token_pooling_on_tiny_decoder(tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    minilm_dir = load_card("minilm-l6-v2", session_cfg.models.cards_dir).resolve(session_cfg.models.models_dir)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model_dir = tmp_path / "tiny-llama"
    conf = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaModel(conf).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    card = write_card(
        tmp_path / "tiny-llm.yaml",
        id="tiny-llm-test",
        family="hf_text",
        version="test-only",
        modality="text",
        dims=32,
        source={"kind": "local", "path": "tiny-llama"},
        params={"pooling": "last_token", "normalize": True, "max_tokens": 64, "query_prefix": "query: "},
    )
    enc = load_model(card, session_cfg)
    texts = ["short", "a much longer sentence with many more tokens in it"]
    batched = enc.encode(texts, kind="document")
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    # padding must not change the pooled vector: last-token index follows the attention mask
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert not np.allclose(enc.encode(["short"], kind="query"), batched[:1], atol=1e-3)


def test_pool_last_token_handles_left_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last_token").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last_token").flatten().tolist() == [3.0, 7.0]


def test_tiny_clip_loads_through_card_path(tiny_clip_card: Path, session_cfg: ReelvecConfig) -> None:
    enc = load_model(tiny_clip_card, session_cfg)
    rng = np.random.default_rng(0)
    clips = [
        rng.integers(0, 255, size=(3, 48, 64, 3), dtype=np.uint8),
        rng.integers(0, 255, size=(5, 40, 40, 3), dtype=np.uint8),
    ]
    v = enc.encode_frames(clips)
    assert v.shape == (2, 32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # batched across clips == one clip at a time (frames of different clips never mix)
    assert np.allclose(v[1], enc.encode_frames([clips[1]])[0], atol=1e-5)
    t = enc.encode_text(["a rocket", "a soccer ball"])
    assert t.shape == (2, 32) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    s = status(load_card(tiny_clip_card, session_cfg.models.cards_dir), session_cfg.models.models_dir, verify=True)
    assert s.present and s.verified is True


def test_tampered_checkpoint_fails_verify(tiny_clip_card: Path, tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny_clip_card.parent, d)
    with open(d / "tiny.pt", "ab") as f:
        f.write(b"tamper")
    s = status(
        load_card(d / "tiny-clip.yaml", session_cfg.models.cards_dir), session_cfg.models.models_dir, verify=True
    )
    assert s.verified is False and "mismatch" in s.detail


def test_missing_clip_optional_warns_and_pipeline_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path)
    with caplog.at_level(logging.WARNING):
        emb = ItemEmbedder(cfg)
    try:
        assert "visual" not in emb.models and cfg.models.clip.card in emb.unavailable
        assert any("MODEL UNAVAILABLE" in r.message and "models pull" in r.message for r in caplog.records)
        q = emb.encode_query("cooking pasta")
        assert "visual" not in q and q["fused"].shape == (embedding_spec(cfg).dims["fused"],)
    finally:
        emb.close()


def test_missing_clip_required_is_clear_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, REELVEC__MODELS__CLIP__REQUIRED="true")
    with pytest.raises(ModelUnavailableError) as e:
        ItemEmbedder(cfg)
    assert e.value.reason == "missing" and "reelvec models pull clip-vit-b-32-laion2b" in e.value.detail


def test_pipeline_uses_tiny_clip_when_configured(tiny_clip_card: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card))
    emb = ItemEmbedder(cfg)
    try:
        q = emb.encode_query("a rocket in space")
        assert q["visual"].shape == (32,)
        assert emb.spec.dims["visual"] == 32 and emb.spec.dims["fused"] == 32 + 3 * 384
        assert (
            emb.models.get("visual") is not None
            and emb.models["visual"].card.id == "tiny-clip-test"
            and not emb.unavailable
        )
    finally:
        emb.close()
