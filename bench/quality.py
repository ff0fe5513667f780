"""Retrieval quality on the samples: every single modality, the fused vector (default and tuned weights) and
Qdrant's late fusion (RRF, DBSF), through the real index; fusion weights tuned on a dev split of the queries and
reported on the held-out test split (never tuned and reported on the same queries).

Queries: bench/quality_queries.jsonl (one paraphrase per catalogue clip; relevant = that clip) and
samples/eval_queries.jsonl (topic paraphrases and overlay-only queries; relevant = every clip of the topic).
Split: queries in file order, even positions → dev, odd → test. Metrics: text→item Recall@1 (top hit relevant),
Recall@5 (|top-5 ∩ relevant| / min(5, |relevant|)), nDCG@10 (binary), item→item same-topic P@3 (every clip,
itself excluded). A modality an item lacks cannot retrieve it (its score counts as a miss), so a modality is not
flattered by only being scored where it exists. The baseline is the best single modality on each metric.
Usage: python bench/quality.py   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import FusionConfig, IndexConfig, load_config  # noqa: E402
from embedder.fusion import fuse  # noqa: E402
from embedder.pipeline import EmbeddingSpec, ItemEmbedder  # noqa: E402
from embedder.types import FUSED, MODALITIES, ItemEmbedding  # noqa: E402
from index import SearchFilter, VectorIndex, open_index  # noqa: E402
from serving.manifest import collect_folder  # noqa: E402

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
Ranker = Callable[[dict[str, np.ndarray], int, list[str]], list[str]]


def load_queries() -> list[dict]:
    rows = [json.loads(x) for x in (ROOT / "bench/quality_queries.jsonl").read_text().splitlines() if x.strip()]
    out = [{"query": r["query"], "relevant": {r["item_id"]}} for r in rows]
    evq = [json.loads(x) for x in (ROOT / "samples/eval_queries.jsonl").read_text().splitlines() if x.strip()]
    out += [{"query": r["query"], "relevant": set(r["expected"])} for r in evq]
    return out


def text_metrics(ranked: list[list[str]], queries: list[dict]) -> dict[str, float]:
    r1 = r5 = ndcg = 0.0
    for ids, q in zip(ranked, queries, strict=True):
        rel = q["relevant"]
        r1 += bool(ids[:1]) and ids[0] in rel
        r5 += len(set(ids[:5]) & rel) / min(5, len(rel))
        dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(ids[:10]) if x in rel)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(rel))))
        ndcg += dcg / ideal
    n = len(queries)
    return {"R@1": r1 / n, "R@5": r5 / n, "nDCG@10": ndcg / n}


def item_p3(neighbours: dict[str, list[str]], topic: dict[str, str]) -> float:
    return sum(sum(topic[h] == topic[i] for h in neighbours.get(i, [])[:3]) / 3 for i in topic) / len(topic)


def refuse(embedded: list[ItemEmbedding], weights: dict[str, float], spec: EmbeddingSpec) -> dict[str, np.ndarray]:
    """Fused vectors of every item under other weights (items with no positively weighted modality have none)."""
    out = {}
    for e in embedded:
        parts = {m: e.vectors[m] for m in MODALITIES if m in e.vectors and weights.get(m, 0) > 0}
        if parts:
            out[e.item_id] = fuse(parts, weights, spec.dims)
    return out


def exact_rank(matrix: dict[str, np.ndarray], q: np.ndarray, k: int, exclude: str | None = None) -> list[str]:
    ids = [i for i in matrix if i != exclude]
    if not ids:
        return []
    scores = np.stack([matrix[i] for i in ids]) @ q
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def score_weights(
    weights: dict[str, float], embedded: list[ItemEmbedding], qvecs: list[dict], queries: list[dict], spec, topic
) -> dict[str, float]:
    """Exact cosine in numpy with fused vectors rebuilt for `weights` (the same ranking exact Qdrant search gives)."""
    items = refuse(embedded, weights, spec)
    if not items:
        return {"R@1": 0.0, "R@5": 0.0, "nDCG@10": 0.0, "P@3": 0.0}
    ranked = []
    for qv in qvecs:
        parts = {m: qv[m] for m in MODALITIES if m in qv and weights.get(m, 0) > 0}
        ranked.append(exact_rank(items, fuse(parts, weights, spec.dims), 10) if parts else [])
    m = text_metrics(ranked, queries)
    m["P@3"] = item_p3({i: exact_rank(items, items[i], 3, exclude=i) for i in items}, topic)
    return m


def tune(
    embedded, qvecs, queries, spec, topic, present: list[str], configured: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Grid search of the weights of the present modalities on the dev queries (mean of the four metrics). An
    absent modality (no model here) keeps its configured weight and the present ones share the rest, so the
    result can go into the config as is."""
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    absent = {m: configured[m] for m in MODALITIES if m not in present}
    share = 1.0 - sum(absent.values()) if sum(configured.values()) else 1.0
    for combo in itertools.product(GRID, repeat=len(present)):
        if sum(combo) == 0:
            continue
        w = dict(absent)
        w.update({m: round(share * c / sum(combo), 4) for m, c in zip(present, combo, strict=True)})
        m = score_weights(w, embedded, qvecs, queries, spec, topic)
        s = sum(m.values()) / len(m)
        if best is None or s > best[0] + 1e-9:
            best = (s, w, m)
    assert best is not None
    return best[1], best[2]


def index_rows(
    index: VectorIndex, embedded: list[ItemEmbedding], qvecs: list[dict], queries: list[dict], topic: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Every single vector, the fused vector and RRF / DBSF late fusion, searched in the real index."""
    rows: dict[str, dict[str, float]] = {}
    systems: dict[str, Ranker] = {
        name: (lambda v, k, ex, u=name: [h.item_id for h in index.search(v[u], using=u, k=k, flt=_ex(ex))])
        for name in (FUSED, *MODALITIES)
    }
    for method in ("rrf", "dbsf"):
        systems[method] = lambda v, k, ex, mth=method: [
            h.item_id for h in index.search_multi({m: v[m] for m in MODALITIES if m in v}, k=k, flt=_ex(ex), method=mth)
        ]
    by_id = {e.item_id: e for e in embedded}
    for name, rank in systems.items():
        if name in MODALITIES and not any(name in e.vectors for e in embedded):
            continue
        ranked = [rank(qv, 10, []) if (name not in MODALITIES or name in qv) else [] for qv in qvecs]
        m = text_metrics(ranked, queries)
        neigh = {}
        for i in topic:
            vecs = by_id[i].vectors
            if name in MODALITIES and name not in vecs:
                continue
            neigh[i] = rank(vecs, 3, [i])
        m["P@3"] = item_p3(neigh, topic)
        rows[name] = m
    return rows


def recommend_pairs(topic: dict[str, str]) -> list[tuple[list[str], str, set[str]]]:
    """(two likes of a topic, one dislike of another, the topic's other items) for every combination."""
    out = []
    for t in sorted(set(topic.values())):
        same = [i for i in topic if topic[i] == t]
        for likes in itertools.combinations(same, 2):
            out += [(list(likes), d, set(same) - set(likes)) for d in topic if topic[d] != t]
    return out


def recommend_precision(index: VectorIndex, topic: dict[str, str]) -> float:
    """Mean share of the likes' topic-mates in the top len(mates) recommendations."""
    scores = []
    for likes, dislike, mates in recommend_pairs(topic):
        hits = index.recommend(likes, [dislike], k=len(mates))
        scores.append(len(mates & {h.item_id for h in hits}) / len(mates))
    return sum(scores) / len(scores)


def _ex(ids: list[str]) -> SearchFilter | None:
    return SearchFilter(exclude_ids=ids) if ids else None


def table(rows: dict[str, dict[str, float]], baseline: dict[str, float]) -> str:
    head = "| vector | R@1 text→item | R@5 text→item | nDCG@10 | same-topic P@3 item→item |\n|---|---|---|---|---|\n"
    body = ""
    for name, m in rows.items():
        cells = [f"{m[k]:.3f}" + (" ≥" if k in baseline and m[k] >= baseline[k] - 1e-9 else "") for k in m]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    queries = load_queries()
    dev, test = queries[0::2], queries[1::2]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(environ={"REELVEC__INDEX__PATH": f"{tmp}/index", "REELVEC__DATA_DIR": tmp})
        items, _ = collect_folder(ROOT / "samples/clips", cfg.limits)
        topic = {i.item_id: str(i.metadata["topic"]) for i in items}
        emb = ItemEmbedder(cfg)
        results = emb.embed_batch(items)
        embedded = [e for e in results if isinstance(e, ItemEmbedding)]
        failed = [r for r in results if not isinstance(r, ItemEmbedding)]
        qv_dev = [emb.encode_query(q["query"]) for q in dev]
        qv_test = [emb.encode_query(q["query"]) for q in test]
        spec = emb.spec
        unavailable = ", ".join(emb.unavailable) or "none"
        emb.close()
        present = [m for m in MODALITIES if any(m in e.vectors for e in embedded)]
        default_w = {m: w / sum(cfg.fusion.weights.values()) for m, w in cfg.fusion.weights.items()}
        tuned_w, tuned_dev = tune(embedded, qv_dev, dev, spec, topic, present, default_w)
        dev_default = score_weights(default_w, embedded, qv_dev, dev, spec, topic)
        with open_index(cfg.index, spec.dims, spec.schema_version) as index:
            report = index.upsert(embedded)
            assert not report.failed, report.failed
            rows_test = index_rows(index, embedded, qv_test, test, topic)
        rec = {}
        for strategy in ("sum_scores", "best_score"):
            rcfg = cfg.index.model_copy(update={"recommend_strategy": strategy})
            with open_index(rcfg, spec.dims, spec.schema_version) as index:
                rec[strategy] = recommend_precision(index, topic)
        rows_test["fused (tuned weights)"] = score_weights(tuned_w, embedded, qv_test, test, spec, topic)
    singles = {m: rows_test[m] for m in MODALITIES if m in rows_test}
    baseline = {k: max(r[k] for r in singles.values()) for k in ("R@1", "R@5", "nDCG@10", "P@3")}
    best_of = {k: max(singles, key=lambda m, k=k: singles[m][k]) for k in baseline}
    wins = {
        name: (all(m[k] >= baseline[k] - 1e-9 for k in baseline), any(m[k] > baseline[k] + 1e-9 for k in baseline))
        for name, m in rows_test.items()
        if name not in MODALITIES
    }
    fmt = ", ".join(f"{m} {w:.2f}" for m, w in tuned_w.items())
    lines = [
        f"\n## quality — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"Command: `{command()}` · {len(embedded)} sample clips embedded ({len(failed)} failed), 4 topics · "
        f"{len(queries)} queries: dev {len(dev)} (even rows) / test {len(test)} (odd rows) · Qdrant Edge "
        f"(exact search below its indexing threshold) · unavailable models: {unavailable}\n",
        "**Test split** (≥ marks a value at or above the best single modality on that metric):\n",
        table(rows_test, baseline),
        "Best single modality per metric (the baseline): "
        + ", ".join(f"{k} {baseline[k]:.3f} ({best_of[k]})" for k in baseline)
        + ".\n",
        "At or above the baseline on every metric / strictly better on one: "
        + "; ".join(f"{n} {'yes' if a else 'no'}/{'yes' if b else 'no'}" for n, (a, b) in wins.items())
        + ".\n",
        f"Weights tuned on the dev split (grid {GRID} per present modality, normalized; objective = mean of the "
        "four metrics; modalities without a model here keep their configured share): "
        f"**{fmt}** — dev mean {sum(tuned_dev.values()) / 4:.3f} vs the configured weights "
        f"{sum(dev_default.values()) / 4:.3f} ({', '.join(f'{m} {w:.2f}' for m, w in default_w.items())}; "
        f"FusionConfig default {FusionConfig().weights}).\n",
    ]
    lines.append(
        "Cold-start recommend (fused; 2 likes from one topic + 1 dislike from another, every combination, "
        f"{len(recommend_pairs(topic))} queries): share of the likes' topic-mates in the top |mates| — "
        + " · ".join(f"{k} {v:.3f}" for k, v in rec.items())
        + f" (`index.recommend_strategy`; default {IndexConfig().recommend_strategy}).\n"
    )
    publish("quality", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
