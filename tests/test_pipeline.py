"""ItemEmbedder end to end on real clips: modalities, missing-modality handling, batch == one-by-one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.asr import wer
from embedder.pipeline import ItemEmbedder, embedding_spec
from embedder.types import FUSED, ItemEmbedding, ItemFailure, ItemInput, MediaError
from tests.conftest import make_config


def _item(row: dict[str, Any]) -> ItemInput:
    return ItemInput(
        item_id=row["item_id"],
        media=row["path"],
        caption=row["caption"],
        hashtags=row["hashtags"],
        creator_id=row["creator_id"],
    )


def test_embed_real_clip(item_embedder: ItemEmbedder, clips: list[dict[str, Any]]) -> None:
    row = next(r for r in clips if r["caption"])
    e = item_embedder.embed(_item(row))
    spec = item_embedder.spec
    assert e.modalities == ["caption", "transcript"]  # CLIP weights are absent offline
    assert e.vectors["caption"].shape == (spec.dims["caption"],)
    assert e.vectors[FUSED].shape == (spec.dims[FUSED],)
    assert math.isclose(float(np.linalg.norm(e.vectors[FUSED])), 1.0, rel_tol=1e-5)
    assert e.transcript.text and e.schema_version == spec.schema_version
    assert set(e.models) == {"minilm-l6-v2", "whisper-tiny-en", "rapidocr-ppocrv4"}
    assert e.models_unavailable == ["clip-vit-b-32-laion2b"]
    assert {"decode_ms", "asr_ms", "text_ms", "fuse_ms"} <= set(e.timings_ms)
    assert len(e.frame_timestamps_s) == 8 and e.decoder == "decord"
    js = e.to_json()
    assert {"transcript", "vectors", "models", "timings_ms"} <= set(js) and len(js["vectors"]["fused"]) == 512 + 3 * 384


def test_batch_equals_one_by_one(item_embedder: ItemEmbedder, clips: list[dict[str, Any]]) -> None:
    items = [_item(r) for r in clips[:4]]
    batch = item_embedder.embed_batch(items)
    for item, b in zip(items, batch, strict=True):
        one = item_embedder.embed(item)
        assert isinstance(b, ItemEmbedding) and b.modalities == one.modalities
        for k in one.vectors:
            assert np.allclose(b.vectors[k], one.vectors[k], atol=1e-5), k


def test_missing_caption_and_missing_audio(
    item_embedder: ItemEmbedder, clips: list[dict[str, Any]], fixtures_dir: Path
) -> None:
    row = next(r for r in clips if not r["caption"])
    e = item_embedder.embed(_item(row))
    assert e.modalities == ["transcript"]
    silent = item_embedder.embed(ItemInput("silent", str(fixtures_dir / "silent.mp4"), caption="quiet sunset"))
    assert silent.modalities == ["caption"] and silent.transcript.text == ""
    assert math.isclose(float(np.linalg.norm(silent.vectors[FUSED])), 1.0, rel_tol=1e-5)


def test_bad_items_fail_alone(item_embedder: ItemEmbedder, clips: list[dict[str, Any]], fixtures_dir: Path) -> None:
    items = [
        _item(clips[0]),
        ItemInput("empty", b""),
        ItemInput("nothing", str(fixtures_dir / "silent.mp4")),  # no caption, no speech, no CLIP
        ItemInput("long", clips[1]["path"], caption="x" * 5000),
        ItemInput("", clips[1]["path"], caption="no id"),
        _item(clips[1]),
    ]
    out = item_embedder.embed_batch(items)
    assert [type(o).__name__ for o in out] == [
        "ItemEmbedding",
        "ItemFailure",
        "ItemFailure",
        "ItemFailure",
        "ItemFailure",
        "ItemEmbedding",
    ]
    reasons = {o.item_id: (o.stage, o.reason) for o in out if isinstance(o, ItemFailure)}
    assert reasons == {
        "empty": ("decode", "empty"),
        "nothing": ("fuse", "no_content"),
        "long": ("validate", "caption_too_long"),
        "": ("validate", "bad_item_id"),
    }
    with pytest.raises(MediaError):
        item_embedder.embed(items[1])


def test_query_matches_its_topic(item_embedder: ItemEmbedder, clips: list[dict[str, Any]]) -> None:
    items = item_embedder.embed_batch([_item(r) for r in clips])
    topics = [r["topic"] for r in clips]
    for topic, query in [("cooking", "cooking food in a kitchen"), ("space", "rocket launch to the stars")]:
        q = item_embedder.encode_query(query)[FUSED]
        best = max(range(len(items)), key=lambda i: float(items[i].vectors[FUSED] @ q))
        assert topics[best] == topic


def test_schema_version_tracks_weights_and_cards(session_cfg: Any) -> None:
    base = embedding_spec(session_cfg).schema_version
    other = session_cfg.model_copy(deep=True)
    other.fusion.weights = {"visual": 0.2, "caption": 0.4, "transcript": 0.4, "ocr": 0.1}
    assert embedding_spec(other).schema_version != base
    assert embedding_spec(session_cfg).schema_version == base


def test_pack_transcripts_stay_close_across_batches(tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    """The default ASR mode (`pack`) shares Whisper windows within a batch, so the same clip embedded alone or in a
    batch (as different paths do) may differ by a few words: bounded here; everything but the transcript is equal."""
    emb = ItemEmbedder(make_config(tmp_path))
    assert emb.cfg.asr.batch_mode == "pack"
    try:
        speech = [c for c in clips if c.get("speech")][:6]
        items = [_item(r) for r in speech]
        batch = emb.embed_batch(items)
        errors = []
        for item, b in zip(items, batch, strict=True):
            one = emb.embed(item)
            assert isinstance(b, ItemEmbedding) and b.modalities == one.modalities
            errors.append(wer([one.transcript.text], [b.transcript.text]) / 100)
            for k in ("caption", "ocr", "visual"):
                if k in one.vectors:
                    assert np.allclose(b.vectors[k], one.vectors[k], atol=1e-5), k
    finally:
        emb.close()
    assert len(errors) >= 3 and max(errors) <= 0.35 and float(np.mean(errors)) <= 0.15, errors
