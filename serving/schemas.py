"""HTTP request/response models of the Serve API and the one mapping from reelvec's typed errors to HTTP.

Every error leaves the service as `{"error": reason, "detail": text}`; the status comes from `status_for`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedder.types import ConfigError, MediaError, ModelUnavailableError, ReelvecError, StoreError

Using = Literal["fused", "visual", "caption", "transcript"]

# Clients should wait this long before retrying a 503 (index locked/unreachable, model not loaded, overload).
RETRY_AFTER_S = 1


class ApiError(ReelvecError):
    """An HTTP-level refusal (auth, content type, malformed form) that carries its own status."""

    def __init__(self, reason: str, detail: str, status: int = 422) -> None:
        super().__init__(reason, detail)
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, str, int]]:  # type: ignore[override]
        return (type(self), (self.reason, self.detail, self.status))


_MEDIA_STATUS = {"too_large": 413, "unsupported_media_type": 415, "empty_query": 400, "bad_query": 400}
_STORE_STATUS = {
    "unknown_item": 404,
    "unknown_version": 404,
    "bad_query": 400,
    "empty_query": 400,
    "bad_version": 400,
    "rejected": 400,
    # upsert validation of a computed embedding: the input produced something unstorable
    "bad_item_id": 422,
    "missing_vector": 422,
    "unknown_vector": 422,
    "bad_vector": 422,
    "bad_payload": 422,
    "schema_mismatch": 409,
    "locked": 503,
    "unreachable": 503,
}


def status_for(e: ReelvecError) -> int:
    """HTTP status of a reelvec error: media problems 4xx (413 size, 422 content), store 404/400/503, models 503."""
    if isinstance(e, ApiError):
        return e.status
    if isinstance(e, MediaError):
        return _MEDIA_STATUS.get(e.reason, 422)
    if isinstance(e, StoreError):
        return _STORE_STATUS.get(e.reason, 500)
    if isinstance(e, ModelUnavailableError):
        return 503
    if isinstance(e, ConfigError):
        return 500
    return 500


def error_headers(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}


class ErrorBody(BaseModel):
    """Body of every non-2xx response."""

    error: str = Field(description="Stable machine-readable reason, e.g. `too_large`, `unknown_item`.")
    detail: str = Field(description="Human-readable explanation.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Bad query",
        401: "API key missing",
        403: "API key wrong",
        404: "Unknown item",
        413: "Upload over limits.max_bytes",
        415: "Not multipart/form-data, or the file part is not a video",
        422: "Invalid input: unusable media, over a limit, missing field, bad metadata JSON",
        503: "Index unreachable/locked or model unavailable (Retry-After set)",
    }.items()
}


class ItemMetadata(BaseModel):
    """The `metadata` form field of an upload (JSON). Unknown keys are refused, never interpreted as paths/URLs."""

    model_config = ConfigDict(extra="forbid")

    hashtags: list[str] = Field(default_factory=list)
    creator_id: str | None = Field(None, max_length=256)
    created_at: datetime | None = None
    attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Free-form scalar attributes stored with the item."
    )


class UploadResponse(BaseModel):
    """What `POST /v1/items` returns: 201 `created` or 200 `replaced`."""

    item_id: str
    status: Literal["created", "replaced"]
    modalities: list[str]
    models: dict[str, str] = Field(description="Model card id → version for every model that ran.")
    schema_version: str
    duration_s: float
    transcript: str
    language: str | None
    decoder: str
    timings_ms: dict[str, float] = Field(description="Per-stage wall time of this upload.")


class ItemResponse(BaseModel):
    """A stored item: payload (caption, transcript, metadata…) and, on request, its vectors."""

    item_id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float]] | None = None


class DeleteResponse(BaseModel):
    item_id: str
    deleted: bool


class SearchFilters(BaseModel):
    """Payload filters shared by text, clip and id searches."""

    creator_id: str | None = None
    language: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    exclude_ids: list[str] = Field(default_factory=list)


class SearchRequest(SearchFilters):
    """`POST /v1/search` with JSON: items like `like`, or recommend from `positive` / `negative` ids."""

    model_config = ConfigDict(extra="forbid")

    like: str | None = None
    positive: list[str] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)
    k: int = Field(10, ge=1, le=100)
    using: Using = "fused"

    @model_validator(mode="after")
    def _one_source(self) -> SearchRequest:
        if self.like is None and not self.positive:
            raise ValueError("give `like` (an item id) or `positive` ids")
        if self.like is not None and (self.positive or self.negative):
            raise ValueError("`like` cannot be combined with `positive` / `negative`")
        return self


class SearchResponse(BaseModel):
    hits: list[dict[str, Any]] = Field(description="Best first: item id, score and stored payload.")
    k: int
    using: str
    took_ms: float


class Health(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    """`/readyz`: every model deployment answered and the index is reachable."""

    ready: bool
    models: dict[str, str] = Field(description="Model role → `loaded`, `unavailable` (optional, off) or an error.")
    index: dict[str, Any]
