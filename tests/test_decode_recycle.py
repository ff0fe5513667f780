"""Decode worker memory (issue 18 soak): recycled workers give the same frames, a decode in flight across a recycle
still succeeds, no process is left behind, and the audio reader does not grow the worker."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.config import DecodeConfig, LimitsConfig, OcrConfig
from embedder.decode import Decoder, _read_audio
from embedder.types import DecodedMedia, MediaError


def _children() -> set[int]:
    """Pids whose parent is this process, zombies included (a zombie still has its /proc entry)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _same(a: DecodedMedia, b: DecodedMedia) -> bool:
    audio_same = (a.audio is None and b.audio is None) or np.array_equal(a.audio, b.audio)  # type: ignore[arg-type]
    return (
        np.array_equal(a.frames, b.frames)
        and np.array_equal(a.ocr_frames, b.ocr_frames)  # type: ignore[arg-type]
        and a.timestamps_s == b.timestamps_s
        and audio_same
    )


@pytest.fixture(scope="module")
def reference(clips: list[dict[str, Any]]) -> dict[str, DecodedMedia]:
    """The first six clips decoded by a worker that is never recycled."""
    paths = [c["path"] for c in clips[:6]]
    with Decoder(DecodeConfig(recycle_after=0), LimitsConfig(), ocr=OcrConfig()) as d:
        out = {p: d.decode(p) for p in paths}
        assert len(d.pids) == 1  # one worker served all six
    return out


def test_recycled_worker_gives_the_same_frames_and_leaves_no_process(reference: dict[str, DecodedMedia]) -> None:
    seen: list[int] = []
    with Decoder(DecodeConfig(workers=1, recycle_after=2), LimitsConfig(), ocr=OcrConfig()) as d:
        for path, ref in reference.items():
            assert _same(d.decode(path), ref), path
            seen += [p for p in d.pids if p not in seen]
            retired = set(seen) - set(d.pids)
            assert not retired & _children(), "a retired worker is still a child (alive or a zombie)"
        with pytest.raises(MediaError):
            d.decode(b"not a video at all\n" * 40)  # a refusal is an answer too: it counts toward the recycle
        assert d.workers == 1
    assert len(seen) == 4  # six decodes at 2 per worker: the first worker, two replacements, one spare fresh one
    assert not set(seen) & _children()


def test_answer_is_kept_when_the_replacement_cannot_start(
    reference: dict[str, DecodedMedia], monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedder.decode as dec

    first, second = list(reference)[:2]
    with Decoder(DecodeConfig(workers=1, recycle_after=1), LimitsConfig(), ocr=OcrConfig()) as d:
        assert _same(d.decode(first), reference[first])  # recycled; its replacement started
        seen = set(d.pids)
        monkeypatch.setattr(dec, "WORKER_COMMAND", ["/nonexistent/reelvec-decode-worker"])
        assert _same(d.decode(second), reference[second])  # recycled; no replacement can start
        assert d.workers == 0
    assert not seen & _children()


# A worker that, given the path named in argv[1], marks argv[2] and waits (at most 120 s) for argv[3] to exist
# before decoding it: a decode held in flight for as long as the test needs.
_HOLDING_WORKER = """
import os, sys, time
from multiprocessing.connection import Connection
from embedder.decode import _worker_main

class Holding(Connection):
    def recv(self):
        msg = super().recv()
        if msg is not None and msg[0] == sys.argv[1]:
            open(sys.argv[2], "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return msg

_worker_main(Holding(int(sys.argv[-1])), int(sys.argv[-2]))
"""


def test_decode_in_flight_while_another_worker_is_recycled_succeeds(
    reference: dict[str, DecodedMedia], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedder.decode as dec

    held, *others = list(reference)
    started, release = tmp_path / "started", tmp_path / "release"
    cmd = [sys.executable, "-c", _HOLDING_WORKER, held, str(started), str(release)]
    monkeypatch.setattr(dec, "WORKER_COMMAND", cmd)
    result: dict[str, Any] = {}
    seen: set[int] = set()
    with Decoder(DecodeConfig(workers=2, recycle_after=1), LimitsConfig(), ocr=OcrConfig()) as d:
        t = threading.Thread(target=lambda: result.update(m=d.decode(held)))
        t.start()
        deadline = time.monotonic() + 120
        while not started.exists():
            assert time.monotonic() < deadline, "the held decode never reached its worker"
            time.sleep(0.05)
        for path in others[:3]:  # each is answered by the second slot's worker, which is then recycled
            seen |= set(d.pids)
            assert _same(d.decode(path), reference[path]), path
        seen |= set(d.pids)
        assert t.is_alive()  # the held decode was in flight across three recycles
        release.touch()
        t.join(timeout=120)
        assert not t.is_alive() and _same(result["m"], reference[held])
        seen |= set(d.pids)
    assert len(seen) >= 4  # the held worker, the first of the other slot and its replacements
    assert not seen & _children()


def test_audio_reader_does_not_grow_the_process(clips: list[dict[str, Any]]) -> None:
    # decord 0.6.0's AudioReader kept ~30 MiB per 100 clips (dmlc/decord#189): the soak's decode worker grew +280 MiB.
    path = next(c["path"] for c in clips if c.get("audio") == "speech")

    def rss_mib() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    for _ in range(20):  # warm: code, allocator arenas
        assert _read_audio(path, 16000) is not None
    before = rss_mib()
    for _ in range(200):
        _read_audio(path, 16000)
    assert rss_mib() - before < 25  # decord's reader grew ~60 MiB over 200 reads
