"""Every reason code reelvec can raise is in the one registry (embedder/reasons.py), and the HTTP and CLI
mappings read it."""

from __future__ import annotations

import re
from pathlib import Path

from embedder.reasons import REASONS
from embedder.types import MediaError, ReelvecError, StoreError
from serving.cli import exit_code_for
from serving.http.errors import ApiError, public_detail, status_for
from tests.conftest import ROOT

# A reason as a string literal where errors are made: `SomethingError("reason", …)`, `ItemFailure(id, stage,
# "reason", …)`, a failed ledger row `_failed(row, stage, "reason", …)`, or `reason="…"`.
_PATTERNS = (
    re.compile(r"\b\w*Error\(\s*\"([a-z_]+)\""),
    re.compile(r"ItemFailure\([^()]*?,\s*\"[a-z_]+\",\s*\"([a-z_]+)\""),
    re.compile(r"_failed\(\w+,\s*\"[a-z_]+\",\s*\"([a-z_]+)\""),
    re.compile(r"\breason=\"([a-z_]+)\""),
)


def raised_reasons() -> dict[str, list[str]]:
    """Reason code -> the files that raise it, from the source of embedder/, index/ and serving/."""
    found: dict[str, list[str]] = {}
    for pkg in ("embedder", "index", "serving"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            for pattern in _PATTERNS:
                for code in pattern.findall(text):
                    found.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_raised_reason_is_registered() -> None:
    found = raised_reasons()
    assert len(found) > 40  # the scan really sees the code base
    missing = {code: files for code, files in found.items() if code not in REASONS}
    assert not missing, f"reasons raised but not in embedder/reasons.py: {missing}"


def test_the_scan_would_catch_a_new_reason(tmp_path: Path) -> None:
    text = 'raise MediaError("brand_new_reason", "x")\nItemFailure(i, "write", "another_new", "y")\n'
    codes = {c for p in _PATTERNS for c in p.findall(text)}
    assert {"brand_new_reason", "another_new"} <= codes and not codes & set(REASONS)


def test_http_and_cli_read_the_registry() -> None:
    for code, r in REASONS.items():
        e = ReelvecError(code, "/srv/secret/path detail")
        assert status_for(e) == r.status and exit_code_for(e) == r.exit, code
        shown = public_detail(e)
        assert "/srv/secret" not in shown and (shown == r.generic) != r.public, code
    assert status_for(MediaError("too_large", "x")) == 413 and status_for(StoreError("locked", "x")) == 503
    assert status_for(ApiError("http_error", "teapot", 418)) == 418
