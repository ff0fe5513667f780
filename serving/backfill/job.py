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
from pathlib import Path
from typing import Any

from embedder.config import ReelvecConfig
from embedder.pipeline import ROLES, EmbeddingSpec, embedding_spec, unavailable_models
from embedder.types import ConfigError, ReelvecError
from serving.backfill.cluster import driver_cwd_is_reelvec, probe_address
from serving.backfill.ledger import Ledger
from serving.backfill.plan import Plan, plan_resources
from serving.backfill.report import BackfillReport
from serving.backfill.stages import (
    MODEL_STAGES,
    DecodeStage,
    normalize_batch,
    read_manifest,
    write_batch,
)
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


def build_pipeline(
    cfg: ReelvecConfig,
    info: ManifestInfo,
    spec: EmbeddingSpec,
    writer: Any,
    force: bool,
    models: dict[str, bool],
    unavailable: list[str],
    plan: Plan,
) -> Any:
    """The Ray Data plan: read → normalize/resume → decode (actors) → ASR / OCR / CLIP / text (actors) → write."""
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
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"cfg": cfg, "keep_frames": models["clip"], "ocr_frames": models["ocr"]},
        batch_format="pyarrow",
        batch_size=bf.batch_size,
        **pool("decode"),
    )
    for name, stage in MODEL_STAGES.items():
        if not models[name]:
            continue
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_format="pyarrow",
            batch_size=bf.batch_size,
            **pool(name),
        )
    return ds.map_batches(
        write_batch,
        batch_format="pyarrow",
        batch_size=bf.upsert_batch_size,
        fn_kwargs={"writer": writer, "spec": spec, "unavailable": unavailable},
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

    if ray.is_initialized():
        return False
    check_address(address or os.environ.get("RAY_ADDRESS"))
    probe_address(address)  # one line in seconds, not Ray's 12-minute GCS retries (issue 18)
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


def _quality_gate(cfg: ReelvecConfig, spec: EmbeddingSpec, writer: Any, report: BackfillReport) -> bool:
    """Recall@k of `eval.queries` on the new version vs. the live one; True when the alias may move."""
    from embedder.pipeline import Models, encode_query
    from serving.evaluation import gate, load_queries

    if cfg.eval.queries is None:
        log.warning("eval.queries is not set: the alias swap is not quality-gated")
        report.gate = {"swap": True, "reason": "not gated: eval.queries is not set"}
        return True
    queries = load_queries(cfg.eval.queries)
    models = Models.load(cfg, roles=("clip", "text"))
    fused = [encode_query(models, spec, q.query)["fused"] for q in queries]
    new = call(writer.evaluate.remote(fused, queries, cfg.eval.k, None))
    live_version = call(writer.alias.remote())
    live = None
    if live_version is not None and live_version != report.version:
        live = call(writer.evaluate.remote(fused, queries, cfg.eval.k, live_version))
    decision = gate(new, live, cfg.eval.max_drop)
    report.gate = {
        "swap": decision.swap,
        "reason": decision.reason,
        "k": cfg.eval.k,
        "new_recall": round(new.recall, 4),
        "live_version": live_version,
        "live_recall": None if live is None else round(live.recall, 4),
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

    try:
        yield from rows
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ReelvecError):
            raise cause from e
        log.error("the Ray Data job failed: %s", e)
        raise ReelvecError("backfill_failed", "the Ray Data job failed (see the log)") from e


def iter_results(ds: Any) -> Iterator[dict[str, Any]]:
    """Stream the final status rows as Ray Data produces them."""
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.drop_columns(["work"]).to_pylist()


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
) -> BackfillReport:
    """(Re-)embed every manifest row into the target index version; see the module docstring.

    `on_row` is called on the driver for every finished row (tests use it to act mid-run).
    """
    import ray
    from ray.data import DataContext, ExecutionResources

    t_start = time.perf_counter()
    cfg = _absolute(cfg)
    info = inspect_manifest(manifest)
    spec = embedding_spec(cfg)
    unavailable = unavailable_models(cfg)
    for card in unavailable:
        log.warning("MODEL UNAVAILABLE: %s — its modality is switched off for this whole backfill", card)
    models = {role: getattr(cfg.models, role).card not in unavailable for role in ROLES}
    available = [getattr(cfg.models, role).card for role in ROLES if models[role]]
    ledger_path = Path(ledger).expanduser().absolute() if ledger else cfg.data_dir / "backfill" / "ledger.jsonl"
    report = BackfillReport(
        manifest=str(info.path),
        version="",
        schema_version=spec.schema_version,
        total=info.rows,
        max_failures=cfg.backfill.max_failures if max_failures is None else max_failures,
        ledger=str(ledger_path),
        unavailable_models=unavailable,
    )
    if info.rows == 0:  # nothing to embed: no cluster, no writer, no ledger (issue 18)
        return report
    check_address(address)
    started = _start_ray(address)
    ctx = DataContext.get_current()
    saved_bars, saved_limits = ctx.enable_progress_bars, ctx.execution_options.resource_limits
    ctx.enable_progress_bars = False  # our own bar counts items; Ray's per-operator bars count blocks
    writer: Any = None
    sink: Ledger | None = None
    bar: Any = None
    failures: Counter[str] = Counter()
    stage_ms: Counter[str] = Counter()
    try:
        free = ray.available_resources()
        plan = plan_resources(free, cfg.backfill, [r for r in MODEL_STAGES if models[r]], address=_address())
        log.info("backfill plan for %s CPU free: %s", free.get("CPU", 0), plan)
        # Ray Data budgets from the cluster's total by default; another job's reservations are not ours to use.
        ctx.execution_options.resource_limits = ExecutionResources(cpu=free.get("CPU", 0.0), gpu=free.get("GPU", 0.0))
        writer = start_writer(cfg, spec, target_version, available)
        sink = Ledger(ledger_path)  # opened (and truncated) only once the index is ours
        bar = _progress_bar(info.rows, progress)
        report.version = call(writer.version.remote())
        log.info("backfill of %s (%d rows) into version %s", info.path, info.rows, report.version)
        if target_version is None and report.version != spec.schema_version:
            log.warning(
                "the alias serves version %s but this config embeds schema %s: items are re-embedded into the "
                "live version and mix with older vectors; use --target-version NEW --swap-alias for an upgrade",
                report.version,
                spec.schema_version,
            )
        ds = build_pipeline(cfg, info, spec, writer, force, models, unavailable, plan)
        for row in _unwrapped(iter_results(ds)):
            status = row["status"]
            if status == "ok":
                report.written += 1
                stage_ms.update(json.loads(row["timings"] or "{}"))
            elif status == "skipped":
                report.skipped += 1
            else:
                report.failed += 1
                failures[f"{row['stage']}/{row['reason']}"] += 1
                sink.write(row)
            bar.update(1)
            bar.set_postfix(ok=report.written, skipped=report.skipped, failed=report.failed, refresh=False)
            if on_row is not None:
                on_row(row)
        t0 = time.perf_counter()
        call(writer.optimize.remote())
        report.optimize_s = time.perf_counter() - t0
        report.index_count = call(writer.count.remote())
        report.failures = dict(failures)
        report.stage_s = {k: v / 1000 for k, v in stage_ms.items()}
        report.duplicates = {
            i: {"duplicate_of": orig, "duplicate_score": score}
            for i, (orig, score) in call(writer.duplicates.remote()).items()
        }
        if swap_alias:
            if report.exit_code != 0:
                log.warning("alias NOT swapped: %d failures > max_failures=%d", report.failed, report.max_failures)
            elif _quality_gate(cfg, spec, writer, report):
                call(writer.swap_alias.remote())
                report.swapped = True
        report.alias_version = call(writer.alias.remote())
    finally:
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
        if writer is not None:
            stop_writer(writer)
        ctx.enable_progress_bars = saved_bars
        ctx.execution_options.resource_limits = saved_limits
        report.wall_s = time.perf_counter() - t_start
        if started:
            ray.shutdown()
    return report
