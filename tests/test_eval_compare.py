"""`reelvec eval --compare`: the metrics and paired bootstrap by hand, the interval gate (a clearly worse version
refused, an equal one accepted), and the CLI on two real Qdrant Edge versions with MiniLM-encoded items."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from embedder.factory import load_model
from embedder.fusion import fuse
from embedder.pipeline import embedding_spec
from embedder.types import FUSED, ItemEmbedding, Transcript
from index import open_index
from serving.cli import app
from serving.evalstats import METRICS, compare, metric_table, paired_bootstrap, query_metrics, worse_beyond
from serving.evaluation import EvalQuery, gate, incomparable, score
from tests.conftest import CLIPS, SAMPLES, make_config, temp_env


def test_metrics_by_hand() -> None:
    m = query_metrics(["x", "a", "y", "b"], ["a", "b"])
    assert (m["recall@1"], m["recall@5"], m["recall@10"], m["mrr"]) == (0.0, 1.0, 1.0, 0.5)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    top = query_metrics(["a", "b"], ["a", "b", "c", "d", "e", "f"])
    assert top["recall@1"] == 1.0 and top["recall@5"] == pytest.approx(2 / 5) and top["mrr"] == 1.0
    assert query_metrics(["x"] * 10, ["a"]) == {k: 0.0 for k in m}


def test_paired_bootstrap_is_seeded_and_paired() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(40)
    assert paired_bootstrap(a, a + 0.1) == pytest.approx((0.1, 0.1))  # paired: a constant shift has no spread
    b = a + rng.normal(0.05, 0.1, 40)
    low, high = paired_bootstrap(a, b, seed=3)
    assert (low, high) == paired_bootstrap(a, b, seed=3) and low < float(np.mean(b - a)) < high
    assert paired_bootstrap(a, b, seed=4) != (low, high)
    assert low > 0 > paired_bootstrap(a, b, confidence=0.999)[0] - 1  # a real gain clears zero at 95 %


def _results(n: int, broken: int) -> tuple[Any, Any, list[EvalQuery]]:
    """Live ranks every query's item first; `new` ranks it out of the top 10 for `broken` queries."""
    qs = [EvalQuery(f"q{i}", (f"item{i}",)) for i in range(n)]
    live = score("live", 5, qs, [[f"item{i}", "other"] for i in range(n)])
    new = score("new", 5, qs, [["other"] * 10 if i < broken else [f"item{i}"] for i in range(n)])
    return live, new, qs


def test_gate_refuses_a_clearly_worse_version_and_names_the_metric() -> None:
    live, new, _ = _results(20, broken=12)
    d = gate(new, live, max_drop=0.02)
    assert not d.swap and "nDCG@10 drops 0.600" in d.reason and "MRR" in d.reason and "below −0.02" in d.reason
    assert [i.metric for i in worse_beyond(d.intervals, 0.02)] == list(METRICS)  # every metric clearly worse


def test_gate_accepts_an_equal_version_and_noise() -> None:
    live, _, _ = _results(20, broken=0)
    same = gate(live, live, max_drop=0.0)
    assert same.swap and all(i.diff == 0 and i.low == i.high == 0 for i in same.intervals)
    _, one_worse, _ = _results(20, broken=1)  # one query of 20: the interval reaches 0, within the noise
    d = gate(one_worse, live, max_drop=0.02)
    assert d.swap and d.intervals[0].low < -0.02 and "largest change" in d.reason
    assert gate(live, None, 0.02).swap


def test_gate_refuses_what_it_cannot_measure() -> None:
    _, new, _ = _results(5, broken=0)
    d = incomparable(new, "v-old")
    assert not d.swap and "another embedding schema" in d.reason and "eval --compare v-old new" in d.reason


def test_intervals_count_wins_and_losses() -> None:
    a = metric_table([query_metrics(["a"], ["a"]), query_metrics(["x"], ["b"]), query_metrics(["c"], ["c"])])
    b = metric_table([query_metrics(["a"], ["a"]), query_metrics(["b"], ["b"]), query_metrics(["x"], ["c"])])
    mrr = next(i for i in compare(a, b) if i.metric == "mrr")
    assert (mrr.wins, mrr.losses, mrr.ties, mrr.diff) == (1, 1, 1, 0.0)


# ------------------------------------------------------------------------------- the CLI on two real versions


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Versions `good` (caption and speech embedded by MiniLM) and `bad` (fused scrambled) of the sample
    catalogue in one Qdrant Edge index; the env to reach them."""
    tmp = tmp_path_factory.mktemp("eval-compare")
    cfg = make_config(tmp)
    spec = embedding_spec(cfg)
    text = load_model(cfg.models.text.card, cfg)
    rows = [json.loads(x) for x in (CLIPS / "captions.jsonl").read_text().splitlines() if x.strip()]
    captions = text.encode([f"{r['caption']} {' '.join('#' + h for h in r['hashtags'])}" for r in rows])
    speech = text.encode([r.get("speech") or "" for r in rows])
    items = {}
    for r, cap, sp in zip(rows, captions, speech, strict=True):
        vecs = {"caption": cap} | ({"transcript": sp} if r.get("speech") else {})
        items[r["item_id"]] = vecs | {FUSED: fuse(vecs, spec.weights, spec.dims)}
    _tiny_text_version(tmp, cfg, rows)
    for version in ("good", "bad"):
        with open_index(cfg.index, spec.dims, spec.schema_version, version=version, create=True) as index:
            batch = []
            for iid, vecs in items.items():
                v = dict(vecs)
                if version == "bad":
                    v[FUSED] = np.roll(v[FUSED], 7)  # scrambled blocks: the fused vector no longer means anything
                batch.append(_item(iid, v, spec.schema_version))
            index.upsert(batch)
    return temp_env(tmp)


def _tiny_text_version(tmp: Path, cfg: Any, rows: list[dict[str, Any]]) -> None:
    """Version `tiny` built by another text encoder (a tiny random Qwen3, 64-d) and `b.yaml`, the config that
    names it: a version of another schema, compared with `--config-b`."""
    from tests.test_catalog import tiny_qwen3

    (tmp / "qwen").mkdir()
    card = tiny_qwen3(tmp / "qwen", cfg)
    (tmp / "b.yaml").write_text(yaml.safe_dump({"models": {"text": {"card": str(card), "required": True}}}))
    cfg_b = make_config(tmp, REELVEC__MODELS__TEXT__CARD=str(card))
    spec = embedding_spec(cfg_b)
    vecs = load_model(card, cfg_b).encode([r["caption"] for r in rows])
    with open_index(cfg_b.index, spec.dims, spec.schema_version, version="tiny", create=True) as index:
        items = [{"caption": v} for v in vecs]
        index.upsert(
            [_item(r["item_id"], it | {FUSED: fuse(it, spec.weights, spec.dims)}, spec.schema_version)
             for r, it in zip(rows, items, strict=True)]
        )  # fmt: skip


def _item(item_id: str, vectors: dict[str, np.ndarray], schema: str) -> ItemEmbedding:
    mods = [m for m in vectors if m != FUSED]
    return ItemEmbedding(
        item_id=item_id, vectors=vectors, modalities=mods, transcript=Transcript("", "en"), caption=item_id,
        hashtags=[], creator_id=None, created_at=datetime(2026, 11, 1, tzinfo=UTC), duration_s=5.0,
        models={}, schema_version=schema, decoder="pyav", frame_timestamps_s=[], timings_ms={},
    )  # fmt: skip


def compare_cli(env: dict[str, str], *args: str) -> Any:
    queries = str(SAMPLES / "eval_queries.jsonl")
    return CliRunner().invoke(app, ["eval", "--queries", queries, "--compare", *args], env=env)


def test_eval_compare_reports_a_worse_version(versions: dict[str, str], tmp_path: Path) -> None:
    r = compare_cli(versions, "good", "bad", "--json", "--report", str(tmp_path / "report"))
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    ivs = {i["metric"]: i for i in doc["intervals"]}
    assert set(ivs) == {"recall@1", "recall@5", "recall@10", "ndcg@10", "mrr"}
    assert doc["a"]["metrics"]["ndcg@10"] > 0.5 and ivs["ndcg@10"]["high"] < 0 and ivs["ndcg@10"]["losses"] > 10
    assert doc["outcomes"]["loss"] > doc["outcomes"]["win"] and len(doc["queries"]) == 20
    assert set(doc["ablations"]) == {"caption", "transcript", "ocr"}  # each text modality the query has
    html = (tmp_path / "report" / "index.html").read_text()
    assert doc["report"].endswith("index.html") and html.count("<svg") == 3 and "how to make a home cooked meal" in html
    assert "<script" not in html and "http" not in html  # self-contained: no scripts, no fetches


def test_eval_compare_equal_versions_and_terminal_table(versions: dict[str, str]) -> None:
    doc = json.loads(compare_cli(versions, "good", "good", "--json").stdout)
    assert all(i["diff"] == 0 and i["low"] == 0 and i["high"] == 0 for i in doc["intervals"])
    assert doc["outcomes"] == {"win": 0, "loss": 0, "tie": 20}
    r = compare_cli({**versions, "COLUMNS": "80"}, "good", "bad")
    assert r.exit_code == 0 and "nDCG@10" in r.stdout and "95% CI" in r.stdout and "wins" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_eval_compare_versions_of_different_encoders(versions: dict[str, str]) -> None:
    b_yaml = str(Path(versions["REELVEC__DATA_DIR"]) / "b.yaml")
    r = compare_cli(versions, "good", "tiny", "--config-b", b_yaml, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)  # B's queries were encoded by B's 64-d encoder: random weights rank at chance
    assert doc["b"]["version"] == "tiny" and doc["b"]["metrics"]["ndcg@10"] < doc["a"]["metrics"]["ndcg@10"]
    assert set(doc["ablations"]["caption"]) == {"a", "b"}
