"""Re-upload detection, moment search, semantic IDs and the quality gate on real clips, both index backends.

One module-scoped set of embeddings (the bundled models over a few sample clips plus generated re-upload
variants) is written into a fresh index per test.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.config import DedupConfig, IndexConfig, ReelvecConfig
from embedder.items import build_item
from embedder.moments import find_moments
from embedder.pipeline import ItemEmbedder
from embedder.types import ItemEmbedding
from index import VectorIndex, open_index
from serving.evaluation import EvalQuery, evaluate, gate
from serving.owner import IndexOwner, WriteReport
from serving.semantic import fit_index, load_model
from tests.conftest import CLIPS, SAMPLES

sys.path.insert(0, str(SAMPLES))
from variants import make_relations, make_variants

ORIGINALS = ["cooking_01", "cooking_02", "soccer_01", "soccer_02", "space_04", "ocean_text_01", "cooking_text_01"]


@pytest.fixture(scope="module")
def embedded(item_embedder: ItemEmbedder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ItemEmbedding]:
    """The originals, plus re-encoded / trimmed / mirrored / cropped copies of cooking_01 under new ids."""
    limits = item_embedder.cfg.limits
    rows = {json.loads(x)["item_id"]: json.loads(x) for x in (CLIPS / "captions.jsonl").read_text().splitlines()}
    items = [
        build_item(i, str(CLIPS / rows[i]["file"]), limits, rows[i]["caption"], {"hashtags": rows[i]["hashtags"]})
        for i in ORIGINALS
    ]
    variants = make_variants(CLIPS / "cooking_01.mp4", tmp_path_factory.mktemp("variants"))
    items += [build_item(f"copy_{name}", str(p), limits, "a different caption") for name, p in variants.items()]
    mixed = make_relations(CLIPS / "cooking_01.mp4", CLIPS / "soccer_02.mp4", tmp_path_factory.mktemp("mixed"))
    items += [build_item(f"mix_{name}", str(p), limits, "a different caption") for name, p in mixed.items()]
    out = {}
    for r in item_embedder.embed_batch(items):
        assert isinstance(r, ItemEmbedding), r
        out[r.item_id] = r
    return out


def _write(index: VectorIndex, items: list[ItemEmbedding], dedup: DedupConfig, semantic: Any = None) -> WriteReport:
    """Write through the one index owner, as every consumer does."""
    return IndexOwner(index, dedup, semantic).write(items)


def _copy(e: ItemEmbedding) -> ItemEmbedding:
    """A fresh copy (ingest marks items in place)."""
    from dataclasses import replace

    return replace(e, vectors=dict(e.vectors), relation=None, semantic_id=None)


@pytest.fixture(params=["edge", "qdrant"])
def index(request: pytest.FixtureRequest, tmp_path: Path, item_embedder: ItemEmbedder) -> Iterator[VectorIndex]:
    cfg = (
        IndexConfig(backend="edge", path=tmp_path / "index")
        if request.param == "edge"
        else IndexConfig(backend="qdrant", url=":memory:", collection=f"t{uuid.uuid4().hex}")
    )
    spec = item_embedder.spec
    with open_index(cfg, spec.dims, spec.schema_version) as ix:
        yield ix


def test_reupload_is_flagged_and_a_same_topic_clip_is_not(index: VectorIndex, embedded: dict[str, Any]) -> None:
    originals = [_copy(embedded[i]) for i in ORIGINALS]
    first = _write(index, originals, DedupConfig())
    assert not first.relations and sorted(first.created) == sorted(ORIGINALS)  # 4 topics, no false flags
    copies = [_copy(e) for i, e in embedded.items() if i.startswith("copy_")]
    assert len(copies) >= 4
    report = _write(index, copies, DedupConfig())
    assert {i: (r["kind"], r["of"]) for i, r in report.relations.items()} == {
        c.item_id: ("duplicate_of", "cooking_01") for c in copies
    }
    stored = index.get("copy_trim").payload
    assert stored["duplicate_of"] == "cooking_01" and stored["duplicate_score"] >= DedupConfig().visual_threshold
    seg = stored["relation"]["segments"][0]  # the trim cut the first second: the copy starts ~1 s into the original
    assert seg["new_s"][0] < 0.5 and 0.5 <= seg["stored_s"][0] <= 1.5
    assert index.get("cooking_02").payload["duplicate_of"] is None  # same topic, different video
    assert index.relation_groups(["duplicate_of", "remix_of"]) == [sorted(["cooking_01", *(c.item_id for c in copies)])]


def test_remix_and_reused_sound_are_told_apart(index: VectorIndex, embedded: dict[str, Any]) -> None:
    _write(index, [_copy(embedded[i]) for i in ("cooking_01", "soccer_02", "soccer_01")], DedupConfig())
    report = _write(index, [_copy(embedded["mix_remix"]), _copy(embedded["mix_sound"])], DedupConfig())
    got = {i: (r["kind"], r["of"]) for i, r in report.relations.items()}
    # Same frames as cooking_01 with soccer_02's voice: a remix of cooking_01 (the sound alone would say soccer_02).
    assert got["mix_remix"] == ("remix_of", "cooking_01")
    # soccer_02's frames with cooking_01's voice: the visuals match soccer_02 (a remix of it, new sound); the
    # reused-sound relation to cooking_01 is listed by `shared_sound`.
    assert got["mix_sound"] == ("remix_of", "soccer_02")
    stored = index.get("mix_remix").payload
    assert stored["remix_of"] == "cooking_01" and stored["duplicate_of"] is None and stored["sound_of"] is None
    from serving.owner import shared_sound

    shared = {f["item_id"] for f in shared_sound(index, "cooking_01", DedupConfig(), 10)}
    assert shared == {"mix_sound"}  # the clip with cooking_01's sound over other footage; not soccer_01


def test_sound_of_names_the_clip_whose_sound_is_reused(index: VectorIndex, embedded: dict[str, Any]) -> None:
    _write(index, [_copy(embedded[i]) for i in ("cooking_01", "soccer_01")], DedupConfig())
    report = _write(index, [_copy(embedded["mix_sound"])], DedupConfig())  # soccer_02 is not stored
    rel = report.relations["mix_sound"]
    assert (rel["kind"], rel["of"]) == ("sound_of", "cooking_01") and rel["segments"]
    assert rel["audio_score"] >= DedupConfig().audio_threshold and rel["visual_score"] < DedupConfig().visual_threshold
    assert index.get("mix_sound").payload["sound_of"] == "cooking_01"
    assert index.relation_groups(["duplicate_of", "remix_of"]) == []  # a reused sound is not a duplicate


def test_reject_policy_refuses_with_the_original_named(index: VectorIndex, embedded: dict[str, Any]) -> None:
    _write(index, [_copy(embedded["cooking_01"])], DedupConfig())
    report = _write(index, [_copy(embedded["copy_mirror"]), _copy(embedded["soccer_01"])], DedupConfig(policy="reject"))
    assert [(f.item_id, f.reason) for f in report.failed] == [("copy_mirror", "duplicate")]
    assert "cooking_01" in report.failed[0].detail
    assert report.created == ["soccer_01"] and "copy_mirror" not in index.existing(["copy_mirror"])


def test_transcript_and_ocr_moments(index: VectorIndex, embedded: dict[str, Any], item_embedder: ItemEmbedder) -> None:
    _write(index, [_copy(embedded[i]) for i in ORIGINALS], DedupConfig(enabled=False))
    q = item_embedder.encode_query("cooking pasta with fresh tomato sauce")
    hits = index.search(q["fused"], k=3)
    assert hits[0].item_id == "cooking_01"
    payloads = [{"item_id": h.item_id, **index.get(h.item_id).payload} for h in hits]
    enc = item_embedder.models["text"]
    assert enc is not None
    moments = find_moments(payloads, q, lambda t: enc.encode(t, kind="document"), {})
    m = moments[0]
    assert m is not None and m.source == "transcript" and "tomato" in m.text.lower()
    assert 0 <= m.start_s < m.end_s <= embedded["cooking_01"].duration_s + 0.5
    # an overlay-only clip: its moment comes from the on-screen line that says it
    q2 = item_embedder.encode_query("fresh basil and tomato")
    p = {"item_id": "cooking_text_01", **index.get("cooking_text_01").payload}
    (m2,) = find_moments([p], q2, lambda t: enc.encode(t, kind="document"), {})
    assert m2 is not None and m2.source == "ocr" and "basil" in m2.text.lower()
    assert 0 <= m2.start_s <= m2.end_s <= embedded["cooking_text_01"].duration_s + 0.5


def test_semantic_ids_fit_assign_and_new_items(
    index: VectorIndex, embedded: dict[str, Any], item_embedder: ItemEmbedder, tmp_path: Path
) -> None:
    cfg = ReelvecConfig(data_dir=tmp_path)
    _write(index, [_copy(embedded[i]) for i in ORIGINALS], DedupConfig(enabled=False))
    report = fit_index(cfg, index, item_embedder.spec.schema_version, levels=3, codebook_size=4)
    assert report["items"] == len(ORIGINALS) and report["levels"] == 3
    sid = index.get("soccer_01").payload["semantic_id"]
    assert isinstance(sid, list) and len(sid) == 3 and all(0 <= c < 4 for c in sid)
    model = load_model(cfg, index.collection, item_embedder.spec.schema_version)
    assert model is not None
    new = _copy(embedded["copy_reencode"])
    _write(index, [new], DedupConfig(enabled=False), model)
    assert new.semantic_id == [int(c) for c in model.assign(new.vectors["fused"][None, :])[0]]
    assert index.get("copy_reencode").payload["semantic_id"] == new.semantic_id


def test_semantic_ids_refuse_a_stale_schema(index: VectorIndex, embedded: dict[str, Any], tmp_path: Path) -> None:
    from embedder.types import ConfigError

    cfg = ReelvecConfig(data_dir=tmp_path)
    _write(index, [_copy(embedded[i]) for i in ORIGINALS], DedupConfig(enabled=False))
    fit_index(cfg, index, "v2-aaaa", levels=2, codebook_size=2)
    with pytest.raises(ConfigError) as e:
        load_model(cfg, index.collection, "v2-bbbb")
    assert e.value.reason == "semantic_ids_stale"


def test_quality_gate_refuses_a_worse_version(
    embedded: dict[str, Any], item_embedder: ItemEmbedder, tmp_path: Path
) -> None:
    spec = item_embedder.spec
    queries = [
        EvalQuery("cooking pasta with tomato sauce", ("cooking_01",)),
        EvalQuery("a goal in the last minute of the match", ("soccer_01",)),
        EvalQuery("homemade pasta with fresh basil", ("cooking_text_01", "cooking_01")),
    ]
    good_cfg = IndexConfig(backend="edge", path=tmp_path / "good")
    with open_index(good_cfg, spec.dims, spec.schema_version) as good:
        _write(good, [_copy(embedded[i]) for i in ORIGINALS], DedupConfig(enabled=False))
        live = evaluate(good, item_embedder.encode_query, queries, k=1)
    # "worse on purpose": the stored fused vectors scrambled, as a broken fusion config would leave them
    worse_items = []
    for i in ORIGINALS:
        e = _copy(embedded[i])
        e.vectors["fused"] = np.roll(e.vectors["fused"], 7)  # scrambled blocks: fused no longer means anything
        worse_items.append(e)
    with open_index(IndexConfig(backend="edge", path=tmp_path / "bad"), spec.dims, spec.schema_version) as bad:
        _write(bad, worse_items, DedupConfig(enabled=False))
        new = evaluate(bad, item_embedder.encode_query, queries, k=1)
    assert live.recall == 1.0 and new.recall < live.recall
    assert not gate(new, live, max_drop=0.02).swap and gate(live, live, max_drop=0.0).swap
