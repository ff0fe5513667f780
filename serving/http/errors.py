"""The one mapping from reelvec's typed errors to HTTP: status, a stable reason, a sanitized detail, a request id.

Every error leaves the service as `{"error": reason, "detail": text, "request_id": id}`; the full detail goes
to the log under that request id, never to the client.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from embedder.types import ConfigError, MediaError, ModelUnavailableError, ReelvecError, StoreError

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
    "duplicate": 409,
    "stale_schema": 409,
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
    detail: str = Field(description="Human-readable explanation (never server paths or library messages).")
    request_id: str = Field(description="Also in the `X-Request-ID` header; the server log has the full detail.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Bad query",
        401: "API key missing",
        403: "API key wrong",
        404: "Unknown item",
        408: "The request body stopped arriving (serve.body_timeout_s) or arrived too slowly",
        409: "A re-upload refused by dedup.policy reject (names the original), or a newer schema is stored",
        413: "Upload over limits.max_bytes",
        415: "Not multipart/form-data, or the file part is not a video",
        422: "Invalid input: unusable media, over a limit, bad item id, missing field, bad metadata JSON",
        500: "Internal error (details only in the server log, under the request id)",
        503: "Index unreachable/locked, model unavailable or too many requests in flight (Retry-After set)",
    }.items()
}


# Reasons whose detail reelvec writes itself from the client's own input and configured limits: safe to show.
_CLIENT_DETAIL = {
    "bad_item_id",
    "bad_metadata",
    "caption_too_long",
    "too_many_hashtags",
    "too_large",
    "too_long",
    "too_many_pixels",
    "empty_query",
    "bad_query",
    "unknown_item",
    "unknown_version",
    "bad_version",
    "unsupported_media_type",
    "missing_field",
    "missing_file",
    "bad_form",
    "unauthorized",
    "forbidden",
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "no_content",
    "unknown_parameter",
    "body_timeout",
    "duplicate",
    "schema_mismatch",
}
# What a client is told for every other reason (the real detail is logged under the request id).
_GENERIC_DETAIL = {
    "empty": "the uploaded file is empty",
    "truncated": "the file is truncated or corrupt: no decodable video frames",
    "not_a_video": "the file is not a video container reelvec can read",
    "no_video_stream": "the file has no video stream",
    "decode_timeout": "decoding took longer than decode.timeout_s",
    "locked": "the index is in use by another process; retry later",
    "unreachable": "the index is unreachable; retry later",
    "missing": "a model this request needs is not loaded",
    "overloaded": "the service is busy; retry later",
    "internal_error": "internal error; the server log has the details under this request id",
}


# Defence in depth on details we wrote ourselves: nothing that looks like a server path, pid or library link.
_SCRUB = (
    (re.compile(r"https?://\S+"), "<url>"),
    # A path has a name after its first slash: a lone quoted '/' in our own texts (bad_item_id) is not one.
    (re.compile(r"(?<![\w.])(?:~|\.{1,2})?/(?:[^\s/'\"]+/)*[^\s/'\"]+"), "<path>"),
    (re.compile(r"\bpid\W*\d+", re.IGNORECASE), "<process>"),
)


def scrub(text: str) -> str:
    """`text` with URLs, absolute/relative paths and pids replaced by placeholders."""
    for pattern, placeholder in _SCRUB:
        text = pattern.sub(placeholder, text)
    return text


# The index names its collection in `unknown_item` ("no item 'x' in reelvec_v3"): the operator's word, not the API's.
_COLLECTION = re.compile(r" in [\w.-]+(?=:|$)")


def public_detail(e: ReelvecError) -> str:
    """What a client may read about an error: our own words for client-caused reasons, a fixed text otherwise."""
    if e.reason == "unknown_item":
        return scrub(_COLLECTION.sub("", e.detail))
    if e.reason in _CLIENT_DETAIL:
        return scrub(e.detail)
    return _GENERIC_DETAIL.get(e.reason, "the request could not be completed; see the server log")


def error_body(e: ReelvecError, request_id: str) -> dict[str, Any]:
    return {"error": e.reason, "detail": public_detail(e), "request_id": request_id}
