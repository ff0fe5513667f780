"""Text encoder on transformers' AutoModel: sentence encoders (mean / cls pooling) and decoder-LLM
embedders (last-token pooling, instruction prefixes, Matryoshka truncation) through the same class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from embedder.cards import ModelCard
from embedder.config import TextConfig
from embedder.types import ConfigError

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "last_token"]
TextKind = Literal["query", "document"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool B×T×H token states to B×H; `last_token` finds the last real token under either padding side."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TextEncoder:
    """A loaded transformers encoder; `encode` returns L2-normalized vectors (when the card says so)."""

    def __init__(self, card: ModelCard, weights: Path, cfg: TextConfig, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars are noise in service logs

        p = card.params
        self.pooling: Pooling = p.get("pooling", "mean")
        if self.pooling not in ("mean", "cls", "last_token"):
            raise ConfigError("invalid_card", f"card {card.id}: params.pooling must be mean, cls or last_token")
        self.normalize = bool(p.get("normalize", True))
        self.max_tokens = min(int(p.get("max_tokens", cfg.max_tokens)), cfg.max_tokens)
        self.prefix = {"query": p.get("query_prefix", ""), "document": p.get("document_prefix", "")}
        self.tokenizer = AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(str(weights), local_files_only=True, dtype=dtype).to(device).eval()
        self.card, self.cfg, self.device = card, cfg, device
        full = int(self.model.config.hidden_size)
        stated = p.get("full_dims", card.dims)  # a Matryoshka card (`id@dims`) keeps the model's own size here
        if stated is not None and int(stated) != full:
            raise ConfigError("invalid_card", f"card {card.id} says dims={stated}, model outputs {full}")
        self.dims = int(p.get("truncate_dims") or full)

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: TextKind = "document") -> np.ndarray:
        """Embed texts in batches of `text.batch_size`, truncated at `max_tokens` tokens."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        prefix = self.prefix[kind]
        out = []
        for s in range(0, len(texts), self.cfg.batch_size):
            batch = [prefix + t for t in texts[s : s + self.cfg.batch_size]]
            tok = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**tok).last_hidden_state
            v = pool(hidden, tok["attention_mask"], self.pooling).float()[:, : self.dims]  # Matryoshka prefix
            out.append(F.normalize(v, dim=-1) if self.normalize else v)
        return torch.cat(out).cpu().numpy().astype(np.float32)


def truncate_words(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` on a word boundary (long transcripts before tokenization)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut
