"""CLI: `reelvec embed --json` on a real clip, models list/verify, and clear errors with non-zero exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import temp_env

runner = CliRunner()


def test_embed_json_real_console_script(tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    row = clips[0]
    exe = Path(sys.executable).parent / "reelvec"
    proc = subprocess.run(
        [str(exe), "embed", row["path"], "--caption", row["caption"], "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **temp_env(tmp_path)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["transcript"] and set(out["vectors"]) == {"caption", "transcript", "fused"}
    assert len(out["vectors"]["fused"]) == 1280
    assert set(out["models"]) == {"minilm-l6-v2", "whisper-tiny-en"}
    assert out["timings_ms"]["decode_ms"] > 0
    assert "MODEL UNAVAILABLE" in proc.stderr  # CLIP weights are absent: loud, not silent


def test_embed_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 100)
    r = runner.invoke(app, ["embed", str(bad), "--json"], env=temp_env(tmp_path))
    assert r.exit_code == 2
    assert json.loads(r.stdout) == {"error": "not_a_video", "detail": json.loads(r.stdout)["detail"]}
    r = runner.invoke(app, ["embed", str(tmp_path / "missing.mp4")], env=temp_env(tmp_path))
    assert r.exit_code == 2 and "not_found" in r.stderr


def test_models_list_and_verify(tmp_path: Path) -> None:
    r = runner.invoke(app, ["models", "list", "--json"], env=temp_env(tmp_path))
    assert r.exit_code == 0
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows["minilm-l6-v2"]["present"] and rows["whisper-tiny-en"]["present"]
    assert not rows["clip-vit-b-32-laion2b"]["present"]
    assert "models pull" in rows["clip-vit-b-32-laion2b"]["detail"]
    r = runner.invoke(app, ["models", "verify", "--json"], env=temp_env(tmp_path))
    assert r.exit_code == 0
    assert {row["id"]: row["verified"] for row in json.loads(r.stdout)}["minilm-l6-v2"] is True


def test_models_pull_without_network_is_clear(tmp_path: Path) -> None:
    r = runner.invoke(app, ["models", "pull", "clip-vit-b-32-laion2b"], env=temp_env(tmp_path))
    assert r.exit_code == 3
    assert (
        "download_failed" in r.stderr
        and not (tmp_path / "models" / "clip-vit-b-32-laion2b" / "open_clip_pytorch_model.bin").exists()
    )


def test_bad_config_exits_2(tmp_path: Path) -> None:
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text("decode:\n  frames: 3\n")
    r = runner.invoke(app, ["models", "list", "--config", str(cfgf)], env=temp_env(tmp_path))
    assert r.exit_code == 2 and "decode.frames" in r.stderr
