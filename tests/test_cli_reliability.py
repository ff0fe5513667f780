"""The CLI under careless input (issue 18): a bad sidecar row never costs the good ones, `-k` has the HTTP cap,
bad versions are bad input (exit 2), and a locked index is reported without its path or holder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import CLIPS, temp_env

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
