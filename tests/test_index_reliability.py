"""Qdrant Edge after a crash (issue 18): what a killed optimize left next to the shard is gone at the next open."""

from __future__ import annotations

from pathlib import Path

from embedder.pipeline import embedding_spec
from index import open_index
from index.edge import CONFIG_MARKER, OPTIMIZING_SUFFIX, PRE_OPTIMIZE_SUFFIX, shard_dir
from tests.conftest import make_config


def test_a_crashed_optimize_leaves_no_copy_after_the_next_open(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    spec = embedding_spec(cfg)
    with open_index(cfg.index, spec.dims, spec.schema_version):
        shard = shard_dir(cfg.index, spec.schema_version)
    leftovers = [shard.with_name(f".{shard.name}{suffix}") for suffix in (OPTIMIZING_SUFFIX, PRE_OPTIMIZE_SUFFIX)]
    for d in leftovers:  # as a kill -9 mid-optimize leaves them: a full copy of the shard
        d.mkdir()
        (d / CONFIG_MARKER).write_text((shard / CONFIG_MARKER).read_text())
        (d / "segment.bin").write_bytes(b"\0" * 4096)
    with open_index(cfg.index, spec.dims, spec.schema_version, create=False) as index:
        assert index.count() == 0
        assert not [d for d in leftovers if d.exists()]
