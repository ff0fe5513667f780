"""Reaching an existing Ray cluster: fail in seconds with one line when nothing answers at the address, instead
of Ray's GCS connect retries (about 12 minutes, deaf to SIGTERM; issue 18)."""

from __future__ import annotations

import logging
import socket

from embedder.types import ConfigError

log = logging.getLogger(__name__)

# How long the GCS port may take to accept a TCP connection before the cluster counts as unreachable.
PROBE_TIMEOUT_S = 5.0


def probe_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """`cluster_unreachable` unless a TCP connection to the GCS address HOST:PORT opens within `timeout_s`
    (`auto`, `local` and `ray://` addresses are left to Ray and `check_address`)."""
    if not address or address.strip() in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("bad_address", f"--address must be HOST:PORT (the GCS address), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as e:
        log.debug("probe of %s failed: %s", address, e)
        raise ConfigError(
            "cluster_unreachable",
            f"no Ray cluster answers at {address} within {timeout_s:g} s (is the head running, and is this its "
            "GCS port, 6379 by default?)",
        ) from None
