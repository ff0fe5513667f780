"""CLI: `reelvec embed --json` on a real clip, models list/verify/pull, logs, and clear one-line errors with
non-zero exits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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
    assert len(out["vectors"]["fused"]) == 512 + 3 * 384  # visual + caption, transcript, ocr blocks
    assert set(out["models"]) == {"minilm-l6-v2", "whisper-tiny-en", "rapidocr-ppocrv4"}
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


def _png_as_mp4(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 40, 40)).save(path, format="PNG")
    return path


def test_embed_checks_id_and_file_before_any_model_loads(tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    # A configured text card that does not exist: loading models would fail with `unknown_card`, so each reason
    # below proves the check ran before any model load.
    env = temp_env(tmp_path, REELVEC__MODELS__TEXT__CARD="no-such-card")
    cases = [
        ([clips[0]["path"], "--id", "bad/id"], "bad_item_id", ""),
        ([str(_png_as_mp4(tmp_path / "photo.mp4"))], "not_a_video", "still image"),
        ([str(tmp_path)], "not_a_video", "is a folder"),
        ([str(tmp_path / "missing.mp4")], "not_found", ""),
    ]
    for args, reason, words in cases:
        r = runner.invoke(app, ["embed", *args, "--json"], env=env)
        assert r.exit_code == 2, (args, r.stdout)
        out = json.loads(r.stdout)
        assert out["error"] == reason and words in out["detail"], args


def test_png_renamed_mp4_is_not_a_video_nor_truncated(tmp_path: Path) -> None:
    from embedder.decode import probe_file
    from embedder.types import MediaError

    with pytest.raises(MediaError) as e:
        probe_file(str(_png_as_mp4(tmp_path / "frame.mp4")))
    assert e.value.reason == "not_a_video"


def test_env_config_error_names_the_variable(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["stats", "--json"], env=temp_env(tmp_path, REELVEC__DECODE__NUM_FRAMES="abc", REELVEC__OCR__X="1")
    )
    assert r.exit_code == 2
    out = json.loads(r.stdout)
    assert out["error"] == "invalid" and "REELVEC__DECODE__NUM_FRAMES" in out["detail"]
    assert "REELVEC__OCR__X" in out["detail"] and "default.yaml" not in out["detail"]


def test_errors_are_one_plain_line_off_a_terminal(tmp_path: Path) -> None:
    # Far wider than 80 columns, with brackets rich would take for markup.
    r = runner.invoke(app, ["models", "pull", "x" * 90 + "[bold]"], env=temp_env(tmp_path))
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (unknown_card): ") and "[bold]" in lines[0]


def _pull_stderr(env: dict[str, str], tty: bool, *flags: str) -> str:
    """stderr of a real `reelvec models pull` (offline), written to a pipe or to a pseudo-terminal."""
    exe = Path(sys.executable).parent / "reelvec"
    cmd = [str(exe), *flags, "models", "pull", "clip-vit-b-32-laion2b"]
    full_env = {**os.environ, **env, "HF_HUB_OFFLINE": "1"}
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120).stderr
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=follower, env=full_env, timeout=120)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the writer side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.returncode == 3
    return b"".join(chunks).decode(errors="replace")


def test_logs_are_json_off_a_terminal_and_human_at_one(tmp_path: Path) -> None:
    env = temp_env(tmp_path)
    logs = [ln for ln in _pull_stderr(env, tty=False).splitlines() if not ln.startswith("error (")]
    assert logs and all(json.loads(ln)["logger"] for ln in logs)  # the card's unpinned revision is warned about
    human = [ln for ln in _pull_stderr(env, tty=True).splitlines() if "embedder.cards" in ln]
    assert human and not human[0].lstrip().startswith("{") and "WARNING" in human[0]
    forced = [ln for ln in _pull_stderr(env, True, "--log-json").splitlines() if "embedder.cards" in ln]
    assert forced and json.loads(forced[0])["level"] == "WARNING"


def test_models_pull_offline_leaves_nothing(tmp_path: Path) -> None:
    env = {**temp_env(tmp_path), "HF_HUB_OFFLINE": "1"}
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        r = runner.invoke(app, ["models", "pull", "clip-vit-b-32-laion2b", "--json"], env=env)
        assert r.exit_code == 3
        out = json.loads(r.stdout)
        assert out["error"] == "download_failed" and "HF_HUB_OFFLINE" in out["detail"]
        assert str(tmp_path) not in out["detail"]
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]


def test_pull_records_and_enforces_pinned_sha256(tmp_path: Path) -> None:
    from embedder.cards import SHA256_RECORD, check_pinned, load_card, pull, sha256_file
    from embedder.types import ModelUnavailableError
    from tests.conftest import write_card

    weights = b"\x01weights" * 1000
    digest = hashlib.sha256(weights).hexdigest()
    url = "https://huggingface.co/org/repo/resolve/" + "a" * 40 + "/w.bin"
    models = tmp_path / "models"
    (models / "hf-test").mkdir(parents=True)
    (models / "hf-test" / "w.bin").write_bytes(weights)  # already present: pull checks it, fetches nothing

    def card(pin: str) -> Any:
        path = write_card(
            tmp_path / "hf-test.yaml",
            id="hf-test",
            family="open_clip",
            version="1",
            modality="visual",
            source={"kind": "url", "url": url},
            files=[{"path": "w.bin", "sha256": pin}],
        )
        return load_card(path, tmp_path)

    with pytest.raises(ModelUnavailableError) as e:
        pull(card("0" * 64), models)
    assert e.value.reason == "sha256_mismatch" and (models / "hf-test" / "w.bin").is_file()
    loc = pull(card(digest), models)
    assert json.loads((loc / SHA256_RECORD).read_text())["w.bin"]["sha256"] == digest
    check_pinned(card(digest), loc)
    (loc / "w.bin").write_bytes(weights[::-1])  # tampered after the pull
    with pytest.raises(ModelUnavailableError) as e:
        check_pinned(card(digest), loc)
    assert e.value.reason == "sha256_mismatch" and sha256_file(loc / "w.bin") in e.value.detail


def test_json_on_every_command() -> None:
    import typer

    root: Any = typer.main.get_command(app)
    commands = []
    for name, cmd in root.commands.items():
        subs = cmd.commands.items() if hasattr(cmd, "commands") else [("", cmd)]  # a group: `models …`
        commands += [(f"{name} {sub}".strip(), c) for sub, c in subs]
    assert {"show", "serve", "models pull", "stats", "alias"} <= {n for n, _ in commands}
    missing = [n for n, c in commands if not any("--json" in p.opts for p in c.params)]
    assert not missing


def test_until_is_exclusive_in_help() -> None:
    r = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert "exclusive" in r.stdout and "inclusive" in r.stdout
