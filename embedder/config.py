"""reelvec configuration: pydantic models validated at load, one YAML file, env overrides.

`load_config(path)` reads `configs/default.yaml` (or the given file), applies every
`REELVEC__SECTION__KEY=value` environment variable on top, and validates the result. Unknown keys
and bad values raise `ConfigError` naming the dotted path of the offending key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedder.types import MODALITIES, ConfigError

ENV_PREFIX = "REELVEC__"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PACKAGE_ROOT / "configs" / "default.yaml"
DEFAULT_CARDS_DIR = PACKAGE_ROOT / "model_cards"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DecodeConfig(_Section):
    """How frames and audio are sampled from a clip."""

    mode: Literal["uniform", "fps"] = "uniform"
    num_frames: int = Field(8, ge=1, le=64)
    fps: float = Field(1.0, gt=0, le=30)
    short_side: int = Field(224, ge=16, le=2160)
    audio_sample_rate: int = Field(16000, ge=8000, le=48000)
    timeout_s: float = Field(30.0, gt=0)
    backend: Literal["decord", "pyav"] = "decord"
    frame_count_tolerance: float = Field(0.05, ge=0, le=1)


class LimitsConfig(_Section):
    """Hard limits on what an upload may be; violations are `MediaError`s."""

    max_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_duration_s: float = Field(180.0, gt=0)
    max_pixels: int = Field(3840 * 2160, ge=1)
    max_caption_chars: int = Field(2200, ge=0)
    max_hashtags: int = Field(30, ge=0)
    max_item_id_chars: int = Field(256, ge=1)


class ModelRef(_Section):
    """Which model card serves a modality and whether the pipeline may run without it."""

    card: str
    required: bool = False


class ModelsConfig(_Section):
    clip: ModelRef = ModelRef(card="clip-vit-b-32-laion2b", required=False)
    text: ModelRef = ModelRef(card="minilm-l6-v2", required=True)
    asr: ModelRef = ModelRef(card="whisper-tiny-en", required=False)
    models_dir: Path = Path("./data/models")
    cards_dir: Path = DEFAULT_CARDS_DIR
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int = Field(0, ge=0)


class ClipConfig(_Section):
    batch_size: int = Field(32, ge=1)
    pooling: Literal["mean"] = "mean"


class TextConfig(_Section):
    batch_size: int = Field(32, ge=1)
    max_tokens: int = Field(256, ge=8)
    transcript_max_chars: int = Field(4000, ge=0)


class AsrConfig(_Section):
    vad_filter: bool = True
    beam_size: int = Field(1, ge=1)
    compute_type: str = "int8"
    language: str | None = "en"
    cpu_threads: int = Field(0, ge=0)


class FusionConfig(_Section):
    """Weights of each modality in the fused cosine; absent modalities are renormalized away."""

    weights: dict[str, float] = Field(default_factory=lambda: {"visual": 0.4, "caption": 0.35, "transcript": 0.25})

    @field_validator("weights")
    @classmethod
    def _known_positive(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; known: {list(MODALITIES)}")
        missing = set(MODALITIES) - set(v)
        if missing:
            raise ValueError(f"missing weight for {sorted(missing)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be >= 0 and sum to > 0")
        return v


class IndexConfig(_Section):
    """Where vectors live: Qdrant Edge on a path (embedded) or a Qdrant server at `url`."""

    backend: Literal["edge", "qdrant"] = "edge"
    path: Path = Path("./data/index")
    url: str | None = None
    api_key: str | None = None
    collection: str = "reelvec"
    transcript_payload_chars: int = Field(2000, ge=0)
    hnsw_m: int = Field(16, ge=4)
    hnsw_ef_construct: int = Field(100, ge=8)
    search_ef: int = Field(128, ge=8)
    optimize_after_upserts: int = Field(5000, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    # How `recommend` scores a candidate against several likes / dislikes (Qdrant's recommend strategies):
    # sum_scores = sum of similarities to the likes minus the dislikes (an item close to all likes wins);
    # best_score = its best like, unless a dislike is closer (an item close to any one like wins).
    recommend_strategy: Literal["sum_scores", "best_score"] = "sum_scores"


class ServeConfig(_Section):
    """Ray Serve endpoint: addresses, replicas, batching and the upload guard."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = None
    ray_address: str | None = None
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    max_concurrent_batches: int = Field(1, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    decode_replicas: int = Field(1, ge=1)
    asr_replicas: int = Field(1, ge=1)
    clip_replicas: int = Field(1, ge=1)
    text_replicas: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    num_cpus_per_model: float = Field(0.5, ge=0)
    num_gpus_per_model: float = Field(0.0, ge=0)


class BackfillConfig(_Section):
    """Ray Data backfill: actor-pool sizes, batch sizes, GPUs per model actor and the failure budget."""

    decode_concurrency: int = Field(2, ge=1)
    encode_concurrency: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    upsert_batch_size: int = Field(32, ge=1)
    max_failures: int = Field(0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class ReelvecConfig(_Section):
    """The whole configuration; `configs/default.yaml` mirrors it key for key."""

    data_dir: Path = Path("./data")
    decode: DecodeConfig = DecodeConfig()
    limits: LimitsConfig = LimitsConfig()
    models: ModelsConfig = ModelsConfig()
    clip: ClipConfig = ClipConfig()
    text: TextConfig = TextConfig()
    asr: AsrConfig = AsrConfig()
    fusion: FusionConfig = FusionConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()
    backfill: BackfillConfig = BackfillConfig()

    @model_validator(mode="after")
    def _batching_fits(self) -> ReelvecConfig:
        if self.serve.max_queued_requests == 0:
            raise ValueError("serve.max_queued_requests must be -1 (unbounded) or >= 1")
        return self


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic errors as `dotted.key: message; …` (config files, upload metadata, manifest rows, HTTP params)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: "
        + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
        for e in errors
    )


def _format_validation_error(err: ValidationError, source: str) -> str:
    return f"invalid config ({source}): " + describe_errors(err.errors())


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Nested dict from `REELVEC__A__B=value`; values are parsed as YAML scalars (`8`, `true`, `null`)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("bad_env", f"{name}: conflicts with another override")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> ReelvecConfig:
    """Load, env-override and validate the configuration; raise `ConfigError` naming the bad key."""
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not cfg_path.is_file():
        raise ConfigError("not_found", f"config file not found: {cfg_path}")
    try:
        data = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError("bad_yaml", f"{cfg_path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError("bad_yaml", f"{cfg_path}: top level must be a mapping")
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    try:
        return ReelvecConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid", _format_validation_error(e, str(cfg_path))) from e
