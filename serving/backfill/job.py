"""Batch backfill on Ray Data: manifest → decode → ASR / OCR / CLIP / text → fuse → one writer actor → index.

Resumable (rows already stored in the target version with every model available now are skipped before
decoding), never stopped by a bad row (it goes to the JSONL failure ledger), and able to fill a new
versioned collection while search keeps serving the alias, then swap it. Stages only schedule the steps
of `embedder.pipeline`, so vectors equal `ItemEmbedder`'s.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.config import ReelvecConfig
from embedder.graph import Graph
from embedder.pipeline import EmbeddingSpec, embedding_spec, unavailable_models
from embedder.steps import GRAPH
from embedder.types import ConfigError, ReelvecError
from serving.backfill.cluster import driver_cwd_is_reelvec, probe_address
from serving.backfill.ledger import Ledger
from serving.backfill.plan import Plan, plan_resources
from serving.backfill.report import BackfillReport
from serving.backfill.stages import StepStage, normalize_batch, read_manifest, write_batch
from serving.backfill.writer import call, start_writer, stop_writer
from serving.manifest import ManifestInfo, inspect_manifest, manifest_roots
from serving.reaper import reap_at_exit

log = logging.getLogger(__name__)


def _absolute(cfg: ReelvecConfig) -> ReelvecConfig:
    """Copy of cfg with every path absolute: Ray workers need not share the driver's working directory."""
    c = cfg.model_copy(deep=True)
    c.data_dir = Path(c.data_dir).expanduser().absolute()
    c.models.models_dir = Path(c.models.models_dir).expanduser().absolute()
    c.models.cards_dir = Path(c.models.cards_dir).expanduser().absolute()
    c.index.path = Path(c.index.path).expanduser().absolute()
    return c


@dataclass(frozen=True)
class Steps:
    """The graph's steps this backfill runs (their models are available) and what is missing."""

    full: Graph  # as declared: what the index's vectors are made of
    graph: Graph  # the steps that run (a slice of `full`)
    unavailable: list[str]  # card ids of configured models not available (their modality is off)
    available: list[str]  # card ids available now (a stored item embedded without one of them is redone)

    @classmethod
    def of(cls, cfg: ReelvecConfig, graph: Graph) -> Steps:
        unavailable = unavailable_models(cfg, graph)
        for card in unavailable:
            log.warning("MODEL UNAVAILABLE: %s — its modality is switched off for this whole backfill", card)
        graph = graph.configured(cfg)
        runs = [s.name for s in graph.steps if s.role is None or s.card(cfg) not in unavailable]
        cards = [s.card(cfg) for s in graph.steps if s.role and s.name in runs]
        return cls(graph, graph.only(runs), unavailable, cards)  # type: ignore[arg-type]

    def groups(self) -> list[list[str]]:
        """The steps of each stage, in order: a light step (no model, no worker: thumbnails) runs in the stage
        before it, on the media already there, instead of paying for an actor pool and a row round trip."""
        out: list[list[str]] = []
        for s in self.graph.steps:
            if s.role is None and not s.serial and out:
                out[-1].append(s.name)
            else:
                out.append([s.name])
        return out

    def stages(self) -> dict[str, bool]:
        """Stage name (its first step) -> whether it runs a model (for the resource plan)."""
        return {g[0]: self.graph[g[0]].role is not None for g in self.groups()}


def build_pipeline(
    cfg: ReelvecConfig, info: ManifestInfo, spec: EmbeddingSpec, writer: Any, force: bool, steps: Steps, plan: Plan
) -> Any:
    """The Ray Data plan: read → normalize/resume → one `StepStage` per step of the graph, each an actor pool that
    passes on only the media later stages read → write through the writer actor."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    bf = cfg.backfill

    def pool(stage: str) -> dict[str, Any]:
        p = plan.stages[stage]
        strategy = ActorPoolStrategy(min_size=p.min_size, max_size=p.max_size)
        return {"compute": strategy, "num_cpus": p.num_cpus, **({"num_gpus": p.num_gpus} if p.num_gpus else {})}

    ds = read_manifest(info, plan.cpu_task, bf.batch_size)
    ds = ds.map_batches(
        normalize_batch,
        batch_format="pyarrow",
        batch_size=None,  # one resume check (`admit` round trip) per block
        fn_kwargs={
            "base_dir": str(info.path.parent),
            "fmt": info.format,
            "roots": [str(r) for r in manifest_roots(info.path, cfg.backfill.allowed_roots)],
            "writer": writer,
            "force": force,
            "cfg": cfg,
        },
        num_cpus=plan.cpu_task,
        # One normalize task at a time, in manifest order, so of rows sharing an id the first one is kept.
        compute=TaskPoolStrategy(size=1),
    )
    groups = steps.groups()
    for index, names in enumerate(groups):
        later = [n for g in groups[index + 1 :] for n in g]
        keep = sorted(steps.graph.read_by(later))
        ds = ds.map_batches(
            StepStage,
            fn_constructor_kwargs={"cfg": cfg, "graph": steps.graph, "steps": names, "keep": keep},
            batch_format="pyarrow",
            batch_size=bf.batch_size,
            **pool(names[0]),
        )
    return ds.map_batches(
        write_batch,
        batch_format="pyarrow",
        batch_size=bf.upsert_batch_size,
        fn_kwargs={"writer": writer, "spec": spec, "unavailable": steps.unavailable},
        num_cpus=plan.cpu_task,
        compute=TaskPoolStrategy(size=2),
    )


def check_address(address: str | None) -> None:
    """Refuse a Ray Client address up front: Ray Data's streaming executor does not run over Ray Client (it
    failed deep inside with `'Worker' object has no attribute 'core_worker'`)."""
    if address and address.strip().startswith("ray://"):
        raise ConfigError(
            "unsupported_address",
            f"{address} is a Ray Client address, which Ray Data cannot run on; pass the cluster's GCS address "
            "(--address HEAD:6379, from a node of the cluster) or submit a Ray Job (--submit http://HEAD:8265)",
        )


def _start_ray(address: str | None) -> bool:
    """Connect to `address` (or RAY_ADDRESS, as inside a Ray Job) or start a local Ray sized to this machine's
    cores; returns whether this call initialized Ray (and must shut it down)."""
    import ray

    check_address(address or os.environ.get("RAY_ADDRESS"))
    probe_address(address)  # one line in seconds, not Ray's 12-minute GCS retries (issue 18)
    if ray.is_initialized():
        return False
    with driver_cwd_is_reelvec():  # a folder named `index` here must not shadow reelvec's on the workers
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=False)
        else:
            reap_at_exit()  # Ray's agents must not outlive a kill -9 of this process (issue 18)
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


def _address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _quality_gate(cfg: ReelvecConfig, graph: Graph, writer: Any, report: BackfillReport) -> bool:
    """Recall@k of `eval.queries` on the new version vs. the live one; True when the alias may move."""
    from embedder.pipeline import ItemEmbedder
    from serving.evaluation import gate, incomparable, load_queries

    if cfg.eval.queries is None:
        log.warning("eval.queries is not set: the alias swap is not quality-gated")
        report.gate = {"swap": True, "reason": "not gated: eval.queries is not set"}
        return True
    queries = load_queries(cfg.eval.queries)
    encoder = ItemEmbedder(cfg, graph, steps=[s.name for s in graph.steps if s.query is not None])
    fused = [encoder.encode_query(q.query)["fused"] for q in queries]
    new = call(writer.evaluate.remote(fused, queries, cfg.eval.k, None))
    live_version = call(writer.alias.remote())
    live, decision = None, None
    if live_version is not None and live_version != report.version:
        try:
            live = call(writer.evaluate.remote(fused, queries, cfg.eval.k, live_version))
        except ReelvecError as e:  # the live version was built by other encoders: its queries cannot be encoded here
            if e.reason != "schema_mismatch":
                raise
            decision = incomparable(new, live_version)
    decision = decision or gate(
        new, live, cfg.eval.max_drop, cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.eval.seed
    )
    report.gate = {
        "swap": decision.swap,
        "reason": decision.reason,
        "k": cfg.eval.k,
        "new_recall": round(new.recall, 4),
        "live_version": live_version,
        "live_recall": None if live is None else round(live.recall, 4),
        "intervals": [i.to_json() for i in decision.intervals],
    }
    if not decision.swap:
        log.warning("alias NOT swapped by the quality gate: %s", decision.reason)
    return decision.swap


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="backfill", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _unwrapped(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Re-raise a job-level Ray failure as a reelvec error (one clear CLI line instead of a Ray traceback)."""
    import ray

    from serving.rayerrors import cause_of

    try:
        yield from rows
    except ray.exceptions.RayError as e:
        cause = cause_of(e)
        if isinstance(cause, ReelvecError):
            raise cause from e
        log.error("the Ray Data job failed: %s", e)
        raise ReelvecError("backfill_failed", "the Ray Data job failed (see the log)") from e


def iter_results(ds: Any) -> Iterator[dict[str, Any]]:
    """Stream the final status rows as Ray Data produces them."""
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.drop_columns(["work"]).to_pylist()


@dataclass
class _Run:
    """One backfill's state between its phases (session → plan → execute → finalize)."""

    cfg: ReelvecConfig
    info: ManifestInfo
    spec: EmbeddingSpec
    steps: Steps
    report: BackfillReport
    ledger_path: Path
    writer: Any = None
    sink: Ledger | None = None
    bar: Any = None
    failures: Counter[str] = field(default_factory=Counter)
    stage_ms: Counter[str] = field(default_factory=Counter)


@contextmanager
def _session(address: str | None) -> Iterator[None]:
    """Ray (joined at `address`, or local) with Ray Data's own progress bars off and its resource limits set to
    what is free now (another job's reservations are not ours to use); everything restored on the way out."""
    import ray
    from ray.data import DataContext, ExecutionResources

    started = _start_ray(address)
    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.execution_options.resource_limits
    ctx.enable_progress_bars = False  # our own bar counts items; Ray's per-operator bars count blocks
    try:
        free = ray.available_resources()
        ctx.execution_options.resource_limits = ExecutionResources(cpu=free.get("CPU", 0.0), gpu=free.get("GPU", 0.0))
        yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.resource_limits = saved
        if started:
            ray.shutdown()


def _plan(run: _Run, target_version: str | None, force: bool, progress: bool) -> Any:
    """Size the stages to the free resources, start the writer actor (it holds the target version) and the
    ledger, and build the Ray Data plan."""
    import ray

    free = ray.available_resources()
    plan = plan_resources(free, run.cfg.backfill, run.steps.stages(), address=_address())
    log.info("backfill plan for %s CPU free: %s", free.get("CPU", 0), plan)
    run.writer = start_writer(run.cfg, run.spec, target_version, run.steps.available)
    run.sink = Ledger(run.ledger_path)  # opened (and truncated) only once the index is ours
    run.bar = _progress_bar(run.info.rows, progress)
    run.report.version = call(run.writer.version.remote())
    log.info("backfill of %s (%d rows) into version %s", run.info.path, run.info.rows, run.report.version)
    if target_version is None and run.report.version != run.spec.schema_version:
        log.warning(
            "the alias serves version %s but this config embeds schema %s: items are re-embedded into the "
            "live version and mix with older vectors; use --target-version NEW --swap-alias for an upgrade",
            run.report.version,
            run.spec.schema_version,
        )
    return build_pipeline(run.cfg, run.info, run.spec, run.writer, force, run.steps, plan)


def _execute(run: _Run, ds: Any, on_row: Callable[[dict[str, Any]], None] | None) -> None:
    """Stream the finished rows: tally them, ledger the failures, move the bar."""
    report = run.report
    for row in _unwrapped(iter_results(ds)):
        status = row["status"]
        if status == "ok":
            report.written += 1
            run.stage_ms.update(json.loads(row["timings"] or "{}"))
        elif status == "skipped":
            report.skipped += 1
        else:
            report.failed += 1
            run.failures[f"{row['stage']}/{row['reason']}"] += 1
            run.sink.write(row)  # type: ignore[union-attr]
        run.bar.update(1)
        run.bar.set_postfix(ok=report.written, skipped=report.skipped, failed=report.failed, refresh=False)
        if on_row is not None:
            on_row(row)


def _finalize(run: _Run, swap_alias: bool) -> None:
    """Optimize, count, collect relations and, when asked and allowed (failures, quality gate), swap the alias."""
    report, writer = run.report, run.writer
    t0 = time.perf_counter()
    call(writer.optimize.remote())
    report.optimize_s = time.perf_counter() - t0
    report.index_count = call(writer.count.remote())
    report.failures = dict(run.failures)
    report.stage_s = {k: v / 1000 for k, v in run.stage_ms.items()}
    report.relations = call(writer.relations.remote())
    if swap_alias:
        if report.exit_code != 0:
            log.warning("alias NOT swapped: %d failures > max_failures=%d", report.failed, report.max_failures)
        elif _quality_gate(run.cfg, run.steps.full, writer, report):
            call(writer.swap_alias.remote())
            report.swapped = True
    report.alias_version = call(writer.alias.remote())


def _close(run: _Run) -> None:
    if run.bar is not None:
        run.bar.close()
    if run.sink is not None:
        run.sink.close()
    if run.writer is not None:
        stop_writer(run.writer)


def run_backfill(
    cfg: ReelvecConfig,
    manifest: str | Path,
    *,
    ledger: str | Path | None = None,
    max_failures: int | None = None,
    force: bool = False,
    target_version: str | None = None,
    swap_alias: bool = False,
    address: str | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    graph: Graph = GRAPH,
) -> BackfillReport:
    """(Re-)embed every manifest row into the target index version; see the module docstring.

    `on_row` is called on the driver for every finished row (tests use it to act mid-run).
    """
    t_start = time.perf_counter()
    cfg = _absolute(cfg)
    info = inspect_manifest(manifest)
    spec, steps = embedding_spec(cfg, graph), Steps.of(cfg, graph)
    ledger_path = Path(ledger).expanduser().absolute() if ledger else cfg.data_dir / "backfill" / "ledger.jsonl"
    report = BackfillReport(
        manifest=str(info.path),
        version="",
        schema_version=spec.schema_version,
        total=info.rows,
        max_failures=cfg.backfill.max_failures if max_failures is None else max_failures,
        ledger=str(ledger_path),
        unavailable_models=steps.unavailable,
    )
    if info.rows == 0:  # nothing to embed: no cluster, no writer, no ledger (issue 18)
        return report
    run = _Run(cfg, info, spec, steps, report, ledger_path)
    with _session(address):
        try:
            ds = _plan(run, target_version, force, progress)
            _execute(run, ds, on_row)
            _finalize(run, swap_alias)
        finally:
            _close(run)
            report.wall_s = time.perf_counter() - t_start
    return report
