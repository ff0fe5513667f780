"""One item on its way through the step graph (`Work`), the one error policy (`guard`), and the named media a
step can read (upload bytes, frames, OCR frames, audio), so that every path can ship or drop them by name."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from embedder.types import DecodedMedia, ItemFailure, ItemInput, OcrResult, ReelvecError, Transcript

log = logging.getLogger(__name__)

NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)
# Heavy media by name: "media" is the upload (bytes or a path), the others live on `Work.decoded`.
MEDIA: tuple[str, ...] = ("media", "frames", "ocr_frames", "audio")
_EMPTY: dict[str, Any] = {"frames": NO_FRAMES, "ocr_frames": None, "audio": None}
# What a step may write: `Work` fields merged back from a copy that ran elsewhere (a replica, a stage).
RESULTS: tuple[str, ...] = ("decoded", "transcript", "ocr", "prints", "frame_vectors", "vectors", "fields")


@dataclass
class Work:
    """One item on its way through the steps: inputs, what each step produced, and its error if it failed."""

    item: ItemInput
    decoded: DecodedMedia | None = None
    transcript: Transcript = field(default_factory=Transcript.empty)
    ocr: OcrResult = field(default_factory=OcrResult.empty)
    prints: Any = None  # embedder.relations.ItemPrints (decode step), for relations at ingest
    frame_vectors: np.ndarray | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # extra payload fields a step stores (e.g. thumbnails)
    models: dict[str, str] = field(default_factory=dict)  # card id -> version of every model that ran on it
    timings: dict[str, float] = field(default_factory=dict)
    stage: str = ""
    error: ReelvecError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure(self) -> ItemFailure:
        assert self.error is not None
        return ItemFailure(self.item.item_id, self.stage, self.error.reason, self.error.detail)

    def medium(self, name: str) -> Any:
        """One named medium (None when absent)."""
        if name == "media":
            return self.item.media
        return getattr(self.decoded, name) if self.decoded is not None else None

    def with_media(self, values: dict[str, Any]) -> Work:
        """A shallow copy with these media replaced (arrays, object references, or empty)."""
        item = replace(self.item, media=values["media"]) if "media" in values else self.item
        decoded = self.decoded
        dec = {k: v for k, v in values.items() if k != "media"}
        if decoded is not None and dec:
            decoded = replace(decoded, **dec)
        return replace(
            self, item=item, decoded=decoded, vectors=dict(self.vectors), fields=dict(self.fields),
            models=dict(self.models), timings=dict(self.timings),
        )  # fmt: skip

    def slim(self, keep: Iterable[str] = ()) -> Work:
        """A copy without the heavy media except those in `keep`: what travels to a step that reads only those."""
        keep = set(keep)
        return self.with_media({m: (b"" if m == "media" else _EMPTY[m]) for m in MEDIA if m not in keep})

    def drop(self, names: Iterable[str]) -> None:
        """Free these media in place (no later step reads them)."""
        names = [n for n in names if n in MEDIA]
        if names:
            slim = self.slim(keep=[m for m in MEDIA if m not in names])
            self.item, self.decoded = slim.item, slim.decoded

    def merge(self, other: Work, fields: Iterable[str] = RESULTS) -> None:
        """Take what a step wrote on a copy of this item (`fields`) back into it, with its models, timings and error."""
        for name in fields:
            if name in ("vectors", "fields"):
                getattr(self, name).update(getattr(other, name))
            elif name == "decoded":
                self.decoded = other.decoded
            else:
                setattr(self, name, getattr(other, name))
        self.models.update(other.models)
        self.timings.update(other.timings)
        if other.error is not None and self.error is None:
            self.error, self.stage = other.error, other.stage


@contextmanager
def guard(works: Sequence[Work], stage: str) -> Iterator[None]:
    """The one error policy: a `ReelvecError` fails these items with its reason; anything else fails them as
    `internal_error` (logged with its traceback, never shown to clients). Other items go on."""
    try:
        yield
    except ReelvecError as e:
        for w in works:
            if w.ok:
                w.error, w.stage = e, stage
    except Exception:
        log.exception("unexpected error in stage %s for %s", stage, [w.item.item_id for w in works])
        err = ReelvecError("internal_error", f"unexpected error in the {stage} stage")
        for w in works:
            if w.ok:
                w.error, w.stage = err, stage


def live(works: Sequence[Work]) -> list[Work]:
    return [w for w in works if w.ok]


def timed(works: Sequence[Work], key: str, t0: float) -> None:
    """Add the time since `t0`, shared equally, to each item's `key` timing."""
    share = (time.perf_counter() - t0) * 1000 / max(len(works), 1)
    for w in works:
        w.timings[key] = w.timings.get(key, 0.0) + share


def ran(works: Sequence[Work], model: Any) -> None:
    """Record that `model` (anything with a `.card`) ran on these items."""
    for w in works:
        w.models[model.card.id] = model.card.version
