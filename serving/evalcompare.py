"""`reelvec eval --compare A B`: two index versions on one query set — metrics, paired-bootstrap intervals of
B − A, per-query wins and losses, and per-modality ablations (the fused query without each modality)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.config import EvalConfig
from embedder.fusion import fuse
from embedder.types import FUSED
from serving.evalstats import METRICS, Interval, compare
from serving.evaluation import EvalQuery, EvalResult, evaluate_vectors

PRIMARY = "ndcg@10"  # the metric a query's win / loss is judged by


@dataclass
class Side:
    """One version to score: its open index, the queries encoded by the models that built it (modality vectors
    and `fused`), and that embedding's fusion weights and dims (for ablations)."""

    index: Any
    encoded: list[dict[str, np.ndarray]]
    weights: dict[str, float]
    dims: dict[str, int]


@dataclass
class Comparison:
    """Everything `eval --compare` prints, writes as JSON and plots."""

    a: EvalResult
    b: EvalResult
    intervals: list[Interval]
    per_query: list[dict[str, Any]]
    ablations: dict[str, dict[str, dict[str, float]]]  # modality → "a"/"b" → metric means without it
    confidence: float
    samples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def outcomes(self) -> dict[str, int]:
        counts = {"win": 0, "loss": 0, "tie": 0}
        for row in self.per_query:
            counts[row["outcome"]] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "a": {"version": self.a.version, "metrics": _rounded(self.a.metrics)},
            "b": {"version": self.b.version, "metrics": _rounded(self.b.metrics)},
            "confidence": self.confidence,
            "bootstrap": {"samples": self.samples, "seed": self.seed, "unit": "query"},
            "intervals": [i.to_json() for i in self.intervals],
            "primary_metric": PRIMARY,
            "outcomes": self.outcomes(),
            "queries": self.per_query,
            "ablations": {m: {s: _rounded(v) for s, v in sides.items()} for m, sides in self.ablations.items()},
            "notes": self.notes,
        }


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {m: round(v, 4) for m, v in metrics.items()}


def without(encoded: dict[str, np.ndarray], modality: str, weights: dict[str, float], dims: dict[str, int]) -> Any:
    """The query's fused vector re-fused without `modality` (its block zero, the rest renormalized); the query's
    own fused vector when it lacks the modality, None when nothing else is left."""
    rest = {m: v for m, v in encoded.items() if m in dims and m not in (FUSED, modality)}
    if modality not in encoded:
        return encoded[FUSED]
    try:
        return fuse(rest, weights, dims)
    except ValueError:
        return None


def ablations(side: Side, queries: list[EvalQuery], k: int) -> dict[str, dict[str, float]]:
    """Modality → metric means of this version searched with fused queries that leave that modality out (a
    query left with no modality scores 0)."""
    out = {}
    present = [m for m in side.dims if m != FUSED and any(m in e for e in side.encoded)]
    for m in present:
        vecs = [without(e, m, side.weights, side.dims) for e in side.encoded]
        keep = [i for i, v in enumerate(vecs) if v is not None]
        res = evaluate_vectors(side.index, [vecs[i] for i in keep], [queries[i] for i in keep], k)
        out[m] = {name: float(res.table()[name].sum() / len(queries)) for name in METRICS}
    return out


def compare_versions(a: Side, b: Side, queries: list[EvalQuery], cfg: EvalConfig, k: int) -> Comparison:
    """Score both versions on the same queries; intervals of B − A by paired bootstrap over queries."""
    ra = evaluate_vectors(a.index, [e[FUSED] for e in a.encoded], queries, k)
    rb = evaluate_vectors(b.index, [e[FUSED] for e in b.encoded], queries, k)
    intervals = compare(ra.table(), rb.table(), cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    per_query = []
    for q, qa, qb in zip(queries, ra.per_query, rb.per_query, strict=True):
        d = qb[PRIMARY] - qa[PRIMARY]
        outcome = "win" if d > 1e-9 else "loss" if d < -1e-9 else "tie"
        row = {"query": q.query, "expected": list(q.expected), "outcome": outcome}
        row |= {"a": {m: qa[m] for m in METRICS}, "b": {m: qb[m] for m in METRICS}}
        per_query.append(row | {"a_top": qa["top"], "b_top": qb["top"]})
    abl: dict[str, dict[str, dict[str, float]]] = {}
    for name, side in (("a", a), ("b", b)):
        for m, means in ablations(side, queries, k).items():
            abl.setdefault(m, {})[name] = means
    notes = []
    if len(queries) < 30:
        notes.append(f"{len(queries)} queries: intervals are wide; 30+ queries make small differences visible")
    return Comparison(ra, rb, intervals, per_query, abl, cfg.confidence, cfg.bootstrap_samples, cfg.seed, notes)
