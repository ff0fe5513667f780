"""The browser UI at /ui in a real browser: Debian's chromium driven headless by Playwright (no browser download)
against the real Serve app on 127.0.0.1 (one app start for the module).

The index is seeded in-process before the app starts, exactly as ingest stores items (the thumbnail step puts
`embedder.thumbs.thumbs_payload` into the payload); one item keeps no thumbnails, as items ingested
before that step. Screenshots go to data/test-artifacts/ui/.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from embedder.config import ReelvecConfig
from embedder.thumbs import make_thumbs, pick_frames, thumb_jpeg, thumbs_payload
from embedder.types import ItemFailure
from tests.conftest import CLIPS, free_port, make_config

API_KEY = "ui-test-key"
APP = "reelvec-ui-test"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "data" / "test-artifacts" / "ui"
SEEDED = ("cooking_01", "space_01", "soccer_01", "ocean_02")
COPY = "soccer_01_reupload"  # the same bytes as soccer_01 under another id: a duplicate
NO_THUMBS = "space_01"  # stored without thumbnails, like an item ingested before the thumbnail step


# ---- thumbnails (no browser) ------------------------------------------------------------------------


def test_make_thumbs_small_jpegs_in_time_order() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(8, 224, 398, 3), dtype=np.uint8)
    times = [0.5 * i for i in range(8)]
    jpegs = make_thumbs(frames, times, count=4, size=96)
    assert len(jpegs) == 4 and pick_frames(times, 4) == [0, 2, 5, 7]
    for j in jpegs:
        img = Image.open(io.BytesIO(j))
        assert img.format == "JPEG" and max(img.size) == 96 and img.size == (96, 54)
    assert make_thumbs(frames[:2], times[:2], count=4) and len(make_thumbs(frames[:2], times[:2], count=4)) == 2
    assert make_thumbs(frames, times, count=0) == []
    with pytest.raises(ValueError):
        make_thumbs(frames.astype(np.float32), times)
    with pytest.raises(ValueError):
        make_thumbs(frames, times[:3])


def test_thumbs_payload_round_trip() -> None:
    frames = np.full((5, 120, 90, 3), 200, dtype=np.uint8)
    payload = thumbs_payload(frames, [0.0, 1.0, 2.0, 3.0, 4.0], count=3, size=64)
    assert payload["thumb_times_s"] == [0.0, 2.0, 4.0]
    json.dumps(payload)  # stored as JSON: base64 text only
    jpeg = thumb_jpeg(payload, 2)
    assert jpeg is not None and Image.open(io.BytesIO(jpeg)).size == (48, 64)
    assert thumb_jpeg(payload, 3) is None and thumb_jpeg({}, 0) is None and thumb_jpeg(payload, -1) is None


# ---- the served UI ----------------------------------------------------------------------------------


@dataclass
class UiService:
    base: str
    cfg: ReelvecConfig
    http: httpx.Client
    report_dir: Path


def _seed(cfg: ReelvecConfig, rows: dict[str, dict[str, Any]]) -> None:
    """Embed and store the seeded clips with the library pipeline and the index owner, as ingest does: the
    thumbnail step puts the JPEGs in the payload (one item keeps none, as if ingested before that step)."""
    from embedder.items import build_item
    from embedder.pipeline import ItemEmbedder
    from serving.owner import IndexOwner

    def item(item_id: str, row: dict[str, Any]) -> Any:
        meta = {k: row[k] for k in ("hashtags", "creator_id", "created_at")}
        return build_item(item_id, Path(row["path"]).read_bytes(), cfg.limits, caption=row["caption"], metadata=meta)

    emb = ItemEmbedder(cfg)
    try:
        originals = emb.embed_batch([item(i, rows[i]) for i in SEEDED])
        copy = emb.embed_batch([item(COPY, rows["soccer_01"])])
    finally:
        emb.close()
    for e in [*originals, *copy]:
        assert not isinstance(e, ItemFailure), e
        if e.item_id == NO_THUMBS:
            e.fields.clear()
    with IndexOwner.open(cfg, emb.spec) as owner:
        for batch in (originals, copy):  # the copy is checked against the stored original: duplicate_of
            report = owner.write(batch)  # type: ignore[arg-type]
            assert not report.failed, report.failed


@pytest.fixture(scope="module")
def ui_service(
    ray_cluster: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    tiny_clip_card: Path,
    clips: list[dict[str, Any]],
) -> Iterator[UiService]:
    """The whole app on a free port over a seeded index, with an API key and a report folder of its own."""
    from ray import serve

    from serving.service import build_app

    tmp = tmp_path_factory.mktemp("ui")
    cfg = make_config(
        tmp,
        REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card),
        REELVEC__SERVE__API_KEY=API_KEY,
        REELVEC__SERVE__NUM_CPUS_PER_MODEL="0.25",
        REELVEC__LIMITS__MAX_DURATION_S="30",
        REELVEC__UI__REPORT_DIR=str(tmp / "report"),
    )
    _seed(cfg, {r["item_id"]: r for r in clips})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=120, headers={"X-API-Key": API_KEY})
    deadline = time.monotonic() + 120
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, http.get("/readyz").text
        time.sleep(0.5)
    yield UiService(base, cfg, http, tmp / "report")
    http.close()
    serve.delete(APP)
    serve.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (the Makefile / .ci/run install it when missing)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "chromium is not installed: run `make chromium` (apt-get install -y chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _page(browser: Any, svc: UiService, key: str | None = API_KEY, width: int = 1280, height: int = 900) -> Any:
    """A fresh browser context on /ui; `key` is typed into the key field and saved (as a user would)."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{svc.base}/ui")
    if key is not None:
        page.fill("#api-key", key)
        page.click("#key-form button")
    return page


def _shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _search(page: Any, q: str) -> list[str]:
    page.fill("#q", q)
    page.click("#text-search button[type=submit]")
    page.wait_for_selector("#status:has-text('hit(s)')")
    return page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.itemId)")


def test_text_search_shows_the_right_top_hit(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    hits = _search(page, "cooking pasta with tomato sauce")
    assert hits[0] == "cooking_01", hits
    top = page.locator("#results .hit").first
    assert top.locator(".score").inner_text().startswith("0.")
    assert "caption" in top.locator(".chips").first.inner_text()
    assert "Moment" in top.locator(".moment").inner_text()  # moments are on by default
    top.locator(".strip img").first.wait_for()  # thumbnails from the payload
    assert top.locator(".strip img").count() == ui_service.cfg.ui.thumbs
    bare = page.locator(f"#results .hit[data-item-id='{NO_THUMBS}'] .strip")
    if bare.count():  # an item without thumbnails degrades to a note, not a broken image
        bare.locator(".none:has-text('no thumbnails')").wait_for()
    _shot(page, "search")
    page.context.close()


def test_filters_narrow_the_results(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    page.click("details summary")
    page.fill("input[name=creator_id]", "creator_a")
    hits = _search(page, "a video")
    assert hits == ["cooking_01"], hits
    page.context.close()


def test_item_page_and_more_like_this(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    _search(page, "people playing football on a field")
    page.click(f"#results .hit[data-item-id='{COPY}'] a.id")
    page.wait_for_selector("#view-item h2")
    item = page.locator("#view-item")
    assert item.locator("h2").inner_text() == COPY
    assert "Duplicate of" in item.inner_text() and "soccer_01" in item.locator("dd a").first.inner_text()
    assert item.locator("figure img").count() == ui_service.cfg.ui.thumbs
    assert item.locator("table").count() >= 1  # transcript segments with their times
    assert "Semantic ID" in item.inner_text()
    _shot(page, "item")
    page.click("#view-item button.more")
    page.wait_for_selector("#status:has-text('more like')")
    hits = page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.itemId)")
    assert hits[0] == "soccer_01", hits
    page.context.close()


def test_search_by_uploading_a_clip(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    page.set_input_files("#clip", str(CLIPS / "ocean_02.mp4"))
    page.click("#clip-search button[type=submit]")
    page.wait_for_selector("#status:has-text('hit(s)')")
    hits = page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.itemId)")
    assert hits[0] == "ocean_02", hits
    _shot(page, "clip-search")
    page.context.close()


def test_duplicates_view(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    page.click("nav a[data-view=dups]")
    page.wait_for_selector("#dups .group")
    _shot(page, "duplicates")
    groups = page.eval_on_selector_all("#dups .group", "els => els.map(e => e.innerText)")
    assert any("soccer_01" in g and COPY in g for g in groups), groups
    page.context.close()


def test_eval_report_view(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service)
    page.goto(f"{ui_service.base}/ui#/report")
    page.wait_for_selector("#no-report")
    folder = ui_service.report_dir
    folder.mkdir()
    try:
        png = io.BytesIO()
        Image.new("RGB", (40, 20), (200, 30, 30)).save(png, format="PNG")
        (folder / "recall.png").write_bytes(png.getvalue())
        (folder / "index.html").write_text("<h1>Compare v1 vs v2</h1><img id=plot src='recall.png'>")
        page.reload()
        frame = page.frame_locator("iframe.report")
        assert frame.locator("h1").inner_text() == "Compare v1 vs v2"
        assert frame.locator("#plot").evaluate("img => img.complete && img.naturalWidth") == 40
        _shot(page, "report")
    finally:
        shutil.rmtree(folder)
    page.context.close()


def test_error_states_are_named(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service, key=None)
    page.fill("#q", "rocket launch")
    page.click("#text-search button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").get_attribute("data-status") == "401"
    assert "API key" in page.locator("#error").inner_text()
    _shot(page, "error-401")
    page.fill("#api-key", "wrong")
    page.click("#key-form button")
    page.click("#text-search button[type=submit]")
    page.wait_for_selector("#error[data-status='403']")
    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    page.set_input_files(
        "#clip", files=[{"name": "x.mp4", "mimeType": "video/mp4", "buffer": b"\x00 not a video" * 64}]
    )
    page.click("#clip-search button[type=submit]")
    page.wait_for_selector("#error[data-status='422']")
    assert "Cannot use this input" in page.locator("#error").inner_text()
    # A 503 (index locked, models loading, overload) is hard to cause on cue: the browser answers it itself.
    busy = {"error": "overloaded", "detail": "the service is busy; retry later", "request_id": "r-503"}
    headers = {"Retry-After": "2", "Content-Type": "application/json"}
    page.route("**/v1/search?*", lambda route: route.fulfill(status=503, headers=headers, body=json.dumps(busy)))
    page.click("#text-search button[type=submit]")
    page.wait_for_selector("#error[data-status='503']")
    assert "busy" in page.locator("#error").inner_text() and "Retry in 2 s" in page.locator("#error").inner_text()
    page.context.close()


def test_pages_fit_a_phone(browser: Any, ui_service: UiService) -> None:
    page = _page(browser, ui_service, width=390, height=844)
    _search(page, "rocket launch to the moon")
    overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    card = page.locator("#results .hit").first.bounding_box()
    assert card is not None and card["width"] <= 390
    _shot(page, "phone-search")
    page.click("#results .hit a.id >> nth=0")
    page.wait_for_selector("#view-item h2")
    assert page.evaluate(overflow) <= 0
    _shot(page, "phone-item")
    page.context.close()


def test_ui_routes(ui_service: UiService) -> None:
    anon = httpx.Client(base_url=ui_service.base, timeout=60)
    try:
        page = anon.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
        assert anon.get("/ui/static/app.js").headers["content-type"].startswith(("text/javascript", "application/"))
        assert anon.get("/ui/static/..%2Fui_routes.py").status_code == 404
        assert anon.get("/v1/duplicates").status_code == 401
        assert anon.get("/v1/items/cooking_01/thumbs/0").status_code == 401
        assert anon.get("/v1/items/cooking_01/sounds", params={"k": 0}).status_code == 401  # the key before params
    finally:
        anon.close()
    http = ui_service.http
    r = http.get("/v1/items/cooking_01/thumbs/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == ui_service.cfg.ui.thumb_size
    assert http.get(f"/v1/items/{NO_THUMBS}/thumbs/0").status_code == 404
    assert http.get("/v1/items/cooking_01/thumbs/99").status_code == 404
    assert http.get("/v1/items/nope/thumbs/0").json()["error"] == "unknown_item"
    stored = http.get("/v1/items/cooking_01").json()["payload"]
    assert base64.b64decode(stored["thumbs"][0]) == r.content
    dups = http.get("/v1/duplicates").json()
    assert dups["kinds"] == ["duplicate_of", "remix_of"] and ["soccer_01", COPY] in dups["groups"]
    sounds = http.get("/v1/items/soccer_01/sounds").json()["sounds"]
    assert [s["item_id"] for s in sounds] == [COPY] and sounds[0]["segments"]  # the copy carries its sound
    assert http.get("/v1/items/nope/sounds").json()["error"] == "unknown_item"
    assert http.get("/v1/items/soccer_01/sounds", params={"k": 0}).status_code == 400
    for path, typo in (("/v1/items/soccer_01/sounds", "kk"), ("/v1/duplicates", "threshold"), ("/v1/report", "x")):
        r = http.get(path, params={typo: "3"})
        assert r.status_code == 400 and r.json()["error"] == "unknown_parameter" and typo in r.json()["detail"]
    assert http.get("/v1/report").json() == {"available": False, "files": []}
    assert http.get("/v1/report/index.html").status_code == 404
