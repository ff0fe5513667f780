"""Session fixtures: real sample media, one ItemEmbedder, one local Ray cluster, a tiny CLIP card, temp config."""

from __future__ import annotations

import hashlib
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


def temp_env(tmp: Path, **env: str) -> dict[str, str]:
    """REELVEC__ variables putting data, models and index under `tmp`, plus `env` overrides (CLI runs, configs)."""
    return {
        "REELVEC__DATA_DIR": str(tmp),
        "REELVEC__MODELS__MODELS_DIR": str(tmp / "models"),
        "REELVEC__INDEX__PATH": str(tmp / "index"),
        **env,
    }


def make_config(tmp: Path, **env: str) -> ReelvecConfig:
    """Default config with data, models and index under `tmp`; `env` adds REELVEC__ overrides."""
    return load_config(environ=temp_env(tmp, **env))


# ASR's shipped default (`pack`) shares Whisper windows between the clips of a batch, so a transcript can depend
# on what it was batched with. Tests that compare items embedded in different batch compositions for exact
# equality use the deterministic mode; test_pipeline bounds how far `pack` may differ.
EXACT_ASR = {"REELVEC__ASR__BATCH_MODE": "none"}


@pytest.fixture(scope="session")
def session_cfg(tmp_path_factory: pytest.TempPathFactory) -> ReelvecConfig:
    return make_config(tmp_path_factory.mktemp("reelvec"), **EXACT_ASR)


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

    from serving.http.proxy import install_proxy_callback

    install_proxy_callback()  # Serve's proxies drop malformed X-Request-IDs, as under `reelvec serve`
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


# A tiny open_clip architecture: random weights written by the tests, loaded through the real card path.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_card(path: Path, **fields: object) -> Path:
    """A model card YAML with these fields."""
    import yaml

    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_clip_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip architecture + checkpoint written by the test, described by a card (never a real model)."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("tinyclip")
    (d / "reelvec-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "reelvec-tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("reelvec-tiny-clip", pretrained=None).state_dict(), d / "tiny.pt")
    return write_card(
        d / "tiny-clip.yaml",
        id="tiny-clip-test",
        family="open_clip",
        version="test-only",
        modality="visual",
        dims=32,
        source={"kind": "local", "path": "."},
        files=[{"path": "tiny.pt", "sha256": hashlib.sha256((d / "tiny.pt").read_bytes()).hexdigest()}],
        params={"arch": "reelvec-tiny-clip", "model_config": "reelvec-tiny-clip.json"},
        intended_use="tests only: random weights, never a real model",
    )
