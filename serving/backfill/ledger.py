"""Failure ledger: one JSON line per row that could not be indexed, written as it happens."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_DETAIL = 300
# What a traceback or a raw library error looks like once it reaches a detail string.
_NOISE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+|0x[0-9a-f]{6,}|\[Errno -?\d+\] ")


def clean_detail(detail: str) -> str:
    """An operator-facing detail: its first line, without traceback frames or memory addresses, bounded."""
    if "Traceback (most recent call last)" in detail:
        return "unexpected error (the traceback is in the worker log)"
    first = next((line.strip() for line in str(detail).splitlines() if line.strip()), "")
    first = _NOISE.sub("", first).strip(" :")
    return first if len(first) <= MAX_DETAIL else first[: MAX_DETAIL - 1] + "…"


class Ledger:
    """Failure ledger: one JSON line per bad row (item_id, uri, stage, reason, detail), flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Truncated per run: failed rows are retried by every run, so the file is this run's complete list.
        self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115 — closed in `close`

    def write(self, row: dict[str, Any]) -> None:
        rec = {k: row[k] for k in ("item_id", "uri", "stage", "reason", "detail")}
        self._f.write(json.dumps({**rec, "ts": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
