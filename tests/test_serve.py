"""The Ray Serve endpoint end to end: real local Ray + Serve on 127.0.0.1, real clips over HTTP.

One app per module (models load once, a tiny CLIP included so the visual modality runs over HTTP): lifecycle
upload → search → get → delete, the bad-input matrix, auth, backpressure, concurrent uploads of repeated ids,
search by clip / ids, the locked index → 503, metrics and logs. Every test isolates its items (own ids and
creator) so the tests pass in any order. Hostile clients live in `test_http_attacks.py`.
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
from embedder.types import FUSED, DecodedMedia, ItemInput, MediaError, ModelUnavailableError, Probe, StoreError
from embedder.work import Work
from serving.http.errors import ApiError, error_headers, status_for
from tests.conftest import SAMPLES, free_port, make_config

API_KEY = "test-key-123"
AUTH = {"X-API-Key": API_KEY}
MAX_BYTES = 2_000_000
APP = "reelvec-test"
GARBAGE = b"\x00\x01 definitely not a video " * 64


@dataclass
class Service:
    http: httpx.Client  # sends the API key
    anon: httpx.Client  # sends none
    cfg: ReelvecConfig
    temp_dir: str
    locked: dict[str, httpx.Response]

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
        client = self.http if headers is None else self.anon
        return client.post("/v1/items", data=data, files=files, headers=headers)

    def count(self) -> int:
        """Points in the index, asked of the writer directly (the open /readyz tells no counts)."""
        from ray import serve

        return int(serve.get_deployment_handle("IndexWriter", app_name=APP).count.remote().result())

    def search(self, q: str, **params: Any) -> list[str]:
        r = self.http.get("/v1/search", params={"q": q, **params})
        assert r.status_code == 200, r.text
        return [h["item_id"] for h in r.json()["hits"]]


def assert_error(resp: httpx.Response, status: int, reason: str, name: str = "") -> None:
    """A refusal in the one error shape: status, reason, a non-empty detail and the echoed request id."""
    assert resp.status_code == status, (name, resp.status_code, resp.text)
    assert resp.headers.get("content-type") == "application/json", (name, resp.headers, resp.text)
    body = resp.json()
    assert set(body) == {"error", "detail", "request_id"}, (name, body)
    assert body["error"] == reason, (name, body)
    assert body["detail"].strip(), (name, body)
    assert body["request_id"] == resp.headers["x-request-id"], (name, body)


def _row_upload(svc: Service, row: dict[str, Any], item_id: str | None = None, creator: str = "") -> httpx.Response:
    meta = {"hashtags": row["hashtags"], "creator_id": creator or row["creator_id"], "created_at": row["created_at"]}
    return svc.upload(item_id or row["item_id"], Path(row["path"]).read_bytes(), caption=row["caption"], metadata=meta)


def _upload_retrying(svc: Service, row: dict[str, Any], item_id: str, creator: str) -> httpx.Response:
    """What a well-behaved client does: a 503 (shed by admission control) is retried after its Retry-After."""
    for _ in range(60):
        r = _row_upload(svc, row, item_id=item_id, creator=creator)
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
def service(
    ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, tiny_clip_card: Path
) -> Iterator[Service]:
    """The whole app on a free port; the index is held by this process while it starts (→ 503, then released)."""
    from ray import serve

    from index import open_index
    from serving.service import build_app

    tmp = tmp_path_factory.mktemp("serve")
    cfg = make_config(
        tmp,
        REELVEC__LIMITS__MAX_BYTES=str(MAX_BYTES),
        REELVEC__LIMITS__MAX_DURATION_S="10",
        REELVEC__LIMITS__MAX_PIXELS="1000000",
        REELVEC__LIMITS__MAX_CAPTION_CHARS="300",
        REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card),
        REELVEC__SERVE__API_KEY=API_KEY,
        REELVEC__SERVE__MAX_BATCH_SIZE="4",
        REELVEC__SERVE__EXTRA_BODY_READERS="4",
        REELVEC__SERVE__NUM_CPUS_PER_MODEL="0.25",
    )
    spec = embedding_spec(cfg)
    holder = open_index(cfg.index, spec.dims, spec.schema_version)  # another process owns the path: locked
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=120, headers=AUTH)
    anon = httpx.Client(base_url=base, timeout=120)
    svc = Service(http, anon, cfg, ray_cluster["temp_dir"], {})
    # While locked, garbage media must be refused as `locked`: had it been decoded first it would be not_a_video.
    svc.locked["readyz"] = anon.get("/readyz")
    svc.locked["upload"] = svc.upload("while_locked", GARBAGE, caption="pasta")
    svc.locked["clip_search"] = http.post("/v1/search", files={"file": ("q.mp4", GARBAGE, "video/mp4")})
    holder.close()
    deadline = time.monotonic() + 90
    while anon.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, anon.get("/readyz").text
        time.sleep(0.5)
    yield svc
    http.close()
    anon.close()
    serve.delete(APP)
    serve.shutdown()


@pytest.fixture(scope="module")
def lib(service: Service) -> Iterator[ItemEmbedder]:
    """The library pipeline with the service's own config (tiny CLIP included), to compare vectors with."""
    emb = ItemEmbedder(service.cfg)
    yield emb
    emb.close()


def test_error_mapping() -> None:
    cases = [
        (MediaError("too_large", ""), 413),
        (MediaError("truncated", ""), 422),
        (MediaError("not_a_video", ""), 422),
        (MediaError("bad_item_id", ""), 422),
        (MediaError("empty_query", ""), 400),
        (StoreError("unknown_item", ""), 404),
        (StoreError("bad_query", ""), 400),
        (StoreError("locked", ""), 503),
        (StoreError("unreachable", ""), 503),
        (ModelUnavailableError("missing", ""), 503),
        (ApiError("unsupported_media_type", "", 415), 415),
        (ApiError("body_timeout", "", 408), 408),
    ]
    assert [status_for(e) for e, _ in cases] == [status for _, status in cases]
    assert error_headers(503) == {"Retry-After": "1"} and error_headers(422) == {}


def test_deployment_options_follow_config(tmp_path: Path) -> None:
    """Batch capacity fits max_ongoing_requests; edge mode has exactly one index owner; the ingress admits
    far more than its gates hold (slow clients never take /healthz's slot); backpressure is bounded."""
    from serving.http.admission import Admission
    from serving.service import build_app

    cfg = make_config(
        tmp_path,
        REELVEC__SERVE__MAX_BATCH_SIZE="6",
        REELVEC__SERVE__MAX_CONCURRENT_BATCHES="2",
        REELVEC__SERVE__REPLICAS='{"text": 2}',
        REELVEC__SERVE__EXTRA_BODY_READERS="7",
    )
    ingress = build_app(cfg)._bound_deployment
    deps = {ingress.name: ingress}
    bound = [a for a in ingress.init_args if hasattr(a, "_bound_deployment")]
    bound += [a for arg in ingress.init_args if isinstance(arg, dict) for a in arg.values()]
    deps.update({a._bound_deployment.name: a._bound_deployment for a in bound})
    assert deps["step_text"].max_ongoing_requests == 24 and deps["step_text"].num_replicas == 2
    assert deps["step_visual"].max_ongoing_requests == 24 and deps["step_visual"].num_replicas == 1
    assert deps["step_decode"].max_ongoing_requests == 2  # serial: one item decoding, one waiting
    assert deps["step_text"].user_config == {"max_batch_size": 6, "batch_wait_timeout_s": 0.05}
    assert deps["IndexWriter"].num_replicas == 1
    assert deps["step_text"].ray_actor_options["num_cpus"] == cfg.serve.num_cpus_per_model
    admission = next(a for a in ingress.init_args if isinstance(a, Admission))
    assert (admission.media, admission.bodies, admission.anonymous) == (48, 55, 13)
    assert deps["Ingress"].max_ongoing_requests == deps["Ingress"].max_queued_requests == 48 + 55 + 13 + 64


def test_locked_index_is_503_then_ready(service: Service) -> None:
    r = service.locked["readyz"]
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {
        "ready": False,
        "models": {s: "loaded" for s in ("decode", "asr", "ocr", "visual", "text", "thumbs")},
        "index": {"reachable": False, "error": "locked"},
    }
    for name in ("upload", "clip_search"):  # garbage media: `locked`, not `not_a_video`, so nothing was decoded
        assert_error(service.locked[name], 503, "locked", name)
        assert service.locked[name].headers["retry-after"] == "1"
    assert_error(service.http.get("/v1/items/while_locked"), 404, "unknown_item")  # a refused upload wrote nothing


def test_health_ready_docs(service: Service) -> None:
    assert service.anon.get("/healthz").json() == {"status": "alive"}
    ready = service.anon.get("/readyz")  # open without a key, and says nothing internal (no count, no paths)
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "models": {s: "loaded" for s in ("decode", "asr", "ocr", "visual", "text", "thumbs")},
        "index": {"reachable": True},
    }
    assert service.anon.get("/docs").status_code == 200
    doc = service.anon.get("/openapi.json").json()
    paths = doc["paths"]
    assert {"/v1/items", "/v1/items/{item_id}", "/v1/search", "/healthz", "/readyz"} <= set(paths)
    upload = paths["/v1/items"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["caption"]["maxLength"] == 300 and upload["required"] == ["file", "item_id"]
    assert str(MAX_BYTES) in upload["properties"]["file"]["description"]
    assert paths["/v1/items"]["post"]["security"] == [{"apiKey": []}]


def test_auth_required_for_compute_and_stored_content(service: Service) -> None:
    """Without serve.public_read every endpoint that computes or returns stored content needs the key."""
    requests = {
        "get item": lambda c: c.get("/v1/items/anything"),
        "text search": lambda c: c.get("/v1/search", params={"q": "pasta"}),
        "id search": lambda c: c.post("/v1/search", json={"like": "anything"}),
        "clip search": lambda c: c.post("/v1/search", files={"file": ("q.mp4", GARBAGE, "video/mp4")}),
        "upload": lambda c: c.post("/v1/items", data={"item_id": "x"}, files={"file": ("c.mp4", GARBAGE)}),
        "delete": lambda c: c.delete("/v1/items/anything"),
    }
    with httpx.Client(base_url=service.anon.base_url, headers={"X-API-Key": "no"}, timeout=60) as wrong:
        for name, call in requests.items():
            assert_error(call(service.anon), 401, "unauthorized", name)
            # A wrong key with garbage media is 403, not not_a_video: refused before any decode.
            assert_error(call(wrong), 403, "forbidden", name)
    assert service.anon.get("/healthz").status_code == 200 and service.anon.get("/readyz").status_code == 200


def test_upload_search_get_delete(
    service: Service, clips: list[dict[str, Any]], lib: ItemEmbedder, tmp_path: Path
) -> None:
    """The full lifecycle with every modality (tiny CLIP → visual): online vectors equal the library's."""
    row = next(r for r in clips if r["item_id"] == "cooking_01")
    creator = "creator_lifecycle"
    r = _row_upload(service, row, creator=creator)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "created" and body["modalities"][:3] == ["visual", "caption", "transcript"]
    assert {"minilm-l6-v2", "whisper-tiny-en", "tiny-clip-test"} <= set(body["models"])
    assert {"decode_ms", "asr_ms", "clip_ms", "text_ms", "fuse_ms", "index_ms", "total_ms"} <= set(body["timings_ms"])
    assert "pasta" in body["transcript"].lower()

    stored = service.http.get(f"/v1/items/{row['item_id']}").json()
    assert stored["payload"]["creator_id"] == creator and stored["payload"]["caption"] == row["caption"]
    item = lib.embed(ItemInput(row["item_id"], row["path"], row["caption"], row["hashtags"]))
    assert item.modalities == body["modalities"]

    # Query text is encoded exactly like ItemEmbedder.encode_query and the item like ItemEmbedder.embed: each
    # hit's score is the cosine of the library's two vectors (fused, and visual alone).
    q = "cooking pasta with tomato sauce"
    query = lib.encode_query(q)
    hits = service.http.get("/v1/search", params={"q": q, "k": 3, "creator_id": creator}).json()["hits"]
    assert [h["item_id"] for h in hits] == [row["item_id"]]
    assert hits[0]["score"] == pytest.approx(float(query[FUSED] @ item.vectors[FUSED]), abs=1e-3)
    visual = service.http.get("/v1/search", params={"q": q, "using": "visual", "creator_id": creator}).json()
    assert visual["hits"][0]["score"] == pytest.approx(float(query["visual"] @ item.vectors["visual"]), abs=1e-3)
    assert service.search(q, creator_id="nobody") == []
    assert service.search(q, creator_id=creator, exclude_ids=[row["item_id"]]) == []

    # a re-encoded, trimmed copy under a new id: stored, and flagged as a re-upload of the original
    import sys

    sys.path.insert(0, str(SAMPLES))
    from variants import make_variants

    trimmed = make_variants(Path(row["path"]), tmp_path)["trim"]
    dup = service.upload("lifecycle_reupload", trimmed.read_bytes(), caption="another caption entirely")
    assert dup.status_code == 201, dup.text
    got = dup.json()
    assert got["duplicate_of"] == row["item_id"] and got["duplicate_score"] >= 0.7 and got["remix_of"] is None
    assert got["relation"]["kind"] == "duplicate_of" and got["relation"]["segments"], got["relation"]
    assert service.http.delete("/v1/items/lifecycle_reupload").status_code == 200

    moment = service.http.get("/v1/search", params={"q": q, "k": 1, "creator_id": creator, "moments": "true"})
    m = moment.json()["hits"][0]["moment"]
    assert m["source"] == "transcript" and "tomato" in m["text"].lower()
    assert 0 <= m["start_s"] < m["end_s"] <= body["duration_s"] + 0.5
    rrf = service.http.get("/v1/search", params={"q": q, "k": 3, "creator_id": creator, "fusion": "rrf"}).json()
    assert rrf.get("using") == "rrf" and [h["item_id"] for h in rrf["hits"]] == [row["item_id"]], rrf

    again = _row_upload(service, row, creator=creator)
    assert again.status_code == 200 and again.json()["status"] == "replaced"

    assert_error(service.anon.delete(f"/v1/items/{row['item_id']}"), 401, "unauthorized")
    d = service.http.delete(f"/v1/items/{row['item_id']}")
    assert d.status_code == 200 and d.json() == {"item_id": row["item_id"], "deleted": True}
    assert service.search(q, creator_id=creator) == []
    assert_error(service.http.get(f"/v1/items/{row['item_id']}"), 404, "unknown_item")
    assert_error(service.http.delete(f"/v1/items/{row['item_id']}"), 404, "unknown_item")


def test_get_item_vectors_equal_library(service: Service, clips: list[dict[str, Any]], lib: ItemEmbedder) -> None:
    """`?vectors=true` returns every stored vector; the dense ones equal the library's embedding."""
    row = next(r for r in clips if r["item_id"] == "space_01")
    assert _row_upload(service, row, item_id="vectors_item", creator="creator_vectors").status_code in (200, 201)
    got = service.http.get("/v1/items/vectors_item", params={"vectors": "true"})
    assert got.status_code == 200, got.text
    item = lib.embed(ItemInput("vectors_item", row["path"], row["caption"], row["hashtags"]))
    for name in (FUSED, *item.modalities):
        assert np.allclose(got.json()["vectors"][name], item.vectors[name], atol=1e-4), name


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
        ("missing item_id", service.upload(None, good), 422, "missing_field"),
        ("bad item id", service.upload("a/b", good), 422, "bad_item_id"),
        ("bad metadata JSON", service.upload("bad9", good, metadata="{not json"), 422, "bad_metadata"),
        ("metadata path", service.upload("bad10", good, metadata={"uri": "/etc/passwd"}), 422, "bad_metadata"),
        ("wrong file type", service.upload("bad11", good, ctype="image/png"), 415, "unsupported_media_type"),
        (
            "not multipart",
            service.http.post("/v1/items", json={"item_id": "bad14", "file": clips[1]["path"]}),
            415,
            "unsupported_media_type",
        ),
        (
            "server path instead of a file",
            service.http.post(
                "/v1/items", data={"item_id": "bad15", "file": clips[1]["path"]}, files={"x": ("x", b"", "text/plain")}
            ),
            422,
            "missing_file",
        ),
        ("empty query", service.http.get("/v1/search", params={"q": " "}), 400, "empty_query"),
        ("bad k", service.http.get("/v1/search", params={"q": "x", "k": 0}), 400, "bad_query"),
        ("bad k (JSON)", service.http.post("/v1/search", json={"like": "x", "k": 0}), 400, "bad_query"),
        ("unknown item", service.http.get("/v1/items/nope"), 404, "unknown_item"),
        ("like unknown", service.http.post("/v1/search", json={"like": "nope"}), 404, "unknown_item"),
        ("no route", service.http.get("/v2/whatever"), 404, "not_found"),
    ]
    for name, resp, status, reason in cases:
        assert_error(resp, status, reason, name)
    # Size is refused from Content-Length, before the body is read; the client's own limits are named.
    assert cases[3][1].json()["detail"].startswith("request body of")
    assert "limits.max_caption_chars=300" in cases[6][1].json()["detail"]
    assert service.count() == before


def test_backpressure_503_with_retry_after(service: Service) -> None:
    """Past the ingress's upload slots (16 here) uploads are shed with a JSON 503 + Retry-After, not queued."""
    before = service.count()
    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = list(pool.map(lambda i: service.upload(f"flood{i}", GARBAGE * 8), range(48)))
    shed = [r for r in codes if r.status_code == 503]
    assert shed and {r.status_code for r in codes} <= {422, 503} and service.count() == before
    for r in shed:
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
    assert service.anon.get("/healthz").status_code == 200


def test_concurrent_uploads_same_ids(service: Service, clips: list[dict[str, Any]]) -> None:
    rows = [r for r in clips if r["caption"]][:8]
    jobs = [(f"conc_{i % 8}", rows[i % 8]) for i in range(20)]  # ids 0-3 three times, 4-7 twice
    before = service.count()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda j: (j[0], _upload_retrying(service, j[1], j[0], "creator_conc")), jobs))
    assert all(r.status_code in (200, 201) for _, r in results), [r.text for _, r in results if r.status_code >= 300]
    created = Counter(i for i, r in results if r.status_code == 201)
    assert created == Counter({f"conc_{i}": 1 for i in range(8)})  # exactly one create per id, the rest replace
    assert service.count() == before + 8
    for i in range(8):
        assert service.http.get(f"/v1/items/conc_{i}").status_code == 200


def test_search_by_clip_and_ids(service: Service, clips: list[dict[str, Any]]) -> None:
    rows = [r for r in clips if r["topic"] in ("soccer", "space") and r["caption"]][:4]
    creator = "creator_by_clip"
    for r in rows:
        assert _row_upload(service, r, item_id=f"bc_{r['item_id']}", creator=creator).status_code in (200, 201)
    target = rows[0]
    tid = f"bc_{target['item_id']}"
    by_clip = service.http.post(
        "/v1/search",
        data={"caption": target["caption"], "k": "3", "filters": json.dumps({"creator_id": creator})},
        files={"file": ("q.mp4", Path(target["path"]).read_bytes(), "video/mp4")},
    )
    assert by_clip.status_code == 200, by_clip.text
    assert by_clip.json()["hits"][0]["item_id"] == tid
    like = service.http.post("/v1/search", json={"like": tid, "k": 5, "creator_id": creator}).json()["hits"]
    assert like and tid not in [h["item_id"] for h in like]
    assert {h["creator_id"] for h in like} == {creator}
    last = f"bc_{rows[-1]['item_id']}"
    rec = service.http.post("/v1/search", json={"positive": [tid], "negative": [last], "k": 5, "creator_id": creator})
    assert rec.status_code == 200 and {h["item_id"] for h in rec.json()["hits"]}.isdisjoint({tid, last})
    assert_error(service.http.post("/v1/search", json={"like": "a", "positive": ["b"]}), 400, "bad_query")


def test_metrics_and_structured_logs(service: Service, clips: list[dict[str, Any]]) -> None:
    """Prometheus metrics through Ray's exporter, and JSON replica logs carrying the item and request ids."""
    import ray

    row = next(r for r in clips if r["caption"])
    ok = _row_upload(service, row, item_id="metrics_item", creator="creator_metrics")
    assert ok.status_code in (200, 201), ok.text
    too_big = service.upload("metrics_big", b"\0" * (MAX_BYTES + 200_000))
    assert_error(too_big, 413, "too_large")

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = [
        "ray_reelvec_stage_latency_ms_bucket",
        "ray_reelvec_items_indexed",
        "ray_reelvec_rejections",
        "ray_reelvec_batch_size_bucket",
        'reason="too_large"',
        'method="text.run"',
        'stage="decode_replica"',
    ]
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    assert [w for w in wanted if w not in text] == []

    logs = list(Path(service.temp_dir).glob("session_latest/logs/serve/replica_*Ingress*.log"))
    records = [json.loads(line) for p in logs for line in p.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("item_id") == "metrics_item" and r.get("outcome") in ("created", "replaced") for r in records)
    rid = too_big.headers["x-request-id"]
    assert any(r.get("request_id") == rid and r.get("reason") == "too_large" for r in records)


def test_step_deployment_batches(ray_cluster: dict[str, Any], tiny_clip_card: Path, tmp_path: Path) -> None:
    """The generic step deployment, as the visual step: batched methods equal the encoder; media sent by
    reference are fetched by the replica; without weights it reports itself off."""
    import ray

    from embedder.steps import GRAPH
    from serving.graph_serve import StepDeployment

    cfg = make_config(tmp_path, REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card))
    on = StepDeployment.func_or_class(cfg, GRAPH, "visual")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8), rng.integers(0, 255, (5, 40, 40, 3), np.uint8)]
    probe = Probe(1.0, 3.0, 64, 48, 3, False, "h264", 1)
    works = [
        Work(ItemInput(f"w{i}", b""), DecodedMedia(probe, f, [0.0] * len(f), list(range(len(f))), None, "pyav", len(f)))
        for i, f in enumerate(frames)
    ]
    works[1] = works[1].with_media({"frames": ray.put(frames[1])})  # by reference, as from the decode replica
    got = asyncio.run(on._run(works))
    assert np.allclose(np.stack([w.vectors["visual"] for w in got]), on.model.encode_frames(frames), atol=1e-5)
    assert all(not w.decoded.frames.size for w in got)  # nothing heavy travels back
    query = asyncio.run(on._encode_query(["a rocket"]))[0]
    assert np.allclose(query["visual"], on.model.encode_text(["a rocket"])[0])
    assert on.info().loaded and on.batch_sizes() == {"visual.run": {2: 1}, "visual.encode_query": {1: 1}}
    on.reconfigure({"max_batch_size": 3, "batch_wait_timeout_s": 0.2})  # Serve's user_config hook
    assert on.run._get_max_batch_size() == 3 and on.encode_query._get_batch_wait_timeout_s() == 0.2
    off = StepDeployment.func_or_class(make_config(tmp_path), GRAPH, "visual").info()
    assert not off.loaded and off.version is None and not off.required
