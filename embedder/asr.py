"""Speech to text with faster-whisper, from the model card's bundled CTranslate2 weights.

VAD (Silero, shipped inside faster-whisper) drops non-speech first, so a silent clip yields an empty
transcript rather than Whisper's hallucinated filler.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from embedder.cards import ModelCard
from embedder.config import AsrConfig
from embedder.types import Segment, Transcript

log = logging.getLogger(__name__)

# Below this RMS the clip is treated as silent without running the model (cheap early exit).
_SILENCE_RMS = 1e-4


class Transcriber:
    """faster-whisper model loaded once; `transcribe` takes 16 kHz mono float32 audio."""

    def __init__(self, card: ModelCard, weights: Path, cfg: AsrConfig, device: str) -> None:
        from faster_whisper import WhisperModel

        self.card = card
        self.cfg = cfg
        compute_type = cfg.compute_type if device == "cpu" else "float16"
        self.model = WhisperModel(
            str(weights),
            device=device,
            compute_type=compute_type,
            cpu_threads=cfg.cpu_threads,
            local_files_only=True,
        )
        langs = card.params.get("languages")
        self.language = cfg.language or (langs[0] if langs and len(langs) == 1 else None)

    def transcribe(self, audio: np.ndarray | None) -> Transcript:
        """Transcript with timestamped segments; empty for missing, silent or speechless audio."""
        if audio is None or audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < _SILENCE_RMS:
            return Transcript.empty()
        # One BLAS thread for the mel features: OpenBLAS's thread count (Ray workers get OMP_NUM_THREADS=1, a shell
        # gets every core) moves them by 1 ulp, which flipped greedy tokens on a sample clip ("egg and" vs
        # "eggplant"), so the backfill and `embed` stored different transcripts for the same clip.
        with threadpool_limits(limits=1, user_api="blas"):
            segments, info = self.model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=self.language,
                beam_size=self.cfg.beam_size,
                vad_filter=self.cfg.vad_filter,
                # No temperature fallback: sampling made the same clip transcribe differently run to run, and
                # the endpoint and the backfill must store identical vectors for identical input.
                temperature=0.0,
                condition_on_previous_text=False,
            )
            segs = tuple(Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip())
        text = " ".join(s.text for s in segs).strip()
        return Transcript(text=text, language=info.language if text else None, segments=segs)
