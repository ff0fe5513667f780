"""The backfill's single index owner: a named Ray actor that opens the target version and serializes writes."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from embedder.config import ReelvecConfig
from embedder.pipeline import EmbeddingSpec
from embedder.types import ItemEmbedding, ReelvecError, StoreError
from serving.backfill.cluster import actor_start_error
from serving.owner import IndexOwner, WriteReport

log = logging.getLogger(__name__)

WRITER_NAMESPACE = "reelvec"


def call(ref: Any) -> Any:
    """`ray.get` that re-raises a reelvec error from the remote side as itself (not wrapped in RayTaskError)."""
    import ray

    from serving.rayerrors import cause_of

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = cause_of(e)
        if isinstance(cause, ReelvecError):
            raise cause from None
        raise


def writer_name(cfg: ReelvecConfig) -> str:
    """Name of the writer actor for an index: one backfill per index per cluster."""
    ix = cfg.index
    where = ix.url if ix.backend == "qdrant" else str(Path(ix.path).absolute())
    return "backfill-writer-" + hashlib.sha256(f"{ix.backend}|{where}|{ix.collection}".encode()).hexdigest()[:12]


class BackfillWriter:
    """The only opener of the index during a backfill (Qdrant Edge allows one process per version); serial calls."""

    def __init__(
        self,
        cfg: ReelvecConfig,
        spec: EmbeddingSpec,
        version: str | None,
        available: list[str] | None = None,
    ) -> None:
        self.cfg, self.spec = cfg, spec
        schema_version = self.schema_version = spec.schema_version
        self.available = available or []  # card ids loadable now: a stored item embedded without one is redone
        self.claimed: set[str] = set()
        self.found_relations: dict[str, dict[str, Any]] = {}
        # Kept and raised by `version()`: an error raised here would reach the driver as an opaque ActorDiedError.
        self.error: ReelvecError | None = None
        deadline = time.monotonic() + cfg.index.timeout_s
        while True:
            try:
                self.owner = IndexOwner.open(cfg, spec, version=version)
                self.index = self.owner.index
                break
            except StoreError as e:
                # A killed run's writer may still be exiting and holding the lock; wait for it briefly.
                if e.reason != "locked" or time.monotonic() > deadline:
                    self.error = e
                    return
                time.sleep(0.5)
            except ReelvecError as e:
                self.error = e
                return
        # A version named after this schema only ever holds this schema's vectors; any other (a custom
        # --target-version, or an alias left on an older schema) may hold stale ones, so resume checks payloads.
        self.check_schema = self.index.version != schema_version

    def version(self) -> str:
        """The version this writer holds open (raises the open error, if opening failed)."""
        if self.error is not None:
            raise self.error
        return str(self.index.version)

    def admit(self, ids: list[str], force: bool) -> tuple[list[str], list[str]]:
        """Claim ids for this run: (ids an earlier row of this run already claimed — duplicates, ids already
        stored in this version with this schema and every model available now — skipped unless `force`)."""
        duplicates = [i for i in ids if i in self.claimed]
        fresh = list(dict.fromkeys(i for i in ids if i not in self.claimed))
        self.claimed.update(fresh)
        if force or not fresh:
            return duplicates, []
        done = self.index.existing(
            fresh, self.schema_version if self.check_schema else None, require_models=self.available
        )
        return duplicates, sorted(done)

    def write(self, items: list[ItemEmbedding]) -> WriteReport:
        """Write one batch through the index owner (flushed by the index); what happened to each item."""
        report = self.owner.write(items)
        self.found_relations.update(report.relations)
        return report

    def count(self) -> int:
        return int(self.index.count())

    def optimize(self) -> None:
        self.index.optimize()

    def evaluate(self, fused: list[Any], queries: list[Any], k: int, version: str | None) -> Any:
        """Recall@k of encoded queries against `version` (None: the version this writer fills)."""
        from index import open_index
        from serving.evaluation import evaluate_vectors

        if version is None or version == self.index.version:
            return evaluate_vectors(self.index, fused, queries, k)
        with open_index(self.cfg.index, self.spec.dims, self.schema_version, version=version, create=False) as other:
            return evaluate_vectors(other, fused, queries, k)

    def relations(self) -> dict[str, dict[str, Any]]:
        """Relations this run found (item id → duplicate_of / remix_of / sound_of with scores and segments)."""
        return dict(self.found_relations)

    def swap_alias(self) -> None:
        from index import set_active_version

        set_active_version(self.cfg.index, self.index.version)

    def alias(self) -> str | None:
        from index import active_version

        return active_version(self.cfg.index)

    def close(self) -> None:
        if self.error is None:
            self.owner.close()


def start_writer(cfg: ReelvecConfig, spec: EmbeddingSpec, version: str | None, available: list[str]) -> Any:
    import ray

    actor = ray.remote(BackfillWriter).options(
        name=writer_name(cfg), namespace=WRITER_NAMESPACE, num_cpus=0, max_restarts=0, max_concurrency=1
    )
    deadline = time.monotonic() + cfg.index.timeout_s
    while True:
        try:
            writer = actor.remote(cfg, spec, version, available)
            break
        except ValueError as e:  # the name is taken: another backfill on this index, or a killed one exiting
            if time.monotonic() > deadline:
                raise StoreError("locked", "another backfill is writing to this index") from e
            time.sleep(0.5)
    try:
        version = call(writer.version.remote())
    except ReelvecError:
        ray.kill(writer)
        raise
    except ray.exceptions.RayError as e:
        ray.kill(writer)
        raise actor_start_error(e, "the index writer") from e  # an ImportError is named, not "unreachable"
    log.info("index writer holds version %s", version)
    return writer


def stop_writer(writer: Any) -> None:
    import ray

    try:
        call(writer.close.remote())
    except Exception as e:  # closing is best effort; the actor is killed either way
        log.warning("index writer close failed: %s", e)
    ray.kill(writer, no_restart=True)
    # Wait until the actor is really gone so the path's lock is free when we return.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(writer.version.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.2)
