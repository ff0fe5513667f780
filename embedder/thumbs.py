"""Thumbnails for the browser UI: a few small JPEGs per item, cut from the frames decode already sampled.

Stored in the item's payload (base64, key `thumbs`, times in `thumb_times_s`) so they travel with the item to a
Qdrant server and leave with it on delete; bench/thumbs.py measures what that costs per item and per 1 M items.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

THUMBS_KEY = "thumbs"
THUMB_TIMES_KEY = "thumb_times_s"


def pick_frames(timestamps: Sequence[float], count: int) -> list[int]:
    """Indices of `count` frames spread evenly over the sampled ones (all of them when there are fewer)."""
    n = len(timestamps)
    if count <= 0 or n == 0:
        return []
    if n <= count:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, count)})


def make_thumbs(
    frames: np.ndarray, timestamps: Sequence[float], count: int = 4, size: int = 96, quality: int = 70
) -> list[bytes]:
    """`count` JPEGs (longest side `size` px) of frames spread over the clip, in time order."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be T×H×W×3 uint8, got {frames.shape} {frames.dtype}")
    if len(timestamps) != len(frames):
        raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
    out = []
    for i in pick_frames(timestamps, count):
        img = Image.fromarray(frames[i])
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        out.append(buf.getvalue())
    return out


def thumbs_payload(
    frames: np.ndarray, timestamps: Sequence[float], count: int = 4, size: int = 96, quality: int = 70
) -> dict[str, Any]:
    """The payload fields the index stores: base64 JPEGs and the time of each (seconds into the clip)."""
    picked = pick_frames(timestamps, count)
    jpegs = make_thumbs(frames, timestamps, count, size, quality)
    return {
        THUMBS_KEY: [base64.b64encode(j).decode("ascii") for j in jpegs],
        THUMB_TIMES_KEY: [round(float(timestamps[i]), 3) for i in picked],
    }


def thumb_jpeg(payload: dict[str, Any], n: int) -> bytes | None:
    """The n-th stored thumbnail as JPEG bytes, or None when the item has fewer (or none: ingested before)."""
    thumbs = payload.get(THUMBS_KEY) or []
    if not isinstance(thumbs, list) or not 0 <= n < len(thumbs) or not isinstance(thumbs[n], str):
        return None
    return base64.b64decode(thumbs[n])
