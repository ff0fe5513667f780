"""The 4/4 features through the real CLI on real clips and Qdrant Edge: re-upload detection (flag and reject),
`dups`, moment search, semantic IDs (`fit`, `show`, new ingests) and `eval`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import CLIPS, SAMPLES, temp_env

sys.path.insert(0, str(SAMPLES))
from variants import make_variants

runner = CliRunner()
FOLDER_CLIPS = ["cooking_01", "cooking_02", "soccer_01", "space_04", "cooking_text_01"]


def run(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, [*args, "--json"], env=env)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Five sample clips (with their sidecar rows) ingested through the CLI into a fresh index."""
    tmp = tmp_path_factory.mktemp("cli-features")
    folder = tmp / "clips"
    folder.mkdir()
    rows = [json.loads(x) for x in (CLIPS / "captions.jsonl").read_text().splitlines() if x.strip()]
    with open(folder / "captions.jsonl", "w") as f:
        for r in rows:
            if r["item_id"] in FOLDER_CLIPS:
                shutil.copy(CLIPS / r["file"], folder / r["file"])
                f.write(json.dumps(r) + "\n")
    e = temp_env(tmp)
    r = run(e, "ingest", str(folder))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sorted(json.loads(r.stdout)["created"]) == sorted(FOLDER_CLIPS)
    e["_variants"] = str(tmp / "variants")
    return e


def test_reupload_flagged_listed_and_rejected(env: dict[str, str]) -> None:
    variants = make_variants(CLIPS / "cooking_01.mp4", Path(env["_variants"]))
    r = run(env, "ingest", str(variants["trim"]), "--id", "reup_trim", "--caption", "totally different words")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    rel = out["relations"]["reup_trim"]
    assert out["created"] == ["reup_trim"] and (rel["kind"], rel["of"]) == ("duplicate_of", "cooking_01")
    assert rel["segments"] and rel["segments"][0]["stored_s"][0] >= 0.5  # the trim cut the original's first second
    shown = json.loads(run(env, "show", "reup_trim").stdout)
    assert shown["payload"]["duplicate_of"] == "cooking_01"
    assert json.loads(run(env, "show", "cooking_02").stdout)["payload"]["duplicate_of"] is None  # same topic

    groups = json.loads(run(env, "dups").stdout)["groups"]
    assert ["cooking_01", "reup_trim"] in groups and all("cooking_02" not in g for g in groups)

    rej = runner.invoke(
        app,
        ["ingest", str(variants["mirror"]), "--id", "reup_mirror", "--json"],
        env={**env, "REELVEC__DEDUP__POLICY": "reject"},
    )
    assert rej.exit_code == 2
    failed = json.loads(rej.stdout)["failed"]
    assert [(f["item_id"], f["reason"]) for f in failed] == [("reup_mirror", "duplicate")]
    assert "cooking_01" in failed[0]["detail"]
    assert run(env, "show", "reup_mirror").exit_code == 2  # nothing was written

    human = runner.invoke(app, ["ingest", str(variants["reencode"]), "--id", "reup_small"], env=env)
    assert human.exit_code == 0 and "duplicate_of" in human.stdout and "reup_small → cooking_01" in human.stdout
    sounds = json.loads(run(env, "sounds", "cooking_01").stdout)
    assert {s["item_id"] for s in sounds["sounds"]} == {"reup_trim", "reup_small"}  # copies carry its sound
    assert all(s["audio_score"] > 0 and s["segments"] for s in sounds["sounds"])
    assert run(env, "sounds", "no_such_item").exit_code == 2


def test_moments_from_the_transcript_segment(env: dict[str, str]) -> None:
    r = run(env, "search", "cooking pasta with fresh tomato sauce", "--moments", "-k", "2")
    assert r.exit_code == 0, r.stdout + r.stderr
    hits = json.loads(r.stdout)
    assert hits[0]["item_id"] == "cooking_01"
    m = hits[0]["moment"]
    assert m["source"] == "transcript" and "tomato" in m["text"].lower()
    assert 0 <= m["start_s"] < m["end_s"] <= hits[0]["duration_s"] + 0.5
    rrf = json.loads(run(env, "search", "cooking pasta with fresh tomato sauce", "--fusion", "rrf").stdout)
    assert rrf[0]["item_id"] == "cooking_01"


def test_semantic_ids_fit_show_and_new_ingests(env: dict[str, str]) -> None:
    r = run(env, "semantic-ids", "fit", "--levels", "3", "--codebook", "4")
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["levels"] == 3 and report["items"] >= len(FOLDER_CLIPS)
    sid = json.loads(run(env, "show", "soccer_01").stdout)["payload"]["semantic_id"]
    assert isinstance(sid, list) and len(sid) == 3
    new = run(env, "ingest", str(CLIPS / "ocean_01.mp4"), "--id", "after_fit")
    assert new.exit_code == 0, new.stdout + new.stderr
    assert len(json.loads(run(env, "show", "after_fit").stdout)["payload"]["semantic_id"]) == 3


def test_eval_scores_the_live_version(env: dict[str, str], tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps({"query": "cooking pasta with tomato sauce", "expected": ["cooking_01"]})
        + "\n"
        + json.dumps({"query": "a telescope looking at saturn", "expected": ["space_04"]})
        + "\n"
    )
    r = run(env, "eval", "--queries", str(q), "-k", "2")
    assert r.exit_code == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["k"] == 2 and res["recall"] == 1.0 and len(res["queries"]) == 2
    bad = run(env, "eval", "--queries", str(tmp_path / "missing.jsonl"))
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error"] == "no_eval_queries"
