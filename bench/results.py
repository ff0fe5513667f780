"""Where benchmark sections go: `bench/RESULTS.md`, one section per benchmark, replaced when it runs again."""

from __future__ import annotations

import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the command it names; rerunning a benchmark replaces its section.\n"
)


def command() -> str:
    """The command line that produced a section, as a user would type it from the repository root."""
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def publish(name: str, section: str, write: bool = True) -> None:
    """Print a `## name — …` section and (unless `write` is false) put it in RESULTS.md in place of the old one."""
    print(section)
    if not write:
        return
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    if not text.startswith("# "):
        text = HEADER + text
    body = "\n" + section.strip("\n") + "\n"
    # A section runs from its `## name — ` heading to the next `## ` heading (or the end of the file).
    pattern = re.compile(rf"\n## {re.escape(name)} — .*?(?=\n## |\Z)", re.S)
    text, n = pattern.subn(lambda _: body, text, count=1)
    if n == 0:
        text = text.rstrip("\n") + "\n" + body
    RESULTS.write_text(text)
