"""What reelvec adds to Serve's HTTP proxy: a malformed client `X-Request-ID` is dropped before Serve's own
request-id middleware echoes it, so a response carries exactly one, well-formed id (issue 18).

The proxy loads it from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (`PROXY_CALLBACK`), read when the proxy
process starts: `reelvec serve` sets it for the Ray it starts; on a cluster, set it where `ray start` runs.
"""

from __future__ import annotations

import os
import re
from typing import Any

from starlette.middleware import Middleware

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:middlewares"
# What reelvec accepts as a client's request id (the ingress applies the same pattern).
REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestIdGuard:
    """ASGI middleware around Serve's proxy app: keeps the first well-formed `X-Request-ID` and drops the rest,
    so Serve generates a fresh id instead of echoing `<script>` back to the client."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            kept, headers = False, []
            for name, value in scope.get("headers", []):
                if name.lower() == b"x-request-id":
                    if kept or not REQUEST_ID_RE.fullmatch(value):
                        continue
                    kept = True
                headers.append((name, value))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    """The proxy callback (`PROXY_CALLBACK`): the middlewares Serve wraps its HTTP proxy in."""
    return [Middleware(RequestIdGuard)]


def install_proxy_callback() -> None:
    """Make a Ray started from this process load `middlewares` in its proxies (an operator's own value wins)."""
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
