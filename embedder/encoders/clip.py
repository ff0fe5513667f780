"""open_clip image and text towers: frames → one pooled visual vector per item; query text → the same space.

Architecture comes from open_clip's JSON model configs (a card may ship its own via `params.model_config`),
weights from the card's file; preprocessing is done in torch on whole frame batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embedder.cards import ModelCard
from embedder.config import ClipConfig
from embedder.types import ConfigError

log = logging.getLogger(__name__)

# Card params that override open_clip's preprocess_cfg (names as in open_clip's pretrained registry).
_PREPROCESS = ("mean", "std", "interpolation", "resize_mode")


class ClipEncoder:
    """A loaded open_clip model; frame features are L2-normalized then mean-pooled (CLIP4Clip baseline)."""

    def __init__(self, card: ModelCard, weights: Path, cfg: ClipConfig, device: str, dtype: torch.dtype) -> None:
        import open_clip

        arch = card.params.get("arch")
        if not arch:
            raise ConfigError("invalid_card", f"card {card.id}: params.arch (open_clip model name) is required")
        if card.params.get("model_config"):
            config_path = Path(str(card.card_path)).parent / card.params["model_config"]
            open_clip.add_model_config(config_path)
        ckpt = weights / card.files[0].path if weights.is_dir() and card.files else weights
        model = open_clip.create_model(arch, pretrained=str(ckpt), device=device, weights_only=True)
        self.model = model.to(dtype=dtype).eval()
        self.tokenizer = _tokenizer(open_clip, arch, card, weights)
        # A checkpoint loaded from a file carries no preprocessing, so the card states it (open_clip's pretrained
        # registry values: SigLIP2 / PE-Core squash frames to S×S with mean = std = 0.5); else the model's default.
        pp = {**model.visual.preprocess_cfg, **{k: card.params[k] for k in _PREPROCESS if k in card.params}}
        self.squash = pp.get("resize_mode") == "squash"
        self.interpolation = "bilinear" if pp.get("interpolation") == "bilinear" else "bicubic"
        self.image_size = tuple(pp["size"]) if isinstance(pp["size"], tuple | list) else (pp["size"],) * 2
        self.mean = torch.tensor(pp["mean"], device=device, dtype=dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=device, dtype=dtype).view(1, 3, 1, 1)
        self.card, self.cfg, self.device, self.dtype = card, cfg, device, dtype
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["probe"]).to(device))
        self.dims = int(probe.shape[-1])
        if card.dims is not None and card.dims != self.dims:
            raise ConfigError("invalid_card", f"card {card.id} says dims={card.dims}, model outputs {self.dims}")

    def _preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 T×H×W×3 → normalized T×3×S×S: resize short side and center crop (or squash, per the model)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        th, tw = self.image_size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = (th, tw) if self.squash else (max(th, round(h * scale)), max(tw, round(w * scale)))
        x = F.interpolate(x, size=(nh, nw), mode=self.interpolation, align_corners=False, antialias=True).clamp_(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[:, :, top : top + th, left : left + tw].to(self.dtype)
        return (x - self.mean) / self.std

    def encode_frames(self, clips: list[np.ndarray]) -> np.ndarray:
        """One L2-normalized visual vector per clip; frames of all clips are batched together."""
        return self.encode_clips(clips)[0]

    @torch.inference_mode()
    def encode_clips(self, clips: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per clip: the pooled visual vector (mean of L2-normalized frame features, renormalized) and the
        per-frame vectors (kept for moment search); frames of all clips are batched together."""
        if not clips:
            return np.zeros((0, self.dims), dtype=np.float32), []
        counts = [len(c) for c in clips]
        # Clips differ in frame size, so each is preprocessed to S×S before frames are batched across clips.
        pixels = torch.cat([self._preprocess(c) for c in clips])
        feats = []
        for s in range(0, len(pixels), self.cfg.batch_size):
            f = self.model.encode_image(pixels[s : s + self.cfg.batch_size])
            feats.append(F.normalize(f.float(), dim=-1))
        per_frame = torch.split(torch.cat(feats), counts)
        pooled = torch.stack([chunk.mean(0) for chunk in per_frame])
        frames = [chunk.cpu().numpy().astype(np.float32) for chunk in per_frame]
        return F.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32), frames

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """CLIP text-tower vectors (L2-normalized) for search queries against `visual`."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        out = []
        for s in range(0, len(texts), self.cfg.batch_size):
            tok = self.tokenizer(texts[s : s + self.cfg.batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tok).float(), dim=-1))
        return torch.cat(out).cpu().numpy().astype(np.float32)


def _tokenizer(open_clip: Any, arch: str, card: ModelCard, weights: Path) -> Any:
    """open_clip's tokenizer for `arch`; a card with `params.tokenizer_dir` (SigLIP2's Gemma tokenizer) reads the
    Hugging Face tokenizer files pulled next to the weights instead of fetching them from the Hub."""
    tok_dir = card.params.get("tokenizer_dir")
    if tok_dir is None:
        return open_clip.get_tokenizer(arch)
    text_cfg = open_clip.get_model_config(arch)["text_cfg"]
    folder = (weights if weights.is_dir() else weights.parent) / str(tok_dir)
    return open_clip.tokenizer.HFTokenizer(
        str(folder),
        context_length=text_cfg.get("context_length", 77),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **text_cfg.get("tokenizer_kwargs", {}),
    )
