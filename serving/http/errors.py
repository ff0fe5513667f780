"""The one mapping from reelvec's typed errors to HTTP: status, a stable reason, a sanitized detail, a request id.

Every error leaves the service as `{"error": reason, "detail": text, "request_id": id}`; the full detail goes
to the log under that request id, never to the client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import BaseModel, Field

from embedder.reasons import REASONS, reason
from embedder.types import ReelvecError

log = logging.getLogger("ray.serve.reelvec")

# Clients should wait this long before retrying a 503 (index locked/unreachable, model not loaded, overload).
RETRY_AFTER_S = 1


class ApiError(ReelvecError):
    """An HTTP-level refusal (auth, content type, malformed form) that carries its own status."""

    def __init__(self, reason: str, detail: str, status: int = 422) -> None:
        super().__init__(reason, detail)
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, str, int]]:  # type: ignore[override]
        return (type(self), (self.reason, self.detail, self.status))


def status_for(e: ReelvecError) -> int:
    """HTTP status of a reelvec error, from the reason registry (an unregistered reason is logged, and a 500)."""
    if e.reason not in REASONS:
        log.error("unregistered reason %r: add it to embedder/reasons.py", e.reason)
    if isinstance(e, ApiError) and e.reason == "http_error":
        return e.status
    return reason(e.reason).status


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
    r = reason(e.reason)
    if not r.public:
        return r.generic
    if e.reason == "unknown_item":
        return scrub(_COLLECTION.sub("", e.detail))
    return scrub(e.detail)


def error_body(e: ReelvecError, request_id: str) -> dict[str, Any]:
    return {"error": e.reason, "detail": public_detail(e), "request_id": request_id}
