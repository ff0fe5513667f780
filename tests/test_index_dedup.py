"""Relation candidates (pooled visual print, sparse audio hashes), stored prints and relations, per-frame
multivectors, payload updates and version-guarded writes, run against both backends (Qdrant Edge on tmp_path,
qdrant-client `:memory:`).

Prints come from synthetic (numpy-drawn) grey frames and audio through `embedder.fingerprint` /
`embedder.audio_fp`; vectors are random.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe
from PIL import Image
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from embedder.audio_fp import audio_fingerprint
from embedder.config import DedupConfig, IndexConfig
from embedder.fingerprint import POOLED_DIM, video_fingerprint
from embedder.relations import ItemPrints, relate
from embedder.types import FUSED, ItemEmbedding, StoreError, Transcript
from index import VectorIndex, open_index
from index.base import FP_AUDIO, FP_VISUAL, FRAMES, SparseVec, collection_name, point_id

DIMS = {"visual": 12, "caption": 8, "fused": 20}
H, W, T = 96, 128, 6
TIMES = [float(i) for i in range(T)]
DEDUP = DedupConfig()
FP_T, FP_STEP, RATE = 24, 0.25, 16_000  # fingerprint frames: 6 s at 4 per second


def clip(seed: int) -> np.ndarray:
    """T×H×W×3 uint8 frames: a gradient backdrop with squares and discs drifting sideways; `seed` picks them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    base = (1 - yy[..., None] / H) * top + (yy[..., None] / H) * bottom
    shapes = [
        (rng.integers(10, W - 30), rng.integers(10, H - 30), rng.integers(8, 20), rng.integers(0, 256, 3))
        for _ in range(5)
    ]
    frames = []
    for t in range(T):
        f = base.copy()
        for k, (x, y, r, colour) in enumerate(shapes):
            x = x + (3 * t if k % 2 else -3 * t)
            disc = (xx - x) ** 2 + (yy - y) ** 2 < r * r
            square = (abs(xx - x) < r) & (abs(yy - y) < r)
            f[disc if k % 2 else square] = colour
        frames.append(f)
    return np.stack(frames).clip(0, 255).astype(np.uint8)


def cropped(frames: np.ndarray, frac: float = 0.1) -> np.ndarray:
    """A crop-and-rescale re-upload: `frac` of each side cut off, scaled back to the original size."""
    dy, dx = round(H * frac / 2), round(W * frac / 2)
    return np.stack(
        [
            np.asarray(Image.fromarray(f[dy : H - dy, dx : W - dx]).resize((W, H), Image.Resampling.BILINEAR))
            for f in frames
        ]
    )


def grey(frames: np.ndarray, n: int = FP_T) -> np.ndarray:
    """`n` 64×64 grey fingerprint frames cycling through `frames` (a slow pan of the drawn scene)."""
    out = []
    for t in range(n):
        f = np.roll(frames[t % len(frames)], 2 * t, axis=1).mean(axis=2)
        out.append(np.asarray(Image.fromarray(f.astype(np.uint8)).resize((64, 64), Image.Resampling.BOX)))
    return np.stack(out)


def sound(seed: int, seconds: float = 6.0) -> np.ndarray:
    """16 kHz mono: a random melody of short tone bursts with harmonics (peaks a landmark print can hold)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.25 * RATE)) / RATE
    notes = [
        sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3)) * np.hanning(len(t))
        for f in rng.uniform(200, 1500, int(seconds * 4))
    ]
    return (0.3 * np.concatenate(notes)).astype(np.float32)


def prints_of(frames: np.ndarray, audio: np.ndarray | None) -> ItemPrints:
    times = [i * FP_STEP for i in range(len(frames))]
    return ItemPrints.of(video_fingerprint(frames, times, DEDUP), audio_fingerprint(audio, DEDUP), DEDUP)


@pytest.fixture(scope="module")
def fps() -> dict[str, ItemPrints]:
    original, a = clip(1), sound(1)
    return {
        "original": prints_of(grey(original), a),
        "mirror": prints_of(np.ascontiguousarray(grey(original)[:, :, ::-1]), a),
        "other": prints_of(grey(clip(2)), sound(3)),
        "sound": prints_of(grey(clip(3)), a),
        "silent": prints_of(grey(clip(4)), None),
    }


def item(
    item_id: str,
    seed: int = 0,
    *,
    schema: str = "v2-abc",
    fp: ItemPrints | None = None,
    frames: np.ndarray | None = None,
    relation: dict | None = None,
) -> ItemEmbedding:
    rng = np.random.default_rng(seed)
    vecs = {n: rng.normal(size=d).astype(np.float32) for n, d in DIMS.items()}
    return ItemEmbedding(
        item_id=item_id,
        vectors=vecs,
        modalities=["visual", "caption"],
        transcript=Transcript("", None),
        caption=f"caption {item_id}",
        hashtags=[],
        creator_id="c1",
        created_at=None,
        duration_s=6.0,
        models={},
        schema_version=schema,
        decoder="pyav",
        frame_timestamps_s=TIMES,
        timings_ms={},
        prints=fp,
        frame_vectors=frames,
        relation=relation,
    )


class Opener:
    """Opens indexes on one backend and closes them at teardown."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        if name == "edge":
            self.cfg = IndexConfig(backend="edge", path=tmp_path / "index")
            self.client: QdrantClient | None = None
        else:
            self.cfg = IndexConfig(backend="qdrant", url=":memory:")
            self.client = QdrantClient(":memory:")
        self.opened: list[VectorIndex] = []

    def open(self, version: str = "v2-abc") -> VectorIndex:
        idx = open_index(self.cfg, DIMS, version, version=version, client=self.client)
        self.opened.append(idx)
        return idx


@pytest.fixture(params=["edge", "qdrant"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    b = Opener(request.param, tmp_path)
    yield b
    for idx in b.opened:
        idx.close()


# ---- relation candidates and stored prints ----------------------------------------------------------


def test_candidates_find_copies_by_picture_and_by_sound(backend: Opener, fps: dict[str, ItemPrints]) -> None:
    index = backend.open()
    stored = ("original", "other", "sound", "silent")
    report = index.upsert([item(k, i, fp=fps[k]) for i, k in enumerate(stored)] + [item("no-fp", 9)])
    assert report.failed == [] and len(report.written) == 5
    visual, audio = fps["mirror"].candidates
    assert audio is not None
    by_picture = index.relation_candidates(visual, None, k=1)
    by_sound = index.relation_candidates(None, SparseVec(tuple(audio[0]), tuple(audio[1])), k=2)
    assert by_picture == ["original"]  # the pooled print folds a mirror away
    assert set(by_sound) == {"original", "sound"}  # shared landmark hashes; the silent clip has none
    assert "original" not in index.relation_candidates(visual, None, k=1, exclude_ids=["original"])
    # The prints come back from the payload and relate exactly as the in-memory ones do.
    got = index.payloads(["original", "no-fp"], ["vfp", "afp"])
    back = ItemPrints.from_payload(got["original"], DEDUP)
    assert back is not None and ItemPrints.from_payload(got["no-fp"], DEDUP) is None
    assert relate(fps["mirror"], back, DEDUP) == relate(fps["mirror"], fps["original"], DEDUP)
    assert relate(fps["mirror"], back, DEDUP).kind == "duplicate_of"
    assert "vfp" not in index.get("original").payload  # raw prints stay internal
    with pytest.raises(StoreError) as e:
        index.relation_candidates(np.ones(POOLED_DIM + 1, np.float32), None, k=3)
    assert e.value.reason == "bad_query"


def test_relation_groups_follow_recorded_relations(backend: Opener) -> None:
    index = backend.open()
    rel = lambda kind, of: {"kind": kind, "of": of, "visual_score": 0.9, "audio_score": None, "segments": []}  # noqa: E731
    index.upsert(
        [
            item("a", 1),
            item("a_copy", 2, relation=rel("duplicate_of", "a")),
            item("a_remix", 3, relation=rel("remix_of", "a_copy")),
            item("b", 4),
            item("b_sound", 5, relation=rel("sound_of", "b")),
        ]
    )
    assert index.relation_groups(["duplicate_of", "remix_of"]) == [["a", "a_copy", "a_remix"]]
    assert index.relation_groups(["sound_of"]) == [["b", "b_sound"]]
    assert index.get("a_remix").payload["remix_of"] == "a_copy" and index.get("a_remix").payload["duplicate_of"] is None
    with pytest.raises(StoreError) as e:
        index.relation_groups(["similar_to"])
    assert e.value.reason == "bad_query"


def test_bad_frames_fail_the_item_not_the_batch(backend: Opener, fps: dict[str, ItemPrints]) -> None:
    index = backend.open()
    nan_frames = np.ones((T, DIMS["visual"]), np.float32)
    nan_frames[2, 0] = np.nan
    report = index.upsert(
        [
            item("bad-frames-dim", frames=np.ones((T, DIMS["visual"] + 1), np.float32)),
            item("nan-frames", frames=nan_frames),
            item("zero-row", frames=np.zeros((T, DIMS["visual"]), np.float32)),
            item("ok", fp=fps["original"]),
        ]
    )
    assert report.written == ["ok"]
    assert {f.item_id: f.reason for f in report.failed} == dict.fromkeys(
        ["bad-frames-dim", "nan-frames", "zero-row"], "bad_vector"
    )


# ---- per-frame vectors, payload updates, scrolling ---------------------------------------------------


def test_frame_vectors_roundtrip_unit_rows(backend: Opener) -> None:
    index = backend.open()
    frames = np.random.default_rng(1).normal(size=(T, DIMS["visual"])).astype(np.float32)
    index.upsert([item("with-frames", 1, frames=frames), item("without", 2)])
    got = index.frame_vectors(["with-frames", "without", "unknown"])
    assert set(got) == {"with-frames"}
    expected = frames / np.linalg.norm(frames, axis=1, keepdims=True)  # cosine storage normalizes each row
    np.testing.assert_allclose(got["with-frames"], expected, atol=1e-5)
    assert index.get("with-frames").vectors["frames"].shape == (T, DIMS["visual"])


def test_set_payload_updates_fields_and_refuses_unknown_or_reserved(backend: Opener) -> None:
    index = backend.open()
    index.upsert([item("a", 1), item("b", 2)])
    assert (
        index.set_payload({"a": {"semantic_id": [3, 17, 5]}, "b": {"duplicate_of": "a", "duplicate_score": 0.9}}) == 2
    )
    a, b = index.get("a").payload, index.get("b").payload
    assert a["semantic_id"] == [3, 17, 5] and a["caption"] == "caption a" and a["schema_seq"] == 2
    assert b["duplicate_of"] == "a" and b["duplicate_score"] == pytest.approx(0.9)
    for values, reason in [
        ({"a": {"semantic_id": [1]}, "ghost": {"semantic_id": [2]}}, "unknown_item"),
        ({"a": {"schema_seq": 99}}, "bad_payload"),
        ({"a": {"semantic_id": float("nan")}}, "bad_payload"),
        ({"a": {}}, "bad_payload"),
    ]:
        with pytest.raises(StoreError) as e:
            index.set_payload(values)
        assert e.value.reason == reason
    assert index.get("a").payload["semantic_id"] == [3, 17, 5]  # a refused call changed nothing


def test_iter_vectors_scrolls_every_item_once(backend: Opener) -> None:
    index = backend.open()
    items = [item(f"i{n}", n) for n in range(7)]
    index.upsert(items)
    seen: dict[str, np.ndarray] = {}
    batches = 0
    for ids, vectors in index.iter_vectors(FUSED, batch=3):
        assert vectors.shape == (len(ids), DIMS[FUSED]) and len(ids) <= 3
        batches += 1
        for i, v in zip(ids, vectors, strict=True):
            assert i not in seen
            seen[i] = v
    assert batches == 3 and set(seen) == {it.item_id for it in items}
    for it in items:
        v = it.vectors[FUSED]
        np.testing.assert_allclose(seen[it.item_id], v / np.linalg.norm(v), atol=1e-5)
    with pytest.raises(StoreError) as e:
        next(index.iter_vectors("frames"))
    assert e.value.reason == "bad_query"


# ---- version-guarded writes -------------------------------------------------------------------------


def test_older_schema_never_overwrites_newer(backend: Opener) -> None:
    index = backend.open()
    assert index.upsert([item("x", 1, schema="v2-new")]).written == ["x"]
    report = index.upsert([item("x", 2, schema="v1-old"), item("y", 3, schema="v1-old")])
    assert report.written == ["y"] and report.failed == []
    assert [(f.item_id, f.reason) for f in report.refused] == [("x", "stale_schema")]
    stored = index.get("x")
    assert stored.payload["schema_version"] == "v2-new"
    v2 = item("x", 1).vectors[FUSED]
    np.testing.assert_allclose(stored.vectors[FUSED], v2 / np.linalg.norm(v2), atol=1e-5)
    checked = index.upsert_checked([item("x", 4, schema="v1-old")])
    assert checked.written == [] and [f.reason for f in checked.refused] == ["stale_schema"]
    assert index.upsert([item("x", 5, schema="v2-new")]).written == ["x"]  # same generation replaces
    assert index.upsert_checked([item("x", 6, schema="v3-next")]).replaced == ["x"]
    assert index.get("x").payload["schema_seq"] == 3


def test_point_without_schema_seq_is_replaced(backend: Opener) -> None:
    """Points written before the guard existed carry no schema_seq and must stay writable."""
    index = backend.open()
    index.upsert([item("legacy", 1, schema="v2-abc")])
    index._set_payload([(point_id("legacy"), {"schema_seq": None})])  # what a pre-guard point looks like
    assert index.upsert([item("legacy", 2, schema="v1-old")]).written == ["legacy"]
    assert index.get("legacy").payload["schema_version"] == "v1-old"


def test_racing_old_and_new_schema_writers_leave_only_new(backend: Opener) -> None:
    """An upload racing a backfill: rounds of v1 and v2 writes of the same ids released together, then v1
    writes that surely land after the last v2 one; v2 always survives and is never refused."""
    index = backend.open()
    ids = [f"r{n}" for n in range(12)]
    rounds, tail = 10, 3
    refused: dict[str, list[str]] = {"v1-old": [], "v2-new": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(schema: str, extra: int) -> None:
        try:
            for rnd in range(rounds + extra):
                if rnd < rounds:
                    barrier.wait()
                batch = [item(i, rnd, schema=schema) for i in ids]
                report = index.upsert_checked(batch) if rnd % 2 else index.upsert(batch)
                refused[schema] += [f.item_id for f in report.refused]
        except BaseException as e:  # surfaced below: a thread's assertion would be lost
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=("v2-new", 0)),
        threading.Thread(target=writer, args=("v1-old", tail)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and refused["v2-new"] == []
    assert len(refused["v1-old"]) >= tail * len(ids)  # at least every tail write was refused
    assert index.count() == len(ids)
    assert {index.get(i).payload["schema_version"] for i in ids} == {"v2-new"}


# ---- collections from before the multivectors -------------------------------------------------------


def _old_collection(backend: Opener, version: str, legacy: bool = False) -> None:
    """Create `version` the way the index did before its auxiliary vectors, with one point; `legacy`: with the
    round-2 `fingerprint` MaxSim multivector, which later versions no longer write."""
    name = collection_name(backend.cfg, version)
    vec = {n: [1.0] * d for n, d in DIMS.items()}
    pid = point_id("old")
    if backend.name == "edge":
        path = Path(backend.cfg.path) / name
        params = {n: qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine) for n, d in DIMS.items()}
        if legacy:
            maxsim = qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim)
            params["fingerprint"] = qe.EdgeVectorParams(
                size=192, distance=qe.Distance.Cosine, multivector_config=maxsim
            )
        shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=params))
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(pid, vec, {"item_id": "old"})]))
        shard.flush()
        shard.close()
    else:
        assert backend.client is not None
        params = {n: qm.VectorParams(size=d, distance=qm.Distance.COSINE) for n, d in DIMS.items()}
        if legacy:
            maxsim = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
            params["fingerprint"] = qm.VectorParams(size=192, distance=qm.Distance.COSINE, multivector_config=maxsim)
        backend.client.create_collection(name, vectors_config=params)
        backend.client.upsert(name, [qm.PointStruct(id=pid, vector=vec, payload={"item_id": "old"})])


@pytest.mark.parametrize("legacy", [False, True], ids=["plain", "with-fp1-multivector"])
def test_old_collection_gets_the_aux_vectors_on_open(backend: Opener, fps: dict[str, ItemPrints], legacy: bool) -> None:
    _old_collection(backend, "v2-old", legacy)
    index = backend.open("v2-old")
    assert set(index.aux_vectors) == {FP_VISUAL, FP_AUDIO, FRAMES} and index.multivectors == {FRAMES: DIMS["visual"]}
    visual, _ = fps["mirror"].candidates
    assert index.count() == 1 and index.relation_candidates(visual, None, k=3) == []
    index.upsert([item("new", 1, fp=fps["original"])])
    assert index.relation_candidates(visual, None, k=3) == ["new"]
    assert index.upsert([item("old", 2, schema="v1-x")]).written == ["old"]  # unversioned point: replaceable


def test_engine_refusing_new_vectors_makes_features_unsupported(
    backend: Opener, fps: dict[str, ItemPrints], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _old_collection(backend, "v2-old")
    secret = "/srv/secret/path"

    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError(f"engine says no at {secret}")

    if backend.name == "edge":
        monkeypatch.setattr(qe.UpdateOperation, "create_dense_vector", refuse)
        monkeypatch.setattr(qe.UpdateOperation, "create_sparse_vector", refuse)
    else:
        assert backend.client is not None
        monkeypatch.setattr(backend.client, "create_vector_name", refuse)
    caplog.set_level(logging.ERROR, logger="index")
    index = backend.open("v2-old")
    assert index.aux_vectors == {}
    report = index.upsert([item("new", 1, fp=fps["original"], frames=np.ones((T, DIMS["visual"]), np.float32))])
    assert report.written == ["new"] and FP_VISUAL not in index.get("new").vectors
    visual, _ = fps["original"].candidates
    for call in (lambda: index.relation_candidates(visual, None, k=3), lambda: index.frame_vectors(["new"])):
        with pytest.raises(StoreError) as e:
            call()
        assert e.value.reason == "unsupported" and secret not in e.value.detail and "/" not in e.value.detail
    assert secret in caplog.text  # the engine's message is logged, not returned
