"""The Ray Serve endpoint end to end: real local Ray + Serve on 127.0.0.1, real clips over HTTP.

One app per module (models load once): lifecycle upload → search → get → delete, the bad-input matrix,
backpressure, concurrent uploads of repeated ids, search by clip / ids, the locked index → 503, metrics and
logs. CLIP weights are absent offline, so that app runs with visual off; a tiny random CLIP covers the
visual path (in process by default, over HTTP in the slow test).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedder.config import ReelvecConfig
from embedder.pipeline import ItemEmbedder, embedding_spec
from embedder.types import FUSED, ItemInput, MediaError, ModelUnavailableError, StoreError
from serving.schemas import ApiError, error_headers, status_for
from tests.conftest import free_port, make_config

API_KEY = "test-key-123"
AUTH = {"X-API-Key": API_KEY}
MAX_BYTES = 2_000_000


@dataclass
class Service:
    http: httpx.Client
    cfg: ReelvecConfig
    temp_dir: str
    locked_readyz: httpx.Response | None = None
    locked_upload: httpx.Response | None = None

    def upload(
        self,
        item_id: str | None,
        media: bytes | None,
        *,
        caption: str = "",
        metadata: Any = None,
        ctype: str = "video/mp4",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        data: dict[str, str] = {}
        if item_id is not None:
            data["item_id"] = item_id
        if caption:
            data["caption"] = caption
        if metadata is not None:
            data["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
        files = {"file": ("clip.mp4", media, ctype)} if media is not None else None
        return self.http.post("/v1/items", data=data, files=files, headers=AUTH if headers is None else headers)

    def count(self) -> int:
        r = self.http.get("/readyz")
        assert r.status_code == 200, r.text
        return int(r.json()["index"]["count"])

    def search(self, q: str, **params: Any) -> list[str]:
        r = self.http.get("/v1/search", params={"q": q, **params})
        assert r.status_code == 200, r.text
        return [h["item_id"] for h in r.json()["hits"]]


def _row_upload(svc: Service, row: dict[str, Any], item_id: str | None = None) -> httpx.Response:
    meta = {"hashtags": row["hashtags"], "creator_id": row["creator_id"], "created_at": row["created_at"]}
    return svc.upload(item_id or row["item_id"], Path(row["path"]).read_bytes(), caption=row["caption"], metadata=meta)


def _upload_retrying(svc: Service, row: dict[str, Any], item_id: str) -> httpx.Response:
    """What a well-behaved client does: a 503 (shed by backpressure) is retried after its Retry-After."""
    for _ in range(30):
        r = _row_upload(svc, row, item_id=item_id)
        if r.status_code != 503:
            return r
        time.sleep(float(r.headers.get("retry-after", "1")))
    return r


def _long_clip(path: Path, seconds: int = 12, fps: int = 2) -> bytes:
    """A tiny valid clip longer than the test's limits.max_duration_s."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for i in range(seconds * fps):
            img = np.full((64, 64, 3), (i * 9) % 255, dtype=np.uint8)
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
    return path.read_bytes()


@pytest.fixture(scope="module")
def service(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The whole app on a free port; the index is held by this process while it starts (→ 503, then released)."""
    from ray import serve

    from index import open_index
    from serving.app import build_app

    tmp = tmp_path_factory.mktemp("serve")
    cfg = make_config(
        tmp,
        REELVEC__LIMITS__MAX_BYTES=str(MAX_BYTES),
        REELVEC__LIMITS__MAX_DURATION_S="10",
        REELVEC__LIMITS__MAX_PIXELS="1000000",
        REELVEC__LIMITS__MAX_CAPTION_CHARS="300",
        REELVEC__SERVE__API_KEY=API_KEY,
        REELVEC__SERVE__MAX_BATCH_SIZE="4",
        REELVEC__SERVE__MAX_QUEUED_REQUESTS="4",
        REELVEC__SERVE__NUM_CPUS_PER_MODEL="0.25",
    )
    spec = embedding_spec(cfg)
    holder = open_index(cfg.index, spec.dims, spec.schema_version)  # another process owns the path: locked
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="reelvec-test", route_prefix="/")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    svc = Service(http, cfg, ray_cluster["temp_dir"])
    svc.locked_readyz = http.get("/readyz")
    clip = Path(__file__).resolve().parent.parent / "samples/clips/cooking_01.mp4"
    svc.locked_upload = svc.upload("while_locked", clip.read_bytes(), caption="pasta")
    holder.close()
    deadline = time.monotonic() + 60
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, http.get("/readyz").text
        time.sleep(0.5)
    yield svc
    http.close()
    serve.delete("reelvec-test")
    serve.shutdown()


def test_error_mapping() -> None:
    cases = [
        (MediaError("too_large", ""), 413),
        (MediaError("truncated", ""), 422),
        (MediaError("not_a_video", ""), 422),
        (MediaError("empty_query", ""), 400),
        (StoreError("unknown_item", ""), 404),
        (StoreError("bad_query", ""), 400),
        (StoreError("locked", ""), 503),
        (StoreError("unreachable", ""), 503),
        (ModelUnavailableError("missing", ""), 503),
        (ApiError("unsupported_media_type", "", 415), 415),
    ]
    assert [status_for(e) for e, _ in cases] == [status for _, status in cases]
    assert error_headers(503) == {"Retry-After": "1"} and error_headers(422) == {}


def test_deployment_options_follow_config(tmp_path: Path) -> None:
    """Batch capacity fits max_ongoing_requests; edge mode has exactly one index owner; backpressure is bounded."""
    from serving.app import build_app

    cfg = make_config(
        tmp_path,
        REELVEC__SERVE__MAX_BATCH_SIZE="6",
        REELVEC__SERVE__MAX_CONCURRENT_BATCHES="2",
        REELVEC__SERVE__TEXT_REPLICAS="2",
        REELVEC__SERVE__MAX_QUEUED_REQUESTS="7",
    )
    ingress = build_app(cfg)._bound_deployment
    deps = {ingress.name: ingress}
    deps.update(
        {a._bound_deployment.name: a._bound_deployment for a in ingress.init_args if hasattr(a, "_bound_deployment")}
    )
    assert deps["TextDeployment"].max_ongoing_requests == 24 and deps["TextDeployment"].num_replicas == 2
    assert deps["ClipDeployment"].max_ongoing_requests == 24
    assert deps["TextDeployment"].user_config == {"max_batch_size": 6, "batch_wait_timeout_s": 0.05}
    assert deps["IndexWriter"].num_replicas == 1
    assert deps["Ingress"].max_queued_requests == 7
    assert deps["TextDeployment"].ray_actor_options["num_cpus"] == cfg.serve.num_cpus_per_model


def test_locked_index_is_503_then_ready(service: Service) -> None:
    r = service.locked_readyz
    assert r is not None and r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["index"]["error"] == "locked" and r.json()["models"]["text"] == "loaded"
    up = service.locked_upload
    assert up is not None and up.status_code == 503 and up.json()["error"] == "locked"
    assert up.headers["retry-after"] == "1"
    assert service.http.get("/v1/items/while_locked").status_code == 404  # a failed upload writes nothing


def test_health_ready_docs(service: Service) -> None:
    assert service.http.get("/healthz").json() == {"status": "alive"}
    ready = service.http.get("/readyz").json()
    assert ready["ready"] is True and ready["index"]["reachable"] is True
    assert ready["models"] == {"clip": "unavailable", "text": "loaded", "asr": "loaded"}  # CLIP weights absent
    assert service.http.get("/docs").status_code == 200
    paths = service.http.get("/openapi.json").json()["paths"]
    assert {"/v1/items", "/v1/items/{item_id}", "/v1/search", "/healthz", "/readyz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/items"]["post"]["requestBody"]["content"]


def test_upload_search_get_delete(service: Service, clips: list[dict[str, Any]], item_embedder: ItemEmbedder) -> None:
    row = next(r for r in clips if r["item_id"] == "cooking_01")
    r = _row_upload(service, row)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "created" and body["modalities"] == ["caption", "transcript"]
    assert set(body["models"]) == {"minilm-l6-v2", "whisper-tiny-en"}
    assert {"decode_ms", "asr_ms", "text_ms", "fuse_ms", "index_ms", "total_ms"} <= set(body["timings_ms"])
    assert "pasta" in body["transcript"].lower()

    # Online vectors equal the library's (same helpers, same models).
    stored = service.http.get(f"/v1/items/{row['item_id']}", params={"vectors": "true"}).json()
    lib = item_embedder.embed(ItemInput(row["item_id"], row["path"], row["caption"], row["hashtags"]))
    for name in (FUSED, "caption", "transcript"):
        assert np.allclose(stored["vectors"][name], lib.vectors[name], atol=1e-4), name
    assert stored["payload"]["creator_id"] == row["creator_id"] and stored["payload"]["caption"] == row["caption"]

    # Query text is encoded exactly like ItemEmbedder.encode_query: the hit's score is their cosine.
    q = "cooking pasta with tomato sauce"
    hits = service.http.get("/v1/search", params={"q": q, "k": 3}).json()["hits"]
    assert hits[0]["item_id"] == row["item_id"]
    assert hits[0]["score"] == pytest.approx(float(item_embedder.encode_query(q)[FUSED] @ lib.vectors[FUSED]), abs=1e-3)
    assert service.search(q, creator_id="nobody") == []
    assert service.search(q, exclude_ids=[row["item_id"]]) == []

    again = _row_upload(service, row)
    assert again.status_code == 200 and again.json()["status"] == "replaced"

    assert service.http.delete(f"/v1/items/{row['item_id']}").status_code == 401
    assert service.http.delete(f"/v1/items/{row['item_id']}", headers={"X-API-Key": "nope"}).status_code == 403
    d = service.http.delete(f"/v1/items/{row['item_id']}", headers=AUTH)
    assert d.status_code == 200 and d.json() == {"item_id": row["item_id"], "deleted": True}
    assert row["item_id"] not in service.search(q)
    gone = service.http.get(f"/v1/items/{row['item_id']}")
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_item"
    assert service.http.delete(f"/v1/items/{row['item_id']}", headers=AUTH).status_code == 404


def test_bad_input_matrix(service: Service, clips: list[dict[str, Any]], fixtures_dir: Path, tmp_path: Path) -> None:
    good = Path(clips[1]["path"]).read_bytes()
    before = service.count()
    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("empty", service.upload("bad1", b""), 422, "empty"),
        ("truncated", service.upload("bad2", good[: len(good) // 3]), 422, "truncated"),
        ("not a video", service.upload("bad3", b"hello, I am text " * 100), 422, "not_a_video"),
        ("over size", service.upload("bad4", b"\0" * (MAX_BYTES + 200_000)), 413, "too_large"),
        ("over duration", service.upload("bad5", _long_clip(tmp_path / "long.mp4")), 422, "too_long"),
        ("over pixels", service.upload("bad6", (fixtures_dir / "big_frame.mp4").read_bytes()), 422, "too_many_pixels"),
        ("caption too long", service.upload("bad7", good, caption="x" * 301), 422, "caption_too_long"),
        ("nothing to embed", service.upload("bad8", (fixtures_dir / "silent.mp4").read_bytes()), 422, "no_content"),
        ("missing item_id", service.upload(None, good), 422, "missing_field"),
        ("bad metadata JSON", service.upload("bad9", good, metadata="{not json"), 422, "bad_metadata"),
        ("metadata path", service.upload("bad10", good, metadata={"uri": "/etc/passwd"}), 422, "bad_metadata"),
        ("wrong file type", service.upload("bad11", good, ctype="image/png"), 415, "unsupported_media_type"),
        ("missing API key", service.upload("bad12", good, headers={}), 401, "unauthorized"),
        ("wrong API key", service.upload("bad13", good, headers={"X-API-Key": "wrong"}), 403, "forbidden"),
        (
            "not multipart",
            service.http.post("/v1/items", json={"item_id": "bad14", "file": clips[1]["path"]}, headers=AUTH),
            415,
            "unsupported_media_type",
        ),
        (
            "server path instead of a file",
            service.http.post(
                "/v1/items",
                data={"item_id": "bad15", "file": clips[1]["path"]},
                files={"x": ("x", b"", "text/plain")},
                headers=AUTH,
            ),
            422,
            "missing_file",
        ),
        ("empty query", service.http.get("/v1/search", params={"q": " "}), 400, "empty_query"),
        ("bad k", service.http.get("/v1/search", params={"q": "x", "k": 0}), 422, "invalid_request"),
        ("unknown item", service.http.get("/v1/items/nope"), 404, "unknown_item"),
        ("like unknown", service.http.post("/v1/search", json={"like": "nope"}), 404, "unknown_item"),
        ("no route", service.http.get("/v2/whatever"), 404, "not_found"),
    ]
    for name, resp, status, reason in cases:
        assert resp.status_code == status, (name, resp.text)
        assert resp.json() == {"error": reason, "detail": resp.json()["detail"]}, name
    # Size is refused from Content-Length, before the body is read.
    assert cases[3][1].json()["detail"].startswith("request body of")
    assert service.count() == before


def test_backpressure_503_with_retry_after(service: Service) -> None:
    """Past the ingress's max_ongoing_requests + serve.max_queued_requests (4 here) requests are shed, not queued."""
    before = service.count()
    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = list(pool.map(lambda i: service.upload(f"flood{i}", b"not a video at all " * 50), range(48)))
    shed = [r for r in codes if r.status_code == 503]
    assert shed and all(r.headers.get("retry-after") == "1" for r in shed)
    assert {r.status_code for r in codes} <= {422, 503} and service.count() == before


def test_concurrent_uploads_same_ids(service: Service, clips: list[dict[str, Any]]) -> None:
    rows = [r for r in clips if r["caption"]][:8]
    jobs = [(f"conc_{i % 8}", rows[i % 8]) for i in range(20)]  # ids 0-3 three times, 4-7 twice
    before = service.count()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda j: (j[0], _upload_retrying(service, j[1], j[0])), jobs))
    assert all(r.status_code in (200, 201) for _, r in results), [r.text for _, r in results if r.status_code >= 300]
    created = Counter(i for i, r in results if r.status_code == 201)
    assert created == Counter({f"conc_{i}": 1 for i in range(8)})  # exactly one create per id, the rest replace
    assert service.count() == before + 8
    for i in range(8):
        assert service.http.get(f"/v1/items/conc_{i}").status_code == 200


def test_search_by_clip_and_ids(service: Service, clips: list[dict[str, Any]]) -> None:
    rows = [r for r in clips if r["topic"] in ("soccer", "space") and r["caption"]][:4]
    for r in rows:
        assert _row_upload(service, r).status_code in (200, 201)
    target = rows[0]
    by_clip = service.http.post(
        "/v1/search",
        data={"caption": target["caption"], "k": "3"},
        files={"file": ("q.mp4", Path(target["path"]).read_bytes(), "video/mp4")},
    )
    assert by_clip.status_code == 200, by_clip.text
    assert by_clip.json()["hits"][0]["item_id"] == target["item_id"]
    like = service.http.post("/v1/search", json={"like": target["item_id"], "k": 5}).json()["hits"]
    assert like and target["item_id"] not in [h["item_id"] for h in like]
    rec = service.http.post(
        "/v1/search", json={"positive": [target["item_id"]], "negative": [rows[-1]["item_id"]], "k": 5}
    )
    assert rec.status_code == 200 and {h["item_id"] for h in rec.json()["hits"]}.isdisjoint(
        {target["item_id"], rows[-1]["item_id"]}
    )
    bad = service.http.post("/v1/search", json={"like": "a", "positive": ["b"]})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_query"


def test_metrics_and_structured_logs(service: Service) -> None:
    """Prometheus metrics through Ray's exporter and JSON replica logs that carry the item id."""
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = [
        "ray_reelvec_stage_latency_ms_bucket",
        "ray_reelvec_items_indexed",
        "ray_reelvec_rejections",
        "ray_reelvec_batch_size_bucket",
    ]
    deadline, text = time.monotonic() + 40, ""
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    assert 'reason="too_large"' in text and 'method="text.encode_documents"' in text

    logs = list(Path(service.temp_dir).glob("session_latest/logs/serve/replica_*Ingress*.log"))
    records = [json.loads(line) for p in logs for line in p.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("item_id") == "conc_0" and r.get("outcome") in ("created", "replaced") for r in records)


def test_clip_deployment_batches(ray_cluster: dict[str, Any], tiny_clip_card: Path, tmp_path: Path) -> None:
    """The CLIP deployment's batched methods equal the encoder; without weights it reports itself off."""
    from serving.app import ClipDeployment

    on = ClipDeployment.func_or_class(make_config(tmp_path, REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card)))
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8), rng.integers(0, 255, (5, 40, 40, 3), np.uint8)]
    got = asyncio.run(on._encode_frames(clips))
    assert np.allclose(np.stack(got), on.model.encode_frames(clips), atol=1e-5)
    assert np.allclose(asyncio.run(on._encode_text(["a rocket"]))[0], on.model.encode_text(["a rocket"])[0])
    assert on.info().loaded and on.batch_sizes() == {"clip.encode_frames": {2: 1}, "clip.encode_text": {1: 1}}
    on.reconfigure({"max_batch_size": 3, "batch_wait_timeout_s": 0.2})  # Serve's user_config hook
    assert on.encode_frames._get_max_batch_size() == 3 and on.encode_text._get_batch_wait_timeout_s() == 0.2
    off = ClipDeployment.func_or_class(make_config(tmp_path)).info()
    assert not off.loaded and off.version is None and not off.required


@pytest.mark.slow
def test_visual_modality_over_http(service: Service, tiny_clip_card: Path, clips: list[dict[str, Any]]) -> None:
    """A second app with (tiny, random) CLIP weights: frames reach the CLIP replica and vectors equal the library's."""
    from ray import serve

    from serving.app import build_app

    cfg = service.cfg.model_copy(deep=True)
    cfg.models.clip.card = str(tiny_clip_card)
    cfg.index.path = cfg.index.path.parent / "index-clip"
    serve.run(build_app(cfg), name="reelvec-clip", route_prefix="/clip")
    try:
        row = clips[0]
        r = service.http.post(
            "/clip/v1/items",
            data={"item_id": row["item_id"], "caption": row["caption"]},
            files={"file": ("c.mp4", Path(row["path"]).read_bytes(), "video/mp4")},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        assert r.json()["modalities"] == ["visual", "caption", "transcript"] and "clip_ms" in r.json()["timings_ms"]
        emb = ItemEmbedder(cfg)
        try:
            lib = emb.embed(ItemInput(row["item_id"], row["path"], row["caption"]))
            query = emb.encode_query("pasta")
        finally:
            emb.close()
        stored = service.http.get(f"/clip/v1/items/{row['item_id']}", params={"vectors": "true"}).json()
        for name in (FUSED, "visual", "caption"):
            assert np.allclose(stored["vectors"][name], lib.vectors[name], atol=1e-4), name
        hit = service.http.get("/clip/v1/search", params={"q": "pasta", "k": 1}).json()["hits"][0]
        assert hit["score"] == pytest.approx(float(query[FUSED] @ lib.vectors[FUSED]), abs=1e-3)
        visual = service.http.get("/clip/v1/search", params={"q": "pasta", "using": "visual"})
        assert visual.status_code == 200 and visual.json()["hits"][0]["item_id"] == row["item_id"]
    finally:
        serve.delete("reelvec-clip")
