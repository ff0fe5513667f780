"""The HTTP upload guard: API key, content type and a size cap enforced while the body streams in.

An upload is only ever bytes from the request's `file` part: no field is interpreted as a path or URL,
so a client cannot make the server read its own files or fetch anything.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from embedder.config import LimitsConfig
from embedder.types import MediaError
from serving.http.errors import ApiError

API_KEY_HEADER = "X-API-Key"
# File types a browser or client may declare for a clip; anything else is a 415 before decoding.
_VIDEO_TYPES = ("video/", "application/octet-stream", "application/mp4")
# The text fields of an upload form, besides the `file` part.
UPLOAD_FIELDS = ("item_id", "caption", "metadata")
# Room for the multipart framing and the text fields around the file (caption is UTF-8, up to 4 bytes a char).
_FORM_OVERHEAD_BYTES = 64 * 1024


def check_api_key(request: Request, expected: SecretStr | None, required: bool = True) -> bool:
    """Whether the request counts as keyed: 401 without a key when `required`, 403 with a wrong one always.

    Without a configured `serve.api_key` every request is keyed (the operator chose no auth); a missing key
    on an open read is anonymous, which only the small anonymous admission pool serves."""
    if expected is None or not expected.get_secret_value():
        return True
    given = request.headers.get(API_KEY_HEADER)
    if not given and "api_key" in request.query_params:  # URLs land in access logs and browser history
        raise ApiError("unauthorized", f"send the API key in the {API_KEY_HEADER} header, not as ?api_key=", 401)
    if not given:
        if required:
            raise ApiError("unauthorized", f"missing {API_KEY_HEADER} header", 401)
        return False
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError("forbidden", f"wrong {API_KEY_HEADER}", 403)
    return True


def refuse_unknown(given: Iterable[str], allowed: Iterable[str], what: str) -> None:
    """400 `unknown_parameter` naming every given name not in `allowed` (the OpenAPI document's
    `additionalProperties: false`, enforced)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(repr(n[:64]) for n in unknown[:10])
        known = ", ".join(sorted(allowed)) or "none"
        raise ApiError("unknown_parameter", f"unknown {what}: {names}; allowed: {known}", 400)


def body_cap(limits: LimitsConfig) -> int:
    """Most bytes a multipart upload may take: the file limit plus the form around it."""
    return limits.max_bytes + _FORM_OVERHEAD_BYTES + 4 * limits.max_caption_chars


async def _capped(
    request: Request, cap: int, idle_timeout_s: float, min_rate_kib_s: float = 64.0
) -> AsyncIterator[bytes]:
    """The request body, refused with 413 as soon as it passes `cap` (the rest is never read) and with 408 when
    the client sends nothing for `idle_timeout_s`, or has not sent it all by `idle_timeout_s` plus its size at
    `min_rate_kib_s` (a client trickling a byte now and then cannot hold a slot either)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise MediaError("too_large", f"request body of {declared} bytes > {cap} (limits.max_bytes + form)")
    size = int(declared) if declared is not None and declared.isdigit() else cap
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_timeout_s + size / (min_rate_kib_s * 1024)
    seen = 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_timeout_s, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                "body_timeout",
                f"request body too slow (serve.body_timeout_s={idle_timeout_s} s idle, "
                f"serve.min_body_rate_kib_s={min_rate_kib_s} KiB/s)",
                408,
            ) from None
        seen += len(chunk)
        if seen > cap:
            raise MediaError("too_large", f"request body over {cap} bytes (limits.max_bytes + form)")
        yield chunk


@dataclass
class UploadForm:
    """A parsed upload: the file's bytes plus the text fields."""

    media: bytes
    filename: str | None
    fields: dict[str, str]


async def read_small_body(request: Request, cap: int, idle_timeout_s: float, min_rate_kib_s: float = 64.0) -> bytes:
    """A small (JSON) body under the same size and time guards as uploads."""
    return b"".join([chunk async for chunk in _capped(request, cap, idle_timeout_s, min_rate_kib_s)])


async def read_form(
    request: Request,
    limits: LimitsConfig,
    idle_timeout_s: float,
    file_required: bool = True,
    min_rate_kib_s: float = 64.0,
) -> UploadForm:
    """Stream and parse a multipart form with at most one file; 415 unless multipart, 413 over the cap."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError("unsupported_media_type", f"expected multipart/form-data, got {ctype or 'nothing'}", 415)
    parser = MultiPartParser(
        request.headers,
        _capped(request, body_cap(limits), idle_timeout_s, min_rate_kib_s),
        max_files=1,
        max_fields=16,
        max_part_size=_FORM_OVERHEAD_BYTES + 4 * limits.max_caption_chars,
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError("bad_form", f"malformed multipart body: {e.message}", 422) from e
    try:
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            if file_required or upload is not None:
                raise ApiError("missing_file", "`file` must be an uploaded file part (paths and URLs are refused)")
            return UploadForm(b"", None, fields)
        assert isinstance(upload, UploadFile)
        declared = (upload.content_type or "").lower()
        if declared and not declared.startswith(_VIDEO_TYPES):
            raise ApiError("unsupported_media_type", f"file part is {declared}, expected a video/* type", 415)
        media = await upload.read()
    finally:
        await form.close()
    if len(media) > limits.max_bytes:
        raise MediaError("too_large", f"{len(media)} bytes > limits.max_bytes={limits.max_bytes}")
    return UploadForm(media, upload.filename, fields)
