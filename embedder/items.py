"""The one ItemInput builder: HTTP form fields, sidecar rows and manifest rows all become items here.

Same checks, same errors (`bad_item_id`, `bad_metadata`, `caption_too_long`, `too_many_hashtags`) on every path.
"""

from __future__ import annotations

import json
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

    model_config = ConfigDict(extra="forbid")

    hashtags: list[str] = Field(default_factory=list, description="Hashtags, with or without `#`.")
    creator_id: str | None = Field(None, max_length=256)
    created_at: datetime | None = Field(None, description="ISO 8601; naive times are UTC.")
    attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Free-form scalar attributes stored with the item."
    )


@lru_cache(maxsize=8)
def _id_re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_item_id(item_id: Any, limits: LimitsConfig) -> str:
    """An item id as given, or `bad_item_id`: a non-empty string of `limits.item_id_pattern`, bounded length."""
    if not isinstance(item_id, str) or not item_id:
        raise MediaError("bad_item_id", "item_id is required and must be a non-empty string")
    if len(item_id) > limits.max_item_id_chars:
        raise MediaError("bad_item_id", f"item_id longer than limits.max_item_id_chars={limits.max_item_id_chars}")
    if not _id_re(limits.item_id_pattern).fullmatch(item_id):
        raise MediaError(
            "bad_item_id",
            "item_id may hold printable characters except '/' and '\\', with no control characters and no "
            "leading or trailing whitespace (limits.item_id_pattern)",
        )
    return item_id


def parse_metadata(raw: str | Mapping[str, Any] | None) -> ItemMetadata:
    """The metadata object from JSON text or a mapping; anything else is `bad_metadata`."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return ItemMetadata()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise MediaError("bad_metadata", f"metadata is not valid JSON (line {e.lineno} column {e.colno})") from e
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
    meta = parse_metadata(metadata)
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
