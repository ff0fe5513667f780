"""`reelvec ingest/search/recommend/show/delete/stats/alias` on real sample media and Qdrant Edge on a temp path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import CLIPS, ROOT, temp_env

runner = CliRunner()
# Every committed sample clip has a captions.jsonl row.
N_CLIPS = sum(1 for line in (CLIPS / "captions.jsonl").read_text().splitlines() if line.strip())
# test_ingest_is_idempotent re-ingests this one as a single file: no sidecar date or attributes afterwards.
REINGESTED = "soccer_01"


def run(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, [*args, "--json"], env=env)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The sample clips ingested once through the CLI (folder + captions.jsonl sidecar)."""
    env = temp_env(tmp_path_factory.mktemp("cli-index"))
    r = run(env, "ingest", str(CLIPS))
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert len(out["created"]) == N_CLIPS and out["count"] == N_CLIPS and not out["failed"]
    return env


def count(env: dict[str, str]) -> int:
    r = run(env, "stats")
    assert r.exit_code == 0, r.stderr
    return int(json.loads(r.stdout)["count"])


def test_ingest_is_idempotent(indexed: dict[str, str]) -> None:
    r = run(
        indexed,
        "ingest",
        str(CLIPS / "soccer_01.mp4"),
        "--id",
        "soccer_01",
        "--caption",
        "Last minute winner, what a finish!",
        "--creator",
        "creator_b",
        "--hashtag",
        "soccer",
    )
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replaced"] == ["soccer_01"] and out["created"] == [] and out["count"] == N_CLIPS
    assert count(indexed) == N_CLIPS


def test_stats_json(indexed: dict[str, str]) -> None:
    info = json.loads(run(indexed, "stats").stdout)
    assert info["count"] == N_CLIPS and info["alias"] == "reelvec" and info["backend"] == "edge"
    assert info["active_version"] == info["schema_version"] and info["versions"] == [info["schema_version"]]


@pytest.mark.parametrize(
    ("query", "topic"),
    [("cooking pasta with tomato sauce", "cooking"), ("football match goal", "soccer"), ("rocket in space", "space")],
)
def test_text_search_finds_topic(indexed: dict[str, str], clips: list[dict[str, Any]], query: str, topic: str) -> None:
    r = run(indexed, "search", query, "-k", "3")
    assert r.exit_code == 0, r.stderr
    hits = json.loads(r.stdout)
    topics = {c["item_id"]: c["topic"] for c in clips}
    assert topics[hits[0]["item_id"]] == topic
    assert hits[0]["score"] >= hits[-1]["score"] and {"item_id", "score", "caption"} <= set(hits[0])


def test_video_search_finds_same_clip(indexed: dict[str, str]) -> None:
    r = run(indexed, "search", "--video", str(CLIPS / "ocean_02.mp4"), "-k", "2")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)[0]["item_id"] == "ocean_02"


def test_like_and_filters(indexed: dict[str, str], clips: list[dict[str, Any]]) -> None:
    hits = json.loads(run(indexed, "search", "--like", "cooking_01", "-k", "15").stdout)
    ids = [h["item_id"] for h in hits]
    assert "cooking_01" not in ids and len(ids) == 15
    hits = json.loads(run(indexed, "search", "--like", "cooking_01", "--creator", "creator_b", "-k", "100").stdout)
    want = {c["item_id"] for c in clips if c["creator_id"] == "creator_b"} - {"cooking_01"}
    assert {h["item_id"] for h in hits} == want
    hits = json.loads(run(indexed, "search", "cooking", "--since", "2026-11-05", "--until", "2026-11-07").stdout)
    assert hits and all("2026-11-05" <= h["created_at"][:10] < "2026-11-07" for h in hits)
    hits = json.loads(run(indexed, "search", "cooking", "--exclude", "cooking_01", "--exclude", "cooking_02").stdout)
    assert not {"cooking_01", "cooking_02"} & {h["item_id"] for h in hits}


def test_recommend_prefers_positive_topic(indexed: dict[str, str], clips: list[dict[str, Any]]) -> None:
    topics = {c["item_id"]: c["topic"] for c in clips}
    r = run(indexed, "recommend", "-p", "space_01,space_02", "-n", "cooking_01", "-k", str(N_CLIPS))
    assert r.exit_code == 0, r.stderr
    ids = [h["item_id"] for h in json.loads(r.stdout)]
    assert not {"space_01", "space_02", "cooking_01"} & set(ids)
    rank = {i: n for n, i in enumerate(ids)}
    # The original topic clips (`<topic>_0N`); the `_text_`/`_agree_`/`_noisycap_` variants were added for the OCR
    # and caption tests and are not held to this order.
    spoken = [i for i in ids if re.fullmatch(r"[a-z]+_0\d", i)]
    space = [rank[i] for i in spoken if topics[i] == "space"]
    cooking = [rank[i] for i in spoken if topics[i] == "cooking"]
    assert max(space) < min(cooking)


def test_bad_queries_exit_2_and_leave_index(indexed: dict[str, str]) -> None:
    cases = [
        (["search", ""], "bad_query"),
        (["search", "pasta", "-k", "0"], "bad_query"),
        (["search"], "bad_query"),
        (["search", "--like", "no_such_item"], "unknown_item"),
        (["recommend", "-p", "no_such_item"], "unknown_item"),
        (["delete", "no_such_item", "cooking_01"], "unknown_item"),
        (["search", "pasta", "--since", "yesterday"], "bad_query"),
        (["ingest", str(ROOT / "samples/fixtures/speech.wav")], None),
    ]
    for args, reason in cases:
        r = run(indexed, *args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        if reason:
            assert json.loads(r.stdout)["error"] == reason, args
    assert count(indexed) == N_CLIPS  # delete with one unknown id deleted nothing


def test_delete_then_gone(tmp_path: Path) -> None:
    env = temp_env(tmp_path)
    assert run(env, "ingest", str(CLIPS / "space_01.mp4"), str(CLIPS / "space_02.mp4")).exit_code == 0
    r = run(env, "delete", "space_01")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"deleted": 1, "count": 1}
    assert json.loads(run(env, "search", "--like", "space_01").stdout)["error"] == "unknown_item"
    assert [h["item_id"] for h in json.loads(run(env, "search", "rocket").stdout)] == ["space_02"]


def test_locked_index_is_clear_error(tmp_path: Path) -> None:
    env = temp_env(tmp_path)
    assert run(env, "ingest", str(CLIPS / "ocean_01.mp4")).exit_code == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from embedder.config import load_config; from embedder.pipeline import embedding_spec;"
            "from index import open_index; cfg = load_config(); s = embedding_spec(cfg);"
            "ix = open_index(cfg.index, s.dims, s.schema_version); print('open', flush=True); time.sleep(120)",
        ],
        env={**__import__("os").environ, **env},
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        r = run(env, "ingest", str(CLIPS / "ocean_02.mp4"))
        assert r.exit_code == 4 and json.loads(r.stdout)["error"] == "locked"
        assert "another process" in json.loads(r.stdout)["detail"]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    assert count(env) == 1  # the locked attempt wrote nothing


def test_alias_switch_and_unknown_version(indexed: dict[str, str]) -> None:
    info = json.loads(run(indexed, "stats").stdout)
    r = run(indexed, "alias", "v-nope")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "unknown_version"
    r = run(indexed, "alias", info["active_version"])
    assert r.exit_code == 0 and json.loads(r.stdout)["to"] == info["active_version"]


def test_until_is_exclusive_and_since_inclusive(indexed: dict[str, str], clips: list[dict[str, Any]]) -> None:
    when = {c["item_id"]: c["created_at"] for c in clips if c["item_id"] != REINGESTED}
    edge = when["cooking_04"]  # 2026-11-07T12:00:00Z, shared with ocean_04
    at_edge = {i for i, t in when.items() if t == edge}
    before = {h["item_id"] for h in json.loads(run(indexed, "search", "cooking", "--until", edge, "-k", "100").stdout)}
    after = {h["item_id"] for h in json.loads(run(indexed, "search", "cooking", "--since", edge, "-k", "100").stdout)}
    assert at_edge <= after and not at_edge & before
    assert (before | after) - {REINGESTED} == set(when) and not before & after


def test_sidecar_extra_keys_are_kept_as_metadata(indexed: dict[str, str], clips: list[dict[str, Any]]) -> None:
    hits = json.loads(run(indexed, "search", "--like", "space_01", "-k", "100").stdout)
    rows = {c["item_id"]: c for c in clips}
    assert len(hits) == N_CLIPS - 1
    for h in (h for h in hits if h["item_id"] != REINGESTED):
        row = rows[h["item_id"]]
        assert h["metadata"]["topic"] == row["topic"] and h["metadata"]["audio"] == row["audio"]
        assert "overlay" not in h["metadata"]  # a list is not a scalar attribute


def test_show_prints_the_stored_item(indexed: dict[str, str], clips: list[dict[str, Any]]) -> None:
    row = next(c for c in clips if c["item_id"] == "cooking_02")
    r = run(indexed, "show", "cooking_02")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    payload = doc["payload"]
    assert doc["item_id"] == "cooking_02" and doc["vectors"] is None
    assert payload["caption"] == row["caption"] and payload["creator_id"] == row["creator_id"]
    assert {"caption", "transcript"} <= set(payload["modalities"])
    assert "onion" in payload["transcript"].lower()  # said: "Cut the onions and carrots…"
    assert set(payload["models"]) >= {"minilm-l6-v2", "whisper-tiny-en"}
    assert "clip-vit-b-32-laion2b" in payload["models_unavailable"]
    assert payload["schema_version"] == json.loads(run(indexed, "stats").stdout)["schema_version"]
    assert {"ocr_text", "metadata", "created_at"} <= set(payload)
    with_vectors = json.loads(run(indexed, "show", "cooking_02", "--vectors").stdout)["vectors"]
    assert set(with_vectors) >= {"fused", "caption"} and len(with_vectors["caption"]) == 384
    human = runner.invoke(app, ["show", "cooking_02", "--vectors"], env=indexed)
    assert human.exit_code == 0 and row["caption"] in human.stdout and "shape=(384,)" in human.stdout
    for bad, reason in (("no_such_item", "unknown_item"), ("a/b", "bad_item_id")):
        r = run(indexed, "show", bad)
        assert r.exit_code == 2 and json.loads(r.stdout)["error"] == reason
