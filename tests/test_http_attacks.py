"""Hostile and careless clients against the real Serve app on 127.0.0.1 (one app for the module).

Slow bodies held open on raw sockets, leaks of server internals in error bodies, auth with `public_read`,
unreachable item ids, filter typos, 405 `Allow`, and a bounded Schemathesis run of the OpenAPI contract.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from embedder.pipeline import embedding_spec
from tests.conftest import free_port, make_config

API_KEY = "attack-key-456"
AUTH = {"X-API-Key": API_KEY}
APP = "reelvec-attacks"
BODY_TIMEOUT_S = 2.0
GARBAGE = b"\x00\x01 definitely not a video " * 64
# What no error body may carry: server paths, pids, raw library text, pydantic's links, tracebacks.
LEAKS = ("/tmp", "/work", "pid", "Errno", "pydantic.dev", "Traceback", "decord", "av.error", "qdrant")


@dataclass
class Attacked:
    port: int
    http: httpx.Client  # keyed
    anon: httpx.Client
    temp_dir: str
    clip: bytes
    locked: dict[str, httpx.Response] = field(default_factory=dict)


@pytest.fixture(scope="module")
def svc(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacked]:
    """The app with an API key, open reads (`public_read`) and a short body timeout; locked while it starts."""
    from ray import serve

    from index import open_index
    from serving.service import build_app

    tmp = tmp_path_factory.mktemp("attacks")
    cfg = make_config(
        tmp,
        REELVEC__LIMITS__MAX_BYTES="1000000",
        REELVEC__SERVE__API_KEY=API_KEY,
        REELVEC__SERVE__PUBLIC_READ="true",
        REELVEC__SERVE__BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        REELVEC__SERVE__MAX_BATCH_SIZE="4",
        REELVEC__SERVE__EXTRA_BODY_READERS="4",
        REELVEC__SERVE__NUM_CPUS_PER_MODEL="0.25",
    )
    spec = embedding_spec(cfg)
    holder = open_index(cfg.index, spec.dims, spec.schema_version)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    clip = (Path(__file__).resolve().parent.parent / "samples/clips/cooking_01.mp4").read_bytes()
    out = Attacked(port, httpx.Client(base_url=base, timeout=120, headers=AUTH), httpx.Client(base_url=base), "", clip)
    out.temp_dir = ray_cluster["temp_dir"]
    out.locked["readyz"] = out.anon.get("/readyz")
    out.locked["upload"] = out.http.post("/v1/items", data={"item_id": "x"}, files={"file": ("c.mp4", GARBAGE)})
    holder.close()
    deadline = time.monotonic() + 90
    while out.anon.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, out.anon.get("/readyz").text
        time.sleep(0.5)
    yield out
    out.http.close()
    out.anon.close()
    serve.delete(APP)
    serve.shutdown()


def assert_error(resp: httpx.Response, status: int, reason: str | tuple[str, ...], name: str = "") -> dict[str, Any]:
    """The one error shape (reason one of `reason`), and nothing internal in it."""
    assert resp.status_code == status, (name, resp.status_code, resp.text)
    assert resp.headers.get("content-type") == "application/json", (name, resp.headers, resp.text)
    body = resp.json()
    reasons = reason if isinstance(reason, tuple) else (reason,)
    assert set(body) == {"error", "detail", "request_id"} and body["error"] in reasons, (name, body)
    assert body["request_id"] == resp.headers["x-request-id"] and body["detail"].strip(), (name, body)
    assert not [leak for leak in LEAKS if leak.lower() in resp.text.lower()], (name, resp.text)
    return body


def _upload(svc: Attacked, item_id: str, media: bytes, **headers: str) -> httpx.Response:
    files = {"file": ("clip.mp4", media, "video/mp4")}
    return svc.http.post("/v1/items", data={"item_id": item_id, "caption": "pasta night"}, files=files, headers=headers)


# ---- slow clients ----------------------------------------------------------------------------------------


def _slow(port: int, path: str, headers: dict[str, str], declared: int = 200_000) -> socket.socket:
    """A client that announces `declared` body bytes, sends the start of a multipart body, then stalls."""
    boundary = "slowboundary"
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode() + b"\0" * 1000
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + start)
    return sock


def _response(sock: socket.socket, deadline: float) -> tuple[int, dict[str, Any] | None]:
    """Status and JSON body of the answer on `sock` before `deadline`; 0 when the server closed without one,
    -1 when nothing came in time."""
    data = b""
    try:
        while True:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), None
            )
            if sep and length is not None and len(body) >= length:
                break
    except TimeoutError:
        if not data:
            return -1, None
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    if not data:
        return 0, None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body.startswith(b"{") else None


def test_slow_clients_hold_nothing_that_matters(svc: Attacked) -> None:
    """40 anonymous (public-read) clip searches and 4 keyed uploads stall mid-body, 32 unauthenticated uploads
    stall too: /healthz still answers at once, a keyed upload still works, every stalled client is answered
    (408 after serve.body_timeout_s, or 503/401 at once) and none is left hanging."""
    t0 = time.monotonic()
    anonymous = [_slow(svc.port, "/v1/search", {}) for _ in range(40)]
    keyed = [_slow(svc.port, "/v1/items", AUTH) for _ in range(4)]
    unauthenticated = [_slow(svc.port, "/v1/items", {}) for _ in range(32)]
    time.sleep(0.5)  # let every stalled request reach the ingress

    t = time.monotonic()
    assert svc.anon.get("/healthz", timeout=10).status_code == 200
    assert time.monotonic() - t < 2.0
    ok = _upload(svc, "after_slow_clients", svc.clip)
    assert ok.status_code in (200, 201), ok.text

    deadline = t0 + BODY_TIMEOUT_S + 15  # the 408s are due at ~BODY_TIMEOUT_S; the rest is CPU slack
    anon = [_response(s, deadline) for s in anonymous]
    keyed_out = [_response(s, deadline) for s in keyed]
    unauth = [_response(s, deadline) for s in unauthenticated]
    assert {status for status, _ in unauth} == {401}
    assert {status for status, _ in keyed_out} == {408}
    statuses = [status for status, _ in anon]
    assert set(statuses) <= {408, 503} and 1 <= statuses.count(408) <= 5, statuses  # 5 anonymous body slots
    assert {b["error"] for s, b in anon if s == 503 and b} == {"overloaded"}
    assert {b["error"] for _, b in keyed_out if b} == {"body_timeout"}
    assert svc.anon.get("/healthz", timeout=10).status_code == 200


# ---- leaks -----------------------------------------------------------------------------------------------


def test_error_bodies_leak_nothing(svc: Attacked) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, "PNG")
    ready = svc.locked["readyz"]
    assert ready.status_code == 503 and not [leak for leak in LEAKS if leak.lower() in ready.text.lower()]
    assert ready.json()["index"] == {"reachable": False, "error": "locked"}
    assert_error(svc.locked["upload"], 503, "locked", "locked index")
    garbage = assert_error(_upload(svc, "garbage", GARBAGE), 422, "not_a_video", "garbage")
    # PyAV opens a PNG as a one-frame image stream (then `truncated`) or refuses it (`not_a_video`).
    assert_error(_upload(svc, "png", png.getvalue()), 422, ("truncated", "not_a_video"), "png renamed .mp4")
    assert "k" in assert_error(svc.anon.get("/v1/search?q=x&k=abc"), 400, "bad_query", "pydantic int")["detail"]
    assert_error(svc.anon.get("/v1/search?q=x&since=yesterday"), 400, "bad_query", "pydantic datetime")
    assert_error(
        svc.anon.post("/v1/search", content=b"{nope", headers={"content-type": "application/json"}), 400, "bad_query"
    )
    assert_error(svc.anon.put("/v1/items/x"), 405, "method_not_allowed")
    assert_error(svc.anon.get("/nowhere"), 404, "not_found")

    # The client's request id is echoed when well-formed, replaced when not; the log has the full detail.
    mine = svc.anon.get("/v1/items/nope", headers={"X-Request-ID": "client-id-1"})
    assert mine.headers["x-request-id"] == "client-id-1" and mine.json()["request_id"] == "client-id-1"
    odd = svc.anon.get("/v1/items/nope", headers={"X-Request-ID": "bad id;with/odd chars"})
    ours = odd.json()["request_id"]  # a fresh id, the only one (serving/http/proxy.py drops the client's)
    assert ours != "bad id;with/odd chars" and odd.headers.get_list("x-request-id") == [ours]
    logs = list(Path(svc.temp_dir).glob("session_latest/logs/serve/replica_*Ingress*.log"))
    deadline, mine_logged = time.monotonic() + 20, []
    while not mine_logged and time.monotonic() < deadline:
        records = [json.loads(line) for p in logs for line in p.read_text().splitlines() if line.startswith("{")]
        mine_logged = [r for r in records if r.get("request_id") == garbage["request_id"] and "reason" in r]
        time.sleep(0.5)
    assert mine_logged and mine_logged[0]["reason"] == "not_a_video"
    assert "Invalid data" in mine_logged[0]["message"]  # PyAV's own words: in the log, never in the body


# ---- auth ------------------------------------------------------------------------------------------------


def test_public_read_opens_reads_only(svc: Attacked) -> None:
    assert svc.anon.get("/v1/search", params={"q": "pasta"}).status_code == 200
    assert_error(svc.anon.get("/v1/items/nope"), 404, "unknown_item")
    assert_error(
        svc.anon.post("/v1/items", data={"item_id": "x"}, files={"file": ("c.mp4", GARBAGE)}), 401, "unauthorized"
    )
    assert_error(svc.anon.delete("/v1/items/x"), 401, "unauthorized")
    wrong = {"X-API-Key": "wrong"}
    assert_error(svc.anon.get("/v1/search", params={"q": "pasta"}, headers=wrong), 403, "forbidden")
    paths = svc.anon.get("/openapi.json").json()["paths"]
    assert paths["/v1/items"]["post"]["security"] == [{"apiKey": []}] and "security" not in paths["/v1/search"]["get"]


def test_the_key_is_checked_before_any_parameter(svc: Attacked) -> None:
    """Issue 18: a wrong key is 403 whatever the parameters hold, and a key in the URL is a clear 401."""
    wrong = {"X-API-Key": "wrong"}
    for name, resp in {
        "k=0": svc.anon.get("/v1/search", params={"q": "pasta", "k": 0}, headers=wrong),
        "unknown query": svc.anon.get("/v1/search", params={"q": "pasta", "bogus": 1}, headers=wrong),
        "get unknown": svc.anon.get("/v1/items/x", params={"bogus": 1}, headers=wrong),
        "bad id": svc.anon.get("/v1/items/a%2Fb", headers=wrong),
    }.items():
        assert_error(resp, 403, "forbidden", name)
    for resp in (
        svc.anon.get("/v1/search", params={"q": "pasta", "api_key": API_KEY}),
        svc.anon.delete("/v1/items/x", params={"api_key": API_KEY}),
    ):
        assert "X-API-Key header" in assert_error(resp, 401, "unauthorized", "?api_key=")["detail"]


def test_unknown_form_fields_and_query_parameters_are_named(svc: Attacked) -> None:
    files = {"file": ("c.mp4", svc.clip, "video/mp4")}
    r = svc.http.post("/v1/items", data={"item_id": "typo", "captoin": "pasta"}, files=files)
    assert "captoin" in assert_error(r, 400, "unknown_parameter", "form")["detail"]
    assert "vector" in assert_error(svc.anon.get("/v1/items/x?vector=true"), 400, "unknown_parameter")["detail"]
    assert_error(svc.http.delete("/v1/items/x?force=1"), 400, "unknown_parameter", "delete")
    assert_error(svc.anon.get("/v1/items/typo"), 404, "unknown_item", "nothing was stored")


def test_request_id_is_one_well_formed_header(svc: Attacked) -> None:
    for given in ["<script>alert(1)</script>", "bad id;with/odd chars", "x" * 65]:
        r = svc.anon.get("/v1/items/nope", headers={"X-Request-ID": given})
        ids = r.headers.get_list("x-request-id")
        assert len(ids) == 1 and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", ids[0]), (given, ids)
        assert ids[0] == r.json()["request_id"] and "script" not in r.text
    r = svc.anon.get("/healthz", headers={"X-Request-ID": "fine-id.1"})
    assert r.headers.get_list("x-request-id") == ["fine-id.1"]


def test_hostile_json_is_refused_not_a_crash(svc: Attacked) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    files = {"file": ("c.mp4", svc.clip, "video/mp4")}
    for meta in [deep, '{"attributes": {"a": NaN}}', '{"attributes": {"a": 1e400}}']:
        r = svc.http.post("/v1/items", data={"item_id": "deep", "metadata": meta}, files=files)
        assert_error(r, 422, "bad_metadata", meta[:20])
    clip = {"file": ("q.mp4", GARBAGE, "video/mp4")}
    assert_error(svc.anon.post("/v1/search", data={"filters": deep}, files=clip), 400, "bad_query", "filters")
    body = b'{"like": "a", "exclude_ids": ' + deep.encode() + b"}"
    json_body = {"content-type": "application/json"}
    assert_error(svc.anon.post("/v1/search", content=body, headers=json_body), 400, "bad_query", "json body")


def test_fixed_texts_keep_their_slashes_and_404s_read_alike(svc: Attacked) -> None:
    detail = assert_error(_upload(svc, "a/b", svc.clip), 422, "bad_item_id")["detail"]
    assert "'/'" in detail and "<path>" not in detail
    got = assert_error(svc.anon.get("/v1/items/nope"), 404, "unknown_item")["detail"]
    gone = assert_error(svc.http.delete("/v1/items/nope"), 404, "unknown_item")["detail"]
    assert got == gone and "reelvec" not in got, (got, gone)
    assert_error(svc.http.get("/v1/items/%2E%2E"), 422, "bad_item_id", "..")  # a client would drop a bare ".."
    assert_error(_upload(svc, ".", svc.clip), 422, "bad_item_id", ".")


# ---- item ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a/b", "a\x00b", "a\nb", " lead", "trail ", "back\\slash"])
def test_unreachable_ids_are_refused_everywhere(svc: Attacked, bad: str) -> None:
    enc = quote(bad, safe="")
    calls = {
        "upload": lambda: _upload(svc, bad, svc.clip),
        "get": lambda: svc.http.get(f"/v1/items/{enc}"),
        "delete": lambda: svc.http.delete(f"/v1/items/{enc}"),
        "like": lambda: svc.http.post("/v1/search", json={"like": bad}),
        "positive": lambda: svc.http.post("/v1/search", json={"positive": ["ok", bad]}),
        "exclude": lambda: svc.http.get("/v1/search", params={"q": "pasta", "exclude_ids": bad}),
    }
    for name, call in calls.items():
        assert_error(call(), 422, "bad_item_id", f"{name} {bad!r}")


def test_every_accepted_id_round_trips(svc: Attacked) -> None:
    ids = ["café-ünï 🎬", "a?b#c%d&e=f+g;h,i:j@k!$'()*", "L" * 200 + "ü" * 55 + "🎬"]
    for item_id in ids:
        r = _upload(svc, item_id, svc.clip)
        assert r.status_code in (200, 201) and r.json()["item_id"] == item_id, r.text
        enc = quote(item_id, safe="")
        got = svc.anon.get(f"/v1/items/{enc}")
        assert got.status_code == 200 and got.json()["item_id"] == item_id, got.text
        hits = svc.anon.post("/v1/search", json={"positive": [item_id], "k": 100}).json()["hits"]
        assert item_id not in [h["item_id"] for h in hits]
        deleted = svc.http.delete(f"/v1/items/{enc}")
        assert deleted.status_code == 200 and deleted.json() == {"item_id": item_id, "deleted": True}
        assert_error(svc.anon.get(f"/v1/items/{enc}"), 404, "unknown_item")


# ---- filter typos and the same status for the same mistake ------------------------------------------------


def test_typos_name_the_key_and_get_the_same_status(svc: Attacked) -> None:
    clip = {"file": ("q.mp4", GARBAGE, "video/mp4")}
    typo_form = svc.anon.post("/v1/search", data={"filters": json.dumps({"creatr_id": "c"})}, files=clip)
    assert "creatr_id" in assert_error(typo_form, 400, "bad_query", "form filters")["detail"]
    typo_field = svc.anon.post("/v1/search", data={"kk": "3"}, files=clip)
    assert "kk" in assert_error(typo_field, 400, "bad_query", "form field")["detail"]
    typo_query = svc.anon.get("/v1/search", params={"q": "x", "creatr_id": "c"})
    assert "creatr_id" in assert_error(typo_query, 400, "bad_query", "query")["detail"]
    typo_json = svc.anon.post("/v1/search", json={"like": "x", "creatr_id": "c"})
    assert "creatr_id" in assert_error(typo_json, 400, "bad_query", "json")["detail"]
    for name, resp in {
        "GET": svc.anon.get("/v1/search", params={"q": "x", "k": 0}),
        "JSON": svc.anon.post("/v1/search", json={"like": "x", "k": 0}),
        "form": svc.anon.post("/v1/search", data={"k": "0"}, files=clip),
        "fusion": svc.anon.get("/v1/search", params={"q": "x", "fusion": "max"}),
    }.items():
        assert_error(resp, 400, "bad_query", name)
    empty = svc.anon.get("/v1/search?q=pasta&k=&since=&until=&creator_id=&language=&fusion=&exclude_ids=")
    assert empty.status_code == 200 and empty.json()["k"] == 10, empty.text


# ---- the OpenAPI contract --------------------------------------------------------------------------------


def test_405_names_every_allowed_method(svc: Attacked) -> None:
    for method, path, allowed in [
        ("PUT", "/v1/items/x", {"GET", "DELETE"}),
        ("PATCH", "/v1/search", {"GET", "POST"}),
        ("POST", "/healthz", {"GET"}),
    ]:
        r = svc.anon.request(method, path)
        assert_error(r, 405, "method_not_allowed", path)
        assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers["allow"]
        assert method not in r.headers["allow"]


def test_openapi_states_the_real_constraints(svc: Attacked) -> None:
    from embedder.config import LimitsConfig

    doc = svc.anon.get("/openapi.json").json()
    pattern = f"^(?:{LimitsConfig().item_id_pattern})$"
    upload = doc["paths"]["/v1/items"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["item_id"]["pattern"] == pattern and upload["properties"]["item_id"]["maxLength"] == 256
    assert "1000000" in upload["properties"]["file"]["description"]
    search = doc["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    form = search["multipart/form-data"]["schema"]["properties"]
    assert form["fusion"]["enum"] == ["vector", "rrf", "dbsf"] and (form["k"]["minimum"], form["k"]["maximum"]) == (
        1,
        100,
    )
    assert all(key in form["filters"]["description"] for key in ("creator_id", "since", "exclude_ids"))
    body = search["application/json"]["schema"]
    assert body["additionalProperties"] is False and body["properties"]["positive"]["items"]["pattern"] == pattern
    q = next(p for p in doc["paths"]["/v1/search"]["get"]["parameters"] if p["name"] == "q")
    assert q["required"] is True and q["schema"]["minLength"] == 1, q
    get_item = doc["paths"]["/v1/items/{item_id}"]["get"]["parameters"]
    assert next(p for p in get_item if p["name"] == "item_id")["schema"]["pattern"] == pattern
    assert {"400", "408", "413", "422", "503"} <= set(doc["paths"]["/v1/search"]["post"]["responses"])


def test_schemathesis_contract(svc: Attacked, record_property: Any) -> None:
    """Property-based requests from /openapi.json (fixed seed, ~100 examples): no 5xx, every response as
    documented (status, content type, body schema, Allow). The statuses are recorded for bench/hostile.py."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    base = f"http://127.0.0.1:{svc.port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    seen: list[int] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=12,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            seen.append(case.call_and_validate(base_url=base, headers=AUTH, checks=checks, timeout=60).status_code)

        run()
    record_property("schemathesis_statuses", seen)
    assert len(seen) >= 40 and max(seen) < 500, seen
