"""Admission control of the ingress: what slow, anonymous or numerous clients may hold, answered with 503 instead
of a queue, so `/healthz`, `/readyz` and keyed uploads always find room.

Serve's ingress `max_ongoing_requests` is set well above these gates (see `ingress_ongoing`): every request is
admitted to the replica at once and the gates below decide, in the replica, what it may hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from embedder.config import ServeConfig
from serving.http.errors import ApiError

# Room kept for requests that hold no gate (health, readiness, GET/DELETE by id) above what the gates admit.
_CONTROL_HEADROOM = 64
# Share of the body-reading slots a client without a valid API key may take (public reads, or no key set).
_ANONYMOUS_SHARE = 4


class Gate:
    """At most `slots` holders at once; one more is refused at once with 503 `overloaded` (never queued)."""

    def __init__(self, name: str, slots: int) -> None:
        self.name, self.slots, self.held = name, slots, 0

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        # The replica runs its requests on one event loop: check-and-increment is atomic without a lock.
        if self.held >= self.slots:
            raise ApiError("overloaded", f"all {self.slots} {self.name} slots are taken", 503)
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


@dataclass(frozen=True)
class Admission:
    """Gate sizes: media requests in flight (bounds upload memory), body readers, and the anonymous share."""

    media: int
    bodies: int
    anonymous: int

    @classmethod
    def from_config(cls, s: ServeConfig) -> Admission:
        """Sizes from `serve.*`: media in flight as the old ingress limit (2 x batch capacity, at least 8)."""
        media = max(8, 4 * s.max_batch_size * s.max_concurrent_batches)
        bodies = media + s.extra_body_readers
        return cls(media=media, bodies=bodies, anonymous=max(1, bodies // _ANONYMOUS_SHARE))

    def ingress_ongoing(self) -> int:
        """Serve's `max_ongoing_requests` for the ingress: everything the gates admit plus control headroom."""
        return self.media + self.bodies + self.anonymous + _CONTROL_HEADROOM


class Gates:
    """The live gates of one ingress replica."""

    def __init__(self, a: Admission) -> None:
        self.media = Gate("upload", a.media)
        self.bodies = Gate("request-body", a.bodies)
        self.anonymous = Gate("anonymous request-body", a.anonymous)

    def body(self, keyed: bool) -> Gate:
        """The gate a body read takes: keyed clients share the big pool, anonymous ones a small one of their own."""
        return self.bodies if keyed else self.anonymous
