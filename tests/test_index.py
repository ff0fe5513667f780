"""The index contract, run against both backends: Qdrant Edge on tmp_path and qdrant-client `:memory:`.

No ML models: items are synthetic clustered vectors (4 topics + noise) fused with the real `fuse()`, and the
dims are deliberately not the production ones so nothing can depend on hard-coded sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from embedder.config import FusionConfig, IndexConfig
from embedder.fingerprint import POOLED_DIM
from embedder.fusion import fuse
from embedder.types import FUSED, MODALITIES, ConfigError, ItemEmbedding, StoreError, Transcript
from index import SearchFilter, VectorIndex, active_version, list_versions, open_index, set_active_version
from index.base import CREATE_TOKEN, RRF_K, point_id

ROOT = Path(__file__).resolve().parent.parent
DIMS = {"visual": 24, "caption": 16, "transcript": 16, "ocr": 8, "fused": 64}
WEIGHTS = FusionConfig().weights
TOPICS = 4
PER_TOPIC = 10
BASE_DAY = datetime(2024, 3, 1, tzinfo=UTC)
CREATORS = ("alice", "bob", "carol", "dave", "erin")


def _centers(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(TOPICS, DIMS[m])).astype(np.float32) for m in MODALITIES}


CENTERS = _centers()


def make_item(
    item_id: str,
    topic: int,
    rng: np.random.Generator,
    *,
    modalities: tuple[str, ...] = MODALITIES,
    creator: str | None = "alice",
    language: str | None = "en",
    created_at: datetime | None = BASE_DAY,
    transcript: str = "some words",
    metadata: dict[str, Any] | None = None,
) -> ItemEmbedding:
    vecs = {m: CENTERS[m][topic] + 0.35 * rng.normal(size=DIMS[m]).astype(np.float32) for m in modalities}
    vecs[FUSED] = fuse(vecs, WEIGHTS, DIMS)
    return ItemEmbedding(
        item_id=item_id,
        vectors=vecs,
        modalities=list(modalities),
        transcript=Transcript(transcript, language),
        caption=f"caption of {item_id}",
        hashtags=[f"#t{topic}"],
        creator_id=creator,
        created_at=created_at,
        duration_s=12.5,
        models={"minilm-l6-v2": "1"},
        schema_version="v1",
        decoder="pyav",
        frame_timestamps_s=[0.0, 1.0],
        timings_ms={},
        metadata=metadata or {"topic": topic},
    )


def topic_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


def centroid(topic: int, modality: str = FUSED) -> np.ndarray:
    if modality == FUSED:
        return fuse({m: CENTERS[m][topic] for m in MODALITIES}, WEIGHTS, DIMS)
    return CENTERS[modality][topic]


@dataclass
class Backend:
    """Opens indexes on one backend; closes whatever it opened at teardown."""

    name: str
    cfg: IndexConfig
    client: QdrantClient | None
    opened: list[VectorIndex] = field(default_factory=list)

    def open(
        self,
        version: str | None = None,
        create: bool = True,
        schema_version: str = "v1",
        dims: dict[str, int] | None = None,
    ) -> VectorIndex:
        idx = open_index(self.cfg, dims or DIMS, schema_version, version=version, create=create, client=self.client)
        self.opened.append(idx)
        return idx


@pytest.fixture(params=["edge", "qdrant"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "edge":
        b = Backend("edge", IndexConfig(backend="edge", path=tmp_path / "index", transcript_payload_chars=50), None)
    else:
        b = Backend(
            "qdrant",
            IndexConfig(backend="qdrant", url=":memory:", transcript_payload_chars=50),
            QdrantClient(":memory:"),
        )
    yield b
    for idx in b.opened:
        idx.close()


@pytest.fixture
def corpus() -> list[ItemEmbedding]:
    """40 items: 4 topics x 10; creators, languages and days vary independently of the topic."""
    rng = np.random.default_rng(0)
    items = []
    for t in range(TOPICS):
        for j in range(PER_TOPIC):
            n = t * PER_TOPIC + j
            items.append(
                make_item(
                    f"t{t}-{j}",
                    t,
                    rng,
                    creator=CREATORS[n % len(CREATORS)],
                    language="es" if n % 4 == 0 else "en",
                    created_at=BASE_DAY + timedelta(days=n),
                )
            )
    return items


@pytest.fixture
def idx(backend: Backend, corpus: list[ItemEmbedding]) -> VectorIndex:
    index = backend.open()
    report = index.upsert(corpus)
    assert report.failed == []
    return index


def reason_of(fn: Callable[[], object]) -> str:
    with pytest.raises(StoreError) as e:
        fn()
    return e.value.reason


# ---- writes ----------------------------------------------------------------------------------------


def test_ingest_twice_keeps_one_point_per_item(idx: VectorIndex, corpus: list[ItemEmbedding]) -> None:
    assert idx.count() == len(corpus)
    again = idx.upsert(corpus)
    assert sorted(again.written) == sorted(i.item_id for i in corpus)
    assert idx.count() == len(corpus)
    assert idx.existing([i.item_id for i in corpus] + ["nope"]) == {i.item_id for i in corpus}
    # Resume checks by embedding schema: the corpus was embedded as "v1".
    assert idx.existing([i.item_id for i in corpus], schema_version="v1") == {i.item_id for i in corpus}
    assert idx.existing([i.item_id for i in corpus], schema_version="v2") == set()


def test_reupsert_replaces_whole_point_including_vectors(idx: VectorIndex) -> None:
    rng = np.random.default_rng(1)
    assert "visual" in idx.get("t0-0").vectors
    idx.upsert([make_item("t0-0", 2, rng, modalities=("caption", "transcript"), creator="zed")])
    stored = idx.get("t0-0")
    assert set(stored.vectors) == {"caption", "transcript", FUSED}
    assert stored.payload["creator_id"] == "zed" and stored.payload["modalities"] == ["caption", "transcript"]
    assert "t0-0" not in [h.item_id for h in idx.search(centroid(0, "visual"), using="visual", k=40)]


def test_delete_removes_points(idx: VectorIndex, corpus: list[ItemEmbedding]) -> None:
    assert idx.delete(["t1-0", "t1-1", "never-stored"]) == 2
    assert idx.count() == len(corpus) - 2
    assert reason_of(lambda: idx.get("t1-0")) == "unknown_item"
    assert not {"t1-0", "t1-1"} & {h.item_id for h in idx.search(centroid(1), k=40)}
    assert idx.delete(["t1-0"]) == 0


def test_upsert_validates_every_item_before_writing(backend: Backend) -> None:
    index = backend.open()
    rng = np.random.default_rng(2)
    good = [make_item(f"t0-{j}", 0, rng) for j in range(3)]
    wrong_dim = make_item("bad-dim", 0, rng)
    wrong_dim.vectors["caption"] = np.ones(DIMS["caption"] + 1, dtype=np.float32)
    nan = make_item("bad-nan", 0, rng)
    nan.vectors[FUSED][3] = np.nan
    no_fused = make_item("no-fused", 0, rng)
    del no_fused.vectors[FUSED]
    unknown = make_item("unknown-vec", 0, rng)
    unknown.vectors["audio"] = np.ones(4, dtype=np.float32)
    zero = make_item("zero", 0, rng)
    zero.vectors[FUSED] = np.zeros(DIMS[FUSED], dtype=np.float32)
    blank = make_item("  ", 0, rng)
    not_json = make_item("not-json", 0, rng, metadata={"when": datetime.now(UTC)})
    # Invalid items interleaved with valid ones: an engine that writes a batch point by point would
    # otherwise keep a prefix of it.
    report = index.upsert([good[0], wrong_dim, good[1], nan, no_fused, unknown, zero, blank, not_json, good[2]])
    assert report.written == [g.item_id for g in good]
    assert {f.item_id: f.reason for f in report.failed} == {
        "bad-dim": "bad_vector",
        "bad-nan": "bad_vector",
        "no-fused": "missing_vector",
        "unknown-vec": "unknown_vector",
        "zero": "bad_vector",
        "  ": "bad_item_id",
        "not-json": "bad_payload",
    }
    assert all(f.stage == "index" for f in report.failed)
    assert index.count() == 3
    assert index.existing(["bad-dim", "bad-nan", "not-json"]) == set()


def test_payload_shape(backend: Backend) -> None:
    index = backend.open()
    naive = datetime(2024, 5, 6, 7, 8, 9)  # naive = UTC
    item = make_item("p-1", 0, np.random.default_rng(3), created_at=naive, transcript="x" * 500, language="de")
    index.upsert([item])
    p = index.get("p-1").payload
    assert p["item_id"] == "p-1" and p["language"] == "de" and p["hashtags"] == ["#t0"]
    assert p["transcript"] == "x" * 50  # cfg.transcript_payload_chars
    assert p["created_at"] == "2024-05-06T07:08:09Z"
    assert p["created_at_ts"] == naive.replace(tzinfo=UTC).timestamp()
    assert p["models"] == {"minilm-l6-v2": "1"} and p["schema_version"] == "v1" and p["metadata"] == {"topic": 0}
    assert p["schema_seq"] == 1 and p["duplicate_of"] is None and p["semantic_id"] is None
    hit = index.search(item.vectors[FUSED], k=1)[0]
    assert hit.item_id == "p-1" and hit.score == pytest.approx(1.0, abs=1e-4)
    js = hit.to_json()
    assert {"item_id", "score", "caption", "creator_id", "created_at", "modalities"} <= set(js)
    assert "transcript" not in js and "transcript" not in hit.payload
    json.dumps(js)


# ---- reads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", range(TOPICS))
def test_centroid_search_returns_its_topic_first(idx: VectorIndex, topic: int) -> None:
    hits = idx.search(centroid(topic), k=PER_TOPIC)
    assert [topic_of(h.item_id) for h in hits] == [topic] * PER_TOPIC
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    visual = idx.search(centroid(topic, "visual"), using="visual", k=PER_TOPIC)
    assert {topic_of(h.item_id) for h in visual} == {topic}


def test_search_multi_fuses_named_vectors(idx: VectorIndex) -> None:
    hits = idx.search_multi({m: centroid(2, m) for m in MODALITIES}, k=5)
    assert len(hits) == 5 and {topic_of(h.item_id) for h in hits} == {2}
    # Conflicting modalities: the result is reciprocal-rank fusion of the single-vector rankings.
    queries = {
        "visual": centroid(1, "visual"),
        "caption": centroid(3, "caption"),
        "transcript": centroid(3, "transcript"),
    }
    expected: dict[str, float] = {}
    for name, q in queries.items():
        for rank, h in enumerate(idx.search(q, using=name, k=40)):
            expected[h.item_id] = expected.get(h.item_id, 0.0) + 1.0 / (RRF_K + rank)
    mixed = idx.search_multi(queries, k=6)
    assert [h.score for h in mixed] == pytest.approx(sorted(expected.values(), reverse=True)[:6], rel=1e-4)
    assert all(h.score == pytest.approx(expected[h.item_id], rel=1e-4) for h in mixed)
    only = idx.search_multi({"caption": centroid(0, "caption")}, k=4, flt=SearchFilter(language="es"))
    assert only and all(h.payload["language"] == "es" for h in only)


def test_filters(idx: VectorIndex, corpus: list[ItemEmbedding]) -> None:
    q = centroid(0)
    by_creator = idx.search(q, k=40, flt=SearchFilter(creator_id="bob"))
    assert len(by_creator) == sum(i.creator_id == "bob" for i in corpus) > 0
    assert {h.payload["creator_id"] for h in by_creator} == {"bob"}

    es = idx.search(q, k=40, flt=SearchFilter(language="es"))
    assert len(es) == sum(i.transcript.language == "es" for i in corpus) > 0
    assert {h.payload["language"] for h in es} == {"es"}

    since, until = BASE_DAY + timedelta(days=5), BASE_DAY + timedelta(days=15)
    window = idx.search(q, k=40, flt=SearchFilter(since=since, until=until))
    assert sorted(h.item_id for h in window) == sorted(
        i.item_id for i in corpus if i.created_at is not None and since <= i.created_at < until
    )
    assert len(idx.search(q, k=40, flt=SearchFilter(since=since))) == len(corpus) - 5
    assert len(idx.search(q, k=40, flt=SearchFilter(until=since))) == 5

    top = idx.search(q, k=3)
    excluded = idx.search(q, k=3, flt=SearchFilter(exclude_ids=[top[0].item_id, top[1].item_id]))
    assert excluded[0].item_id == top[2].item_id
    assert not {top[0].item_id, top[1].item_id} & {
        h.item_id for h in idx.search(q, k=40, flt=SearchFilter(exclude_ids=[top[0].item_id, top[1].item_id]))
    }

    both = idx.search(q, k=40, flt=SearchFilter(creator_id="alice", language="es", since=BASE_DAY))
    assert both and all(h.payload["creator_id"] == "alice" and h.payload["language"] == "es" for h in both)


def test_recommend_prefers_positive_topic_and_never_returns_examples(idx: VectorIndex) -> None:
    positive, negative = ["t0-0", "t0-1"], ["t1-0"]
    hits = idx.recommend(positive, negative, k=8)
    assert [topic_of(h.item_id) for h in hits] == [0] * 8
    everything = idx.recommend(positive, negative, k=100)
    ids = [h.item_id for h in everything]
    assert not set(positive + negative) & set(ids)
    assert len(ids) == 40 - 3
    # Negatives' topic ranks below every other topic.
    last_topic1 = max(i for i, x in enumerate(ids) if topic_of(x) == 1)
    first_topic1 = min(i for i, x in enumerate(ids) if topic_of(x) == 1)
    assert first_topic1 >= len(ids) - PER_TOPIC - 1 and last_topic1 == len(ids) - 1
    filtered = idx.recommend(["t2-0"], [], k=5, flt=SearchFilter(language="en"))
    assert filtered and all(h.payload["language"] == "en" and h.item_id != "t2-0" for h in filtered)


# ---- late fusion -----------------------------------------------------------------------------------


def _at_cosine(c: float, j: int, dim: int) -> np.ndarray:
    """A unit vector at cosine `c` to e0, its remainder on its own axis e_j (so every item is distinct)."""
    v = np.zeros(dim, dtype=np.float32)
    v[0], v[j] = c, np.sqrt(1 - c * c)
    return v


# X is a visual outlier but middling on caption; Y is near the top of both. Rank fusion sees two ranks and
# prefers Y; score fusion sees X's visual score 3+ std above the rest and prefers X.
FUSION_SHAPES = {
    "X": (0.95, 0.50),
    "Y": (0.32, 0.60),
    **{f"F{i}": (0.30 - 0.01 * i, 0.58 - 0.02 * i) for i in range(1, 9)},
}


def _dbsf(lists: list[list[tuple[str, float]]]) -> dict[str, float]:
    """Qdrant's DBSF: per list (mean - 3 sd, mean + 3 sd) with the sample sd maps to (0, 1); sums per id."""
    out: dict[str, float] = {}
    for hits in lists:
        scores = np.array([sc for _, sc in hits])
        low, sd = scores.mean() - 3 * scores.std(ddof=1), scores.std(ddof=1)
        for item_id, sc in hits:
            out[item_id] = out.get(item_id, 0.0) + (sc - low) / (6 * sd)
    return out


def test_late_fusion_rrf_and_dbsf_match_hand_computation(backend: Backend) -> None:
    rng = np.random.default_rng(11)
    items = []
    for j, (item_id, (cv, cc)) in enumerate(FUSION_SHAPES.items(), start=1):
        vecs = {"visual": _at_cosine(cv, j, DIMS["visual"]), "caption": _at_cosine(cc, j, DIMS["caption"])}
        base = make_item(item_id, 0, rng, modalities=("visual", "caption"))
        items.append(replace(base, vectors={**vecs, FUSED: fuse(vecs, WEIGHTS, DIMS)}))
    index = backend.open()
    assert index.upsert(items).failed == []
    queries = {n: np.eye(DIMS[n], dtype=np.float32)[0] for n in ("visual", "caption")}
    lists = [[(h.item_id, h.score) for h in index.search(q, using=n, k=50)] for n, q in queries.items()]
    assert [len(x) for x in lists] == [len(items)] * 2  # the prefetch limit (50) sees every item

    rrf = index.search_multi(queries, k=4, method="rrf")
    want_rrf: dict[str, float] = {}
    for hits in lists:
        for rank, (item_id, _) in enumerate(hits):
            want_rrf[item_id] = want_rrf.get(item_id, 0.0) + 1.0 / (RRF_K + rank)
    assert [h.item_id for h in rrf] == sorted(want_rrf, key=want_rrf.__getitem__, reverse=True)[:4]
    assert all(h.score == pytest.approx(want_rrf[h.item_id], rel=1e-4) for h in rrf)

    dbsf = index.search_multi(queries, k=4, method="dbsf")
    want_dbsf = _dbsf(lists)
    assert [h.item_id for h in dbsf] == sorted(want_dbsf, key=want_dbsf.__getitem__, reverse=True)[:4]
    assert all(h.score == pytest.approx(want_dbsf[h.item_id], rel=1e-3) for h in dbsf)
    assert (rrf[0].item_id, dbsf[0].item_id) == ("Y", "X")  # the two methods disagree, as designed
    assert reason_of(lambda: index.search_multi(queries, method="max")) == "bad_query"  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["rrf", "dbsf"])
def test_search_like_and_recommend_with_late_fusion(idx: VectorIndex, method: str) -> None:
    me = "t2-3"
    stored = idx.get(me)
    like = idx.search_like(me, k=6, fusion=method)  # type: ignore[arg-type]
    assert me not in [h.item_id for h in like] and {topic_of(h.item_id) for h in like} == {2}
    # The same as fusing the stored per-modality vectors by hand, minus the item itself.
    by_hand = idx.search_multi(
        {m: stored.vectors[m] for m in MODALITIES},
        k=6,
        flt=SearchFilter(exclude_ids=[me]),
        method=method,  # type: ignore[arg-type]
    )
    assert [h.item_id for h in like] == [h.item_id for h in by_hand]
    assert [h.score for h in like] == pytest.approx([h.score for h in by_hand], rel=1e-5)

    recs = idx.recommend(["t1-0", "t1-1"], ["t3-0"], k=8, fusion=method)  # type: ignore[arg-type]
    ids = [h.item_id for h in recs]
    assert {topic_of(i) for i in ids} == {1} and not {"t1-0", "t1-1", "t3-0"} & set(ids)
    # An example without `visual` limits the fusion to the modalities every example has.
    idx.upsert([make_item("t1-novis", 1, np.random.default_rng(12), modalities=("caption", "transcript"))])
    partial = idx.recommend(["t1-novis", "t1-2"], k=5, fusion=method)  # type: ignore[arg-type]
    assert partial and {topic_of(h.item_id) for h in partial} == {1}
    assert reason_of(lambda: idx.search_like(me, fusion="sum")) == "bad_query"  # type: ignore[arg-type]


# ---- conditional create -----------------------------------------------------------------------------


def test_upsert_checked_says_created_then_replaced(backend: Backend) -> None:
    index = backend.open()
    rng = np.random.default_rng(13)
    first = index.upsert_checked([make_item("a", 0, rng), make_item("b", 1, rng)])
    assert (sorted(first.created), first.replaced, sorted(first.written)) == (["a", "b"], [], ["a", "b"])
    again = index.upsert_checked([make_item("a", 2, rng, creator="zed"), make_item("c", 3, rng)])
    assert (again.created, again.replaced) == (["c"], ["a"])
    assert index.get("a").payload["creator_id"] == "zed"  # replaced means replaced
    assert CREATE_TOKEN not in index.get("a").payload
    assert all(CREATE_TOKEN not in h.payload for h in index.search(centroid(0), k=3))
    index.upsert([make_item("d", 0, rng)])  # written by a plain upsert (no token): still "replaced"
    assert index.upsert_checked([make_item("d", 0, rng)]).replaced == ["d"]
    assert index.count() == 4


def test_racing_writers_create_each_id_exactly_once(backend: Backend) -> None:
    """Writers on separate handles (one shared client on the server backend, as replicas share a server;
    one handle on Edge, which is one process per path) race to create the same ids."""
    writers, ids = 4, [f"race-{i}" for i in range(12)]
    handles = [backend.open() for _ in range(writers)] if backend.name == "qdrant" else [backend.open()] * writers
    barrier = threading.Barrier(writers)
    reports: list[Any] = [None] * writers

    def write(w: int) -> None:
        rng = np.random.default_rng(100 + w)
        items = [make_item(i, w % TOPICS, rng, creator=f"writer-{w}") for i in ids]
        rng.shuffle(items)  # type: ignore[arg-type]
        barrier.wait()
        reports[w] = [handles[w].upsert_checked(items[j : j + 4]) for j in range(0, len(items), 4)]

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widens any check-then-write window
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    created = [i for rs in reports for r in rs for i in r.created]
    replaced = [i for rs in reports for r in rs for i in r.replaced]
    assert sorted(created) == sorted(ids)  # each id exactly once
    assert sorted(replaced) == sorted(ids * (writers - 1))
    assert handles[0].count() == len(ids)
    assert {handles[0].get(i).payload["creator_id"] for i in ids} <= {f"writer-{w}" for w in range(writers)}


# ---- quantization and on-disk vectors ---------------------------------------------------------------


def test_int8_quantization_and_on_disk_are_reported_and_search_stays_right(
    backend: Backend, corpus: list[ItemEmbedding]
) -> None:
    plain = backend.open(version="plain").vector_storage()
    # Every collection also has the pooled visual print and the per-frame visual multivector, never quantized
    # (the sparse audio hashes are not a dense storage).
    assert {n: (s.size, s.quantization, s.on_disk) for n, s in plain.items()} == {
        n: (d, None, None) for n, d in {**DIMS, "fp_visual": POOLED_DIM, "frames": DIMS["visual"]}.items()
    }
    backend.cfg = backend.cfg.model_copy(update={"quantization": "int8", "on_disk_vectors": True})
    index = backend.open(version="int8")
    storage = index.vector_storage()
    assert {n for n, s in storage.items() if s.quantization == "int8"} == {FUSED, "visual"}
    assert storage[FUSED].always_ram is True and storage["caption"].always_ram is None
    assert all(s.on_disk is True for s in storage.values())
    assert index.upsert(corpus).failed == []
    index.optimize()
    for topic in range(TOPICS):
        assert [topic_of(h.item_id) for h in index.search(centroid(topic), k=PER_TOPIC)] == [topic] * PER_TOPIC
    me = corpus[5]
    top = index.search(me.vectors[FUSED], k=1)[0]
    assert top.item_id == me.item_id and top.score == pytest.approx(1.0, abs=1e-3)  # rescored: exact cosine


def test_missing_modality_is_stored_and_searchable_on_fused(idx: VectorIndex) -> None:
    item = make_item("t3-novis", 3, np.random.default_rng(4), modalities=("caption", "transcript"))
    assert idx.upsert([item]).written == ["t3-novis"]
    stored = idx.get("t3-novis")
    assert set(stored.vectors) == {"caption", "transcript", FUSED}
    assert stored.vectors[FUSED].shape == (DIMS[FUSED],)
    assert idx.search(item.vectors[FUSED], k=1)[0].item_id == "t3-novis"
    assert "t3-novis" not in {h.item_id for h in idx.search(centroid(3, "visual"), using="visual", k=100)}
    assert "t3-novis" in {h.item_id for h in idx.search(item.vectors["caption"], using="caption", k=3)}
    assert reason_of(lambda: idx.recommend(["t3-novis"], using="visual")) == "bad_query"


def test_bad_requests_raise_typed_errors_and_change_nothing(idx: VectorIndex) -> None:
    before = idx.count()
    q = centroid(0)
    assert reason_of(lambda: idx.search(q, k=0)) == "bad_query"
    assert reason_of(lambda: idx.search(q, k=-3)) == "bad_query"
    assert reason_of(lambda: idx.search(q[:-1])) == "bad_query"
    assert reason_of(lambda: idx.search(centroid(0, "caption"), using="visual")) == "bad_query"
    assert reason_of(lambda: idx.search(q, using="audio")) == "bad_query"
    assert reason_of(lambda: idx.search(np.full(DIMS[FUSED], np.nan))) == "bad_query"
    assert reason_of(lambda: idx.search_multi({})) == "bad_query"
    assert reason_of(lambda: idx.search_multi({"visual": q})) == "bad_query"
    assert reason_of(lambda: idx.recommend([])) == "bad_query"
    assert reason_of(lambda: idx.recommend(["t0-0"], k=0)) == "bad_query"
    assert reason_of(lambda: idx.recommend(["t0-0"], using="audio")) == "bad_query"
    assert reason_of(lambda: idx.recommend(["does-not-exist"])) == "unknown_item"
    assert reason_of(lambda: idx.recommend(["t0-0"], ["does-not-exist"])) == "unknown_item"
    assert reason_of(lambda: idx.get("does-not-exist")) == "unknown_item"
    assert idx.count() == before


def test_closed_index_refuses(backend: Backend) -> None:
    index = backend.open()
    index.close()
    index.close()  # idempotent
    assert reason_of(lambda: index.count()) == "closed"


# ---- versions and the alias -----------------------------------------------------------------------


def test_versions_alias_and_explicit_target(backend: Backend) -> None:
    rng = np.random.default_rng(5)
    kw = {"client": backend.client}
    assert active_version(backend.cfg, **kw) is None
    a = backend.open(schema_version="vA-1")
    assert (a.version, a.collection) == ("vA-1", "reelvec__vA-1")
    assert active_version(backend.cfg, **kw) == "vA-1"
    a.upsert([make_item("only-in-a", 0, rng)])
    a.close()

    b = backend.open(version="vB.2", schema_version="vB.2")  # backfill target: alias must not move
    b.upsert([make_item("only-in-b", 1, rng), make_item("also-b", 1, rng)])
    b.close()
    assert list_versions(backend.cfg, **kw) == ["vA-1", "vB.2"]
    assert active_version(backend.cfg, **kw) == "vA-1"

    served = backend.open(schema_version="vB.2")
    assert served.version == "vA-1" and served.count() == 1 and served.existing(["only-in-a"]) == {"only-in-a"}
    served.close()

    set_active_version(backend.cfg, "vB.2", **kw)
    assert active_version(backend.cfg, **kw) == "vB.2"
    served = backend.open(schema_version="vB.2")
    assert served.version == "vB.2" and served.count() == 2 and served.existing(["only-in-a"]) == set()
    served.close()

    assert reason_of(lambda: set_active_version(backend.cfg, "vC", **kw)) == "unknown_version"
    assert reason_of(lambda: set_active_version(backend.cfg, "../x", **kw)) == "bad_version"
    assert reason_of(lambda: backend.open(version="vC", create=False)) == "unknown_version"
    assert reason_of(lambda: backend.open(version="bad/version")) == "bad_version"
    assert reason_of(lambda: backend.open(version="v1\n")) == "bad_version"
    assert list_versions(backend.cfg, **kw) == ["vA-1", "vB.2"]


def test_no_alias_and_no_create_is_unknown_version(backend: Backend) -> None:
    assert reason_of(lambda: backend.open(create=False)) == "unknown_version"
    assert list_versions(backend.cfg, client=backend.client) == []


def test_reopen_with_other_dims_is_schema_mismatch(backend: Backend) -> None:
    backend.open(version="v1").close()
    assert reason_of(lambda: backend.open(version="v1", dims={**DIMS, "visual": 32})) == "schema_mismatch"
    assert reason_of(lambda: backend.open(version="v1", dims={"fused": DIMS[FUSED]})) == "schema_mismatch"
    assert backend.open(version="v1").count() == 0  # still usable


# ---- backend specifics -----------------------------------------------------------------------------


def _run_child(body: str) -> subprocess.CompletedProcess[str]:
    """Run CHILD_PRELUDE + body in a fresh interpreter (a separate process, as another server would be)."""
    code = textwrap.dedent(CHILD_PRELUDE) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


CHILD_PRELUDE = f"""
    import numpy as np
    from pathlib import Path
    from embedder.config import IndexConfig
    from embedder.types import ItemEmbedding, StoreError, Transcript
    from index import open_index
    DIMS = {DIMS!r}
"""


def _edge(tmp_path: Path, **kw: Any) -> IndexConfig:
    return IndexConfig(backend="edge", path=tmp_path / "index", **kw)


def test_edge_second_open_is_locked_in_other_process_and_this_one(tmp_path: Path) -> None:
    cfg = _edge(tmp_path)
    with open_index(cfg, DIMS, "v1") as index:
        index.upsert([make_item("t0-0", 0, np.random.default_rng(6))])
        out = _run_child(f"""
            try:
                open_index(IndexConfig(backend="edge", path=Path({str(cfg.path)!r})), DIMS, "v1")
                print("OPENED")
            except StoreError as e:
                print(e.reason, "|", e.detail)
        """)
        assert out.returncode == 0, out.stderr
        reason, detail = out.stdout.strip().split(" | ")
        assert reason == "locked"
        assert "another process" in detail and "index.backend: qdrant" in detail
        assert str(os.getpid()) not in detail and str(cfg.path) not in detail  # no pids or paths in details
        assert reason_of(lambda: open_index(cfg, DIMS, "v1")) == "locked"
        # The refused opens did not damage the live handle.
        index.upsert([make_item("t0-1", 0, np.random.default_rng(7))])
        assert index.count() == 2
    with open_index(cfg, DIMS, "v1") as again:  # released on close
        assert again.count() == 2


def test_edge_write_survives_crash_and_reopens_in_new_process(tmp_path: Path) -> None:
    cfg = _edge(tmp_path)
    out = _run_child(f"""
        import os
        rng = np.random.default_rng(0)
        def item(i):
            v = {{n: rng.normal(size=d).astype(np.float32) for n, d in DIMS.items()}}
            return ItemEmbedding(item_id=f"crash-{{i}}", vectors=v,
                modalities=["visual", "caption", "transcript"], transcript=Transcript("t", "en"), caption="c",
                hashtags=[], creator_id="x", created_at=None,
                duration_s=1.0, models={{}}, schema_version="v1", decoder="pyav", frame_timestamps_s=[],
                timings_ms={{}})
        index = open_index(IndexConfig(backend="edge", path=Path({str(cfg.path)!r})), DIMS, "v1")
        index.upsert([item(i) for i in range(5)])
        np.save(Path({str(tmp_path)!r}) / "fused.npy", index.get("crash-3").vectors["fused"])
        os._exit(0)  # no close(), no flush at exit: a crash right after upsert() returned
    """)
    assert out.returncode == 0, out.stderr
    with open_index(cfg, DIMS, "v1", create=False) as index:
        assert index.count() == 5
        assert index.existing([f"crash-{i}" for i in range(6)]) == {f"crash-{i}" for i in range(5)}
        assert index.search(np.load(tmp_path / "fused.npy"), k=1)[0].item_id == "crash-3"
        index.upsert([make_item("parent", 0, np.random.default_rng(8))])

    out = _run_child(f"""
        cfg = IndexConfig(backend="edge", path=Path({str(cfg.path)!r}))
        with open_index(cfg, DIMS, "v1", create=False) as ix:
            print(ix.count(), sorted(ix.existing(["parent", "crash-0"])))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6 ['crash-0', 'parent']"


def test_edge_alias_file_is_replaced_atomically(tmp_path: Path) -> None:
    cfg = _edge(tmp_path)
    open_index(cfg, DIMS, "v1").close()
    open_index(cfg, DIMS, "v1", version="v2").close()
    alias = cfg.path / "reelvec.alias.json"
    assert json.loads(alias.read_text())["version"] == "v1"
    set_active_version(cfg, "v2")
    data = json.loads(alias.read_text())
    assert data["version"] == "v2" and datetime.fromisoformat(data["updated_at"]).tzinfo is not None
    assert sorted(p.name for p in cfg.path.iterdir()) == ["reelvec.alias.json", "reelvec__v1", "reelvec__v2"]
    alias.write_text("{not json")
    assert reason_of(lambda: active_version(cfg)) == "bad_alias"


def test_edge_optimizes_in_background_after_enough_upserts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from index.edge import EdgeIndex

    calls: list[str] = []
    real = EdgeIndex._optimize

    def spy(self: EdgeIndex) -> None:
        calls.append(__import__("threading").current_thread().name)
        real(self)

    monkeypatch.setattr(EdgeIndex, "_optimize", spy)
    rng = np.random.default_rng(9)
    with open_index(_edge(tmp_path, optimize_after_upserts=8), DIMS, "v1") as index:
        assert isinstance(index, EdgeIndex)
        index.upsert([make_item(f"t0-{j}", 0, rng) for j in range(5)])
        index.wait_for_optimizer()
        assert calls == []
        index.upsert([make_item(f"t1-{j}", 1, rng) for j in range(5)])
        index.wait_for_optimizer()
        assert calls == ["optimize-reelvec__v1"]
        assert {topic_of(h.item_id) for h in index.search(centroid(1), k=5)} == {1}
        index.optimize()
        assert calls[-1] == "MainThread" and index.count() == 10


def test_qdrant_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = IndexConfig(backend="qdrant", url=f"http://127.0.0.1:{port}", timeout_s=2)
    assert reason_of(lambda: open_index(cfg, DIMS, "v1")) == "unreachable"


def test_memory_url_shares_one_store_across_opens() -> None:
    cfg = IndexConfig(backend="qdrant", url=":memory:", collection=f"shared{os.getpid()}")
    with open_index(cfg, DIMS, "v1") as a:
        a.upsert([make_item("t0-0", 0, np.random.default_rng(10))])
    assert active_version(cfg) == "v1"
    with open_index(cfg, DIMS, "v1") as b:
        assert b.existing(["t0-0"]) == {"t0-0"}


def test_point_ids_are_stable_uuid5() -> None:
    assert point_id("abc") == point_id("abc") != point_id("abd")
    # Pinned: a changed namespace would silently re-key every stored point.
    assert point_id("abc") == "47b25731-4614-5f69-a87c-8bc94c235e39"


def test_collection_name_must_be_path_safe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"index\.collection"):
        open_index(IndexConfig(backend="edge", path=tmp_path, collection="../escape"), DIMS, "v1")
    assert list(tmp_path.iterdir()) == []


def test_search_like_is_cosine_and_excludes_itself(idx: VectorIndex, corpus: list[ItemEmbedding]) -> None:
    me = corpus[0].item_id
    hits = idx.search_like(me, k=5)
    direct = idx.search(idx.get(me).vectors[FUSED], k=6)
    assert me not in [h.item_id for h in hits] and direct[0].item_id == me
    assert [h.item_id for h in direct[1:]] == [h.item_id for h in hits]
    assert abs(direct[1].score - hits[0].score) < 1e-5
    assert topic_of(hits[0].item_id) == topic_of(me)
    assert reason_of(lambda: idx.search_like("nope")) == "unknown_item"
    assert reason_of(lambda: idx.search_like(me, k=0)) == "bad_query"


@pytest.mark.parametrize("strategy", ["sum_scores", "best_score"])
def test_recommend_strategy_from_config(backend: Backend, strategy: str) -> None:
    """sum_scores favours an item close to every like; best_score one very close to any single like."""
    rng = np.random.default_rng(3)
    basis = np.eye(DIMS["visual"], dtype=np.float32)
    shapes = {
        "like-a": basis[0],
        "like-b": basis[1],
        "near-a-only": 0.95 * basis[0] + 0.31 * basis[2],
        "between": 0.7 * basis[0] + 0.7 * basis[1],
        "unrelated": basis[3],
    }
    items = []
    for item_id, v in shapes.items():
        base = make_item(item_id, 0, rng, modalities=("visual",))
        items.append(replace(base, vectors={"visual": v, FUSED: fuse({"visual": v}, WEIGHTS, DIMS)}))
    backend.cfg = backend.cfg.model_copy(update={"recommend_strategy": strategy})
    index = backend.open(version=f"v-{strategy}")
    assert index.upsert(items).failed == []
    hits = [h.item_id for h in index.recommend(["like-a", "like-b"], k=3, using="visual")]
    assert hits[0] == ("between" if strategy == "sum_scores" else "near-a-only"), hits
    assert hits[-1] == "unrelated" and not {"like-a", "like-b"} & set(hits)


def test_edge_searches_answer_while_optimize_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The optimizer runs in a child process on a copy, so this process keeps answering (in-process it holds
    the GIL: a Python thread got 0 ticks during an 8 s optimize)."""
    import time

    rng = np.random.default_rng(14)
    caplog.set_level("INFO", logger="index.edge")
    with open_index(_edge(tmp_path), DIMS, "v1") as index:
        index.upsert([make_item(f"t{t}-{j}", t, rng) for t in range(TOPICS) for j in range(300)])
        # Deleting a third makes the engine's vacuum optimizer rebuild the segment, so the copy is swapped in.
        assert index.delete([f"t{t}-{j}" for t in range(TOPICS) for j in range(100, 200)]) == 400
        done = threading.Event()
        spans: list[tuple[float, float]] = []

        def optimize() -> None:
            try:
                index.optimize()
            finally:
                done.set()

        worker = threading.Thread(target=optimize)
        t_start = time.perf_counter()
        worker.start()
        while not done.is_set():
            t0 = time.perf_counter()
            hits = index.search(centroid(len(spans) % TOPICS), k=5)
            spans.append((t0, time.perf_counter()))
            assert {topic_of(h.item_id) for h in hits} == {(len(spans) - 1) % TOPICS}
            time.sleep(0.005)
        worker.join()
        t_end = time.perf_counter()
        inside = [(a, b) for a, b in spans if t_start <= a and b <= t_end]
        assert len(inside) >= 5, (len(inside), t_end - t_start)
        assert max(b - a for a, b in inside) < 0.5
        assert any("changed=True" in r.getMessage() for r in caplog.records)  # the optimized copy was swapped in
        assert index.count() == 800 and index.upsert([make_item("after", 0, rng)]).written == ["after"]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["reelvec.alias.json", "reelvec__v1"]
    with open_index(_edge(tmp_path), DIMS, "v1", create=False) as again:
        assert again.count() == 801 and again.search(centroid(2), k=1)[0].item_id.startswith("t2-")


def test_edge_open_restores_a_shard_left_aside_by_an_interrupted_swap(tmp_path: Path) -> None:
    from index.edge import PRE_OPTIMIZE_SUFFIX

    with open_index(_edge(tmp_path), DIMS, "v1") as index:
        index.upsert([make_item("kept", 0, np.random.default_rng(15))])
    live = tmp_path / "index" / "reelvec__v1"
    live.rename(live.with_name(f".reelvec__v1{PRE_OPTIMIZE_SUFFIX}"))  # a crash between the two renames
    with open_index(_edge(tmp_path), DIMS, "v1", create=False) as index:
        assert index.existing(["kept"]) == {"kept"}


def test_existing_redoes_items_embedded_without_a_model_available_now(backend: Backend) -> None:
    """Resume check (issue 2/4 item 5): an item stored while the OCR card was unavailable is not 'done' once
    OCR is available; one embedded with every model is."""
    index = backend.open()
    rng = np.random.default_rng(21)
    without_ocr = make_item("no-ocr", 0, rng)
    without_ocr.models_unavailable = ["rapidocr-ppocrv4"]
    complete = make_item("complete", 1, rng)
    index.upsert([without_ocr, complete])
    ids = ["no-ocr", "complete"]
    assert index.existing(ids, require_models=["rapidocr-ppocrv4", "minilm-l6-v2"]) == {"complete"}
    assert index.existing(ids, require_models=["minilm-l6-v2"]) == set(ids)  # OCR still off: nothing to redo
    assert index.get("no-ocr").payload["models_unavailable"] == ["rapidocr-ppocrv4"]
