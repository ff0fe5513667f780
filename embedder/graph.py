"""The step graph: each step declares what it needs (a model role), reads, writes and depends on; every path
(in-process, Ray Serve, Ray Data) is derived from one `Graph` and nothing outside `embedder/` names a step.

A medium (upload bytes, frames, OCR frames, audio) is freed as soon as every step that reads it has run: a step
declares what it reads, and the graph derives what it frees (`Graph.frees`), so adding a reader can never make
another step free something too early.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.types import FUSED, ConfigError, ModelUnavailableError
from embedder.work import MEDIA, RESULTS, Work

if TYPE_CHECKING:
    from embedder.config import ModelRef, ReelvecConfig

log = logging.getLogger(__name__)
# (model or None, the items, config) -> None; updates the items in place, failing each through `guard`.
RunFn = Callable[[Any, Sequence[Work], "ReelvecConfig"], None]
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class Step:
    """One declared step.

    `role` names the model card (`cfg.models.<role>`) loaded for it, or None with `load` for a step whose
    "model" is something else (the decoder) or nothing. `reads`/`writes` are media (`work.MEDIA`) and result
    fields (`work.RESULTS`); `produces` are the media it creates. `vectors` maps each modality vector it writes
    to its dimension given the loaded card's `dims` (and config). `query`/`documents` encode search text."""

    name: str
    run: RunFn
    role: str | None = None
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    vectors: Callable[[int | None, ReelvecConfig], dict[str, int]] | None = None
    load: Callable[[ReelvecConfig], Any] | None = None
    query: Callable[[Any, list[str]], dict[str, np.ndarray]] | None = None
    documents: Callable[[Any, list[str]], np.ndarray] | None = None
    weights: Mapping[str, float] = field(default_factory=dict)  # default fusion weight of each vector it writes
    serial: bool = False  # one item at a time per replica (the decode worker)

    def card(self, cfg: ReelvecConfig) -> str | None:
        """The card reference this step loads, if it has a model role that is configured."""
        ref = getattr(cfg.models, self.role) if self.role else None
        return ref.card if ref is not None else None


@dataclass(frozen=True)
class Graph:
    """Steps in a valid order (every dependency first); immutable: `with_step` returns a new graph."""

    steps: tuple[Step, ...]
    partial: bool = False  # a slice of a graph (`only`): its media come from steps outside it

    def __post_init__(self) -> None:
        seen: set[str] = set()
        produced: set[str] = set()
        for s in self.steps:
            if not _NAME.fullmatch(s.name) or s.name in seen:
                raise ConfigError("bad_graph", f"step name {s.name!r} is invalid or repeated")
            missing = [d for d in s.after if d not in seen]
            bad = [r for r in (*s.reads, *s.writes) if r not in (*MEDIA, *RESULTS, "item")]
            unmade = [r for r in s.reads if r in MEDIA and r not in ("media", *produced) and not self.partial]
            if missing or bad or unmade:
                raise ConfigError(
                    "bad_graph", f"step {s.name!r}: unknown dependencies {missing}, fields {bad}, media {unmade}"
                )
            seen.add(s.name)
            produced.update(s.produces)

    def __getitem__(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def only(self, names: Sequence[str]) -> Graph:
        """The slice of this graph with just these steps (dependencies on the others dropped): what one stage runs."""
        kept = [s for s in self.steps if s.name in names]
        return Graph(tuple(replace(s, after=tuple(d for d in s.after if d in names)) for s in kept), partial=True)

    def with_step(self, step: Step) -> Graph:
        """This graph plus one more step (appended: it may depend on any existing step)."""
        return Graph((*self.steps, step))

    def readers(self, medium: str) -> list[str]:
        return [s.name for s in self.steps if medium in s.reads]

    def frees(self, done: set[str]) -> list[str]:
        """Media no step outside `done` still reads (what may be dropped once the steps in `done` have run)."""
        return [m for m in MEDIA if not set(self.readers(m)) - done]

    def read_by(self, names: Sequence[str]) -> set[str]:
        """Media these steps read (what a linear pipeline must still carry for the stages ahead)."""
        return {m for s in self.steps if s.name in names for m in s.reads if m in MEDIA}

    def configured(self, cfg: ReelvecConfig) -> Graph:
        """This graph without the steps whose optional model role is not configured (e.g. `models.omni: null`)."""
        keep = tuple(s for s in self.steps if s.role is None or s.card(cfg) is not None)
        return self if len(keep) == len(self.steps) else Graph(keep, partial=self.partial)

    def modality_dims(self, cfg: ReelvecConfig, card_dims: Mapping[str, int | None]) -> dict[str, int]:
        """Modality -> dimension, in graph order, plus `fused` (the sum): the index's named vectors."""
        dims: dict[str, int] = {}
        for s in self.steps:
            if s.vectors is not None and (s.role is None or s.name in card_dims):
                dims.update(s.vectors(card_dims.get(s.name), cfg))
        dims[FUSED] = sum(dims.values())
        return dims

    def default_weights(self) -> dict[str, float]:
        return {m: w for s in self.steps for m, w in s.weights.items()}


def load_optional(ref: ModelRef, cfg: ReelvecConfig) -> Any:
    """Load a model; when absent and optional, warn loudly and return None (required → raise)."""
    # torch-importing modules load on first use: Ray Data's decode/write workers import this module without them.
    from embedder.factory import load_model

    try:
        return load_model(ref.card, cfg)
    except ModelUnavailableError as e:
        if ref.required:
            raise
        log.warning(
            "MODEL UNAVAILABLE: %s — its modality is switched off and items are embedded without it. %s",
            ref.card,
            e.detail,
        )
        return None


def load_step(step: Step, cfg: ReelvecConfig) -> tuple[bool, Any]:
    """(available, model) of one step: its own loader, its role's card, or nothing to load."""
    if step.load is not None:
        return True, step.load(cfg)
    if step.role is not None:
        ref = getattr(cfg.models, step.role)
        model = load_optional(ref, cfg) if ref is not None else None  # an unconfigured optional role: step off
        return model is not None, model
    return True, None


def load_steps(graph: Graph, cfg: ReelvecConfig, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Step name -> its loaded model, for the available steps among `names` (default: all)."""
    out: dict[str, Any] = {}
    for step in graph.steps:
        if names is None or step.name in names:
            ok, model = load_step(step, cfg)
            if ok:
                out[step.name] = model
    return out


def close_models(models: Mapping[str, Any]) -> None:
    """Release what loaded step models hold (the decoder's worker processes); the others have nothing to close."""
    for model in models.values():
        if hasattr(model, "close"):
            model.close()


def run_steps(graph: Graph, models: Mapping[str, Any], works: Sequence[Work], cfg: ReelvecConfig) -> None:
    """Every step over these items in-process: independent steps run concurrently (threads; the models release
    the GIL), each batched across the items; a medium is dropped once every step reading it is done."""
    done: set[str] = set()
    futures: dict[str, Future[None]] = {}

    def one(step: Step) -> None:
        for dep in step.after:
            futures[dep].result()
        if step.name in models:
            step.run(models[step.name], works, cfg)

    with ThreadPoolExecutor(max_workers=len(graph.steps), thread_name_prefix="step") as pool:
        for step in graph.steps:
            futures[step.name] = pool.submit(one, step)
        names = {f: name for name, f in futures.items()}
        for f in as_completed(futures.values()):
            f.result()
            done.add(names[f])
            if not graph.partial:  # a slice does not know what the steps after it read: its caller drops
                for w in works:
                    w.drop(graph.frees(done))
