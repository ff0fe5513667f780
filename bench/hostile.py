"""Hostile suite counts: runs the hostile-client and fault test files under pytest and writes how many cases each
ran and how many held, and what the Schemathesis run sent (requests per status class), to bench/RESULTS.md.

A case is one pytest item (a parametrized test counts once per parameter); one item may hold several probes.
The Schemathesis count is the number of generated requests `test_schemathesis_contract` sent (issue 18: "record
the case counts in RESULTS.md").
Usage: python bench/hostile.py [--slow] [FILE ...]   # default: the issue-18 hostile files, `slow` tests deselected
       python bench/hostile.py --smoke              # test_items.py only (a correctness run of this script)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.results import command, publish  # noqa: E402

FILES = [
    "tests/test_http_attacks.py",  # HTTP: slow bodies, leaks, auth order, ids, filters, 405, Schemathesis
    "tests/test_items.py",  # hostile metadata, manifest and sidecar rows
    "tests/test_cli_reliability.py",  # CLI: bad sidecar rows, -k cap, versions, locked index, unreachable cluster
    "tests/test_index_reliability.py",  # a killed optimize's leftovers
    "tests/test_serve_process.py",  # kill -9 / SIGTERM of `reelvec serve`: no Ray process left
]
SMOKE_FILES = ["tests/test_items.py"]


class Tally:
    """A pytest plugin: per file, the items collected and each call's outcome; Schemathesis statuses."""

    def __init__(self) -> None:
        self.collected: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.seconds: Counter[str] = Counter()
        self.statuses: list[int] = []

    def pytest_collection_finish(self, session: Any) -> None:
        for item in session.items:  # after `-m` deselection
            self.collected[item.nodeid.split("::")[0]] += 1

    def pytest_runtest_logreport(self, report: Any) -> None:
        path = report.nodeid.split("::")[0]
        self.seconds[path] += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[path][report.outcome] += 1
        for key, value in report.user_properties:
            if key == "schemathesis_statuses":
                self.statuses += value


def run(files: list[str], slow: bool) -> tuple[Tally, int, float]:
    """pytest over `files` (from the repository root) with the tally plugin; its exit code and wall seconds."""
    import pytest

    tally = Tally()
    args = ["-q", "-p", "no:cacheprovider", *files] + (["-m", ""] if slow else [])
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = pytest.main(args, plugins=[tally])
    finally:
        os.chdir(cwd)
    return tally, int(code), time.perf_counter() - t0


def table(tally: Tally) -> str:
    rows, total = [], Counter()
    for path in sorted(tally.collected):
        o = tally.outcomes[path]
        cells = [tally.collected[path], o["passed"], o["failed"], o["skipped"]]
        total.update(dict(zip(("cases", "passed", "failed", "skipped"), cells, strict=True)))
        rows.append(f"| `{path}` | {' | '.join(map(str, cells))} | {tally.seconds[path]:.0f} |")
    rows.append(
        f"| **all** | {total['cases']} | {total['passed']} | {total['failed']} | {total['skipped']} | "
        f"{sum(tally.seconds.values()):.0f} |"
    )
    return "| file | cases | passed | failed | skipped | seconds |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows)


def schemathesis_line(tally: Tally) -> str:
    if not tally.statuses:
        return "Schemathesis: not run in this selection."
    classes = Counter(f"{s // 100}xx" for s in tally.statuses)
    return (
        f"Schemathesis (`test_schemathesis_contract`, fixed seed): {len(tally.statuses)} generated requests over the "
        f"7 operations, statuses by class {dict(sorted(classes.items()))}, server errors (5xx): "
        f"{classes.get('5xx', 0)}."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="Test files (default: the issue-18 hostile files).")
    ap.add_argument("--slow", action="store_true", help="Also run tests marked slow (the 20-run cleanup soak).")
    ap.add_argument("--smoke", action="store_true", help="test_items.py only.")
    ap.add_argument("--no-write", action="store_true", help="Print, do not write bench/RESULTS.md.")
    args = ap.parse_args()
    files = args.files or (SMOKE_FILES if args.smoke else FILES)
    tally, code, wall = run(files, args.slow)
    section = (
        f"\n## hostile{'-smoke' if args.smoke else ''} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · pytest exit {code} · {'slow tests included' if args.slow else 'slow deselected'}"
        f" · wall {wall:.0f} s · {platform.machine()}, {os.cpu_count()} cores · a case is one pytest item (one "
        f"item may hold several probes).\n\n{table(tally)}\n\n{schemathesis_line(tally)}\n"
    )
    publish("hostile-smoke" if args.smoke else "hostile", section, write=not args.no_write)
    sys.exit(code)


if __name__ == "__main__":
    main()
