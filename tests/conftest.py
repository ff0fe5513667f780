"""Session fixtures: real sample media, one loaded ItemEmbedder, one local Ray cluster, temp config."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedder.config import ReelvecConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CLIPS = SAMPLES / "clips"
FIXTURES = SAMPLES / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def clips() -> list[dict[str, Any]]:
    """The committed sample catalogue (captions.jsonl rows with absolute `path`)."""
    rows = [json.loads(line) for line in (CLIPS / "captions.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r["path"] = str(CLIPS / r["file"])
    return rows


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def make_config(tmp: Path, **env: str) -> ReelvecConfig:
    """Default config with data, models and index under `tmp`; `env` adds REELVEC__ overrides."""
    base = {
        "REELVEC__DATA_DIR": str(tmp),
        "REELVEC__MODELS__MODELS_DIR": str(tmp / "models"),
        "REELVEC__INDEX__PATH": str(tmp / "index"),
    }
    return load_config(environ={**base, **env})


@pytest.fixture(scope="session")
def session_cfg(tmp_path_factory: pytest.TempPathFactory) -> ReelvecConfig:
    return make_config(tmp_path_factory.mktemp("reelvec"))


@pytest.fixture
def cfg(tmp_path: Path) -> ReelvecConfig:
    return make_config(tmp_path)


@pytest.fixture(scope="session")
def item_embedder(session_cfg: ReelvecConfig) -> Iterator[Any]:
    """The real pipeline with the bundled models (MiniLM, Whisper tiny.en), loaded once."""
    from embedder.pipeline import ItemEmbedder

    emb = ItemEmbedder(session_cfg)
    yield emb
    emb.close()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """One real local Ray cluster per test session (own temp dir, free ports); torn down at the end."""
    import ray

    # AF_UNIX socket paths must stay short, so not under pytest's long tmp path.
    temp_dir = tempfile.mkdtemp(prefix="rvray-", dir="/tmp")
    info = ray.init(
        num_cpus=8,
        include_dashboard=False,
        _temp_dir=temp_dir,
        ignore_reinit_error=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}},
    )
    yield {"temp_dir": temp_dir, "address": info.address_info.get("address")}
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # serve may never have started
        pass
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
