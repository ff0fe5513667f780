"""The step graph as Ray Serve deployments: one generic `StepDeployment` (a replica per step loads that step's
model once and runs it over `@serve.batch` batches) and `GraphClient`, the ingress's call graph over their handles.

Media go by reference: a step that produces media (decode) puts each medium in Ray's object store and returns
only references; the client sends each step a copy of the item holding just the references it reads, and the
step's replica fetches them itself. The ingress never holds decoded frames or audio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray
from ray import serve

from embedder.config import ReelvecConfig, ServeConfig
from embedder.graph import Graph, Step, close_models, load_step
from embedder.pipeline import EmbeddingSpec, embedding_or_raise, query_vectors
from embedder.types import ItemEmbedding, ItemInput, ModelUnavailableError
from embedder.work import MEDIA, Work
from serving.metrics import ServeMetrics

log = logging.getLogger("ray.serve.reelvec")  # a child of Serve's logger: lands in the replica logs, JSON-encoded

T = TypeVar("T")
R = TypeVar("R")


def batched(s: ServeConfig, fn: Callable[[list[T]], Awaitable[list[R]]], size: int | None = None) -> Any:
    """`@serve.batch` applied per replica so max size, wait and concurrent batches all come from config."""
    return serve.batch(
        max_batch_size=size or s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s,
        max_concurrent_batches=s.max_concurrent_batches,
    )(fn)


@dataclass(frozen=True)
class ModelInfo:
    """What a step deployment reports about itself (for `/readyz` and the item's models record)."""

    step: str
    card: str | None
    version: str | None
    loaded: bool
    required: bool


async def _resolve(works: Sequence[Work], names: Sequence[str]) -> list[Work]:
    """Copies of `works` with the media references among `names` (a step's reads) fetched from the object store."""
    names = [n for n in names if n in MEDIA]
    refs = [(i, n, w.medium(n)) for i, w in enumerate(works) for n in names if isinstance(w.medium(n), ray.ObjectRef)]
    if not refs:
        return list(works)
    values = await asyncio.gather(*(ref for _, _, ref in refs))
    fetched: dict[int, dict[str, Any]] = {}
    for (i, name, _), value in zip(refs, values, strict=True):
        fetched.setdefault(i, {})[name] = value
    return [w.with_media(fetched[i]) if i in fetched else w for i, w in enumerate(works)]


@serve.deployment
class StepDeployment:
    """One step of the graph: loads its model once (None when optional and absent) and runs it over batches."""

    def __init__(self, cfg: ReelvecConfig, graph: Graph, name: str) -> None:
        self.cfg, self.step = cfg, graph[name]
        self.ref = getattr(cfg.models, self.step.role) if self.step.role else None
        self.loaded, self.model = load_step(self.step, cfg)
        self.metrics = ServeMetrics()
        self.run = batched(cfg.serve, self._run, 1 if self.step.serial else None)
        self.encode_query = batched(cfg.serve, self._encode_query)
        self._batch_handlers = [self.run, self.encode_query]

    async def _run(self, works: list[Work]) -> list[Work]:
        self.metrics.batch(f"{self.step.name}.run", len(works))
        works = await _resolve(works, self.step.reads)
        t0 = time.perf_counter()
        await asyncio.to_thread(self.step.run, self.model, works, self.cfg)
        self.metrics.stage(f"{self.step.name}_replica", (time.perf_counter() - t0) * 1000)
        return [self._outgoing(w) for w in works]

    def _outgoing(self, work: Work) -> Work:
        """What goes back: the media this step produced as object references, no other media."""
        made = {m: work.medium(m) for m in self.step.produces if work.ok and work.medium(m) is not None}
        refs = {m: ray.put(v) for m, v in made.items() if not (isinstance(v, np.ndarray) and not v.size)}
        return work.slim().with_media(refs)

    async def _encode_query(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        self.metrics.batch(f"{self.step.name}.encode_query", len(texts))
        out = await asyncio.to_thread(self.step.query, self._loaded(), texts)  # type: ignore[arg-type]
        return [{m: v[i] for m, v in out.items()} for i in range(len(texts))]

    async def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Document vectors for a list of texts in one call (moment candidates of a search's hits)."""
        return await asyncio.to_thread(self.step.documents, self._loaded(), texts)  # type: ignore[arg-type]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's `user_config` hook: retune `max_batch_size` / `batch_wait_timeout_s` live, without a reload."""
        for handler in self._batch_handlers:
            if "max_batch_size" in config and not (self.step.serial and handler is self.run):
                handler.set_max_batch_size(int(config["max_batch_size"]))
            if "batch_wait_timeout_s" in config:
                handler.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def info(self) -> ModelInfo:
        card = self.step.card(self.cfg)
        version = getattr(getattr(self.model, "card", None), "version", None)
        return ModelInfo(self.step.name, card, version, self.loaded, bool(self.ref and self.ref.required))

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        """Requests per batch actually seen, by method (the benchmark reports these)."""
        return {m: dict(t) for m, t in self.metrics.batch_sizes_seen.items()}

    def _loaded(self) -> Any:
        if not self.loaded:
            raise ModelUnavailableError("missing", f"{self.step.card(self.cfg)} is not loaded (its modality is off)")
        return self.model

    def __del__(self) -> None:
        close_models({self.step.name: self.model})


class GraphClient:
    """The ingress's view of the graph: runs an item through the step deployments (independent steps at once),
    encodes query texts and moment documents; the same step functions and fusion as `ItemEmbedder`."""

    def __init__(self, graph: Graph, spec: EmbeddingSpec, handles: dict[str, Any]) -> None:
        self.graph, self.spec, self.handles = graph, spec, handles
        self._infos: dict[str, ModelInfo] | None = None

    async def infos(self) -> dict[str, ModelInfo]:
        """Step → ModelInfo of every step deployment, asked once (a replica's model never changes)."""
        if self._infos is None:
            infos = await asyncio.gather(*(self.handles[s.name].info.remote() for s in self.graph.steps))
            self._infos = dict(zip(self.graph.names, infos, strict=True))
        return self._infos

    def forget(self) -> None:
        self._infos = None

    async def embed(self, item: ItemInput) -> ItemEmbedding:
        """Every step for one item through the deployments, each as soon as the steps it depends on are done."""
        infos = await self.infos()
        work = Work(item)
        tasks: dict[str, asyncio.Future[None]] = {}
        for step in self.graph.steps:
            deps = [tasks[d] for d in step.after]
            tasks[step.name] = asyncio.ensure_future(self._step(step, work, deps, infos[step.name].loaded))
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        unavailable = [i.card for i in infos.values() if i.card and not i.loaded]
        return embedding_or_raise(work, self.spec, unavailable)  # type: ignore[arg-type]

    async def _step(self, step: Step, work: Work, deps: list[asyncio.Future[None]], loaded: bool) -> None:
        await asyncio.gather(*deps)
        if not (work.ok and loaded):
            return
        sent = work.slim(keep=[m for m in step.reads if m in MEDIA])
        work.merge(await self.handles[step.name].run.remote(sent), step.writes)
        if "media" in step.reads:
            work.item.media = b""  # the upload's bytes have served; do not hold them through the other steps

    async def query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → every loaded step's query vectors, and fused."""
        infos = await self.infos()
        steps = [s for s in self.graph.steps if s.query is not None and infos[s.name].loaded]
        parts = await asyncio.gather(*(self.handles[s.name].encode_query.remote(text) for s in steps))
        return query_vectors(self.spec, parts)

    async def documents(self, texts: list[str]) -> Callable[[list[str]], np.ndarray]:
        """The document encoder `find_moments` calls, with `texts` (every candidate it will ask for) encoded."""
        infos = await self.infos()
        step = next((s for s in self.graph.steps if s.documents is not None and infos[s.name].loaded), None)
        vectors = np.zeros((0, 1), np.float32)
        if texts and step is not None:
            vectors = await self.handles[step.name].encode_documents.remote(texts)
        return lambda _asked: vectors


def step_options(cfg: ReelvecConfig, step: Step) -> dict[str, Any]:
    """Replicas, concurrency and resources of one step's deployment, from `cfg.serve`."""
    from ray.serve.schema import LoggingConfig

    s = cfg.serve
    # @serve.batch only fills when a replica may hold a full batch per concurrent batch; twice that lets the next
    # batch gather while one runs. A serial step (decode) holds one more item so its worker never idles.
    ongoing = 2 if step.serial else 2 * s.max_batch_size * s.max_concurrent_batches
    return {
        "name": f"step_{step.name}",
        "num_replicas": s.replicas.get(step.name, 1),
        "max_ongoing_requests": ongoing,
        # A step with neither a model nor a worker (thumbnails) is light: it reserves no CPU, so the default
        # config's 5 reserved deployments still fit 2 cores.
        "ray_actor_options": {
            "num_cpus": s.num_cpus_per_model if step.role or step.serial else 0.0,
            "num_gpus": s.num_gpus_per_model if step.role else 0.0,
        },
        "logging_config": LoggingConfig(encoding="JSON"),
        "user_config": {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s},
    }


def bind_steps(cfg: ReelvecConfig, graph: Graph) -> dict[str, Any]:
    """Step name -> its bound deployment, one generic class for every step."""
    return {s.name: StepDeployment.options(**step_options(cfg, s)).bind(cfg, graph, s.name) for s in graph.steps}
