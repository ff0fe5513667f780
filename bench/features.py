"""The 4/4 features on the samples: moment hit rate, semantic-ID prefix purity, and the quality gate's decisions.

moments: every paraphrase query of a catalogue clip (bench/quality_queries.jsonl, the words are spoken) and every
overlay-only query (samples/eval_queries.jsonl `source: overlay`, the words are on screen) is searched; for the
clip that should answer it, a hit is a moment from the modality that carries the words (transcript / ocr),
inside the clip's duration, and — for overlay queries — on the on-screen card the query paraphrases (the card
sharing most words with it, ground truth from captions.jsonl).
semantic IDs: `serving.semantic.fit_index` on the stored fused vectors (3 levels; codebook 4 and 256 — the
latter shrinks to what 29 items support), purity = share of items whose prefix group's majority topic is theirs.
gate: Recall@k of samples/eval_queries.jsonl on the live version vs. a version made worse on purpose (the
transcript modality dropped and the fused vector rebuilt without it), and the gate's decision for each.
Usage: python bench/features.py   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import DedupConfig, load_config  # noqa: E402
from embedder.fusion import fuse  # noqa: E402
from embedder.pipeline import ItemEmbedder  # noqa: E402
from embedder.types import FUSED, MODALITIES, ItemEmbedding  # noqa: E402
from index import open_index  # noqa: E402
from serving.evaluation import evaluate, gate, load_queries  # noqa: E402
from serving.manifest import collect_folder  # noqa: E402
from serving.semantic import fit_index  # noqa: E402

# "Made worse on purpose": the version a fusion config that zeroes the useful modalities would build.
WORSE_DROPS = ("transcript", "ocr")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = {
        json.loads(x)["item_id"]: json.loads(x)
        for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines()
        if x.strip()
    }
    para = [json.loads(x) for x in (ROOT / "bench/quality_queries.jsonl").read_text().splitlines() if x.strip()]
    evq = [json.loads(x) for x in (ROOT / "samples/eval_queries.jsonl").read_text().splitlines() if x.strip()]
    moment_cases = [(q["query"], q["item_id"], "transcript") for q in para if rows[q["item_id"]]["speech"]]
    moment_cases += [(q["query"], q["primary"][0], "ocr") for q in evq if q.get("source") == "overlay"]
    lines = [f"\n## features — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n", f"Command: `{command()}`\n"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(environ={"REELVEC__INDEX__PATH": f"{tmp}/index", "REELVEC__DATA_DIR": tmp})
        emb = ItemEmbedder(cfg)
        embedded = [e for e in emb.embed_batch(collect_folder(ROOT / "samples/clips", cfg.limits)[0]) if e]
        embedded = [e for e in embedded if isinstance(e, ItemEmbedding)]
        spec = emb.spec
        with open_index(cfg.index, spec.dims, spec.schema_version) as index:
            index.ingest([replace(e) for e in embedded], DedupConfig(enabled=False))
            hits = loose = 0
            detail = []
            for query, item_id, source in moment_cases:
                q = emb.encode_query(query)
                payload = {"item_id": item_id, **index.get(item_id).payload}
                (m,) = emb.moments(q, [payload], index.frame_vectors([item_id]))
                ok = m is not None and m.source == source and 0 <= m.start_s <= m.end_s <= payload["duration_s"] + 0.5
                loose += ok
                if ok and source == "ocr":
                    card = max(rows[item_id]["overlay"], key=lambda c: len(words(c) & words(query)))
                    ok = len(words(m.text) & words(card)) >= len(words(card)) / 2  # type: ignore[union-attr]
                hits += ok
                if not ok:
                    got = "none" if m is None else f"{m.source} '{m.text}'"
                    detail.append(f"`{query}` → {item_id}: {got}")
            n_tr = sum(1 for c in moment_cases if c[2] == "transcript")
            lines.append(
                f"**Moment hit rate**: right modality inside the clip {loose}/{len(moment_cases)}; and, for overlay "
                f"queries, on the card the query paraphrases: {hits}/{len(moment_cases)} = "
                f"{hits / len(moment_cases):.3f} "
                f"({n_tr} spoken-word queries → transcript segment, {len(moment_cases) - n_tr} overlay-only queries "
                "→ the right on-screen line)." + (" Misses: " + "; ".join(detail) if detail else "") + "\n"
            )
            purity = {}
            for cb in (4, 256):
                rep = fit_index(cfg, index, spec.schema_version, levels=3, codebook_size=cb)
                purity[cb] = (rep["codebook_sizes"], rep.get("prefix_purity"))
            lines.append(
                "**Semantic-ID prefix purity** (topic of the prefix group's majority, 29 items, 4 topics; with "
                "codebooks as large as the item count every item gets its own code, so purity is trivially 1): "
                + "; ".join(f"codebook {cb} → sizes {s}, purity by depth {p}" for cb, (s, p) in purity.items())
                + "\n"
            )
            queries = load_queries(ROOT / "samples/eval_queries.jsonl")
            live = evaluate(index, emb.encode_query, queries, cfg.eval.k)
        worse = []
        for e in embedded:
            vecs = {m: v for m, v in e.vectors.items() if m in MODALITIES and m not in WORSE_DROPS}
            if vecs:
                vecs[FUSED] = fuse(vecs, spec.weights, spec.dims)
                worse.append(replace(e, vectors=vecs, modalities=[m for m in e.modalities if m not in WORSE_DROPS]))
        bad_cfg = cfg.index.model_copy(update={"path": Path(tmp) / "worse"})
        with open_index(bad_cfg, spec.dims, spec.schema_version) as bad:
            bad.ingest(worse, DedupConfig(enabled=False))
            new = evaluate(bad, emb.encode_query, queries, cfg.eval.k)
        emb.close()
    refused, same = gate(new, live, cfg.eval.max_drop), gate(live, live, cfg.eval.max_drop)
    lines.append(
        f"**Quality gate** (samples/eval_queries.jsonl, {len(queries)} queries, Recall@{cfg.eval.k}, eval.max_drop "
        f"{cfg.eval.max_drop}): live {live.recall:.3f}; a version without the {' and '.join(WORSE_DROPS)} modalities "
        f"{new.recall:.3f} → {'swap' if refused.swap else 'REFUSED'} ({refused.reason}); the same good version "
        f"again → {'swap' if same.swap else 'REFUSED'}.\n"
    )
    publish("features", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
