"""reelvec's vector index: one `VectorIndex` interface over Qdrant Edge (embedded) and a Qdrant server.

A *version* (the embedding-schema version, opaque, `[A-Za-z0-9._-]+`) is one physical collection; the stable
name `cfg.collection` is an alias (a Qdrant collection alias, or a JSON file next to the Edge shards) that
says which version serves. An open index is pinned to its version: reopen to follow a moved alias.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from embedder.config import IndexConfig
from embedder.types import StoreError
from index.base import Hit, SearchFilter, StoredItem, UpsertReport, VectorIndex, check_version, point_id

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

__all__ = [
    "Hit",
    "SearchFilter",
    "StoredItem",
    "UpsertReport",
    "VectorIndex",
    "active_version",
    "list_versions",
    "open_index",
    "point_id",
    "set_active_version",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _client(cfg: IndexConfig, client: QdrantClient | None) -> Iterator[QdrantClient]:
    from index.qdrant import make_client

    if client is not None:
        yield client
        return
    made, owned = make_client(cfg)
    try:
        yield made
    finally:
        if owned:
            made.close()


def list_versions(cfg: IndexConfig, *, client: QdrantClient | None = None) -> list[str]:
    """Every version stored under `cfg.collection`, sorted."""
    if cfg.backend == "edge":
        from index.edge import list_edge_versions

        return list_edge_versions(cfg)
    from index.qdrant import list_server_versions

    with _client(cfg, client) as c:
        return list_server_versions(cfg, c)


def active_version(cfg: IndexConfig, *, client: QdrantClient | None = None) -> str | None:
    """The version the stable alias points to, or None before the first open."""
    if cfg.backend == "edge":
        from index.edge import read_alias

        return read_alias(cfg)
    from index.qdrant import server_alias

    with _client(cfg, client) as c:
        return server_alias(cfg, c)


def set_active_version(cfg: IndexConfig, version: str, *, client: QdrantClient | None = None) -> None:
    """Atomically point the alias at an existing `version` (StoreError 'unknown_version' otherwise)."""
    check_version(version)
    if cfg.backend == "edge":
        from index.edge import list_edge_versions, write_alias

        if version not in list_edge_versions(cfg):
            raise StoreError("unknown_version", f"no index version {version!r} of {cfg.collection!r}")
        write_alias(cfg, version)
    else:
        from index.qdrant import set_server_alias

        with _client(cfg, client) as c:
            set_server_alias(cfg, version, c)
    log.info("index alias %s -> %s", cfg.collection, version)


def _open_version(
    cfg: IndexConfig, dims: dict[str, int], version: str, create: bool, client: QdrantClient | None
) -> VectorIndex:
    if cfg.backend == "edge":
        from index.edge import EdgeIndex

        return EdgeIndex(cfg, dims, version, create=create)
    from index.qdrant import QdrantServerIndex

    return QdrantServerIndex(cfg, dims, version, create=create, client=client)


def open_index(
    cfg: IndexConfig,
    dims: dict[str, int],
    schema_version: str,
    version: str | None = None,
    create: bool = True,
    *,
    client: QdrantClient | None = None,
) -> VectorIndex:
    """Open the aliased version (`version=None`; the first open creates `schema_version` and points the
    alias at it) or exactly `version` without touching the alias (backfill into a new version)."""
    check_version(schema_version)
    if version is not None:
        return _open_version(cfg, dims, version, create, client)
    active = active_version(cfg, client=client)
    if active is None:
        if not create:
            raise StoreError("unknown_version", f"no active version of {cfg.collection!r} yet")
        index = _open_version(cfg, dims, schema_version, True, client)
        try:
            set_active_version(cfg, schema_version, client=client)
        except BaseException:
            index.close()
            raise
        return index
    if active != schema_version:
        log.warning(
            "alias %s serves version %s but the embedder produces %s: queries mix schemas until the alias moves",
            cfg.collection,
            active,
            schema_version,
        )
    return _open_version(cfg, dims, active, False, client)
