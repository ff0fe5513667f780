"""A watchdog that ends every process a local Ray cluster started once the process that started it is gone,
even by SIGKILL: `reelvec serve` and `reelvec backfill` (without `--address`) run one.

Ray kills its direct children when the driver dies (PR_SET_PDEATHSIG), but the raylet's own children
(DashboardAgent, RuntimeEnvAgent) outlived a `kill -9` by about a minute (issue 18), and decode workers were
reaped only by `__del__`. Orphans hang off init, and the agents overwrite their command line and environment
(`ray::DashboardAgent`), so the watchdog finds them two ways: the process tree it notes while the parent lives,
and, at the end, every process holding a file of the parent's Ray session open (its logs:
`session_<date>_<time>_<driver pid>/logs/…`), which needs no timely poll however loaded the machine is.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys


def _reap_on_eof(parent: int, grace_s: float, every_s: float) -> None:
    """Watchdog body: note every descendant of `parent` each `every_s` until stdin reaches EOF (the parent exited,
    even by SIGKILL), then end those still alive, their children and every process of `parent`'s Ray session:
    SIGTERM, then SIGKILL after `grace_s`, until none is left."""
    import contextlib
    import os
    import re
    import select
    import signal
    import sys
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Ray names a session after its driver: session_2026-12-04_18-33-30_280670_<driver pid>.
    session = re.compile(rb"/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_%d/" % parent)

    def table() -> dict[int, tuple[int, int]]:
        """pid -> (ppid, start time) of every live, non-zombie process."""
        procs = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
            except OSError:
                continue
            if fields[0] != b"Z":
                procs[int(name)] = (int(fields[1]), int(fields[19]))
        return procs

    def descendants(roots: set[int], procs: dict[int, tuple[int, int]]) -> set[int]:
        found: set[int] = set()
        frontier = roots
        while frontier:
            frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in found}
            found |= frontier
        return found

    def in_session(pid: int) -> bool:
        """Whether `pid` holds a file of the parent's Ray session open (Ray's processes keep their logs open)."""
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                if session.search(os.fsencode(os.readlink(f"/proc/{pid}/fd/{fd}"))):
                    return True
        return False

    me = os.getpid()
    seen: dict[int, int] = {}  # pid -> start time (a reused pid is not ours)
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], every_s)
        if ready and not os.read(stdin, 4096):
            break
        procs = table()
        seen = {pid: t for pid, t in seen.items() if procs.get(pid, (0, -1))[1] == t}
        seen.update({pid: procs[pid][1] for pid in descendants({parent}, procs) - {me}})

    def alive() -> set[int]:
        procs = table()
        ours = {pid for pid, t in seen.items() if procs.get(pid, (0, -1))[1] == t}
        ours |= {pid for pid in procs if pid not in ours and in_session(pid)}
        # Never the parent: it holds its session's files too, and may still be shutting down, waiting on us.
        return (ours | descendants(ours | {parent}, procs)) - {me, parent}

    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):  # Ray's agents ignore SIGTERM
        for pid in alive():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


class Reaper:
    """The watchdog process: it outlives this one and reaps the local Ray cluster this process starts."""

    def __init__(self, grace_s: float = 2.0, every_s: float = 1.0) -> None:
        self.grace_s = grace_s
        # Run from source with `-I`: the watchdog imports nothing of Ray or reelvec (starts in milliseconds), and
        # its own session keeps a terminal's Ctrl-C or a process-group kill from ending it before it has reaped.
        args = f"{os.getpid()}, {grace_s!r}, {every_s!r}"
        code = inspect.getsource(_reap_on_eof) + f"\n_reap_on_eof({args})\n"
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def reap(self) -> None:
        """End whatever the cluster left behind and wait until it is gone."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=3 * self.grace_s + 10)


# Watchdogs that must live as long as this process: their stdin pipe closes, and they reap, when it exits.
_KEPT: list[Reaper] = []


def reap_at_exit() -> None:
    """Start a watchdog that reaps this process's local Ray cluster when this process exits, however it exits."""
    _KEPT.append(Reaper())
