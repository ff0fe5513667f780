"""The three ways in agree: `reelvec ingest` (ItemEmbedder in-process), the HTTP endpoint (one Serve app) and the
Ray Data backfill store the same vectors (every named vector, `ocr` included) for the same good items, and give
the same error reason for the same bad inputs. Each path writes its own index on the session cluster. ASR runs in
its deterministic mode here (`EXACT_ASR`); test_pipeline bounds what the default `pack` changes with the batch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from embedder.config import ReelvecConfig
from embedder.pipeline import embedding_spec
from index.base import StoredItem
from serving.backfill import run_backfill
from serving.cli import app
from tests.conftest import EXACT_ASR, SAMPLES, free_port, make_config, temp_env

# Speech + caption; speech, no caption; on-screen text over music; on-screen text, no audio; everything at once.
GOOD = ("cooking_01", "cooking_04", "cooking_text_01", "soccer_text_02", "cooking_agree_01")
# Payload fields every path must store identically (timings and decoder bookkeeping may differ).
SAME_PAYLOAD = ("caption", "hashtags", "creator_id", "created_at", "transcript", "ocr_text", "modalities", "models")


@dataclass
class Bad:
    """One bad input, as each path receives it."""

    item_id: str
    media: str  # file name under the test's media folder
    caption: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _bad_cases(limit: int) -> list[Bad]:
    return [
        Bad("bad/slash", "good.mp4", reason="bad_item_id"),
        Bad("bad-meta", "good.mp4", metadata={"hashtags": "not a list"}, reason="bad_metadata"),
        Bad("bad-caption", "good.mp4", caption="y" * (limit + 1), reason="caption_too_long"),
        Bad("bad-truncated", "truncated.mp4", reason="truncated"),
        Bad("bad-notvideo", "notes.mp4", reason="not_a_video"),
        Bad("bad-nothing", "silent.mp4", reason="no_content"),
    ]


@dataclass
class Paths:
    """What each path stored for the good items and answered for the bad ones."""

    stored: dict[str, dict[str, StoredItem]]  # path -> item id -> stored point
    reasons: dict[str, dict[str, str]]  # path -> bad item id -> error reason
    bad: list[Bad]


def _media(tmp: Path) -> Path:
    media = tmp / "media"
    media.mkdir()
    good = (SAMPLES / "clips" / "cooking_01.mp4").read_bytes()
    (media / "good.mp4").write_bytes(good)
    (media / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (media / "notes.mp4").write_text("not a video\n" * 50)
    shutil.copy(SAMPLES / "fixtures" / "silent.mp4", media / "silent.mp4")
    return media


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    return {"hashtags": row["hashtags"], "creator_id": row["creator_id"], "created_at": row["created_at"]}


def _stored(cfg: ReelvecConfig, ids: list[str]) -> dict[str, StoredItem]:
    from index import open_index

    spec = embedding_spec(cfg)
    with open_index(cfg.index, spec.dims, spec.schema_version, create=False) as index:
        return {i: index.get(i) for i in ids}


def _via_cli(tmp: Path, rows: list[dict[str, Any]], media: Path, bad: list[Bad]) -> tuple[dict, dict]:
    """`reelvec ingest FOLDER --json` over one folder whose captions.jsonl sidecar holds the good and bad rows: a bad
    row is reported with its reason and never stops the others."""
    env = temp_env(tmp, **EXACT_ASR)
    folder = tmp / "in"
    folder.mkdir()
    sidecar = []
    for r in rows:
        shutil.copy(r["path"], folder / r["file"])
        sidecar.append({"file": r["file"], "item_id": r["item_id"], "caption": r["caption"], "metadata": _meta(r)})
    for i, b in enumerate(bad):
        row = {"file": f"bad-{i}.mp4", "item_id": b.item_id, "caption": b.caption, "metadata": b.metadata}
        shutil.copy(media / b.media, folder / row["file"])
        sidecar.append(row)
    (folder / "captions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sidecar))
    r = CliRunner().invoke(app, ["ingest", str(folder), "--json"], env=env)
    assert r.exit_code == 2, r.output  # some items failed
    summary = json.loads(r.stdout)
    assert sorted(summary["created"]) == sorted(x["item_id"] for x in rows), summary
    reasons = {f["item_id"]: f["reason"] for f in summary["failed"]}
    return _stored(make_config(tmp), [r["item_id"] for r in rows]), reasons


def _via_http(tmp: Path, rows: list[dict[str, Any]], media: Path, bad: list[Bad]) -> tuple[dict, dict]:
    """One Serve app (`serving.service.build_app`) on a free port of the session cluster; multipart uploads."""
    from ray import serve

    from serving.service import build_app

    cfg = make_config(tmp, **EXACT_ASR)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="reelvec-paths", route_prefix="/")
    reasons: dict[str, str] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:

            def upload(item_id: str, data: bytes, caption: str, meta: dict[str, Any]) -> httpx.Response:
                form = {"item_id": item_id, "caption": caption, "metadata": json.dumps(meta)}
                return http.post("/v1/items", data=form, files={"file": ("clip.mp4", data, "video/mp4")})

            for r in rows:
                resp = upload(r["item_id"], Path(r["path"]).read_bytes(), r["caption"], _meta(r))
                assert resp.status_code in (200, 201), resp.text
            for b in bad:
                resp = upload(b.item_id, (media / b.media).read_bytes(), b.caption, b.metadata)
                assert 400 <= resp.status_code < 500, resp.text
                reasons[b.item_id] = resp.json()["error"]
    finally:
        serve.delete("reelvec-paths")  # the index writer replica lets go of the index
        serve.shutdown()
    return _stored(cfg, [r["item_id"] for r in rows]), reasons


def _via_backfill(tmp: Path, rows: list[dict[str, Any]], media: Path, bad: list[Bad]) -> tuple[dict, dict]:
    """`run_backfill` over a JSONL manifest of the good and bad rows, interleaved."""
    manifest = tmp / "m.jsonl"
    lines = [{"item_id": r["item_id"], "uri": r["path"], "caption": r["caption"], "metadata": _meta(r)} for r in rows]
    for i, b in enumerate(bad):
        row = {"item_id": b.item_id, "uri": str(media / b.media), "caption": b.caption, "metadata": b.metadata}
        lines.insert(2 * i + 1, row)
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    roots = json.dumps([str(SAMPLES), str(media)])
    cfg = make_config(tmp / "data", REELVEC__BACKFILL__ALLOWED_ROOTS=roots, **EXACT_ASR)
    report = run_backfill(cfg, manifest, progress=False, max_failures=len(bad))
    assert report.written == len(rows), report.to_json()
    ledger = [json.loads(x) for x in Path(report.ledger).read_text().splitlines()]
    return _stored(cfg, [r["item_id"] for r in rows]), {x["item_id"]: x["reason"] for x in ledger}


@pytest.fixture(scope="module")
def paths(
    ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, clips: list[dict[str, Any]]
) -> Iterator[Paths]:
    tmp = tmp_path_factory.mktemp("paths")
    media = _media(tmp)
    rows = [c for c in clips if c["item_id"] in GOOD]
    assert len(rows) == len(GOOD)
    bad = _bad_cases(make_config(tmp).limits.max_caption_chars)
    stored, reasons = {}, {}
    for name, run in (("cli", _via_cli), ("http", _via_http), ("backfill", _via_backfill)):
        (tmp / name).mkdir()
        stored[name], reasons[name] = run(tmp / name, rows, media, bad)
    yield Paths(stored, reasons, bad)


def test_same_vectors_on_every_path(paths: Paths) -> None:
    ref = paths.stored["cli"]
    assert any("ocr" in s.vectors for s in ref.values()) and any("transcript" in s.vectors for s in ref.values())
    # Transcripts first: ASR `pack` mode shares one Whisper window between the clips of a batch, so a batch
    # composition that differs by path shows here, word for word, before it shows as a vector mismatch.
    said = {
        (name, i, s.payload.get("transcript"))
        for name, stored in paths.stored.items()
        for i, s in stored.items()
        if s.payload.get("transcript") != ref[i].payload.get("transcript")
    }
    assert not said, sorted(said) + sorted(("cli", i, ref[i].payload.get("transcript")) for _, i, _ in said)
    for name in ("http", "backfill"):
        for item_id, want in ref.items():
            got = paths.stored[name][item_id]
            assert set(got.vectors) == set(want.vectors), (name, item_id)
            for v in want.vectors:
                assert np.allclose(got.vectors[v], want.vectors[v], atol=1e-5), (name, item_id, v)
            for k in SAME_PAYLOAD:
                assert got.payload.get(k) == want.payload.get(k), (name, item_id, k)


def test_same_error_reasons_on_every_path(paths: Paths) -> None:
    expected = {b.item_id: b.reason for b in paths.bad}
    for name, reasons in paths.reasons.items():
        assert reasons == expected, name
