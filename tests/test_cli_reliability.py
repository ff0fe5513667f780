"""The CLI under careless input (issue 18): a bad sidecar row never costs the good ones, `-k` has the HTTP cap,
bad versions are bad input (exit 2), and a locked index is reported without its path or holder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import CLIPS, ROOT, free_port, make_config, temp_env

runner = CliRunner()


def run(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, [*args, "--json"], env=env)


def test_ingest_writes_good_sidecar_rows_and_reports_bad_ones(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("good.mp4", "badid.mp4", "deep.mp4"):
        shutil.copy(CLIPS / "cooking_01.mp4", folder / name)
    rows = [
        json.dumps({"file": "good.mp4", "item_id": "good", "caption": "pasta"}),
        json.dumps({"file": "badid.mp4", "item_id": "a/b", "caption": "x"}),
        json.dumps({"file": "deep.mp4", "item_id": "deep", "metadata": "[" * 10_000 + "]" * 10_000}),
        "this line is not JSON",
    ]
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    r = run(temp_env(tmp_path / "data"), "ingest", str(folder))
    assert r.exit_code == 2, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["created"] == ["good"] and out["count"] == 1
    failed = {(f["stage"], f["reason"]) for f in out["failed"]}
    assert failed == {("sidecar", "bad_item_id"), ("sidecar", "bad_metadata"), ("sidecar", "bad_row")}, out["failed"]
    assert len(out["failed"]) == 3 and all("captions.jsonl line" in f["detail"] for f in out["failed"])


def test_search_k_has_the_http_cap(tmp_path: Path) -> None:
    r = run(temp_env(tmp_path), "search", "pasta", "-k", "101")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "bad_query", r.stdout
    assert "100" in json.loads(r.stdout)["detail"]


def test_invalid_target_version_is_bad_input_before_ray(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"item_id": "a", "uri": "a.mp4"}) + "\n")
    r = run(temp_env(tmp_path / "data"), "backfill", str(manifest), "--target-version", "v 1/..")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "bad_version", r.stdout


def test_a_swap_refused_by_the_gate_has_its_own_exit_code_and_line() -> None:
    from rich.console import Console

    from serving.backfill.report import EXIT_GATE_REFUSED, BackfillReport

    gate = {"swap": False, "reason": "Recall@10 drops 0.300 (1.000 → 0.700) > eval.max_drop"}
    report = BackfillReport(manifest="m.jsonl", version="v2", schema_version="v2-x", total=3, written=3, gate=gate)
    assert report.exit_code == EXIT_GATE_REFUSED not in (0, 1, 2, 3, 4)
    assert report.to_json()["gate"] == gate and report.to_json()["exit_code"] == EXIT_GATE_REFUSED
    console = Console(record=True, width=200)
    console.print(report.render())
    first = console.export_text().splitlines()[0]
    assert "alias NOT swapped" in first and "quality gate" in first and "drops 0.300" in first, first
    swapped = BackfillReport(manifest="m", version="v2", schema_version="s", total=1, written=1, gate={"swap": True})
    assert swapped.exit_code == 0
    failed = BackfillReport(manifest="m", version="v2", schema_version="s", total=1, failed=1, gate=gate)
    assert failed.exit_code == 1  # too many failures stays 1, whatever the gate said


def test_an_empty_manifest_starts_no_cluster(tmp_path: Path) -> None:
    """Zero rows answer at once: with an address nothing listens on, any cluster start would fail or hang."""
    manifest = tmp_path / "empty.jsonl"
    manifest.write_text("\n\n")
    t0 = time.monotonic()
    r = run(temp_env(tmp_path / "data"), "backfill", str(manifest), "--address", f"127.0.0.1:{free_port()}")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert (out["total"], out["written"], out["failed"]) == (0, 0, 0) and time.monotonic() - t0 < 20


def test_locked_log_line_names_no_path_or_pid(tmp_path: Path) -> None:
    from embedder.pipeline import embedding_spec
    from index import open_index

    env = temp_env(tmp_path, REELVEC__INDEX__TIMEOUT_S="1")
    cfg = make_config(tmp_path, REELVEC__INDEX__TIMEOUT_S="1")
    spec = embedding_spec(cfg)
    with open_index(cfg.index, spec.dims, spec.schema_version):
        r = runner.invoke(app, ["ingest", str(CLIPS / "cooking_01.mp4")], env=env)
    assert r.exit_code == 4, r.stdout + r.stderr
    assert "locked" in r.stderr and str(tmp_path) not in r.stderr and "pid" not in r.stderr.lower(), r.stderr
    assert str(os.getpid()) not in r.stderr


def test_forbidden_paths_say_how_to_allow_a_root(tmp_path: Path) -> None:
    from rich.console import Console

    from serving.backfill.report import BackfillReport

    report = BackfillReport(
        manifest="m.jsonl", version="v", schema_version="s", total=2, failed=2, failures={"manifest/forbidden_path": 2}
    )
    console = Console(record=True, width=200)
    console.print(report.render())
    text = console.export_text()
    assert "backfill.allowed_roots" in text and "--allow-root DIR" in text, text
    assert "allow_root" in report.to_json()["hints"][0] or "--allow-root" in report.to_json()["hints"][0]


def test_allow_root_lets_a_manifest_reach_another_folder(tmp_path: Path) -> None:
    from serving.cli import allowed_roots_with

    cfg = make_config(tmp_path)
    manifest = tmp_path / "m" / "manifest.jsonl"
    roots = allowed_roots_with(cfg, manifest, [tmp_path / "media"]).backfill.allowed_roots
    assert roots == [manifest.parent.absolute(), (tmp_path / "media").absolute()]


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.1"], ids=["closed-port", "unroutable"])
def test_an_unreachable_address_fails_in_one_line_within_30_s(tmp_path: Path, host: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"item_id": "a", "uri": str(CLIPS / "cooking_01.mp4")}) + "\n")
    env = temp_env(tmp_path / "data")
    t0 = time.monotonic()
    r = run(env, "backfill", str(manifest), "--address", f"{host}:{free_port()}")
    assert time.monotonic() - t0 < 30 and r.exit_code == 2, r.stdout + r.stderr
    body = json.loads(r.stdout)
    assert body["error"] == "cluster_unreachable" and "6379" in body["detail"], body


def test_backfill_from_a_folder_holding_index_serving_and_embedder(tmp_path: Path) -> None:
    """Ray puts the driver's cwd first on the workers' import path: these folders must not shadow reelvec's."""
    shadow = tmp_path / "project"
    for name in ("index", "serving", "embedder"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text("")  # someone's own packages of these generic names
    manifest = shadow / "m.jsonl"
    manifest.write_text(json.dumps({"item_id": "a", "uri": str(CLIPS / "cooking_01.mp4"), "caption": "pasta"}) + "\n")
    env = {
        **os.environ,
        **temp_env(tmp_path / "data"),
        "REELVEC__BACKFILL__ALLOWED_ROOTS": json.dumps([str(CLIPS)]),
        "PYTHONPATH": str(ROOT),
    }
    # `-P`: like the `reelvec` console script, the driver itself does not import from its cwd.
    cmd = [sys.executable, "-P", "-m", "serving.cli", "backfill", str(manifest), "--json"]
    r = subprocess.run(cmd, cwd=shadow, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["written"], out["failed"]) == (1, 0), out


def test_submit_ships_what_the_job_needs() -> None:
    """`--submit` runs the configured interpreter, and can ship reelvec's dependencies as a `pip` runtime env."""
    from embedder.config import BackfillConfig
    from serving.backfill.submit import job_request

    entry, env = job_request("m.jsonl", ["--force"], BackfillConfig(), env={"REELVEC__X": "1", "HOME": "/root"})
    assert entry.startswith("python -m serving.cli backfill ") and entry.endswith("--force --json")
    assert env["env_vars"] == {"REELVEC__X": "1", "PYTHONUNBUFFERED": "1"} and "working_dir" in env
    assert "pip" not in env
    bf = BackfillConfig(submit_python="/opt/reelvec/bin/python", submit_pip=True)
    entry, env = job_request("m.jsonl", [], bf, env={})
    assert entry.startswith("/opt/reelvec/bin/python -m serving.cli backfill ")
    assert any(r.startswith("typer") for r in env["pip"]) and any(r.startswith("ray") for r in env["pip"])


def test_a_job_without_reelvec_on_the_head_says_what_to_set() -> None:
    from serving.backfill.submit import missing_module

    logs = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'typer'\n"
    err = missing_module(logs)
    assert err is not None and err.reason == "job_environment"
    assert "backfill.submit_python" in err.detail and "backfill.submit_pip" in err.detail and "typer" in err.detail
    assert missing_module("all fine\n") is None
