"""Omni encoder (EmbeddingGemma 2 through transformers' AutoModel + AutoProcessor): a clip's frames and audio
together, or a query text, into one space, for the optional `omni` modality with its own named vector.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedder.cards import ModelCard
from embedder.config import OmniConfig
from embedder.types import ConfigError

log = logging.getLogger(__name__)


class OmniEncoder:
    """Mean-pooled, L2-normalized token states (the model's sentence-transformers recipe), Matryoshka-truncated
    to the card's `dims`; frames are the decoded frames as they are, audio is 16 kHz mono float32."""

    def __init__(self, card: ModelCard, weights: Path, cfg: OmniConfig, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.processor = AutoProcessor.from_pretrained(str(weights), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(weights), local_files_only=True, dtype=dtype).to(device).eval()
        self.card, self.cfg, self.device = card, cfg, device
        p = card.params
        self.prefix = {"query": str(p.get("query_prefix", "")), "document": str(p.get("document_prefix", ""))}
        self.max_soft_tokens = int(p.get("max_soft_tokens", 70))  # vision tokens per frame
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        full = int(self.model.config.text_config.embedding_dim)
        stated = p.get("full_dims", card.dims)
        if stated is not None and int(stated) != full:
            raise ConfigError("invalid_card", f"card {card.id} says dims={stated}, model outputs {full}")
        self.dims = int(p.get("truncate_dims") or full)

    def _pool(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward one processed batch; mean over real tokens, first `dims` dims, L2-normalized."""
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        inputs.pop("token_type_ids", None)
        hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled.float()[:, : self.dims], dim=-1)

    @torch.inference_mode()
    def encode_text(self, texts: list[str], kind: str = "query") -> np.ndarray:
        """Query (or document) texts into the omni space, `omni.batch_size` at a time."""
        out = [torch.zeros((0, self.dims))]
        for s in range(0, len(texts), self.cfg.batch_size):
            batch = [self.prefix[kind] + t for t in texts[s : s + self.cfg.batch_size]]
            out.append(self._pool(self.processor(text=batch, padding=True, return_tensors="pt")).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def _usable(self, audio: np.ndarray | None) -> np.ndarray | None:
        """The first `omni.max_audio_s` of the audio, or None when there is too little to embed."""
        if audio is None or len(audio) < self.cfg.min_audio_s * self.sample_rate:
            return None
        return np.asarray(audio[: int(self.cfg.max_audio_s * self.sample_rate)], dtype=np.float32)

    @torch.inference_mode()
    def encode_clips(self, frames_list: list[np.ndarray], audio_list: list[np.ndarray | None]) -> np.ndarray:
        """One vector per clip from its frames (uint8 T×H×W×3) and audio (16 kHz mono float32, or None: no
        audio track); clips with and without audio are batched apart (one prompt layout per batch)."""
        if len(frames_list) != len(audio_list):
            raise ValueError("encode_clips needs one audio entry (or None) per clip")
        audio = [self._usable(a) for a in audio_list]
        out = np.zeros((len(frames_list), self.dims), dtype=np.float32)
        for with_audio in (True, False):
            idx = [i for i, a in enumerate(audio) if (a is not None) == with_audio]
            for s in range(0, len(idx), self.cfg.batch_size):
                part = idx[s : s + self.cfg.batch_size]
                sound = [audio[i] for i in part] if with_audio else None
                out[part] = self._clips([frames_list[i] for i in part], sound)
        return out

    def _clips(self, frames: list[np.ndarray], audio: list[np.ndarray | None] | None) -> np.ndarray:
        kwargs: dict = {
            "videos": [np.ascontiguousarray(f) for f in frames],
            # decode already sampled the frames: keep them all, no timestamps (they need the source fps)
            "videos_kwargs": {"do_sample_frames": False, "max_soft_tokens": self.max_soft_tokens},
        }
        if audio is not None:
            kwargs["audio"] = audio
            kwargs["audio_kwargs"] = {
                "max_length": int(self.cfg.max_audio_s * self.sample_rate),
                "sampling_rate": self.sample_rate,
            }
        inputs = self.processor(**kwargs, padding=True, return_tensors="pt")
        return self._pool(inputs).cpu().numpy()
