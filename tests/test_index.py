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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from embedder.config import FusionConfig, IndexConfig
from embedder.fusion import fuse
from embedder.types import FUSED, MODALITIES, ConfigError, ItemEmbedding, StoreError, Transcript
from index import SearchFilter, VectorIndex, active_version, list_versions, open_index, set_active_version
from index.base import RRF_K, point_id

ROOT = Path(__file__).resolve().parent.parent
DIMS = {"visual": 24, "caption": 16, "transcript": 16, "fused": 56}
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
    assert reason_of(lambda: backend.open(version="v1", dims={"fused": 56})) == "schema_mismatch"
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
        assert f"pid {os.getpid()}" in detail and "index.backend: qdrant" in detail
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
