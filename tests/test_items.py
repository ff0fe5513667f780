"""The one item builder and its JSON guard: hostile metadata, manifest and sidecar rows are refused with a
stable reason before anything recurses or decodes (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder.config import LimitsConfig
from embedder.items import build_item, check_item_id, load_json, parse_metadata
from embedder.types import MediaError
from serving.manifest import collect_folder, json_object, parse_row

LIMITS = LimitsConfig()
DEEP = "[" * 10_000 + "]" * 10_000


def _reason(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(MediaError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value.reason


@pytest.mark.parametrize(
    "text",
    [DEEP, '{"attributes": ' + "{" + '"a": {' * 5000 + "}" * 5001 + "}", '{"a": "' + "x" * 70_000 + '"}'],
    ids=["deep-array", "deep-object", "too-big"],
)
def test_deep_or_huge_metadata_is_bad_metadata(text: str) -> None:
    assert _reason(parse_metadata, text, LIMITS) == "bad_metadata"
    assert _reason(build_item, "a", b"x", LIMITS, metadata=text) == "bad_metadata"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000])
def test_non_finite_numbers_are_refused(number: str) -> None:
    with pytest.raises(MediaError) as e:
        parse_metadata(f'{{"attributes": {{"a": {number}}}}}', LIMITS)
    assert e.value.reason == "bad_metadata" and e.value.detail.startswith("metadata holds"), e.value.detail


def test_non_finite_number_in_a_mapping_is_refused() -> None:
    assert _reason(parse_metadata, {"attributes": {"a": float("nan")}}, LIMITS) == "bad_metadata"


def test_load_json_counts_brackets_outside_strings_only() -> None:
    text = json.dumps({"attributes": {"note": "[" * 1000 + "{" * 1000}})
    assert load_json(text, max_depth=3, max_bytes=10_000)["attributes"]["note"].startswith("[[[")
    with pytest.raises(ValueError, match="nested deeper than 2"):
        load_json('{"a": {"b": [1]}}', max_depth=2, max_bytes=100)
    assert load_json('{"a": {"b": "]]\\"[[{{"}}', max_depth=2, max_bytes=100) == {"a": {"b": ']]"[[{{'}}


def test_deep_manifest_line_is_a_value_error_not_a_crash(tmp_path: Path) -> None:
    line = json.dumps({"item_id": "a", "uri": "a.mp4"})[:-1] + ', "metadata": ' + DEEP + "}"
    with pytest.raises(ValueError, match="nested deeper"):
        json_object(line, LIMITS)
    with pytest.raises(ValueError, match="bytes"):
        json_object(json.dumps({"item_id": "a", "caption": "x" * 200_000}), LIMITS)


def test_deep_metadata_in_a_manifest_row_is_bad_metadata(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    assert _reason(parse_row, {"item_id": "a", "uri": "a.mp4", "metadata": DEEP}, tmp_path, LIMITS) == "bad_metadata"
    nested: object = 1
    for _ in range(100):
        nested = {"k": nested}
    row = {"item_id": "a", "uri": "a.mp4", "metadata": {"attributes": nested}}  # e.g. a Parquet struct
    assert _reason(parse_row, row, tmp_path, LIMITS) == "bad_metadata"


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_ids_are_refused(bad: str) -> None:
    """Clients drop `.` and `..` segments from URLs, so such an item could never be fetched or deleted."""
    assert _reason(check_item_id, bad, LIMITS) == "bad_item_id"
    assert check_item_id("...", LIMITS) == "..." and check_item_id(".a", LIMITS) == ".a"


def test_a_deep_sidecar_line_is_reported_and_the_rest_collected(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    deep = '{"file": "a.mp4", "item_id": "a", "metadata": {"x": ' + DEEP + "}}"
    lines = [deep, json.dumps({"file": "b.mp4", "item_id": "b"})]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    items, failed = collect_folder(tmp_path, LIMITS)
    assert [i.item_id for i in items] == ["a", "b"]  # a's row is unreadable: a gets the default id, as without one
    assert [(f.stage, f.reason) for f in failed] == [("sidecar", "bad_row")] and "line 1" in failed[0].detail
