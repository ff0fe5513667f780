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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from embedder.types import MODALITIES, OPTIONAL_MODALITIES, ConfigError

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
    # A sampled frame moves to the nearest keyframe within this many seconds (0 = exact frames): a keyframe decodes
    # alone, while an exact frame costs every frame since the previous keyframe.
    keyframe_snap_s: float = Field(0.0, ge=0, le=10)
    # exact: the sampled frames themselves; keyframes: only keyframes are decoded (PyAV skip_frame=NONKEY), each
    # sample takes the keyframe nearest its time (at most num_frames distinct; 2-3x the clips/s, issue 16).
    sampling: Literal["exact", "keyframes"] = "exact"
    # Where video is decoded: cpu, cuda (NVDEC through PyAV's hwaccel; refused with `nvdec_unavailable` when it is
    # not usable), or auto: NVDEC only for exact sampling when usable (keyframes-only was slower on NVDEC, issue 16).
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # Decode worker processes per Decoder (0 = one per CPU core), started on demand by concurrent decodes.
    workers: int = Field(0, ge=0, le=256)
    # A decode worker process is retired after this many decodes and a fresh one spawned in its place (0 = never):
    # a bound on what native libraries keep between clips. The 1,000-upload soak grew a worker +83 MiB by 250
    # decodes before decord's leaking audio reader was dropped (issue 18); a respawn costs ~0.3 s, off the hot path.
    recycle_after: int = Field(250, ge=0)


class FingerprintConfig(_Section):
    """Small grayscale frames for the perceptual fingerprints, sampled densely in the same decode pass."""

    size: int = Field(64, ge=8, le=256)  # frames are size x size pixels (aspect not kept)
    fps: float = Field(4.0, gt=0, le=30)  # at most this many frames a second (keyframes only with keyframe sampling)


class LimitsConfig(_Section):
    """Hard limits on what an upload may be; violations are `MediaError`s."""

    max_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_duration_s: float = Field(180.0, gt=0)
    max_pixels: int = Field(3840 * 2160, ge=1)
    max_caption_chars: int = Field(2200, ge=0)
    max_hashtags: int = Field(30, ge=0)
    max_item_id_chars: int = Field(256, ge=1)
    # JSON from clients (upload metadata, manifest and sidecar rows, search filters) is checked against these
    # before it is parsed: a 10,000-deep `[[[…]]]` would otherwise overflow the parser's recursion (issue 18).
    max_metadata_bytes: int = Field(64 * 1024, ge=2)
    max_json_depth: int = Field(16, ge=2)
    # The item-id alphabet: any printable character except `/` and `\\` (so every id is one URL path segment,
    # reachable percent-encoded) — no control characters, no leading/trailing whitespace.
    item_id_pattern: str = r"[^\x00-\x1f\x7f-\x9f/\\\s](?:[^\x00-\x1f\x7f-\x9f/\\]*[^\x00-\x1f\x7f-\x9f/\\\s])?"

    @field_validator("item_id_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        return v


class ModelRef(_Section):
    """Which model card serves a modality and whether the pipeline may run without it."""

    card: str
    required: bool = False


class ModelsConfig(_Section):
    clip: ModelRef = ModelRef(card="clip-vit-b-32-laion2b", required=False)
    text: ModelRef = ModelRef(card="minilm-l6-v2", required=True)
    asr: ModelRef = ModelRef(card="whisper-tiny-en", required=False)
    ocr: ModelRef = ModelRef(card="rapidocr-ppocrv4", required=False)
    # The optional `omni` modality (frames + audio in one model, e.g. embeddinggemma-2); None: off.
    omni: ModelRef | None = None
    models_dir: Path = Path("./data/models")
    cards_dir: Path = DEFAULT_CARDS_DIR
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int = Field(0, ge=0)

    @field_validator("cards_dir", mode="before")
    @classmethod
    def _default_cards(cls, v: Any) -> Any:
        return DEFAULT_CARDS_DIR if v is None else v


class ClipConfig(_Section):
    batch_size: int = Field(32, ge=1)


class TextConfig(_Section):
    batch_size: int = Field(32, ge=1)
    max_tokens: int = Field(256, ge=8)
    transcript_max_chars: int = Field(4000, ge=0)


class OmniConfig(_Section):
    """The omni encoder (models.omni): clips per forward pass and how much of each clip's audio it hears."""

    batch_size: int = Field(4, ge=1)
    max_audio_s: float = Field(30.0, gt=0, le=300)  # EmbeddingGemma 2's feature extractor default window
    min_audio_s: float = Field(0.25, ge=0)  # shorter audio is treated as none (the conv front end needs frames)


class AsrConfig(_Section):
    vad_filter: bool = True
    beam_size: int = Field(1, ge=1)
    compute_type: str = "int8"
    language: str | None = "en"
    cpu_threads: int = Field(0, ge=0)
    # Speech gate: Silero VAD (shipped in faster-whisper) on the decoded audio; no speech → Whisper is skipped.
    speech_gate: bool = True
    min_speech_s: float = Field(0.3, ge=0)
    # Transcription across items, chosen by WER against the spoken words and speed (bench/asr.py): `pack` =
    # up to `batch_size` clips' speech back to back in one stream (default: 8.2 % WER vs 12.6 % one by one on the
    # samples, 4.4 vs 11.1 % with no-voice clips mixed in, 8.9 vs 15.6 % with music under the voice; 2.7-5.2x
    # clips/s; a transcript depends on its batch mates); `none` = one clip per Whisper call (batch-independent);
    # `generate` = batched padded windows.
    batch_mode: Literal["pack", "generate", "none"] = "pack"
    batch_size: int = Field(8, ge=1)
    pack_gap_s: float = Field(1.0, ge=0)
    # Runtime: ctranslate2 (faster-whisper, int8 on CPU) or torch (transformers Whisper from the same CTranslate2
    # weights, fp16 on cuda: the CTranslate2 wheel's CUDA build needs CUDA 12). auto: torch on cuda, else ctranslate2.
    backend: Literal["auto", "ctranslate2", "torch"] = "auto"
    # Where ASR runs: auto follows models.device; cpu keeps Whisper off the GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The torch backend's converted weights (transformers layout), written once per card and weights digest;
    # null: `converted/` inside models.models_dir.
    torch_cache_dir: Path | None = None
    # torch backend, `pack`: the streams of every group decoded together, one batched encode + greedy decode + word
    # alignment per round of 30-s windows (embedder/asr_batch.py), `torch_max_windows` windows per forward pass;
    # false: faster-whisper's per-window loop on each stream in turn.
    torch_batched: bool = True
    torch_max_windows: int = Field(128, ge=1)
    # Torch `pack` only: also cap a stream at this many seconds (null: `batch_size` clips, as ctranslate2 packs).
    # Shorter streams mean fewer sequential rounds, more windows per round (GPU), but other batch mates.
    pack_max_s: float | None = Field(None, gt=0)


class OcrConfig(_Section):
    """On-screen text: a few frames decoded at a larger size, read by PP-OCR, lines de-duplicated across frames."""

    num_frames: int = Field(4, ge=1, le=32)
    short_side: int = Field(360, ge=64, le=2160)
    min_confidence: float = Field(0.6, ge=0, le=1)
    max_lines: int = Field(64, ge=1)
    # Cost savers (bench/ocr.py): skip a frame nearly identical to the last one read; reuse a box's reading
    # when its pixels did not change. Lines whose normalized text is this similar count as one.
    skip_unchanged: bool = True
    dedup_similarity: float = Field(0.8, ge=0, le=1)
    min_chars: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    # Which runtime runs PP-OCR: onnxruntime (its CUDA provider when installed and models.device is cuda), or the
    # same ONNX graphs converted to torch by onnx2torch (GPU OCR where onnxruntime-gpu is absent). auto: torch on
    # cuda when onnxruntime has no CUDA provider and onnx2torch is installed, else onnxruntime.
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    # Text gate (bench/ocr.py): the detector at `gate_scale` of the frame first; a frame with fewer than
    # `gate_min_pixels` pixels above the card's det_thresh skips the full-size detector (no text there).
    text_gate: bool = True
    gate_scale: float = Field(0.33, gt=0, le=1)
    gate_min_pixels: int = Field(16, ge=1)
    # Precision of the torch engine's modules: auto = float16 on cuda, float32 on cpu.
    torch_dtype: Literal["auto", "float32", "float16"] = "auto"


class FusionConfig(_Section):
    """Weights of each modality in the fused cosine; absent modalities are renormalized away."""

    weights: dict[str, float] = Field(
        # Text weights tuned on the dev split by bench/quality.py (visual keeps its share: no CLIP offline).
        default_factory=lambda: {"visual": 0.4, "caption": 0.22, "transcript": 0.22, "ocr": 0.16}
    )
    # How a search combines modalities by default: the fused vector, or Qdrant's RRF / DBSF over one
    # prefetch per modality (late fusion).
    mode: Literal["vector", "rrf", "dbsf"] = "vector"

    @field_validator("weights")
    @classmethod
    def _known_positive(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - {*MODALITIES, *OPTIONAL_MODALITIES}
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; known: {[*MODALITIES, *OPTIONAL_MODALITIES]}")
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
    api_key: SecretStr | None = None
    collection: str = "reelvec"
    transcript_payload_chars: int = Field(2000, ge=0)
    ocr_payload_chars: int = Field(1000, ge=0)
    hnsw_m: int = Field(16, ge=4)
    hnsw_ef_construct: int = Field(100, ge=8)
    search_ef: int = Field(128, ge=8)
    optimize_after_upserts: int = Field(5000, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    # How `recommend` scores a candidate against several likes / dislikes (Qdrant's recommend strategies):
    # sum_scores = sum of similarities to the likes minus the dislikes (an item close to all likes wins);
    # best_score = its best like, unless a dislike is closer (an item close to any one like wins).
    recommend_strategy: Literal["sum_scores", "best_score"] = "sum_scores"
    # Scalar (int8) quantization of the big vectors (fused, visual) with rescoring, and vectors kept on disk.
    quantization: Literal["none", "int8"] = "none"
    quantization_rescore: bool = True
    # With int8, fetch this many times k candidates by the quantized vectors before rescoring with the originals
    # (bench/scale.py at 1 M points: recall@10 0.855 at 1x, 0.929 at 2x; p99 4.17 ms and 3.72 ms).
    quantization_oversampling: float = Field(2.0, ge=1.0, le=16.0)
    on_disk_vectors: bool = False


class ServeConfig(_Section):
    """Ray Serve endpoint: addresses, replicas, batching and the upload guard."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    # With an api_key set: whether reads (search by text / id, GET items) are open without it.
    public_read: bool = False
    # A request body must arrive within this many seconds (slow or lying clients get 408).
    body_timeout_s: float = Field(10.0, gt=0)
    # ... and must keep at least this average rate (idle timeout + size / rate bounds the whole read).
    min_body_rate_kib_s: float = Field(64.0, gt=0)
    ray_address: str | None = None
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    max_concurrent_batches: int = Field(1, ge=1)
    # Request bodies read at once beyond the upload slots (searches, JSON bodies): the body-reader gate's headroom.
    extra_body_readers: int = Field(64, ge=0)
    # Replicas of each step's deployment by step name (decode, asr, ocr, visual, text, ...); absent: 1.
    replicas: dict[str, PositiveInt] = Field(default_factory=dict)
    ingress_replicas: int = Field(1, ge=1)
    num_cpus_per_model: float = Field(0.4, ge=0)
    num_gpus_per_model: float = Field(0.0, ge=0)


class BackfillConfig(_Section):
    """Ray Data backfill: actor-pool sizes, batch sizes, GPUs per model actor and the failure budget."""

    decode_concurrency: int = Field(2, ge=1)
    encode_concurrency: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    upsert_batch_size: int = Field(32, ge=1)
    max_failures: int = Field(0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Manifest uris must resolve inside one of these folders (empty: the manifest's own folder).
    allowed_roots: list[Path] = Field(default_factory=list)
    # `--submit`: the interpreter the job runs on the head node (one with reelvec's dependencies), and whether
    # to ship those dependencies as the job's `pip` runtime env instead (the cluster must reach a package index).
    submit_python: str = Field("python", min_length=1)
    submit_pip: bool = False


class DedupConfig(_Section):
    """Relations at ingest (duplicate_of / remix_of / sound_of): time-aligned visual and audio fingerprints of each
    new item checked against the candidates the index finds for them."""

    enabled: bool = True
    policy: Literal["flag", "reject"] = "flag"
    candidates: int = Field(8, ge=1, le=100)  # stored items fetched per side (visual, audio) for the exact check
    # Time-aligned fingerprints and relations (issue 17); thresholds chosen by bench/dedup.py on a dev split.
    hash_size: int = Field(16, ge=8, le=32)  # DCT block per frame: hash_size² - 1 sign bits
    crops: list[float] = Field(default_factory=lambda: [1.0, 0.88, 0.76], min_length=1)  # centred crops hashed
    max_speed_change: float = Field(0.12, ge=0, le=0.5)  # alignment searches speeds 1 ± this
    min_overlap_s: float = Field(2.0, gt=0)  # shortest aligned stretch that counts (or half the shorter clip)
    visual_threshold: float = Field(0.717, ge=0, le=1)  # mean per-frame bit agreement along the alignment
    audio_threshold: float = Field(0.161, ge=0, le=1)  # share of landmarks on the best alignment
    visual_threshold_with_audio: float = Field(0.692, ge=0, le=1)  # the bar when audio matches in step
    frame_match: float = Field(0.65, ge=0, le=1)  # per-frame agreement that puts a frame in a copied segment
    audio_peaks_per_s: int = Field(24, ge=1, le=200)
    audio_fan_out: int = Field(5, ge=1, le=20)


class SemanticIdConfig(_Section):
    """Residual-quantization codes of the fused vector (`reelvec semantic-ids fit`)."""

    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2, le=65536)
    seed: int = 0


class EvalConfig(_Section):
    """The quality gate of `backfill --swap-alias` and `reelvec eval [--compare]`: metrics on a query set."""

    queries: Path | None = None
    k: int = Field(5, ge=1, le=100)
    # The gate's tolerance: refuse a version when a metric's paired-bootstrap interval of (new − live) lies wholly
    # below −max_drop.
    max_drop: float = Field(0.02, ge=0, le=1)
    bootstrap_samples: int = Field(10_000, ge=100, le=1_000_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0  # fixed: the same query set gives the same interval


class UiConfig(_Section):
    """The browser UI at /ui: the thumbnails stored at ingest and the eval report it shows."""

    thumbs: int = Field(4, ge=0, le=16)  # per item, spread over the sampled frames (0: none)
    thumb_size: int = Field(96, ge=16, le=512)  # longest side, pixels
    thumb_quality: int = Field(70, ge=10, le=95)  # JPEG quality
    # Folder of the latest `reelvec eval --compare --report DIR` page (index.html); null: <data_dir>/report.
    report_dir: Path | None = None


class ReelvecConfig(_Section):
    """The whole configuration; `configs/default.yaml` mirrors it key for key."""

    data_dir: Path = Path("./data")
    decode: DecodeConfig = DecodeConfig()
    fingerprint: FingerprintConfig = FingerprintConfig()
    limits: LimitsConfig = LimitsConfig()
    models: ModelsConfig = ModelsConfig()
    clip: ClipConfig = ClipConfig()
    text: TextConfig = TextConfig()
    omni: OmniConfig = OmniConfig()
    asr: AsrConfig = AsrConfig()
    ocr: OcrConfig = OcrConfig()
    fusion: FusionConfig = FusionConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()
    backfill: BackfillConfig = BackfillConfig()
    dedup: DedupConfig = DedupConfig()
    semantic_ids: SemanticIdConfig = SemanticIdConfig()
    eval: EvalConfig = EvalConfig()
    ui: UiConfig = UiConfig()

    @model_validator(mode="after")
    def _derived_paths(self) -> ReelvecConfig:
        if self.asr.torch_cache_dir is None:
            self.asr.torch_cache_dir = Path(self.models.models_dir) / "converted"
        return self


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic errors as `dotted.key: message; …` (config files, upload metadata, manifest rows, HTTP params)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: "
        + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
        for e in errors
    )


def _format_validation_error(err: ValidationError, source: str, env_paths: dict[tuple[str, ...], str]) -> str:
    """Name where each bad value came from: the env variable that set it, else the config file."""
    sources: list[str] = []
    for e in err.errors():
        loc = tuple(str(p).lower() for p in e["loc"])
        name = next((n for path, n in env_paths.items() if loc[: len(path)] == path), source)
        if name not in sources:
            sources.append(name)
    return f"invalid config ({', '.join(sources) or source}): " + describe_errors(err.errors())


def _env_path(name: str) -> list[str]:
    """`REELVEC__A__B` → ["a", "b"] (empty for other variables)."""
    if not name.startswith(ENV_PREFIX):
        return []
    return [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Nested dict from `REELVEC__A__B=value`; values are parsed as YAML scalars (`8`, `true`, `null`)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        parts = _env_path(name)
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
    env = dict(os.environ if environ is None else environ)
    data = _merge(data, _env_overrides(env))
    try:
        return ReelvecConfig.model_validate(data)
    except ValidationError as e:
        env_paths = {tuple(path): name for name in env if (path := _env_path(name))}
        raise ConfigError("invalid", _format_validation_error(e, str(cfg_path), env_paths)) from e
