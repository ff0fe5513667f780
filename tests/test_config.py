"""Config: defaults load, unknown keys and bad values name the dotted key, env overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.config import DEFAULT_CONFIG_PATH, load_config
from embedder.types import ConfigError


def test_default_config_loads_and_mirrors_models() -> None:
    cfg = load_config(environ={})
    assert cfg.decode.num_frames == 8
    assert cfg.models.text.required is True and cfg.models.clip.required is False
    assert abs(sum(cfg.fusion.weights.values()) - 1.0) < 1e-9


def test_unknown_key_names_dotted_path(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  num_frame: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "decode.num_frame: unknown key" in e.value.detail


def test_bad_value_names_dotted_path(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("limits:\n  max_duration_s: -3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "limits.max_duration_s" in e.value.detail


def test_bad_fusion_weights_rejected(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("fusion:\n  weights: {visual: 1, caption: 1, audio: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "fusion.weights" in e.value.detail and "audio" in e.value.detail


def test_env_override_applies_and_is_typed() -> None:
    cfg = load_config(
        environ={"REELVEC__INDEX__PATH": "/tmp/x", "REELVEC__DECODE__NUM_FRAMES": "4", "REELVEC__SERVE__API_KEY": "k"}
    )
    assert cfg.index.path == Path("/tmp/x")
    assert cfg.decode.num_frames == 4
    assert cfg.serve.api_key == "k"


def test_env_override_unknown_or_bad_key_fails() -> None:
    with pytest.raises(ConfigError, match=r"index\.pth: unknown key"):
        load_config(environ={"REELVEC__INDEX__PTH": "/tmp/x"})
    with pytest.raises(ConfigError, match=r"decode\.num_frames"):
        load_config(environ={"REELVEC__DECODE__NUM_FRAMES": "many"})


def test_missing_config_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_default_yaml_lists_every_section() -> None:
    import yaml

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    cfg = load_config(environ={})
    assert set(data) == set(type(cfg).model_fields)
