"""The retrieval quality gate: Recall@k of an evaluation query set against one index version.

`reelvec eval` runs it alone; `reelvec backfill … --swap-alias` runs it on the new version and the live one and
moves the alias only if Recall@k does not drop by more than `eval.max_drop` (a worse model never goes live).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.types import ConfigError

QueryEncoder = Callable[[str], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EvalQuery:
    query: str
    expected: tuple[str, ...]


@dataclass
class EvalResult:
    """Recall@k over the query set (mean of |top-k ∩ expected| / min(k, |expected|)) and per query."""

    version: str
    k: int
    recall: float
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "k": self.k, "recall": round(self.recall, 4), "queries": self.per_query}


@dataclass(frozen=True)
class GateDecision:
    swap: bool
    reason: str
    new: EvalResult
    live: EvalResult | None

    def to_json(self) -> dict[str, Any]:
        return {
            "swap": self.swap,
            "reason": self.reason,
            "new": self.new.to_json(),
            "live": self.live.to_json() if self.live else None,
        }


def load_queries(path: Path | None) -> list[EvalQuery]:
    """The evaluation set: JSONL rows `{"query": text, "expected": [item ids]}`."""
    if path is None:
        raise ConfigError("no_eval_queries", "set eval.queries (a JSONL of query → expected item ids) or --queries")
    p = Path(path)
    if not p.is_file():
        raise ConfigError("no_eval_queries", f"eval queries file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(EvalQuery(str(row["query"]), tuple(str(i) for i in row["expected"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError("bad_eval_queries", f"{p.name} line {n}: expected {{query, expected: [ids]}}") from e
    if not out:
        raise ConfigError("bad_eval_queries", f"{p.name} has no queries")
    return out


def evaluate(index: Any, encode: QueryEncoder, queries: list[EvalQuery], k: int) -> EvalResult:
    """Search every query's fused vector in `index` and score Recall@k."""
    return evaluate_vectors(index, [encode(q.query)["fused"] for q in queries], queries, k)


def evaluate_vectors(index: Any, fused: list[np.ndarray], queries: list[EvalQuery], k: int) -> EvalResult:
    """Recall@k of already-encoded queries (the backfill encodes once and scores two versions)."""
    per_query, total = [], 0.0
    for q, vec in zip(queries, fused, strict=True):
        hits = [h.item_id for h in index.search(vec, using="fused", k=k)]
        got = len(set(hits) & set(q.expected)) / min(k, len(q.expected))
        total += got
        per_query.append({"query": q.query, "recall": round(got, 4), "top": hits})
    return EvalResult(index.version, k, total / len(queries), per_query)


def gate(new: EvalResult, live: EvalResult | None, max_drop: float) -> GateDecision:
    """Swap only if the new version's Recall@k is at most `max_drop` below the live one's."""
    if live is None:
        return GateDecision(True, "no live version to compare with", new, None)
    drop = live.recall - new.recall
    if drop > max_drop + 1e-12:
        return GateDecision(
            False, f"Recall@{new.k} drops {drop:.3f} ({live.recall:.3f} → {new.recall:.3f}) > eval.max_drop", new, live
        )
    return GateDecision(True, f"Recall@{new.k} {live.recall:.3f} → {new.recall:.3f}", new, live)
