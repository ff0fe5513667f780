"""How big the backfill's Ray Data plan may be, from the resources the cluster has free right now (no Ray import).

Fixed actor pools that ask for more CPUs than are free wait forever (issue 1/4: two pools took a 2-CPU cluster
and the other stages never started). So every actor stage autoscales from one actor up to its configured
concurrency, and the CPU reservations are scaled down until the largest plan fits what is free; when even one
actor per stage cannot fit, the job refuses up front with one clear line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from embedder.config import BackfillConfig
from embedder.types import ConfigError

# Logical-CPU reservations per stage at full size. Decoding runs in the Decoder's child process (outside Ray's
# accounting) and the models mostly wait on each other in a pipeline, so these are fractions of a core.
CPU_TASK = 0.1  # read + normalize and write tasks
CPU_DECODE = 0.25
CPU_MODEL = 0.5
TASK_SLOTS = 3  # read + normalize (fused into one task), and up to 2 concurrent write tasks
# Below this per-actor reservation the plan no longer means anything: the cluster is full, not merely small.
MIN_CPU_ACTOR = 0.05


@dataclass(frozen=True)
class StagePlan:
    """One actor stage: autoscaling pool bounds and what each actor reserves."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float = 0.0


@dataclass(frozen=True)
class Plan:
    """Per-stage pools and the task reservation; `cpus`/`gpus` are what the plan may hold at its largest."""

    stages: dict[str, StagePlan]
    cpu_task: float
    cpus: float
    gpus: float


def plan_resources(
    available: Mapping[str, float], bf: BackfillConfig, stages: Mapping[str, bool], *, address: str = "local"
) -> Plan:
    """Size the plan (`stages`: name -> whether it runs a model; the others are light, like decode) to `available`
    (`ray.available_resources()`); raise `insufficient_resources` when one actor per stage cannot fit."""
    cpu_free = float(available.get("CPU", 0.0))
    gpu_free = float(available.get("GPU", 0.0))
    model_stages = [name for name, model in stages.items() if model]
    want = {name: CPU_MODEL if model else CPU_DECODE for name, model in stages.items()}
    sizes = {name: bf.encode_concurrency if model else bf.decode_concurrency for name, model in stages.items()}
    gpu_each = bf.num_gpus
    if gpu_each > 0:
        # GPU actors cannot be scaled down in fractions that mean something: fit whole requests only.
        need_gpu = gpu_each * len(model_stages)
        if gpu_free + 1e-9 < need_gpu:
            raise _refuse(address, f"{gpu_free:g} GPU free", f"{need_gpu:g} GPU (backfill.num_gpus per model actor)")
        per_stage = max(1, math.floor(gpu_free / need_gpu + 1e-9))
        for m in model_stages:
            sizes[m] = min(sizes[m], per_stage)
    # One actor per stage with every reservation scaled until the thinnest actor holds MIN_CPU_ACTOR.
    minimum = (TASK_SLOTS * CPU_TASK + sum(want.values())) * MIN_CPU_ACTOR / min(want.values())
    if cpu_free + 1e-9 < minimum:
        raise _refuse(address, f"{cpu_free:g} CPU free", f"{minimum:.2f} CPU (one actor per stage)")
    while True:
        full = TASK_SLOTS * CPU_TASK + sum(want[s] * sizes[s] for s in want)
        scale = min(1.0, cpu_free / full)
        if min(want.values()) * scale >= MIN_CPU_ACTOR or all(n == 1 for n in sizes.values()):
            break
        # Too thin: give up one actor of the largest pool (model pools first: each holds a model in memory).
        biggest = max(sizes, key=lambda s: (sizes[s], s in model_stages))
        sizes[biggest] -= 1
    # Round down so the sum of the rounded reservations never exceeds what is free.
    stages = {s: StagePlan(1, sizes[s], _floor(want[s] * scale), gpu_each if s in model_stages else 0.0) for s in want}
    cpu_task = _floor(CPU_TASK * scale)
    cpus = TASK_SLOTS * cpu_task + sum(p.num_cpus * p.max_size for p in stages.values())
    gpus = sum(p.num_gpus * p.max_size for p in stages.values())
    return Plan(stages, cpu_task, cpus, gpus)


def _floor(x: float) -> float:
    return math.floor(x * 1000) / 1000


def _refuse(address: str, free: str, need: str) -> ConfigError:
    return ConfigError(
        "insufficient_resources",
        f"the Ray cluster at {address} has {free} but the backfill needs at least {need}; "
        "free some resources or add nodes",
    )
