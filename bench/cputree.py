"""CPU seconds (user + sys) of this process and every process it starts (Ray's raylet and workers, decode
workers), sampled from /proc by psutil: a speed-up must not just move work into processes nobody counted."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


class TreeCpu:
    """Context manager: the CPU seconds this process tree spent inside the block (`.seconds`).

    Each process is sampled every `every_s`; the last sample of a process that exits mid-block is kept, so at most
    `every_s` of a short-lived process's time is missed. Processes alive before the block count only their delta."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.seconds = 0.0
        self._start: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict[tuple[int, float], float]:
        me = psutil.Process()
        out: dict[tuple[int, float], float] = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._last.update(self._sample())

    def __enter__(self) -> TreeCpu:
        self._start = self._sample()
        self._last = dict(self._start)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        self.seconds = sum(v - self._start.get(k, 0.0) for k, v in self._last.items())
