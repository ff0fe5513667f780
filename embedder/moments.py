"""Moment search: where in a clip a query matches best — a transcript segment, an on-screen text line or a frame.

Candidates come from what the index stores per item (timestamped transcript segments, OCR lines, per-frame visual
vectors and their timestamps). Text candidates are scored with the text encoder against the query's text vector;
frames with the CLIP frame vectors against the query's CLIP text vector. Scores of different encoders are not
comparable, so a text moment (same encoder for every text source) wins whenever the hit has one; a frame is the
moment of a hit without any text candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A stretch of one clip that may be the moment: its source, time span and text (empty for a frame)."""

    source: str  # "transcript" | "ocr" | "visual"
    start_s: float
    end_s: float
    text: str = ""


@dataclass(frozen=True)
class Moment:
    source: str
    start_s: float
    end_s: float
    score: float
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "score": round(self.score, 4),
            "text": self.text,
        }


def text_candidates(payload: Mapping[str, Any]) -> list[Candidate]:
    """Transcript segments and on-screen text lines of a stored item (its payload)."""
    out = [
        Candidate("transcript", float(s["start_s"]), float(s["end_s"]), str(s["text"]).strip())
        for s in payload.get("segments") or ()
        if str(s.get("text", "")).strip()
    ]
    out += [
        Candidate("ocr", float(x["first_s"]), float(x["last_s"]), str(x["text"]).strip())
        for x in payload.get("ocr_lines") or ()
        if str(x.get("text", "")).strip()
    ]
    return out


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def frame_moment(
    frame_vectors: np.ndarray, timestamps_s: Sequence[float], query_visual: np.ndarray, duration_s: float
) -> Moment | None:
    """The frame whose CLIP vector is closest to the query's CLIP text vector; its span reaches halfway to the
    neighbouring sampled frames."""
    if frame_vectors is None or len(frame_vectors) == 0 or len(timestamps_s) != len(frame_vectors):
        return None
    scores = _unit(frame_vectors) @ _unit(query_visual)
    i = int(np.argmax(scores))
    ts = list(timestamps_s)
    start = (ts[i - 1] + ts[i]) / 2 if i > 0 else 0.0
    end = (ts[i] + ts[i + 1]) / 2 if i + 1 < len(ts) else max(duration_s, ts[i])
    return Moment("visual", start, end, float(scores[i]))


def best_moment(
    candidates: Sequence[Candidate],
    candidate_vectors: np.ndarray,
    query_text: np.ndarray | None,
    visual: Moment | None = None,
) -> Moment | None:
    """The best text candidate by cosine to the query's text vector; else the visual moment (or None)."""
    if candidates and query_text is not None and len(candidate_vectors) == len(candidates):
        scores = _unit(candidate_vectors) @ _unit(query_text)
        i = int(np.argmax(scores))
        c = candidates[i]
        return Moment(c.source, c.start_s, c.end_s, float(scores[i]), c.text)
    return visual


def find_moments(
    payloads: Sequence[Mapping[str, Any]],
    query: Mapping[str, np.ndarray],
    encode_texts: Callable[[list[str]], np.ndarray],
    frames: Mapping[str, np.ndarray],
) -> list[Moment | None]:
    """The moment of each hit (payload with `item_id`): one batched text-encoder call over every hit's
    candidates, frame scores from the stored per-frame vectors; the same code for the CLI and HTTP."""
    per_hit = [text_candidates(p) for p in payloads]
    flat = [c.text for cands in per_hit for c in cands]
    vecs = encode_texts(flat) if flat and query.get("transcript") is not None else np.zeros((0, 1), np.float32)
    out: list[Moment | None] = []
    start = 0
    for p, cands in zip(payloads, per_hit, strict=True):
        visual = None
        fv = frames.get(str(p.get("item_id")))
        if fv is not None and query.get("visual") is not None:
            visual = frame_moment(
                fv, p.get("frame_timestamps_s") or [], query["visual"], float(p.get("duration_s") or 0)
            )
        mine = vecs[start : start + len(cands)] if len(vecs) else vecs
        out.append(best_moment(cands, mine, query.get("transcript"), visual))
        start += len(cands)
    return out
