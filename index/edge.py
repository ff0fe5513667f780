"""Qdrant Edge backend: each version is an in-process shard directory under `cfg.path`, one process at a time.

Findings behind the design (qdrant-edge-py 0.9.0):
- A second `EdgeShard.load` of a live shard *in the same process* fails on the WAL lock and leaves the first
  handle unable to flush (payload-index journal error). So our own `flock` is taken before the engine is
  touched, and it conflicts in-process too (a flock belongs to an open file description).
- A multi-point `upsert_points` is not atomic: points before an invalid one are written. Hence the base class
  validates every item before the single engine call.
- `EdgeShard.optimize()` holds the GIL for its whole run (a Python thread got 0 ticks in an 8.1 s optimize of
  10 k 1280-d points), so searches and health checks in the process would stall for minutes at 100 k points.
  Hence `optimize()` runs the engine's optimizer in a child process on a flushed copy of the shard and then
  swaps the optimized copy in (close, two renames, load); reads go on against the old handle meanwhile and
  wait only for the swap. Writes wait for the whole optimize (they would miss the copy).
- `EdgeShard.load` with a config naming a vector the shard lacks fails ("incompatible"), so a shard from
  before the `fingerprint`/`frames` multivectors is loaded with the vectors it has and then given the
  missing ones with `UpdateOperation.create_dense_vector` (no HNSW override possible there).
- Native: MaxSim multivectors, conditional upsert (`upsert_points(condition=...)`: existing points are
  replaced only if they match, new ones always inserted), `set_payload`, `scroll`, `query_batch`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
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
    AUX_VECTORS,
    FRAMES,
    HIT_PAYLOAD_EXCLUDE,
    LEGACY_MULTIVECTORS,
    PAYLOAD_INDEXES,
    QUANTIZED_VECTORS,
    RRF_K,
    SCHEMA_SEQ,
    AuxVector,
    FilterTerms,
    FusionMethod,
    Hit,
    PointData,
    Probe,
    Record,
    SparseVec,
    VectorIndex,
    VectorStorage,
    check_version,
    collection_name,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".reelvec.lock"
OPTIMIZING_SUFFIX = ".optimizing"  # `.<shard>.optimizing`: the copy a child process optimizes
PRE_OPTIMIZE_SUFFIX = ".pre-optimize"  # `.<shard>.pre-optimize`: the replaced shard, deleted after the swap
# Run in a child process on the copy: the engine's optimizer, off this process's GIL, at a lower CPU priority (on
# a small machine, searches on the live shard come first).
_OPTIMIZE_CHILD = (
    "import os, sys, qdrant_edge as qe\n"
    "os.nice(10)\n"
    "s = qe.EdgeShard.load(sys.argv[1])\n"
    "print(int(s.optimize()))\n"
    "s.flush()\n"
    "s.close()\n"
)
CONFIG_MARKER = "edge_config.json"  # written by EdgeShard.create; its presence means "a shard lives here"
_SCHEMA = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "float": qe.PayloadSchemaType.Float,
    "integer": qe.PayloadSchemaType.Integer,
}
_MAXSIM = qe.MultiVectorConfig(comparator=qe.MultiVectorComparator.MaxSim)


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
        log.error("alias file %s is unreadable: %s", path, e)
        raise StoreError("bad_alias", f"the alias of {cfg.collection!r} is unreadable") from e


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
        # The CLI shows warnings: no path or pid there (README); with -v the debug line names both.
        log.warning("index version %s is locked by %s", directory.name, where)
        log.debug("lock %s held by pid %s", path, holder)
        raise StoreError(
            "locked",
            f"index version {directory.name} is in use by {where}; "
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
    """Engine errors (plain `Exception`s from the binding) become StoreError('engine_error'); the engine's
    message (paths, internals) goes to the log only."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        log.error("edge engine error during %s: %s", what, e)
        raise StoreError("engine_error", f"{what} failed in the index engine") from e


def _recover_interrupted_swap(directory: Path) -> None:
    """A crash between the two renames of an optimize swap leaves the old shard aside: put it back."""
    aside = directory.with_name(f".{directory.name}{PRE_OPTIMIZE_SUFFIX}")
    if not (directory / CONFIG_MARKER).is_file() and (aside / CONFIG_MARKER).is_file():
        log.warning("restoring %s from an interrupted optimize swap", directory)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(aside, directory)


def _remove_optimize_leftovers(directory: Path) -> None:
    """Delete what a killed optimize left beside the shard (a full copy, 3.7x the shard in issue 18). Called with
    the shard's lock held: an optimize in progress holds it, so these belong to a process that is gone."""
    for suffix in (OPTIMIZING_SUFFIX, PRE_OPTIMIZE_SUFFIX):
        leftover = directory.with_name(f".{directory.name}{suffix}")
        if leftover.exists():
            log.warning("removing %s left by an interrupted optimize", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)


def _guard(seq: int) -> qe.Filter:
    """Matches points a write of schema generation `seq` may replace: older or equal, or unversioned."""
    return qe.Filter(
        should=[qe.FieldCondition(key=SCHEMA_SEQ, range=qe.RangeFloat(lte=seq)), qe.IsEmptyCondition(SCHEMA_SEQ)]
    )


def _stored_vector_names(directory: Path) -> set[str]:
    try:
        config = json.loads((directory / CONFIG_MARKER).read_text())
        return set(config["vectors"]) | set(config.get("sparse_vectors") or {})
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("unreadable shard config in %s: %s", directory, e)
        raise StoreError("engine_error", "unreadable shard config") from e


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


def _edge_vec(v: np.ndarray | SparseVec) -> Any:
    # Lists, not arrays: the binding converts a list ~4x faster than it iterates a numpy array.
    return qe.SparseVector(list(v.indices), list(v.values)) if isinstance(v, SparseVec) else v.tolist()


def _record(r: qe.Record) -> Record:
    dense = {n: v for n, v in (r.vector or {}).items() if not isinstance(v, qe.SparseVector)}
    return Record(
        id=str(r.id),
        vectors={n: np.asarray(v, dtype=np.float32) for n, v in dense.items()},
        payload=dict(r.payload or {}),
    )


class EdgeIndex(VectorIndex):
    """A version as the Edge shard `cfg.path/<collection>__<version>`, owned by this process until close."""

    def __init__(self, cfg: IndexConfig, dims: dict[str, int], version: str, create: bool = True) -> None:
        super().__init__(cfg, dims, version)
        # Reads hold a share of the handle; the optimize swap waits for them and holds new ones back.
        self._handle = threading.Condition()
        self._readers = 0
        self._swapping = False
        self._dir = shard_dir(cfg, version)
        _recover_interrupted_swap(self._dir)
        exists = (self._dir / CONFIG_MARKER).is_file()
        if not exists and not create:
            raise StoreError("unknown_version", f"no index version {version!r}")
        self._lock_fd = _acquire_lock(self._dir)
        try:
            _remove_optimize_leftovers(self._dir)
            wanted, missing, self._legacy = dict(self._aux), [], {}
            if exists:
                # Load with the vectors the shard has (the engine refuses a config naming more or fewer); add the rest.
                have = _stored_vector_names(self._dir)
                missing = [n for n in self._aux if n not in have]
                self._aux = {n: a for n, a in self._aux.items() if n in have}
                self._legacy = {n: d for n, d in LEGACY_MULTIVECTORS.items() if n in have}
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
                log.error("cannot open %s: %s", self._dir, e)
                raise StoreError(reason, f"cannot open index version {version!r} ({reason.replace('_', ' ')})") from e
            try:
                self._add_aux_vectors(missing, wanted)
                with _engine(f"payload indexes of {self._collection}"):
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
        quant = (
            qe.QuantizationSearchParams(rescore=cfg.quantization_rescore, oversampling=cfg.quantization_oversampling)
            if cfg.quantization == "int8"
            else None
        )
        self._params = qe.SearchParams(hnsw_ef=cfg.search_ef, quantization=quant)

    @property
    def path(self) -> Path:
        return self._dir

    def _edge_config(self) -> qe.EdgeConfig:
        int8 = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
        on_disk = True if self._cfg.on_disk_vectors else None
        vectors = {
            n: qe.EdgeVectorParams(
                size=d,
                distance=qe.Distance.Cosine,
                on_disk=on_disk,
                quantization_config=int8 if self._cfg.quantization == "int8" and n in QUANTIZED_VECTORS else None,
            )
            for n, d in self._dims.items()
        }
        sparse = {}
        multi = {n: a.size for n, a in self._aux.items() if a.kind == "multi"} | self._legacy
        for n, a in self._aux.items():
            if a.kind == "sparse":
                sparse[n] = qe.EdgeSparseVectorParams()
            elif a.kind == "dense":
                vectors[n] = qe.EdgeVectorParams(size=a.size, distance=qe.Distance.Cosine, on_disk=on_disk)
        for n, d in multi.items():
            # `frames` is only ever retrieved by id, never searched: no HNSW graph (m=0) keeps optimize cheap.
            hnsw = (
                qe.HnswIndexConfig(m=0, ef_construct=self._cfg.hnsw_ef_construct, full_scan_threshold=10_000)
                if n == FRAMES
                else None
            )
            vectors[n] = qe.EdgeVectorParams(
                size=d, distance=qe.Distance.Cosine, on_disk=on_disk, multivector_config=_MAXSIM, hnsw_config=hnsw
            )
        return qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors=sparse,
            hnsw_config=qe.HnswIndexConfig(
                m=self._cfg.hnsw_m, ef_construct=self._cfg.hnsw_ef_construct, full_scan_threshold=10_000
            ),
        )

    def _add_aux_vectors(self, names: list[str], wanted: dict[str, AuxVector]) -> None:
        """Give an older shard the auxiliary vectors it lacks; one the engine refuses is left out (`unsupported`)."""
        for name in names:
            a = wanted[name]
            try:
                if a.kind == "sparse":
                    op = qe.UpdateOperation.create_sparse_vector(name)
                else:
                    multi = _MAXSIM if a.kind == "multi" else None
                    op = qe.UpdateOperation.create_dense_vector(
                        name, a.size, qe.Distance.Cosine, multivector_config=multi
                    )
                self._shard.update(op)
                self._shard.flush()
            except Exception as e:
                log.error("cannot add vector %r to %s, its features are unsupported: %s", name, self._dir, e)
                continue
            self._aux[name] = a
            log.info("added vector %r to %s", name, self._dir)
        self._aux = {n: self._aux[n] for n in AUX_VECTORS if n in self._aux}

    def _ensure_payload_indexes(self) -> None:
        have = set(self._shard.info().payload_schema)
        for name, kind in PAYLOAD_INDEXES.items():
            if name not in have:
                self._shard.update(qe.UpdateOperation.create_field_index(name, _SCHEMA[kind]))
        self._shard.flush()

    # ---- writes ---------------------------------------------------------------------------------------

    def _upsert(self, points: list[PointData], insert_only: bool = False, guard_seq: int | None = None) -> None:
        ops = qe.UpdateOperation.upsert_points(
            [qe.Point(uuid.UUID(p.id), {n: _edge_vec(v) for n, v in p.vectors.items()}, p.payload) for p in points],
            condition=_guard(guard_seq) if guard_seq is not None else None,
            update_mode=qe.UpdateMode.InsertOnly if insert_only else None,
        )
        with self._write_lock, _engine(f"upsert into {self._collection}"):
            self._shard.update(ops)
            self._shard.flush()  # durable per batch: a crash after upsert() returns loses nothing
        with self._counter_lock:
            self._since_optimize += len(points)
            due = self._since_optimize >= self._cfg.optimize_after_upserts
        if due:
            self._optimize_in_background()

    def _set_payload(self, values: list[tuple[str, dict[str, Any]]]) -> None:
        with self._write_lock, _engine(f"set payload in {self._collection}"):
            for pid, fields in values:
                self._shard.update(qe.UpdateOperation.set_payload([uuid.UUID(pid)], fields))
            self._shard.flush()

    def _delete(self, point_ids: list[str]) -> None:
        with self._write_lock, _engine(f"delete from {self._collection}"):
            self._shard.update(qe.UpdateOperation.delete_points([uuid.UUID(p) for p in point_ids]))
            self._shard.flush()

    def _optimize(self) -> None:
        with self._counter_lock:
            self._since_optimize = 0
        t0 = time.perf_counter()
        with self._write_lock:
            stage = self._dir.with_name(f".{self._dir.name}{OPTIMIZING_SUFFIX}")
            aside = self._dir.with_name(f".{self._dir.name}{PRE_OPTIMIZE_SUFFIX}")
            for leftover in (stage, aside):
                shutil.rmtree(leftover, ignore_errors=True)
            try:
                with _engine(f"flush {self._collection}"):
                    self._shard.flush()
                shutil.copytree(self._dir, stage, ignore=shutil.ignore_patterns(LOCK_FILE))
                t_copy = time.perf_counter() - t0
                changed = self._optimize_copy(stage)
                if changed:
                    self._swap_in(stage, aside)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
                shutil.rmtree(aside, ignore_errors=True)
        log.info("optimized %s in %.1fs (copy %.1fs, changed=%s)", self._dir, time.perf_counter() - t0, t_copy, changed)

    def _optimize_copy(self, stage: Path) -> bool:
        """Run the engine's optimizer on `stage` in a child process; whether it changed anything."""
        try:
            out = subprocess.run(
                [sys.executable, "-c", _OPTIMIZE_CHILD, str(stage)], capture_output=True, text=True, check=False
            )
        except OSError as e:
            log.error("cannot start the optimizer process for %s: %s", self._dir, e)
            raise StoreError("optimize_failed", f"optimize of {self._collection} could not start") from e
        if out.returncode != 0:
            log.error("optimizer process for %s exited %d: %s", self._dir, out.returncode, out.stderr[-2000:])
            raise StoreError("optimize_failed", f"optimize of {self._collection} failed in the index engine")
        return out.stdout.strip().endswith("1")

    def _swap_in(self, stage: Path, aside: Path) -> None:
        """Replace the live shard by the optimized copy: wait for in-flight reads, close, rename, load."""
        new_lock = _acquire_lock(stage)  # the copy's own lock file (the copy is private: nobody else holds it)
        with self._handle:
            self._swapping = True
            while self._readers:
                self._handle.wait()
        try:
            with _engine(f"swap in the optimized {self._collection}"):
                self._shard.close()
                os.replace(self._dir, aside)
                os.replace(stage, self._dir)
                self._shard = qe.EdgeShard.load(str(self._dir), self._edge_config())
            _release_lock(self._lock_fd)
            self._lock_fd = new_lock
        except BaseException:
            _release_lock(new_lock)
            raise
        finally:
            with self._handle:
                self._swapping = False
                self._handle.notify_all()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._handle:
            while self._swapping:
                self._handle.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._handle:
                self._readers -= 1
                if not self._readers:
                    self._handle.notify_all()

    def _optimize_in_process(self) -> bool:
        """The engine's optimizer on the live handle, holding the GIL throughout (kept for bench/search.py)."""
        with self._write_lock, _engine(f"optimize {self._collection}"):
            changed = self._shard.optimize()
            self._shard.flush()
        return bool(changed)

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
            with self._write_lock, _engine(f"close {self._collection}"):
                self._shard.flush()
                self._shard.close()
        finally:
            _release_lock(self._lock_fd)

    # ---- reads ----------------------------------------------------------------------------------------

    def _retrieve(
        self, point_ids: list[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[Record]:
        with self._reading(), _engine(f"retrieve from {self._collection}"):
            records = self._shard.retrieve(
                [uuid.UUID(p) for p in point_ids], with_payload=with_payload, with_vector=with_vectors
            )
        return [_record(r) for r in records]

    def _scroll(
        self, using: str, limit: int, offset: Any, payload: list[str], vectors: bool = True
    ) -> tuple[list[Record], Any]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=qe.Filter(must=[qe.HasVectorCondition(using)]),
            with_payload=payload,
            with_vector=[using] if vectors else False,
        )
        with self._reading(), _engine(f"scroll {self._collection}"):
            records, next_offset = self._shard.scroll(request)
        return [_record(r) for r in records], next_offset

    def _search_batch(
        self, queries: list[tuple[str, np.ndarray | SparseVec]], k: int, terms: FilterTerms
    ) -> list[list[Hit]]:
        flt = _edge_filter(terms)
        batch = qe.QueryBatchRequest(
            [
                qe.QueryRequest(
                    limit=k,
                    query=qe.Query.Nearest(_edge_vec(v), using=using),
                    filter=flt,
                    params=self._params,
                    with_payload=["item_id"],
                    with_vector=False,
                )
                for using, v in queries
            ]
        )
        with self._reading(), _engine(f"query {self._collection}"):
            results = self._shard.query_batch(batch)
        return [[self._hit(p.payload, p.score) for p in points] for points in results]

    def _run(self, request: qe.QueryRequest) -> list[Hit]:
        with self._reading(), _engine(f"query {self._collection}"):
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

    def _fused(
        self, probes: list[Probe], k: int, prefetch_limit: int, terms: FilterTerms, method: FusionMethod
    ) -> list[Hit]:
        flt = _edge_filter(terms)
        prefetches = [
            qe.Prefetch(
                limit=prefetch_limit,
                query=self._recommend_query(list(p.positive), list(p.negative), p.using)
                if p.recommend
                else qe.Query.Nearest(p.positive[0].tolist(), using=p.using),
                filter=flt,
                params=self._params,
            )
            for p in probes
        ]
        fusion = qe.Fusion.Rrf(k=RRF_K) if method == "rrf" else qe.Fusion.Dbsf()
        return self._run(self._request(fusion, k, terms, prefetches))

    def _recommend_query(self, positive: list[np.ndarray], negative: list[np.ndarray], using: str) -> Any:
        query = qe.RecommendQuery(positives=[v.tolist() for v in positive], negatives=[v.tolist() for v in negative])
        strategy = (
            qe.Query.RecommendSumScores if self._cfg.recommend_strategy == "sum_scores" else qe.Query.RecommendBestScore
        )
        return strategy(query, using=using)

    def _recommend(
        self, positive: list[np.ndarray], negative: list[np.ndarray], using: str, k: int, terms: FilterTerms
    ) -> list[Hit]:
        return self._run(self._request(self._recommend_query(positive, negative, using), k, terms))

    def _vector_storage(self) -> dict[str, VectorStorage]:
        # The engine persists the config it runs with (merged with what it found on load) in this file.
        try:
            vectors = json.loads((self._dir / CONFIG_MARKER).read_text())["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise StoreError("engine_error", f"unreadable shard config in {self._collection}") from e
        out = {}
        for name, params in vectors.items():
            scalar = (params.get("quantization_config") or {}).get("scalar")
            out[name] = VectorStorage(
                size=int(params["size"]),
                quantization=scalar.get("type") if scalar else None,
                always_ram=scalar.get("always_ram") if scalar else None,
                on_disk=params.get("on_disk"),
            )
        return out

    def _count(self) -> int:
        with self._reading(), _engine(f"count {self._collection}"):
            return int(self._shard.count(qe.CountRequest(exact=True)))
