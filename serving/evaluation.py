"""The retrieval quality gate: Recall@k, Recall@1/5/10, nDCG@10 and MRR of an evaluation query set against an
index version.

`reelvec eval` runs it alone (or `--compare A B`, serving/evalcompare.py); `reelvec backfill … --swap-alias` runs
it on the new version and the live one and moves the alias unless a metric is worse beyond `eval.max_drop` with
confidence (the paired-bootstrap interval of the change lies wholly below −max_drop): a worse model never goes live,
a difference within the noise of a small query set does not block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.types import ConfigError
from serving.evalstats import DEPTH, LABELS, Interval, compare, metric_table, query_metrics, worse_beyond

QueryEncoder = Callable[[str], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EvalQuery:
    query: str
    expected: tuple[str, ...]


@dataclass
class EvalResult:
    """Recall@k over the query set (mean of |top-k ∩ expected| / min(k, |expected|)), the `evalstats` metrics
    (Recall@1/5/10, nDCG@10, MRR) as means and per query."""

    version: str
    k: int
    recall: float
    per_query: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def table(self) -> dict[str, np.ndarray]:
        """Metric → per-query values, in query order (what the bootstrap resamples)."""
        return metric_table(self.per_query)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "k": self.k,
            "recall": round(self.recall, 4),
            "metrics": {m: round(v, 4) for m, v in self.metrics.items()},
            "queries": self.per_query,
        }


@dataclass(frozen=True)
class GateDecision:
    """Whether the alias may move to `new`, why, and the intervals of new − live behind the decision."""

    swap: bool
    reason: str
    new: EvalResult
    live: EvalResult | None
    intervals: list[Interval] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "swap": self.swap,
            "reason": self.reason,
            "new": self.new.to_json(),
            "live": self.live.to_json() if self.live else None,
            "intervals": [i.to_json() for i in self.intervals],
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
    """Recall@k and the `evalstats` metrics of already-encoded queries (the backfill encodes once, scores two)."""
    ranked = [[h.item_id for h in index.search(vec, using="fused", k=max(k, DEPTH))] for vec in fused]
    return score(index.version, k, queries, ranked)


def score(version: str, k: int, queries: list[EvalQuery], ranked: list[list[str]]) -> EvalResult:
    """Score ranked hit lists (one per query, best first) against the expected ids."""
    per_query = []
    for q, hits in zip(queries, ranked, strict=True):
        got = len(set(hits[:k]) & set(q.expected)) / min(k, len(q.expected))
        row = {"query": q.query, "recall": round(got, 4), "top": hits[:k]}
        per_query.append(row | {m: round(v, 6) for m, v in query_metrics(hits, q.expected).items()})
    means = {m: float(v.mean()) for m, v in metric_table(per_query).items()}
    return EvalResult(version, k, float(np.mean([r["recall"] for r in per_query])), per_query, means)


def incomparable(new: EvalResult, live_version: str) -> GateDecision:
    """Refuse: the live version has another embedding schema (encoder or dims), so these query vectors cannot
    search it and the change cannot be measured here; say how to compare and swap by hand."""
    return GateDecision(
        False,
        f"the live version {live_version} has another embedding schema, so the change cannot be measured with "
        f"this config's queries; compare with `reelvec eval --compare {live_version} {new.version} --config "
        f"<live config> --config-b <this config>`, then `reelvec alias {new.version}`",
        new,
        None,
    )


def gate(
    new: EvalResult,
    live: EvalResult | None,
    max_drop: float,
    samples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateDecision:
    """Swap unless, for some metric, the whole bootstrap interval of new − live lies below −`max_drop` (the
    tolerance): a drop within the noise of the query set does not block, a clear one does, naming the metric."""
    if live is None:
        return GateDecision(True, "no live version to compare with", new, None)
    intervals = compare(live.table(), new.table(), samples, confidence, seed)
    worse = worse_beyond(intervals, max_drop)
    pct = f"{confidence:.0%}"
    if worse:
        why = "; ".join(
            f"{LABELS[i.metric]} drops {-i.diff:.3f} ({i.a:.3f} → {i.b:.3f}, {pct} CI of the change "
            f"[{i.low:+.3f}, {i.high:+.3f}] is below −{max_drop:g})"
            for i in worse
        )
        return GateDecision(False, f"{why} (eval.max_drop)", new, live, intervals)
    top = min(intervals, key=lambda i: i.diff)
    return GateDecision(
        True,
        f"no metric clearly worse beyond −{max_drop:g}; largest change {LABELS[top.metric]} {top.diff:+.3f} "
        f"({pct} CI [{top.low:+.3f}, {top.high:+.3f}])",
        new,
        live,
        intervals,
    )
