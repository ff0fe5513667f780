"""Config: defaults load, unknown keys and bad values name the dotted key, env overrides apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from embedder.config import DEFAULT_CONFIG_PATH, ReelvecConfig, load_config
from embedder.types import ConfigError


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, f in model.model_fields.items():
        out.add(prefix + name)
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out |= _model_keys(f.annotation, f"{prefix}{name}.")
    return out


def _yaml_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in node.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k != "weights":  # fusion.weights is a mapping value, not a section
            out |= _yaml_keys(v, f"{prefix}{k}.")
    return out


def test_default_yaml_mirrors_the_config_models_key_for_key() -> None:
    from_yaml = _yaml_keys(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))
    from_models = _model_keys(ReelvecConfig)
    # ModelRef sections (models.clip …) are nested models too: their keys appear in both
    assert from_yaml == from_models, (sorted(from_yaml - from_models), sorted(from_models - from_yaml))
    assert load_config(environ={}).model_dump() == ReelvecConfig().model_dump()  # same values as the code


def test_default_config_loads() -> None:
    cfg = load_config(environ={})
    assert cfg.decode.num_frames == 8
    assert cfg.models.text.required is True and cfg.models.clip.required is False
    assert all(w >= 0 for w in cfg.fusion.weights.values()) and sum(cfg.fusion.weights.values()) > 0


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
    assert cfg.serve.api_key is not None and cfg.serve.api_key.get_secret_value() == "k"
    assert "api_key=SecretStr('**********')" in repr(cfg.serve)  # a SecretStr never prints


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
