"""Retrieval metrics per query and paired-bootstrap comparisons of two index versions (pure numpy, no I/O).

A comparison resamples the *queries* (the unit that varies between evaluation sets) with replacement, the same
resample for both versions, so the interval of the difference reflects how much it could move on another query
set of this size; the seed is fixed so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "ndcg@10", "mrr")
LABELS = {"recall@1": "Recall@1", "recall@5": "Recall@5", "recall@10": "Recall@10", "ndcg@10": "nDCG@10", "mrr": "MRR"}
DEPTH = 10  # hits retrieved per query: enough for every metric above


def query_metrics(ranked: Sequence[str], expected: Sequence[str]) -> dict[str, float]:
    """Recall@1/5/10 (|top-k ∩ expected| / min(k, |expected|)), nDCG@10 (binary gains) and MRR (reciprocal rank
    of the first expected item within the top 10, else 0) of one ranked hit list."""
    want = set(expected)
    hits = [1.0 if item in want else 0.0 for item in list(ranked)[:DEPTH]]
    out = {f"recall@{k}": sum(hits[:k]) / min(k, len(want)) for k in (1, 5, 10)}
    dcg = sum(h / np.log2(i + 2) for i, h in enumerate(hits))
    ideal = sum(1 / np.log2(i + 2) for i in range(min(len(want), DEPTH)))
    out["ndcg@10"] = float(dcg / ideal)
    out["mrr"] = next((1.0 / (i + 1) for i, h in enumerate(hits) if h), 0.0)
    return out


def metric_table(per_query: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per-query metric dicts → metric name → array over queries."""
    return {m: np.array([q[m] for q in per_query], dtype=np.float64) for m in METRICS}


@dataclass(frozen=True)
class Interval:
    """B − A for one metric: the means, the difference, its bootstrap interval and per-query wins/losses."""

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    wins: int  # queries where B scores higher
    losses: int  # queries where B scores lower
    ties: int

    @property
    def counts(self) -> str:
        return f"{self.wins}/{self.losses}/{self.ties}"

    def to_json(self) -> dict[str, float | int | str]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, samples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(b − a) over query resamples (the same resample for both versions)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no queries to compare")
    idx = np.random.default_rng(seed).integers(0, d.size, size=(samples, d.size))
    means = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], samples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> list[Interval]:
    """One `Interval` per metric, A and B scored on the same queries in the same order."""
    out = []
    for m in METRICS:
        low, high = paired_bootstrap(a[m], b[m], samples, confidence, seed)
        d = b[m] - a[m]
        out.append(
            Interval(
                m,
                float(a[m].mean()),
                float(b[m].mean()),
                float(d.mean()),
                low,
                high,
                int((d > 1e-12).sum()),
                int((d < -1e-12).sum()),
                int((np.abs(d) <= 1e-12).sum()),
            )
        )
    return out


def worse_beyond(intervals: Sequence[Interval], tolerance: float) -> list[Interval]:
    """Metrics where B is worse than A beyond `tolerance` with confidence: the interval's upper bound < −tolerance."""
    return [i for i in intervals if i.high < -tolerance - 1e-12]
