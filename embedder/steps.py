"""The per-item steps and the one declaration of how they connect (`GRAPH`):

    decode ──┬─> asr ──┐
             ├─> ocr ──┴─> text
             ├─> visual
             ├─> thumbs            (UI thumbnails into the payload; no model)
             └─> omni              (optional: frames + audio in one model, when `models.omni` is set)

Each step function takes its model (the decoder for `decode`), a batch of `Work` and the config, and updates
the items in place through `guard`, so that every path gives the same vectors, models record and reasons.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.audio_fp import audio_fingerprint
from embedder.fingerprint import video_fingerprint
from embedder.graph import Graph, Step
from embedder.items import validate_item
from embedder.relations import ItemPrints
from embedder.types import DecodedMedia
from embedder.work import Work, guard, live, ran, timed

if TYPE_CHECKING:
    from embedder.config import DedupConfig, ReelvecConfig
    from embedder.decode import Decoder

log = logging.getLogger(__name__)

TEXT_MODALITIES = ("caption", "transcript", "ocr")


def load_decoder(cfg: ReelvecConfig) -> Decoder:
    """The decoder; OCR frames are sampled only when the OCR model is there to read them."""
    from embedder.decode import Decoder
    from embedder.pipeline import unavailable_models

    ocr_on = cfg.models.ocr.card not in unavailable_models(cfg)
    fp = cfg.fingerprint if cfg.dedup.enabled else None
    return Decoder(cfg.decode, cfg.limits, ocr=cfg.ocr if ocr_on else None, fingerprint=fp)


def decode_step(decoder: Decoder, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """Validate, then probe + sampled frames (+ OCR and fingerprint frames) + 16 kHz audio, one item at a time in
    the killable worker; then the visual and audio fingerprints (cheap, while the small frames are at hand)."""
    for w in live(works):
        with guard([w], "validate"):
            validate_item(w.item, cfg.limits)
    for w in live(works):
        t0 = time.perf_counter()
        with guard([w], "decode"):
            w.decoded = decoder.decode(w.item.media)
        timed([w], "decode_ms", t0)
        if w.decoded is None or w.decoded.fp_frames is None or not len(w.decoded.fp_frames):
            continue
        t0 = time.perf_counter()
        with guard([w], "fingerprint"):
            w.prints = item_prints(w.decoded, cfg.dedup)
        w.decoded = replace(w.decoded, fp_frames=None)  # hashed: no later step reads them
        timed([w], "fingerprint_ms", t0)


def item_prints(decoded: DecodedMedia, cfg: DedupConfig) -> ItemPrints:
    """The visual print of the dense grey frames and the audio print of the track (None when silent or absent)."""
    video = video_fingerprint(decoded.fp_frames, decoded.fp_timestamps_s, cfg)  # type: ignore[arg-type]
    return ItemPrints.of(video, audio_fingerprint(decoded.audio, cfg), cfg)


def asr_step(asr: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """Speech gate + transcripts, batched across items."""
    todo = [w for w in live(works) if w.decoded is not None]
    if not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "asr"):
        for w, tr in zip(todo, asr.transcribe_batch([w.decoded.audio for w in todo]), strict=True):  # type: ignore[union-attr]
            w.transcript = tr
        ran(todo, asr)
    timed(todo, "asr_ms", t0)


def ocr_step(ocr: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """On-screen text of every item's OCR frames in one batched call."""
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.ocr_frames is not None]
    if not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "ocr"):
        clips = [(w.decoded.ocr_frames, w.decoded.ocr_timestamps_s) for w in todo]  # type: ignore[union-attr]
        for w, res in zip(todo, ocr.read_batch(clips), strict=True):
            w.ocr = res
        ran(todo, ocr)
    timed(todo, "ocr_ms", t0)


def visual_step(clip: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """One CLIP call over every item's frames, mean-pooled per item (per-frame vectors kept for moments)."""
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.frames.size]
    if not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "clip"):
        pooled, per_frame = clip.encode_clips([w.decoded.frames for w in todo])  # type: ignore[union-attr]
        for row, w in enumerate(todo):
            w.vectors["visual"] = pooled[row]
            w.frame_vectors = per_frame[row]
        ran(todo, clip)
    timed(todo, "clip_ms", t0)


def document_texts(work: Work, max_chars: int) -> dict[str, str]:
    """Modality → the text the text encoder embeds for this item (caption, transcript, on-screen text)."""
    from embedder.encoders.text import truncate_words
    from embedder.items import caption_text

    texts = {
        "caption": caption_text(work.item),
        "transcript": truncate_words(work.transcript.text, max_chars),
        "ocr": truncate_words(work.ocr.text, max_chars),
    }
    return {m: t for m, t in texts.items() if t}


def text_step(text: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """One text-encoder call over every item's caption, transcript and on-screen text."""
    todo = live(works)
    if not todo:
        return
    jobs = [(w, m, t) for w in todo for m, t in document_texts(w, cfg.text.transcript_max_chars).items()]
    t0 = time.perf_counter()
    with guard(todo, "text"):
        enc = text.encode([t for _, _, t in jobs], kind="document") if jobs else []
        for row, (w, m, _) in enumerate(jobs):
            w.vectors[m] = enc[row]
        ran(todo, text)
    timed(todo, "text_ms", t0)


def thumbs_step(_model: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """A few small JPEGs of the sampled frames into the payload, for the browser UI (`ui.thumbs`; 0: none)."""
    from embedder.thumbs import thumbs_payload

    ui = cfg.ui
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.frames.size]
    if ui.thumbs <= 0 or not todo:
        return
    t0 = time.perf_counter()
    for w in todo:
        with guard([w], "thumbs"):
            d = w.decoded
            w.fields.update(thumbs_payload(d.frames, d.timestamps_s, ui.thumbs, ui.thumb_size, ui.thumb_quality))  # type: ignore[union-attr]
    timed(todo, "thumbs_ms", t0)


def omni_step(omni: Any, works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """One omni-encoder call over every item's frames and audio (one vector per clip, its own modality)."""
    todo = [w for w in live(works) if w.decoded is not None and w.decoded.frames.size]
    if not todo:
        return
    t0 = time.perf_counter()
    with guard(todo, "omni"):
        vecs = omni.encode_clips([w.decoded.frames for w in todo], [w.decoded.audio for w in todo])  # type: ignore[union-attr]
        for row, w in enumerate(todo):
            w.vectors["omni"] = vecs[row]
        ran(todo, omni)
    timed(todo, "omni_ms", t0)


def _card_dims(modalities: tuple[str, ...]) -> Any:
    def dims(card_dims: int | None, _cfg: ReelvecConfig) -> dict[str, int]:
        if card_dims is None:
            from embedder.types import ReelvecError

            raise ReelvecError("invalid_card", f"the card for {modalities} must state dims")
        return dict.fromkeys(modalities, int(card_dims))

    return dims


GRAPH = Graph(
    (
        Step("decode", decode_step, load=load_decoder, reads=("media", "item"), writes=("decoded", "prints"),
             produces=("frames", "ocr_frames", "audio"), serial=True),
        Step("asr", asr_step, role="asr", after=("decode",), reads=("audio",), writes=("transcript",)),
        Step("ocr", ocr_step, role="ocr", after=("decode",), reads=("ocr_frames",), writes=("ocr",)),
        Step("visual", visual_step, role="clip", after=("decode",), reads=("frames",),
             writes=("vectors", "frame_vectors"), vectors=_card_dims(("visual",)), weights={"visual": 0.4},
             query=lambda m, texts: {"visual": np.asarray(m.encode_text(texts))}),
        Step("text", text_step, role="text", after=("asr", "ocr"), reads=("item", "transcript", "ocr"),
             writes=("vectors",), vectors=_card_dims(TEXT_MODALITIES),
             weights={"caption": 0.22, "transcript": 0.22, "ocr": 0.16},
             query=lambda m, texts: dict.fromkeys(TEXT_MODALITIES, np.asarray(m.encode(texts, kind="query"))),
             documents=lambda m, texts: np.asarray(m.encode(texts, kind="document"))),
        Step("thumbs", thumbs_step, after=("decode",), reads=("frames",), writes=("fields",)),
        Step("omni", omni_step, role="omni", after=("decode",), reads=("frames", "audio"), writes=("vectors",),
             vectors=_card_dims(("omni",)), weights={"omni": 0.3},
             query=lambda m, texts: {"omni": np.asarray(m.encode_text(texts, kind="query"))}),
    )
)  # fmt: skip
"""The one declaration of reelvec's per-item steps; every path is derived from it."""
