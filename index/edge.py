"""Qdrant Edge backend: each version is an in-process shard directory under `cfg.path`, one process at a time.

Findings behind the design (qdrant-edge-py 0.9.0):
- A second `EdgeShard.load` of a live shard *in the same process* fails on the WAL lock and leaves the first
  handle unable to flush (payload-index journal error). So our own `flock` is taken before the engine is
  touched, and it conflicts in-process too (a flock belongs to an open file description).
- A multi-point `upsert_points` is not atomic: points before an invalid one are written. Hence the base class
  validates every item before the single engine call.
- `optimize()` holds the GIL for its whole run: queries from other threads are not wrong, they wait.
  Writes and optimize are serialized by a lock; reads are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from embedder.config import IndexConfig
from embedder.types import StoreError
from index.base import (
    HIT_PAYLOAD_EXCLUDE,
    PAYLOAD_INDEXES,
    RRF_K,
    FilterTerms,
    Hit,
    PointData,
    Record,
    VectorIndex,
    check_version,
    collection_name,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".reelvec.lock"
CONFIG_MARKER = "edge_config.json"  # written by EdgeShard.create; its presence means "a shard lives here"
_SCHEMA = {"keyword": qe.PayloadSchemaType.Keyword, "float": qe.PayloadSchemaType.Float}


# ---- catalog: shard directories and the alias file ---------------------------------------------------


def shard_dir(cfg: IndexConfig, version: str) -> Path:
    return Path(cfg.path) / collection_name(cfg, version)


def alias_path(cfg: IndexConfig) -> Path:
    return Path(cfg.path) / f"{cfg.collection}.alias.json"


def list_edge_versions(cfg: IndexConfig) -> list[str]:
    prefix = f"{cfg.collection}__"
    root = Path(cfg.path)
    if not root.is_dir():
        return []
    return sorted(
        p.name[len(prefix) :] for p in root.iterdir() if p.name.startswith(prefix) and (p / CONFIG_MARKER).is_file()
    )


def read_alias(cfg: IndexConfig) -> str | None:
    path = alias_path(cfg)
    try:
        data = json.loads(path.read_text())
        return check_version(data["version"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, StoreError) as e:
        raise StoreError("bad_alias", f"alias file {path} is unreadable: {e}") from e


def write_alias(cfg: IndexConfig, version: str) -> None:
    """Point the alias at `version`: temp file in the same dir, fsync, os.replace, fsync the dir."""
    path = alias_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": check_version(version), "updated_at": datetime.now(UTC).isoformat()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- the process lock -----------------------------------------------------------------------------


def _acquire_lock(directory: Path) -> int:
    """Exclusive non-blocking flock on `<dir>/.reelvec.lock` with our pid; StoreError('locked') if held."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        try:
            holder = path.read_text().strip() or "?"
        except OSError:
            holder = "?"
        where = "this process" if holder == str(os.getpid()) else "another process"
        raise StoreError(
            "locked",
            f"index at {directory} is in use by {where} (pid {holder}); "
            "stop it or use a Qdrant server (index.backend: qdrant)",
        ) from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """Engine errors (plain `Exception`s from the binding) become StoreError('engine_error')."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        raise StoreError("engine_error", f"{what}: {e}") from e


def _edge_filter(terms: FilterTerms) -> qe.Filter | None:
    """The only place a FilterTerms becomes an Edge filter."""
    if terms.empty:
        return None
    must: list[Any] = []
    if terms.creator_id is not None:
        must.append(qe.FieldCondition(key="creator_id", match=qe.MatchValue(terms.creator_id)))
    if terms.language is not None:
        must.append(qe.FieldCondition(key="language", match=qe.MatchValue(terms.language)))
    if terms.ts_gte is not None or terms.ts_lt is not None:
        must.append(qe.FieldCondition(key="created_at_ts", range=qe.RangeFloat(gte=terms.ts_gte, lt=terms.ts_lt)))
    must_not: list[Any] = []
    if terms.exclude_point_ids:
        must_not.append(qe.HasIdCondition({uuid.UUID(p) for p in terms.exclude_point_ids}))
    return qe.Filter(must=must or None, must_not=must_not or None)


class EdgeIndex(VectorIndex):
    """A version as the Edge shard `cfg.path/<collection>__<version>`, owned by this process until close."""

    def __init__(self, cfg: IndexConfig, dims: dict[str, int], version: str, create: bool = True) -> None:
        super().__init__(cfg, dims, version)
        self._dir = shard_dir(cfg, version)
        exists = (self._dir / CONFIG_MARKER).is_file()
        if not exists and not create:
            raise StoreError("unknown_version", f"no index version {version!r} at {self._dir}")
        self._lock_fd = _acquire_lock(self._dir)
        try:
            config = self._edge_config()
            try:
                t0 = time.perf_counter()
                if exists:
                    # Passing the config makes the engine check vector names/sizes against the segments.
                    self._shard = qe.EdgeShard.load(str(self._dir), config)
                else:
                    self._shard = qe.EdgeShard.create(str(self._dir), config)
            except Exception as e:
                reason = "schema_mismatch" if "incompatible" in str(e).lower() else "engine_error"
                raise StoreError(reason, f"cannot open {self._dir}: {e}") from e
            try:
                with _engine(f"payload indexes of {self._dir}"):
                    self._ensure_payload_indexes()
            except BaseException:
                with contextlib.suppress(Exception):
                    self._shard.close()
                raise
        except BaseException:
            _release_lock(self._lock_fd)
            raise
        log.info("opened edge index %s (%d points) in %.2fs", self._dir, self._count(), time.perf_counter() - t0)
        self._write_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._since_optimize = 0
        self._optimizer: threading.Thread | None = None
        self._params = qe.SearchParams(hnsw_ef=cfg.search_ef)

    @property
    def path(self) -> Path:
        return self._dir

    def _edge_config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={n: qe.EdgeVectorParams(size=d, distance=qe.Distance.Cosine) for n, d in self._dims.items()},
            hnsw_config=qe.HnswIndexConfig(
                m=self._cfg.hnsw_m, ef_construct=self._cfg.hnsw_ef_construct, full_scan_threshold=10_000
            ),
        )

    def _ensure_payload_indexes(self) -> None:
        have = set(self._shard.info().payload_schema)
        for name, kind in PAYLOAD_INDEXES.items():
            if name not in have:
                self._shard.update(qe.UpdateOperation.create_field_index(name, _SCHEMA[kind]))
        self._shard.flush()

    # ---- writes ---------------------------------------------------------------------------------------

    def _upsert(self, points: list[PointData]) -> None:
        # Lists, not arrays: the binding converts a list ~4x faster than it iterates a numpy array.
        ops = qe.UpdateOperation.upsert_points(
            [qe.Point(uuid.UUID(p.id), {n: v.tolist() for n, v in p.vectors.items()}, p.payload) for p in points]
        )
        with self._write_lock, _engine(f"upsert into {self._dir}"):
            self._shard.update(ops)
            self._shard.flush()  # durable per batch: a crash after upsert() returns loses nothing
        with self._counter_lock:
            self._since_optimize += len(points)
            due = self._since_optimize >= self._cfg.optimize_after_upserts
        if due:
            self._optimize_in_background()

    def _delete(self, point_ids: list[str]) -> None:
        with self._write_lock, _engine(f"delete from {self._dir}"):
            self._shard.update(qe.UpdateOperation.delete_points([uuid.UUID(p) for p in point_ids]))
            self._shard.flush()

    def _optimize(self) -> None:
        with self._counter_lock:
            self._since_optimize = 0
        t0 = time.perf_counter()
        with self._write_lock, _engine(f"optimize {self._dir}"):
            changed = self._shard.optimize()
            self._shard.flush()
        log.info("optimized %s in %.1fs (changed=%s)", self._dir, time.perf_counter() - t0, changed)

    def _optimize_in_background(self) -> None:
        with self._counter_lock:
            if self._optimizer is not None and self._optimizer.is_alive():
                return
            # Not a daemon: interpreter exit waits for the optimizer instead of abandoning it mid-run.
            self._optimizer = threading.Thread(target=self._background_optimize, name=f"optimize-{self._collection}")
            self._optimizer.start()

    def _background_optimize(self) -> None:
        try:
            if not self._closed:
                self._optimize()
        except Exception:
            log.exception("background optimize of %s failed", self._dir)

    def wait_for_optimizer(self) -> None:
        """Block until a background optimize (if any) has finished."""
        t = self._optimizer
        if t is not None:
            t.join()

    def _close(self) -> None:
        self.wait_for_optimizer()
        try:
            with self._write_lock, _engine(f"close {self._dir}"):
                self._shard.flush()
                self._shard.close()
        finally:
            _release_lock(self._lock_fd)

    # ---- reads ----------------------------------------------------------------------------------------

    def _retrieve(self, point_ids: list[str], with_payload: bool, with_vectors: bool | list[str]) -> list[Record]:
        with _engine(f"retrieve from {self._dir}"):
            records = self._shard.retrieve(
                [uuid.UUID(p) for p in point_ids], with_payload=with_payload, with_vector=with_vectors
            )
        return [
            Record(
                id=str(r.id),
                vectors={n: np.asarray(v, dtype=np.float32) for n, v in (r.vector or {}).items()},
                payload=dict(r.payload or {}),
            )
            for r in records
        ]

    def _run(self, request: qe.QueryRequest) -> list[Hit]:
        with _engine(f"query {self._dir}"):
            points = self._shard.query(request)
        return [self._hit(p.payload, p.score) for p in points]

    def _request(self, query: Any, k: int, terms: FilterTerms, prefetches: list[qe.Prefetch] | None = None):
        return qe.QueryRequest(
            limit=k,
            query=query,
            prefetches=prefetches,
            filter=_edge_filter(terms),
            params=self._params,
            with_payload=qe.PayloadSelector.Exclude(HIT_PAYLOAD_EXCLUDE),
            with_vector=False,
        )

    def _search(self, vector: np.ndarray, using: str, k: int, terms: FilterTerms) -> list[Hit]:
        return self._run(self._request(qe.Query.Nearest(vector.tolist(), using=using), k, terms))

    def _search_multi(
        self, vectors: dict[str, np.ndarray], k: int, prefetch_limit: int, terms: FilterTerms
    ) -> list[Hit]:
        flt = _edge_filter(terms)
        prefetches = [
            qe.Prefetch(
                limit=prefetch_limit,
                query=qe.Query.Nearest(v.tolist(), using=name),
                filter=flt,
                params=self._params,
            )
            for name, v in vectors.items()
        ]
        return self._run(self._request(qe.Fusion.Rrf(k=RRF_K), k, terms, prefetches))

    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]:
        query = qe.RecommendQuery(positives=[v.tolist() for v in positive], negatives=[v.tolist() for v in negative])
        strategy = (
            qe.Query.RecommendSumScores if self._cfg.recommend_strategy == "sum_scores" else qe.Query.RecommendBestScore
        )
        return self._run(self._request(strategy(query, using=using), k, terms))

    def _count(self) -> int:
        with _engine(f"count {self._dir}"):
            return int(self._shard.count(qe.CountRequest(exact=True)))
