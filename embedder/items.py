"""The one ItemInput builder: HTTP form fields, sidecar rows and manifest rows all become items here.

Same checks, same errors (`bad_item_id`, `bad_metadata`, `caption_too_long`, `too_many_hashtags`) on every path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedder.config import LimitsConfig, describe_errors
from embedder.types import ItemInput, MediaError


class ItemMetadata(BaseModel):
    """An item's metadata object (upload `metadata` field, manifest `metadata` column). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    hashtags: list[str] = Field(default_factory=list, description="Hashtags, with or without `#`.")
    creator_id: str | None = Field(None, max_length=256)
    created_at: datetime | None = Field(None, description="ISO 8601; naive times are UTC.")
    attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Free-form scalar attributes stored with the item."
    )


# A JSON string literal (escapes included): brackets inside one do not nest.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest, counted without parsing (so without recursion)."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"holds number {text[:20]}, out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds {name} (finite numbers only)")


def load_json(text: str | bytes, max_depth: int, max_bytes: int) -> Any:
    """Client JSON → value; ValueError (a client-safe message) when over `max_bytes`, nested deeper than
    `max_depth`, invalid, or holding NaN, Infinity or a number no float holds. Size and depth are checked
    before parsing: the parser recurses once per level (issue 18: 10,000 levels was a RecursionError)."""
    if len(text) > max_bytes:
        raise ValueError(f"{len(text)} bytes, over {max_bytes}")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if json_depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON (line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # _finite / _no_constant, or an integer of more than 4,300 digits
        raise ValueError(str(e) if str(e).startswith("holds") else "holds a number too long") from None


def json_phrase(e: ValueError) -> str:
    """A `load_json` / `check_depth` refusal as the end of a sentence about the input ("metadata is …")."""
    text = str(e)
    return text if text.startswith("holds") else f"is {text}"


def check_depth(value: Any, max_depth: int, depth: int = 0) -> None:
    """ValueError when an already-parsed value (a Parquet struct, say) nests deeper than `max_depth`."""
    if isinstance(value, Mapping | list | tuple):
        if depth >= max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        for v in value.values() if isinstance(value, Mapping) else value:
            check_depth(v, max_depth, depth + 1)


@lru_cache(maxsize=8)
def _id_re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_item_id(item_id: Any, limits: LimitsConfig) -> str:
    """An item id as given, or `bad_item_id`: a non-empty string of `limits.item_id_pattern`, bounded length."""
    if not isinstance(item_id, str) or not item_id:
        raise MediaError("bad_item_id", "item_id is required and must be a non-empty string")
    if len(item_id) > limits.max_item_id_chars:
        raise MediaError("bad_item_id", f"item_id longer than limits.max_item_id_chars={limits.max_item_id_chars}")
    if item_id in (".", ".."):
        raise MediaError("bad_item_id", "item_id may not be '.' or '..': clients drop such URL segments")
    if not _id_re(limits.item_id_pattern).fullmatch(item_id):
        raise MediaError(
            "bad_item_id",
            "item_id may hold printable characters except '/' and '\\', with no control characters and no "
            "leading or trailing whitespace (limits.item_id_pattern)",
        )
    return item_id


def parse_metadata(raw: str | Mapping[str, Any] | None, limits: LimitsConfig) -> ItemMetadata:
    """The metadata object from JSON text or a mapping (bounded by `limits.max_metadata_bytes` and
    `limits.max_json_depth`); anything else is `bad_metadata`."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return ItemMetadata()
    try:
        if isinstance(raw, str):
            raw = load_json(raw, limits.max_json_depth, limits.max_metadata_bytes)
        else:
            check_depth(raw, limits.max_json_depth)
    except ValueError as e:
        raise MediaError("bad_metadata", f"metadata {json_phrase(e)}") from e
    if not isinstance(raw, Mapping):
        raise MediaError("bad_metadata", f"metadata must be a JSON object, got {type(raw).__name__}")
    try:
        return ItemMetadata.model_validate(dict(raw))
    except ValidationError as e:
        raise MediaError("bad_metadata", f"metadata has the wrong shape: {describe_errors(e.errors())}") from e


def validate_item(item: ItemInput, limits: LimitsConfig) -> None:
    """Id alphabet and length, caption and hashtag limits: checked before any decoding, on every path."""
    check_item_id(item.item_id, limits)
    if not isinstance(item.caption, str):
        raise MediaError("bad_metadata", "caption must be text")
    if len(item.caption) > limits.max_caption_chars:
        raise MediaError(
            "caption_too_long", f"{len(item.caption)} chars > limits.max_caption_chars={limits.max_caption_chars}"
        )
    if len(item.hashtags) > limits.max_hashtags:
        raise MediaError("too_many_hashtags", f"{len(item.hashtags)} > limits.max_hashtags={limits.max_hashtags}")


def build_item(
    item_id: Any,
    media: bytes | str,
    limits: LimitsConfig,
    caption: Any = None,
    metadata: str | Mapping[str, Any] | None = None,
) -> ItemInput:
    """Validate and build one item; raises `MediaError` with a stable reason for anything unusable."""
    check_item_id(item_id, limits)
    meta = parse_metadata(metadata, limits)
    if caption is not None and not isinstance(caption, str):
        raise MediaError("bad_metadata", f"caption must be text, got {type(caption).__name__}")
    item = ItemInput(
        item_id=item_id,
        media=media,
        caption=caption or "",
        hashtags=list(meta.hashtags),
        creator_id=meta.creator_id,
        created_at=meta.created_at,
        metadata=dict(meta.attributes),
    )
    validate_item(item, limits)
    return item


def normalize_hashtags(tags: list[str]) -> list[str]:
    return [t.strip().lstrip("#").lower() for t in tags if t.strip().lstrip("#")]


def caption_text(item: ItemInput) -> str:
    """What the caption modality embeds: the caption followed by its hashtags."""
    tags = " ".join(f"#{t}" for t in normalize_hashtags(item.hashtags))
    return " ".join(f"{item.caption.strip()} {tags}".split())
