"""The one unwrapper of Ray's error wrappers: what the remote side (a replica, an actor, a Ray Data task) raised."""

from __future__ import annotations

from ray.exceptions import RayError


def cause_of(e: BaseException) -> BaseException:
    """The innermost error a Ray wrapper carries (RayTaskError and friends keep the class but not our fields)."""
    while isinstance(e, RayError) and getattr(e, "cause", None) is not None and e.cause is not e:  # type: ignore[attr-defined]
        e = e.cause  # type: ignore[attr-defined]
    return e
