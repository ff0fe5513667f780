"""The step graph is declared once and every path is derived from it: a toy step registered here (a new modality
`toy` with its own named vector) runs in-process, through Ray Serve and through the Ray Data backfill, and
nothing in serving/ names it. Independent steps run concurrently; media are freed by the last step that reads them.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ray import cloudpickle as ray_cloudpickle

from embedder.config import ReelvecConfig
from embedder.graph import Graph, Step, run_steps
from embedder.items import build_item
from embedder.pipeline import ItemEmbedder, embedding_spec
from embedder.steps import GRAPH
from embedder.types import ConfigError
from embedder.work import Work, guard, live
from serving.backfill import run_backfill
from tests.conftest import CLIPS, free_port, make_config

TOY_DIM = 4
# Ray ships the toy step to its workers by value: pytest imports this file under a name they cannot import.
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])


def toy_vector(caption: str) -> np.ndarray:
    """A deterministic, never-zero vector of the caption (what the toy step computes)."""
    digest = hashlib.sha256(caption.encode()).digest()
    return np.frombuffer(digest[: 4 * TOY_DIM], dtype=np.uint32).astype(np.float32) / 2**32 + 0.1


def toy_step(_model: Any, works: Sequence[Work], _cfg: ReelvecConfig) -> None:
    for w in live(works):
        with guard([w], "toy"):
            assert w.decoded is not None  # it runs after decode, on every path
            w.vectors["toy"] = toy_vector(w.item.caption)
            w.models["toy-step"] = "1"


TOY = Step(
    "toy",
    toy_step,
    after=("decode",),
    reads=("item",),
    writes=("vectors",),
    vectors=lambda _card_dims, _cfg: {"toy": TOY_DIM},
    weights={"toy": 0.05},
)
TOY_GRAPH = GRAPH.with_step(TOY)
CLIP = "cooking_01"


def _check(vectors: dict[str, Any], models: dict[str, str], caption: str, cfg: ReelvecConfig) -> None:
    assert models.get("toy-step") == "1"
    got = np.asarray(vectors["toy"], dtype=np.float32)
    want = toy_vector(caption)
    assert np.allclose(got / np.linalg.norm(got), want / np.linalg.norm(want), atol=1e-5)
    assert (
        len(vectors["fused"])
        == embedding_spec(cfg, TOY_GRAPH).dims["fused"]
        == embedding_spec(cfg).dims["fused"] + TOY_DIM
    )


def _stored(cfg: ReelvecConfig, item_id: str) -> Any:
    from index import open_index

    spec = embedding_spec(cfg, TOY_GRAPH)
    with open_index(cfg.index, spec.dims, spec.schema_version, create=False) as index:
        return index.get(item_id)


def _clip(clips: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in clips if c["item_id"] == CLIP)


def test_graph_declaration_is_checked() -> None:
    with pytest.raises(ConfigError, match="unknown dependencies"):
        GRAPH.with_step(Step("late", toy_step, after=("nope",)))
    with pytest.raises(ConfigError, match="media"):
        Graph((Step("reader", toy_step, reads=("frames",)),))  # nothing produces frames
    with pytest.raises(ConfigError, match="repeated"):
        GRAPH.with_step(Step("asr", toy_step))


def test_media_are_freed_by_their_last_reader() -> None:
    assert GRAPH.frees({"decode"}) == ["media"]
    assert set(GRAPH.frees({"decode", "asr", "omni"})) == {"media", "audio"}
    assert set(GRAPH.frees(set(GRAPH.names))) == {"media", "frames", "ocr_frames", "audio"}
    assert "frames" not in GRAPH.frees({"decode", "asr", "ocr", "visual", "text"})  # thumbs and omni read them
    frames_late = GRAPH.with_step(Step("late", toy_step, after=("text",), reads=("frames",)))
    assert "frames" not in frames_late.frees(set(GRAPH.names))
    # A linear pipeline (the backfill) carries only what the stages ahead still read.
    assert GRAPH.read_by(["ocr", "visual", "text"]) == {"ocr_frames", "frames"} and GRAPH.read_by(["text"]) == set()


def test_independent_steps_run_concurrently(cfg: ReelvecConfig) -> None:
    """Two steps after the same one meet at a barrier: they can only both pass it if they run at once."""
    barrier = threading.Barrier(2, timeout=60)

    def meet(_m: Any, works: Sequence[Work], _cfg: ReelvecConfig) -> None:
        barrier.wait()
        for w in works:
            w.models[threading.current_thread().name] = "ran"

    graph = Graph(
        (Step("first", lambda *_: None), Step("a", meet, after=("first",)), Step("b", meet, after=("first",)))
    )
    works = [Work(build_item("x", b"", cfg.limits))]
    run_steps(graph, {"first": None, "a": None, "b": None}, works, cfg)
    assert len(works[0].models) == 2  # two threads ran them


def test_toy_step_in_process(cfg: ReelvecConfig, clips: list[dict[str, Any]]) -> None:
    c = _clip(clips)
    emb = ItemEmbedder(cfg, TOY_GRAPH)
    try:
        out = emb.embed(build_item(CLIP, c["path"], cfg.limits, caption=c["caption"]))
    finally:
        emb.close()
    assert out.modalities[-1] == "toy"
    _check(out.vectors, out.models, c["caption"], cfg)


def test_toy_step_through_serve(ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    from ray import serve

    from serving.service import build_app

    c = _clip(clips)
    cfg = make_config(tmp_path)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, TOY_GRAPH), name="reelvec-toy", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            form = {"item_id": CLIP, "caption": c["caption"]}
            files = {"file": ("clip.mp4", Path(c["path"]).read_bytes(), "video/mp4")}
            r = http.post("/v1/items", data=form, files=files)
            assert r.status_code == 201, r.text
            assert "toy" in r.json()["modalities"]
            assert http.get("/readyz").json()["models"]["toy"] == "loaded"
            got = http.get(f"/v1/items/{CLIP}", params={"vectors": "true"}).json()["vectors"]
            assert len(got["toy"]) == TOY_DIM  # a named vector of its own, served like the others
            # The toy step encodes no query text: searching its space by text is a clear 400, not a 500.
            r = http.get("/v1/search", params={"q": c["caption"], "using": "toy", "k": 1})
            assert r.status_code == 400 and r.json()["error"] == "bad_query", r.text
    finally:
        serve.delete("reelvec-toy")
        serve.shutdown()
    stored = _stored(cfg, CLIP)
    _check(stored.vectors, stored.payload["models"], c["caption"], cfg)


def test_toy_step_in_the_backfill(ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    c = _clip(clips)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"item_id": CLIP, "uri": c["path"], "caption": c["caption"]}) + "\n")
    cfg = make_config(tmp_path / "data", REELVEC__BACKFILL__ALLOWED_ROOTS=json.dumps([str(CLIPS)]))
    report = run_backfill(cfg, manifest, progress=False, graph=TOY_GRAPH)
    assert report.written == 1, report.to_json()
    stored = _stored(cfg, CLIP)
    _check(stored.vectors, stored.payload["models"], c["caption"], cfg)
