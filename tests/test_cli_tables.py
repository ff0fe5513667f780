"""CLI tables that fit the terminal: at 80 and 200 columns the item id is never cut, long text stays on one line
and ends in an ellipsis when it must, and no line is wider than the terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

import serving.cli as cli
from index.base import Hit

LONG_ID = "cooking_pasta_tomato_sauce_2026_final_v2"
CAPTION = "Homemade pasta with fresh tomato sauce and basil, step by step"
HITS = [
    Hit(LONG_ID, 0.91234, {"caption": CAPTION.replace(" and ", "\n and "), "creator_id": "chef_anna_official",
                           "modalities": ["visual", "caption", "transcript"], "created_at": "2026-11-02T10:00:00"}),
    Hit("soccer_01", 0.5, {"caption": "a goal", "modalities": ["caption"], "creator_id": "c1", "created_at": None}),
]  # fmt: skip


def render(width: int, monkeypatch: pytest.MonkeyPatch, hits: list[Hit] = HITS) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    monkeypatch.setattr(cli, "out", console)
    cli._print_hits(hits, False, "search: pasta")
    return console.export_text().splitlines()


def row_of(lines: list[str], item_id: str) -> list[str]:
    return [line for line in lines if re.search(rf"│ {re.escape(item_id)} +│", line)]


@pytest.mark.parametrize("width", [80, 200])
def test_item_id_whole_and_one_line_per_hit(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = render(width, monkeypatch)
    assert max(len(line) for line in lines) <= width
    assert len(row_of(lines, LONG_ID)) == 1 and len(row_of(lines, "soccer_01")) == 1
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(HITS)  # no wrapped continuation lines
    assert (CAPTION in "".join(body)) == (width == 200)  # a newline in a caption is a space in the table
    assert ("…" in row_of(lines, LONG_ID)[0]) == (width == 80)


def test_id_longer_than_the_terminal_is_folded_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    very_long = "x" * 70 + "_end"
    lines = render(60, monkeypatch, [Hit(very_long, 0.1, {"caption": CAPTION})])
    shown = "".join(re.sub(r"[│ ]", "", line) for line in lines if line.startswith("│"))
    assert very_long in shown and "…" not in shown.split("0.1000")[1][: len(very_long)]


def test_models_list_keeps_card_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedder.cards import list_cards, status
    from embedder.config import DEFAULT_CARDS_DIR

    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    monkeypatch.setattr(cli, "out", console)
    rows = [status(c, DEFAULT_CARDS_DIR.parent / "no-models") for c in list_cards(DEFAULT_CARDS_DIR)]
    cli._print_status(rows, False)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    for r in rows:
        assert len(row_of(lines, r.id)) == 1
