"""Retrieval quality on the sample set: fused vs. each single modality, through the real index.

text→item: each clip has one hand-written paraphrase query (bench/quality_queries.jsonl, not copied from
captions or speech); Recall@1 / Recall@5 = share of queries whose clip is in the top 1 / 5.
item→item: same-topic precision@3 of each clip's three nearest neighbours (itself excluded).
A modality whose model is unavailable (CLIP offline) is reported as n/a, never faked.
Usage: python bench/quality.py   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import IndexConfig, load_config  # noqa: E402
from embedder.pipeline import ItemEmbedder  # noqa: E402
from embedder.types import FUSED, MODALITIES, ItemEmbedding, ItemInput  # noqa: E402
from index import SearchFilter, VectorIndex, open_index  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    clips_dir = ROOT / "samples/clips"
    rows = [json.loads(x) for x in (clips_dir / "captions.jsonl").read_text().splitlines() if x.strip()]
    queries = [json.loads(x) for x in (ROOT / "bench/quality_queries.jsonl").read_text().splitlines() if x.strip()]
    topic = {r["item_id"]: r["topic"] for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(environ={"REELVEC__INDEX__PATH": f"{tmp}/index", "REELVEC__DATA_DIR": tmp})
        emb = ItemEmbedder(cfg)
        items = [
            ItemInput(r["item_id"], str(clips_dir / r["file"]), r["caption"], r["hashtags"], r["creator_id"])
            for r in rows
        ]
        embedded = [e for e in emb.embed_batch(items) if isinstance(e, ItemEmbedding)]
        assert len(embedded) == len(items), "every sample clip must embed"
        qvecs = {q["item_id"]: emb.encode_query(q["query"]) for q in queries}
        emb.close()
        table = []
        with open_index(cfg.index, emb.spec.dims, emb.spec.schema_version) as index:
            index.upsert(embedded)
            for using in (FUSED, *MODALITIES):
                has = sum(using in e.vectors for e in embedded)
                if has == 0:
                    table.append((using, "n/a", "n/a", "n/a", f"0/{len(embedded)} (model unavailable)"))
                    continue
                r1 = r5 = 0
                for q in queries:
                    ids = [h.item_id for h in index.search(qvecs[q["item_id"]][using], using=using, k=5)]
                    r1 += ids[:1] == [q["item_id"]]
                    r5 += q["item_id"] in ids
                same, total = 0, 0
                for e in embedded:
                    if using not in e.vectors:
                        continue
                    flt = SearchFilter(exclude_ids=[e.item_id])
                    hits = index.search(e.vectors[using], using=using, k=3, flt=flt)
                    same += sum(topic[h.item_id] == topic[e.item_id] for h in hits)
                    total += 3
                n = len(queries)
                table.append((using, f"{r1 / n:.3f}", f"{r5 / n:.3f}", f"{same / total:.3f}", f"{has}/{len(embedded)}"))
        rec = {}
        for strategy in ("sum_scores", "best_score"):
            rcfg = cfg.index.model_copy(update={"recommend_strategy": strategy})
            with open_index(rcfg, emb.spec.dims, emb.spec.schema_version) as index:
                rec[strategy] = recommend_precision(index, topic)
    header = (
        "| vector | Recall@1 text→item | Recall@5 text→item | same-topic P@3 item→item | items with it |\n"
        "|---|---|---|---|---|\n"
    )
    body = "".join(f"| {a} | {b} | {c} | {d} | {e} |\n" for a, b, c, d, e in table)
    strategies = " · ".join(f"{k} {v:.3f}" for k, v in rec.items())
    body += (
        "\nCold-start recommend (fused; 2 likes from one topic + 1 dislike from another, every combination, "
        f"{len(recommend_pairs(topic))} queries): share of the topic's 2 other items in the top 2 — {strategies} "
        f"(`index.recommend_strategy`; default {IndexConfig().recommend_strategy}).\n"
    )
    unavailable = ", ".join(emb.unavailable) or "none"
    section = (
        f"\n## quality — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {len(rows)} sample clips, 4 topics, {len(queries)} paraphrase "
        f"queries · Qdrant Edge (exact search below its indexing threshold) · unavailable models: {unavailable}\n\n"
        + header
        + body
    )
    publish("quality", section, write=not args.no_write)


if __name__ == "__main__":
    main()
