"""The encoder catalogue: each shipped card loads through a tiny random model of its architecture (never a real
model), dims come from the card, and switching the configured encoder changes the schema version."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedder.cards import SHA256_RECORD, list_cards, load_card, pull
from embedder.config import DEFAULT_CARDS_DIR, ReelvecConfig
from embedder.factory import load_model
from embedder.pipeline import embedding_spec
from embedder.types import ConfigError, ModelUnavailableError
from tests.conftest import make_config, write_card

TINY = 32  # embedding size of every tiny model


def tiny_card(real_id: str, folder: Path, files: list[str], dims: int, **params: Any) -> Path:
    """A test card for `folder`: the real card's family, modality and params, with tiny weights, dims and arch."""
    real = load_card(real_id, DEFAULT_CARDS_DIR)
    pinned = [{"path": f, "sha256": hashlib.sha256((folder / f).read_bytes()).hexdigest()} for f in files]
    return write_card(
        folder / f"tiny-{real_id}.yaml",
        id=f"tiny-{real_id}",
        family=real.family,
        version="test-only",
        modality=real.modality,
        dims=dims,
        source={"kind": "local", "path": "."},
        files=pinned,
        params={**real.params, **params},
        intended_use="tests only: random weights, never a real model",
    )


def minilm_tokenizer(cfg: ReelvecConfig, dest: Path) -> Any:
    """The bundled MiniLM tokenizer saved into `dest` (the tiny models' vocabulary; no tokenizer is downloaded)."""
    from transformers import AutoTokenizer

    src = load_card("minilm-l6-v2", cfg.models.cards_dir).resolve(cfg.models.models_dir)
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.save_pretrained(dest)
    return tok


def test_every_card_loads_and_new_cards_state_real_dims() -> None:
    import open_clip

    cards = {c.id: c for c in list_cards(DEFAULT_CARDS_DIR)}
    assert {"qwen3-embedding-0.6b", "siglip2-so400m-14", "pe-core-l-14-336", "embeddinggemma-2"} <= set(cards)
    for cid in ("siglip2-so400m-14", "pe-core-l-14-336"):
        c = cards[cid]
        assert (c.params["arch"], c.params["pretrained_tag"]) in open_clip.list_pretrained()
        assert c.dims == open_clip.get_model_config(c.params["arch"])["embed_dim"]
        pre = open_clip.get_pretrained_cfg(c.params["arch"], c.params["pretrained_tag"])
        assert tuple(c.params["mean"]) == tuple(pre["mean"]) and c.params["resize_mode"] == pre["resize_mode"]
    assert cards["qwen3-embedding-0.6b"].dims == max(cards["qwen3-embedding-0.6b"].params["matryoshka_dims"])


def tiny_qwen3(d: Path, cfg: ReelvecConfig) -> Path:
    """A tiny random Qwen3 decoder (hidden 64) with the MiniLM vocabulary, and a card with the real card's params."""
    from transformers import Qwen3Config, Qwen3Model

    tok = minilm_tokenizer(cfg, d)
    conf = Qwen3Config(
        vocab_size=tok.vocab_size,
        hidden_size=2 * TINY,
        intermediate_size=4 * TINY,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    Qwen3Model(conf).save_pretrained(d)
    return tiny_card("qwen3-embedding-0.6b", d, ["model.safetensors"], 2 * TINY, matryoshka_dims=[16, 32, 64])


def test_qwen3_tiny_last_token_prefix_and_matryoshka(tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    card = tiny_qwen3(tmp_path, session_cfg)
    full = load_model(card, session_cfg)
    assert full.dims == 64 and full.pooling == "last_token"
    texts = ["short", "a much longer caption with many more tokens in it"]
    docs = full.encode(texts)
    assert np.allclose(docs, np.stack([full.encode([t])[0] for t in texts]), atol=1e-5)  # padding-invariant
    assert not np.allclose(full.encode(texts, kind="query"), docs, atol=1e-3)  # the instruction prefix is used
    cut = load_model(f"{card}@{TINY}", session_cfg)
    assert cut.dims == TINY
    head = docs[:, :TINY] / np.linalg.norm(docs[:, :TINY], axis=1, keepdims=True)  # the prefix, renormalized
    assert cut.encode(texts).shape == (2, TINY) and np.allclose(cut.encode(texts), head, atol=1e-5)


def test_matryoshka_size_must_be_listed(session_cfg: ReelvecConfig) -> None:
    with pytest.raises(ConfigError) as e:
        load_card("qwen3-embedding-0.6b@100", session_cfg.models.cards_dir)
    assert e.value.reason == "invalid_dims" and "256" in e.value.detail
    with pytest.raises(ConfigError) as e:
        load_card("minilm-l6-v2@128", session_cfg.models.cards_dir)
    assert e.value.reason == "invalid_dims"


# The tiny vision towers: the real timm builders of SigLIP2 So400m/14 and PE-Core L/14 with tiny sizes.
def _register_tiny_towers() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import vit_pe_core_large_patch14_336
    from timm.models.vision_transformer import vit_so400m_patch14_siglip_224

    if timm.models.is_model("reelvec_tiny_siglip2"):
        return
    tiny = {"img_size": 28, "embed_dim": TINY, "depth": 1, "num_heads": 2}

    @register_model
    def reelvec_tiny_siglip2(pretrained: bool = False, **kw: Any) -> Any:
        return vit_so400m_patch14_siglip_224(pretrained=False, **{**tiny, **kw})

    @register_model
    def reelvec_tiny_pe_core(pretrained: bool = False, **kw: Any) -> Any:
        extra = {"ref_feat_shape": (2, 2), "attn_pool_num_heads": 2}
        return vit_pe_core_large_patch14_336(pretrained=False, **{**tiny, **extra, **kw})


def tiny_open_clip(real_id: str, tower: str, d: Path, cfg: ReelvecConfig) -> Path:
    """open_clip's own config of the real card's arch with tiny sizes; random weights as safetensors; a card."""
    import open_clip
    from safetensors.torch import save_file

    _register_tiny_towers()
    real = load_card(real_id, DEFAULT_CARDS_DIR)
    conf = copy.deepcopy(open_clip.get_model_config(real.params["arch"]))
    conf["embed_dim"] = TINY
    conf["vision_cfg"].update(image_size=28, timm_model_name=tower)
    conf["text_cfg"].update(width=TINY, heads=2, layers=1)
    files = ["open_clip_model.safetensors"]
    if "tokenizer_dir" in real.params:  # SigLIP2 reads an HF tokenizer from the weights folder
        conf["text_cfg"]["vocab_size"] = minilm_tokenizer(cfg, d).vocab_size
        files.append("tokenizer.json")
    arch = f"reelvec-{tower}"
    (d / f"{arch}.json").write_text(json.dumps(conf))
    open_clip.add_model_config(d / f"{arch}.json")
    torch.manual_seed(0)
    save_file(open_clip.create_model(arch, pretrained=None).state_dict(), d / files[0])
    return tiny_card(real_id, d, files, TINY, arch=arch, model_config=f"{arch}.json")


@pytest.mark.parametrize(
    ("real_id", "tower"), [("siglip2-so400m-14", "reelvec_tiny_siglip2"), ("pe-core-l-14-336", "reelvec_tiny_pe_core")]
)
def test_open_clip_cards_load_tiny_models(real_id: str, tower: str, tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    enc = load_model(tiny_open_clip(real_id, tower, tmp_path, session_cfg), session_cfg)
    assert enc.squash and enc.dims == TINY and float(enc.mean.flatten()[0]) == 0.5  # the card's preprocessing
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8), rng.integers(0, 255, (2, 40, 40, 3), np.uint8)]
    v = enc.encode_frames(clips)
    assert v.shape == (2, TINY) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v[1], enc.encode_frames([clips[1]])[0], atol=1e-5)
    t = enc.encode_text(["a rocket", "a soccer ball"])
    assert t.shape == (2, TINY) and not np.allclose(t[0], t[1])


def test_switching_encoder_changes_schema_version(tmp_path: Path) -> None:
    base = embedding_spec(make_config(tmp_path))
    siglip = embedding_spec(make_config(tmp_path, REELVEC__MODELS__CLIP__CARD="siglip2-so400m-14"))
    pe = embedding_spec(make_config(tmp_path, REELVEC__MODELS__CLIP__CARD="pe-core-l-14-336"))
    qwen = embedding_spec(make_config(tmp_path, REELVEC__MODELS__TEXT__CARD="qwen3-embedding-0.6b"))
    qwen256 = embedding_spec(make_config(tmp_path, REELVEC__MODELS__TEXT__CARD="qwen3-embedding-0.6b@256"))
    versions = {s.schema_version for s in (base, siglip, pe, qwen, qwen256)}
    assert len(versions) == 5
    assert (siglip.dims["visual"], pe.dims["visual"]) == (1152, 1024)
    assert (qwen.dims["caption"], qwen256.dims["transcript"]) == (1024, 256)
    assert embedding_spec(make_config(tmp_path)).schema_version == base.schema_version  # stable


def test_pull_checks_every_file_of_a_card(tmp_path: Path) -> None:
    url = "https://huggingface.co/org/repo/resolve/" + "b" * 40 + "/sub/w.bin"
    loc = tmp_path / "models" / "multi"
    loc.mkdir(parents=True)
    (loc / "w.bin").write_bytes(b"weights")
    (loc / "tokenizer.json").write_bytes(b"{}")
    good = hashlib.sha256(b"{}").hexdigest()

    def card(pin: str) -> Any:
        files = [{"path": "w.bin"}, {"path": "tokenizer.json", "sha256": pin}]
        path = write_card(
            tmp_path / "multi.yaml", id="multi", family="hf_text", version="1", modality="text",
            source={"kind": "url", "url": url}, files=files,
        )  # fmt: skip
        return load_card(path, tmp_path)

    assert pull(card(good), tmp_path / "models") == loc
    assert set(json.loads((loc / SHA256_RECORD).read_text())) == {"w.bin", "tokenizer.json"}
    with pytest.raises(ModelUnavailableError) as e:
        pull(card("0" * 64), tmp_path / "models")
    assert e.value.reason == "sha256_mismatch" and "tokenizer.json" in e.value.detail


def tiny_embeddinggemma2(d: Path, cfg: ReelvecConfig) -> Path:
    """A tiny EmbeddingGemma 2 (the transformers classes: Gemma 4 vision + audio towers, bidirectional text
    model) with its processor, saved as `save_pretrained` lays it out; a card for it."""
    from transformers import AutoTokenizer, EmbeddingGemma2Config, EmbeddingGemma2Model, EmbeddingGemma2Processor
    from transformers.models.embedding_gemma2.video_processing_embedding_gemma2 import EmbeddingGemma2VideoProcessor
    from transformers.models.gemma4 import Gemma4AudioFeatureExtractor, Gemma4ImageProcessor

    src = load_card("minilm-l6-v2", cfg.models.cards_dir).resolve(cfg.models.models_dir)
    names = {"image_token": "<|image|>", "boi_token": "<|boi|>", "eoi_token": "<|eoi|>"}
    names |= {"audio_token": "<|audio|>", "boa_token": "<|boa|>", "eoa_token": "<|eoa|>"}
    tok = AutoTokenizer.from_pretrained(str(src), extra_special_tokens=names)
    tok.add_tokens(list(names.values()), special_tokens=True)
    proc = EmbeddingGemma2Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(),
        tokenizer=tok,
        video_processor=EmbeddingGemma2VideoProcessor(),
    )
    proc.save_pretrained(d)  # the processor adds its <|video|> token to the tokenizer
    ids = {k.removesuffix("_token") + "_token_id": tok.convert_tokens_to_ids(v) for k, v in names.items()}
    ids["eoa_token_index"] = ids.pop("eoa_token_id")
    text = {"vocab_size": len(tok), "hidden_size": TINY, "intermediate_size": 2 * TINY, "num_hidden_layers": 2}
    text |= {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "global_head_dim": 16}
    text |= {"hidden_size_per_layer_input": 8, "embedding_dim": TINY, "sliding_window": 16}
    conf = EmbeddingGemma2Config(
        text_config={**text, "pad_token_id": tok.pad_token_id},
        vision_config={"model_type": "gemma4_vision", "hidden_size": TINY, "intermediate_size": 2 * TINY,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16},
        audio_config={"model_type": "gemma4_audio", "hidden_size": TINY, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "subsampling_conv_channels": [128, 4], "output_proj_dims": TINY},
        video_token_id=tok.convert_tokens_to_ids("<|video|>"),
        **ids,
    )  # fmt: skip
    torch.manual_seed(0)
    EmbeddingGemma2Model(conf).save_pretrained(d)
    return tiny_card("embeddinggemma-2", d, ["model.safetensors"], TINY, matryoshka_dims=[16, TINY])


def test_omni_card_embeds_frames_and_audio(tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    card = tiny_embeddinggemma2(tmp_path, session_cfg)
    enc = load_model(card, session_cfg)
    assert enc.dims == TINY
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (4, 96, 128, 3), dtype=np.uint8), rng.integers(0, 255, (2, 64, 64, 3), np.uint8)]
    speech = (0.1 * rng.standard_normal(2 * 16000)).astype(np.float32)
    clips, sounds = [*frames, frames[0]], [speech, speech[:8000], None]
    v = enc.encode_clips(clips, sounds)
    assert v.shape == (3, TINY) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v[0], v[2], atol=1e-3)  # the audio is heard
    assert np.allclose(v[1], enc.encode_clips([frames[1]], [speech[:8000]])[0], atol=1e-4)  # batch-invariant
    assert np.allclose(v[2], enc.encode_clips([frames[0]], [np.zeros(100, np.float32)])[0], atol=1e-4)  # too short
    texts = ["a dog on a beach", "cooking pasta"]
    q = enc.encode_text(texts)
    assert q.shape == (2, TINY) and not np.allclose(q, enc.encode_text(texts, "document"))  # prompts differ
    cut = load_model(f"{card}@16", session_cfg)
    head = v[:, :16] / np.linalg.norm(v[:, :16], axis=1, keepdims=True)
    assert cut.dims == 16 and np.allclose(cut.encode_clips(clips, sounds), head, atol=1e-4)


@pytest.mark.parametrize("card_id", ["qwen3-embedding-0.6b", "siglip2-so400m-14", "embeddinggemma-2"])
def test_pull_of_a_new_card_offline_fails_cleanly(card_id: str, tmp_path: Path) -> None:
    card = load_card(card_id, DEFAULT_CARDS_DIR)  # HF_HUB_OFFLINE is set for the tests: no network is tried
    with pytest.raises(ModelUnavailableError) as e:
        pull(card, tmp_path)
    assert e.value.reason == "download_failed" and card.files[0].path in e.value.detail
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    with pytest.raises(ModelUnavailableError) as e:
        load_model(card_id, make_config(tmp_path))
    assert e.value.reason == "missing" and f"reelvec models pull {card_id}" in e.value.detail


def test_omni_step_runs_in_the_graph(tmp_path: Path, session_cfg: ReelvecConfig) -> None:
    """With `models.omni` set, the graph's omni step adds an `omni` vector (frames + audio), fused like the others,
    a new schema version, and query text reaches the omni space; unset, the step is not in the graph at all."""
    from embedder.items import build_item
    from embedder.pipeline import ItemEmbedder, embedding_spec
    from tests.conftest import CLIPS, make_config

    card = tiny_embeddinggemma2(tmp_path / "omni", session_cfg)
    cfg = make_config(tmp_path, REELVEC__MODELS__OMNI__CARD=str(card), REELVEC__ASR__BATCH_MODE="none")
    spec = embedding_spec(cfg)
    assert spec.dims["omni"] == TINY and spec.schema_version != embedding_spec(session_cfg).schema_version
    assert "omni" not in embedding_spec(session_cfg).dims
    emb = ItemEmbedder(cfg)
    try:
        out = emb.embed(build_item("cooking_01", str(CLIPS / "cooking_01.mp4"), cfg.limits, caption="pasta"))
        query = emb.encode_query("cooking pasta")
    finally:
        emb.close()
    assert "omni" in out.modalities and out.vectors["omni"].shape == (TINY,)
    assert out.vectors["fused"].shape == (spec.dims["fused"],) and query["omni"].shape == (TINY,)
    assert out.models[load_card(str(card), cfg.models.cards_dir).id]
