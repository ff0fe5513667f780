"""One path from a model card to a ready model, like open_clip's `create_model`: card → weights → loader."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from embedder.asr import Transcriber
from embedder.cards import ModelCard, check_pinned, load_card
from embedder.config import ModelsConfig, ReelvecConfig
from embedder.encoders.clip import ClipEncoder
from embedder.encoders.omni import OmniEncoder
from embedder.encoders.text import TextEncoder
from embedder.ocr import OcrReader

log = logging.getLogger(__name__)

Model = ClipEncoder | TextEncoder | OmniEncoder | Transcriber | OcrReader


def resolve_device(models: ModelsConfig) -> str:
    """`auto` → cuda when a GPU is visible, else cpu; an explicit `cuda` without a GPU is an error."""
    if models.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if models.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("models.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return models.device


def resolve_dtype(models: ModelsConfig, device: str) -> torch.dtype:
    if models.dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return getattr(torch, models.dtype)


_LOADERS: dict[str, Callable[[ModelCard, Path, ReelvecConfig, str, torch.dtype], Any]] = {
    "open_clip": lambda card, w, cfg, dev, dt: ClipEncoder(card, w, cfg.clip, dev, dt),
    "hf_text": lambda card, w, cfg, dev, dt: TextEncoder(card, w, cfg.text, dev, dt),
    "hf_omni": lambda card, w, cfg, dev, dt: OmniEncoder(card, w, cfg.omni, dev, dt),
    "faster_whisper": lambda card, w, cfg, dev, _dt: Transcriber(card, w, cfg.asr, dev),
    "rapidocr": lambda card, w, cfg, dev, _dt: OcrReader(
        card,
        w,
        cfg.ocr,
        dev,
        cfg.models.torch_threads,
        skip_identical=cfg.ocr.skip_unchanged,
        dedup_similarity=cfg.ocr.dedup_similarity,
        min_chars=cfg.ocr.min_chars,
    ),
}


def load_model(card_ref: str | Path, cfg: ReelvecConfig) -> Model:
    """Load the model a card names; `ModelUnavailableError` when its weights are absent."""
    card = load_card(card_ref, cfg.models.cards_dir)
    weights = card.resolve(cfg.models.models_dir)
    check_pinned(card, weights)  # a card that pins a sha256 loads nothing else (digest cached by size + mtime)
    device = resolve_device(cfg.models)
    if cfg.models.torch_threads:
        torch.set_num_threads(cfg.models.torch_threads)
    log.info("loading model %s (%s) from %s on %s", card.id, card.family, weights, device)
    return _LOADERS[card.family](card, weights, cfg, device, resolve_dtype(cfg.models, device))
