"""Reaching an existing Ray cluster: fail in seconds with one line when nothing answers at the address, instead
of Ray's GCS connect retries (about 12 minutes, deaf to SIGTERM; issue 18)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from embedder.types import ConfigError, ReelvecError, StoreError

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


# The folder holding reelvec's packages (`embedder`, `index`, `serving`): the repository, or site-packages.
PACKAGES_ROOT = Path(__file__).resolve().parent.parent.parent


@contextlib.contextmanager
def driver_cwd_is_reelvec() -> Iterator[None]:
    """Around `ray.init`: Ray puts the driver's working directory first on every worker's import path, so a folder
    named `index`, `serving` or `embedder` where the user stands shadowed reelvec's own packages (issue 18). Ray
    reads the directory once, in `ray.init`: there it is reelvec's own root; the driver's cwd is restored after."""
    previous = os.getcwd()
    os.chdir(PACKAGES_ROOT)
    try:
        yield
    finally:
        os.chdir(previous)


def actor_start_error(e: BaseException, what: str) -> ReelvecError:
    """Why an actor (`what`) did not start: an import failure is named as one, never hidden behind `unreachable`."""
    text = str(e)
    if "ModuleNotFoundError" in text or "ImportError" in text:
        log.error("%s cannot import its code on the cluster: %s", what, e)
        return ConfigError(
            "worker_import_error",
            f"{what} could not import reelvec's code on the cluster (is reelvec installed there, and the same "
            "version?) — see the log",
        )
    log.error("%s failed to start: %s", what, e)
    return StoreError("unreachable", f"{what} failed to start (see the log)")
