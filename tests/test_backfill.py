"""Batch backfill on real local Ray with real clips: manifest reading, ledger, resume after SIGKILL,
same vectors as `ItemEmbedder`, and a new version filled while search serves the old one, then swapped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from embedder.config import ReelvecConfig
from embedder.pipeline import ItemEmbedder, embedding_spec
from embedder.types import FUSED, ItemInput, MediaError, StoreError
from serving.backfill import BackfillReport, run_backfill
from serving.backfill.writer import WRITER_NAMESPACE, writer_name
from serving.cli import app
from serving.manifest import ManifestError, inspect_manifest, parse_row
from tests.conftest import EXACT_ASR, ROOT, SAMPLES, make_config, temp_env

# Small batches so items reach the index (and the progress stream) a few at a time.
FAST = {
    "REELVEC__BACKFILL__DECODE_CONCURRENCY": "1",
    "REELVEC__BACKFILL__BATCH_SIZE": "2",
    "REELVEC__BACKFILL__UPSERT_BATCH_SIZE": "2",
}


def roots(*paths: Path) -> str:
    """`backfill.allowed_roots` as an env value: the sample media plus `paths` (the test's own folders)."""
    return json.dumps([str(SAMPLES), *(str(p) for p in paths)])


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    # Manifests live in tmp's parent, sample clips under samples/: both are allowed roots.
    return temp_env(tmp, **{**FAST, "REELVEC__BACKFILL__ALLOWED_ROOTS": roots(tmp.parent), **extra})


def _cfg(tmp: Path, **extra: str) -> ReelvecConfig:
    return make_config(tmp, **{**FAST, "REELVEC__BACKFILL__ALLOWED_ROOTS": roots(tmp.parent), **extra})


def _good_row(clip: dict[str, Any], base: Path, *, relative: bool = False, meta_as_string: bool = False) -> dict:
    meta: dict[str, Any] = {"hashtags": clip["hashtags"], "creator_id": clip["creator_id"]}
    meta["created_at"] = clip["created_at"]
    return {
        "item_id": clip["item_id"],
        "uri": os.path.relpath(clip["path"], base) if relative else clip["path"],
        "caption": clip["caption"],
        "metadata": json.dumps(meta) if meta_as_string else meta,
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _open(cfg: ReelvecConfig, version: str | None = None) -> Any:
    from index import open_index

    spec = embedding_spec(cfg)
    return open_index(cfg.index, spec.dims, spec.schema_version, version=version, create=False)


# ------------------------------------------------------------------------------------------- manifest (no Ray)


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    cases = {
        "absent.jsonl": (None, "not found"),
        "m.txt": ("item_id,uri\n", "unknown manifest format"),
        "nouri.jsonl": ('{"item_id": "a", "caption": "x"}\n', "lacks required column(s) ['uri']"),
        "notjson.jsonl": ("item_id,uri\na,b\n", "not JSON"),
        "noid.csv": ("uri,caption\na.mp4,x\n", "lacks required column(s) ['item_id']"),
        "ragged.csv": ("item_id,uri\na,b\nc,d,e,f\n", "cannot read manifest"),
        "fake.parquet": ("not parquet at all", "cannot read manifest"),
        "binary.jsonl": (b'{"item_id": "a", "uri": "b"}\n\xff\xfe\n', "cannot read manifest"),
    }
    for name, (body, expect) in cases.items():
        p = tmp_path / name
        if isinstance(body, bytes):
            p.write_bytes(body)
        elif body is not None:
            p.write_text(body)
        with pytest.raises(ManifestError, match=re.escape(expect)) as e:
            inspect_manifest(p)
        assert e.value.reason == "bad_manifest" and str(p) in e.value.detail
    r = CliRunner().invoke(app, ["backfill", str(tmp_path / "nouri.jsonl"), "--json"], env=_env(tmp_path))
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "bad_manifest"


def test_manifest_formats_count_and_columns(tmp_path: Path) -> None:
    rows = [{"item_id": "007", "uri": "a.mp4", "caption": "c", "metadata": '{"hashtags": ["x"]}'}] * 3
    _write_jsonl(tmp_path / "m.jsonl", [*rows, ""])
    (tmp_path / "m.csv").write_text("item_id,uri,caption,metadata\n" + '007,a.mp4,c,"{""hashtags"": [""x""]}"\n' * 3)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    for name in ("m.jsonl", "m.csv", "m.parquet"):
        info = inspect_manifest(tmp_path / name)
        assert info.rows == 3 and {"item_id", "uri"} <= set(info.columns), name


def test_parse_row(tmp_path: Path) -> None:
    limits = ReelvecConfig().limits
    item = parse_row(
        {
            "item_id": 7,
            "uri": "clips/a.mp4",
            "caption": None,
            "metadata": '{"hashtags": ["Cooking"], "creator_id": "c1", "created_at": "2026-11-01T12:00:00Z",'
            ' "attributes": {"lang": "en"}}',
        },
        tmp_path,
        limits,
    )
    assert item.item_id == "7" and item.media == str(tmp_path / "clips" / "a.mp4") and item.caption == ""
    assert item.hashtags == ["Cooking"] and item.creator_id == "c1" and item.metadata == {"lang": "en"}
    assert item.created_at is not None and item.created_at.isoformat() == "2026-11-01T12:00:00+00:00"
    flat_row = {"item_id": "b", "uri": "/abs/b.mp4", "hashtags": "a, b c", "creator_id": "c2"}
    flat = parse_row(flat_row, tmp_path, limits, [Path("/abs")])
    assert flat.media == "/abs/b.mp4" and flat.hashtags == ["a", "b", "c"] and flat.creator_id == "c2"
    for raw, reason in [
        ({"item_id": "u", "uri": "https://example.com/v.mp4"}, "bad_uri"),
        ({"item_id": "u", "uri": "file:///tmp/v.mp4"}, "bad_uri"),
        ({"item_id": "u", "uri": ""}, "bad_uri"),
        ({"uri": "v.mp4"}, "bad_item_id"),
        ({"item_id": "u", "uri": "v.mp4", "metadata": "{oops"}, "bad_metadata"),
        ({"item_id": "u", "uri": "v.mp4", "metadata": {"unknown": 1}}, "bad_metadata"),
        ({"item_id": "u", "uri": "v.mp4", "metadata": {"created_at": "yesterday"}}, "bad_metadata"),
        ({"item_id": "u", "uri": "v.mp4", "metadata": {"hashtags": "not a list"}}, "bad_metadata"),
        ({"item_id": "a/b", "uri": "v.mp4"}, "bad_item_id"),
        ({"item_id": "nul\x00", "uri": "v.mp4"}, "bad_item_id"),
        ({"item_id": "u", "uri": "../../../../etc/passwd"}, "forbidden_path"),
        ({"item_id": "u", "uri": "/etc/passwd"}, "forbidden_path"),
    ]:
        with pytest.raises(MediaError) as e:
            parse_row(raw, tmp_path, limits)
        assert e.value.reason == reason, raw


def test_report_exit_code_and_json() -> None:
    r = BackfillReport(manifest="m", version="v", schema_version="v", total=10, written=7, failed=3, max_failures=3)
    assert r.exit_code == 0
    r.max_failures = 2
    assert r.exit_code == 1 and r.to_json()["exit_code"] == 1


# ---------------------------------------------------------------------------------------- real Ray, real clips


def test_locked_index_is_a_clear_error(ray_cluster: dict[str, Any], tmp_path: Path) -> None:
    """Edge allows one opener: with the index held elsewhere the job refuses up front, ledger untouched."""
    cfg = _cfg(tmp_path / "data", REELVEC__INDEX__TIMEOUT_S="1")
    spec = embedding_spec(cfg)
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"item_id": "a", "uri": "a.mp4"}])
    from index import open_index

    held = open_index(cfg.index, spec.dims, spec.schema_version)  # e.g. a running `reelvec serve`
    with held, pytest.raises(StoreError) as e:
        run_backfill(cfg, manifest, progress=False)
    assert e.value.reason == "locked" and "Qdrant server" in e.value.detail
    assert not (cfg.data_dir / "backfill" / "ledger.jsonl").exists()


@dataclass
class Catalogue:
    """One backfill of a 25-row manifest into a fresh index, shared by the tests that only read its results."""

    cfg: ReelvecConfig
    report: BackfillReport
    rows: int
    expected_failures: dict[str, tuple[str, str]]
    seconds: float


@pytest.fixture(scope="module")
def catalogue(
    ray_cluster: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    clips: list[dict[str, Any]],
    fixtures_dir: Path,
) -> Catalogue:
    """16 real clips (absolute and relative uris, metadata as object or JSON string) + 9 bad rows, as shipped."""
    tmp = tmp_path_factory.mktemp("catalogue")
    media = tmp / "media"
    media.mkdir()
    raw = Path(clips[0]["path"]).read_bytes()
    (media / "truncated.mp4").write_bytes(raw[: len(raw) // 3])
    (media / "notes.mp4").write_text("not a video\n" * 50)
    (media / "empty.mp4").write_bytes(b"")
    good = [_good_row(c, tmp, relative=i % 2 == 0, meta_as_string=i % 3 == 0) for i, c in enumerate(clips)]
    bad: list[dict[str, Any] | str] = [
        {"item_id": "bad-truncated", "uri": "media/truncated.mp4", "caption": "x"},
        {"item_id": "bad-garbage", "uri": "media/notes.mp4", "caption": "x"},
        {"item_id": "bad-empty", "uri": "media/empty.mp4", "caption": "x"},
        {"item_id": "bad-missing", "uri": "media/missing.mp4", "caption": "x"},
        {"item_id": "bad-url", "uri": "https://example.com/v.mp4", "caption": "x"},
        {"item_id": "bad-meta", "uri": clips[0]["path"], "metadata": "{not json"},
        {"item_id": "bad-deep", "uri": clips[0]["path"], "metadata": "[" * 10_000 + "]" * 10_000},  # issue 18
        {"item_id": "bad-long", "uri": clips[1]["path"], "caption": "y" * 5000},
        {"item_id": "bad-nothing", "uri": str(fixtures_dir / "silent.mp4")},  # no caption, speech or CLIP
        '{"item_id": "bad-json", "uri": ',
    ]
    expected = {
        "bad-truncated": ("decode", "truncated"),
        "bad-garbage": ("decode", "not_a_video"),
        "bad-empty": ("decode", "empty"),
        "bad-missing": ("decode", "not_found"),
        "bad-url": ("manifest", "bad_uri"),
        "bad-meta": ("manifest", "bad_metadata"),
        "bad-deep": ("manifest", "bad_metadata"),
        "bad-long": ("manifest", "caption_too_long"),  # build_item checks limits, as for an upload
        "bad-nothing": ("fuse", "no_content"),
        "": ("manifest", "bad_row"),
    }
    rows = good[:8] + bad + good[8:]
    manifest = _write_jsonl(tmp / "manifest.jsonl", rows)
    # Default batch sizes and two decode actors, as shipped.
    cfg = make_config(tmp / "data", REELVEC__BACKFILL__ALLOWED_ROOTS=roots(tmp), **EXACT_ASR)
    t0 = time.perf_counter()
    report = run_backfill(cfg, manifest, progress=False)
    return Catalogue(cfg, report, len(rows), expected, time.perf_counter() - t0)


def test_backfill_good_rows_indexed_bad_rows_in_ledger(catalogue: Catalogue, clips: list[dict[str, Any]]) -> None:
    report, cfg = catalogue.report, catalogue.cfg
    assert catalogue.rows >= 20
    n = len(clips)
    assert (report.total, report.written, report.failed, report.skipped) == (catalogue.rows, n, 10, 0), report
    assert report.exit_code == 1  # 10 failures > backfill.max_failures (0)
    assert report.index_count == n and report.alias_version == report.version == embedding_spec(cfg).schema_version
    assert {"decode_ms", "asr_ms", "text_ms", "fuse_ms", "write_ms"} <= set(report.stage_s)
    assert report.unavailable_models == [cfg.models.clip.card] and report.items_per_s > 0
    ledger = [json.loads(x) for x in Path(report.ledger).read_text().splitlines()]
    assert Path(report.ledger) == cfg.data_dir.absolute() / "backfill" / "ledger.jsonl"  # the default place
    assert {r["item_id"]: (r["stage"], r["reason"]) for r in ledger} == catalogue.expected_failures
    assert all(r["detail"] for r in ledger)
    assert report.to_json()["failures"]["decode/not_found"] == 1
    console = Console(record=True, width=160)
    console.print(report.render())
    text = console.export_text()
    assert f"backfill FAILED: {n} written" in text and "decode/not_found" in text and "asr" in text
    with _open(cfg, report.version) as index:
        assert index.count() == n
        assert index.existing([c["item_id"] for c in clips]) == {c["item_id"] for c in clips}
    print(f"backfill of {catalogue.rows} rows: {catalogue.seconds:.1f} s")


def test_same_vectors_as_item_embedder(
    catalogue: Catalogue, clips: list[dict[str, Any]], item_embedder: ItemEmbedder
) -> None:
    """One code path: what the backfill stored equals what `ItemEmbedder` computes for the same row."""
    with _open(catalogue.cfg, catalogue.report.version) as index:
        for clip in (clips[0], clips[3], clips[5], clips[11]):  # clips[3]: no caption, transcript only
            stored = index.get(clip["item_id"])
            ref = item_embedder.embed(
                ItemInput(clip["item_id"], clip["path"], clip["caption"], clip["hashtags"], clip["creator_id"])
            )
            # The index adds its own auxiliary vectors (fp_visual, frames); every modality vector must match.
            assert set(ref.vectors) <= set(stored.vectors), clip["item_id"]
            for name, v in ref.vectors.items():
                assert np.allclose(stored.vectors[name], v, atol=1e-5), (clip["item_id"], name)
            assert stored.payload["transcript"] == ref.transcript.text
            assert stored.payload["hashtags"] == ref.hashtags and stored.payload["creator_id"] == clip["creator_id"]
            assert stored.payload["created_at"] == clip["created_at"]
            assert stored.payload["models"] == ref.models and stored.payload["schema_version"] == ref.schema_version


def _wait_gone(name: str, timeout_s: float = 60) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=WRITER_NAMESPACE)
        except ValueError:
            return
        time.sleep(0.5)
    raise AssertionError(f"writer actor {name} still alive {timeout_s} s after its driver was killed")


def _procs() -> Iterator[tuple[int, str, dict[str, str]]]:
    """(pid, command line, environment) of every process we may read."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            env = dict(
                kv.split("=", 1)
                for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
        except OSError:
            continue
        yield int(d.name), cmd, env


def _raylet_pid(temp_dir: str) -> int:
    return next(pid for pid, cmd, _ in _procs() if "raylet" in cmd.split(" ")[0] and temp_dir in cmd)


def _our_processes(raylet: int, manifest: str) -> list[str]:
    """Backfill CLIs on `manifest`, and stage actors or decode workers started under `raylet`."""
    stages = ("DecodeStage", "AsrStage", "OcrStage", "TextStage", "ClipStage", "BackfillWriter", "embedder.decode")
    out = []
    for pid, cmd, env in _procs():
        if ("serving.cli" in cmd and manifest in cmd) or (
            env.get("RAY_RAYLET_PID") == str(raylet) and any(s in cmd for s in stages)
        ):
            out.append(f"{pid} {cmd}")
    return out


def test_sigkill_mid_run_then_rerun_is_exact(
    ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]]
) -> None:
    """`reelvec backfill` in its own process on the session cluster, SIGKILLed once items are indexed; rerun."""
    import ray

    chosen = clips[:8]
    rows: list[dict[str, Any] | str] = [_good_row(c, tmp_path) for c in chosen]
    rows.insert(3, {"item_id": "bad-missing", "uri": "nope.mp4"})
    manifest = _write_jsonl(tmp_path / "manifest.jsonl", rows)
    data = tmp_path / "data"
    cfg = _cfg(data)
    name = writer_name(cfg)
    cmd = [sys.executable, "-m", "serving.cli", "backfill", str(manifest), "--address", ray_cluster["address"]]
    proc = subprocess.Popen(
        [*cmd, "--json"],
        env={**os.environ, **_env(data)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole
    )
    try:
        deadline = time.monotonic() + 180
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = ray.get(ray.get_actor(name, namespace=WRITER_NAMESPACE).count.remote(), timeout=10)
            except (ValueError, ray.exceptions.RayError):
                seen = 0  # writer not up yet (or already gone)
            if seen >= 2:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the backfill finished before it could be killed; use more rows"
        assert 2 <= seen < len(chosen), seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _wait_gone(name)  # the cluster reaps the dead job's actors (writer included, so the index lock is free)

    report = run_backfill(cfg, manifest, progress=False, max_failures=1)
    assert report.exit_code == 0 and report.failed == 1 and report.skipped >= 2, report.to_json()
    # Nothing of ours lingers: no backfill CLI, no stage actor, no decode worker of either run on this cluster.
    raylet = _raylet_pid(ray_cluster["temp_dir"])
    deadline = time.monotonic() + 30
    while (left := _our_processes(raylet, str(manifest))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
    assert report.written + report.skipped == len(chosen)
    with _open(cfg) as index:
        ids = [c["item_id"] for c in chosen]
        assert index.count() == len(chosen) == len(set(ids))
        assert index.existing(ids) == set(ids)


def test_target_version_then_swap_alias(catalogue: Catalogue, tmp_path: Path, clips: list[dict[str, Any]]) -> None:
    """Fill v-new (other fusion weights → other vectors) while a reader keeps serving the catalogue's version;
    the alias moves only after a successful run with --swap-alias. Runs last: it moves the catalogue's alias."""
    from index import active_version, list_versions

    old_cfg, v_old = catalogue.cfg, catalogue.report.version
    chosen = [clips[0], clips[4], clips[8]]
    new_cfg = make_config(
        old_cfg.data_dir,
        **FAST,
        REELVEC__FUSION__WEIGHTS="{visual: 0.1, caption: 0.8, transcript: 0.1}",
        REELVEC__BACKFILL__ALLOWED_ROOTS=roots(tmp_path),
    )
    assert new_cfg.index.path == old_cfg.index.path and embedding_spec(new_cfg).schema_version != v_old
    # Parquet with metadata as a struct column; then a flat CSV (hashtags as a space-separated column,
    # relative uris). Both end with one missing file.
    missing = {"item_id": "gone", "uri": "missing.mp4", "caption": "", "metadata": None}
    pq.write_table(pa.Table.from_pylist([*(_good_row(c, tmp_path) for c in chosen), missing]), tmp_path / "new.pq")
    with open(tmp_path / "new.csv", "w") as f:
        f.write("item_id,uri,caption,hashtags,creator_id\n")
        for c in chosen:
            caption = c["caption"].replace('"', '""')
            f.write(f'{c["item_id"]},{os.path.relpath(c["path"], tmp_path)},"{caption}",{" ".join(c["hashtags"])},x\n')
        f.write("gone,missing.mp4,,,\n")

    service = _open(old_cfg)  # what a running service holds: the alias's version, open for the whole upgrade
    probe = chosen[0]["item_id"]
    old_vec = service.get(probe).vectors[FUSED]
    during: list[tuple[str | None, str, float]] = []

    def check_serving(row: dict[str, Any]) -> None:
        hit = service.search(old_vec, k=1)[0]
        during.append((active_version(old_cfg.index), hit.item_id, hit.score))

    try:
        assert service.version == v_old
        # --swap-alias is asked for, but 1 failure > --max-failures 0: the run fails and the alias stays put.
        second = run_backfill(
            new_cfg,
            tmp_path / "new.pq",
            target_version="v-new",
            max_failures=0,
            swap_alias=True,
            progress=False,
            on_row=check_serving,
        )
        assert second.version == "v-new" and (second.written, second.failed) == (3, 1)
        assert second.exit_code == 1 and not second.swapped
        assert len(during) == 4 and all(d == (v_old, probe, pytest.approx(1.0, abs=1e-4)) for d in during), during
        assert second.alias_version == v_old == active_version(old_cfg.index)
        assert set(list_versions(old_cfg.index)) == {v_old, "v-new"}
        assert service.search(old_vec, k=1)[0].item_id == probe  # still answering from v_old after the run

        # --force re-embeds rows already there (in place: still one point each); the swap follows success.
        third = run_backfill(
            new_cfg,
            tmp_path / "new.csv",
            target_version="v-new",
            max_failures=1,
            swap_alias=True,
            force=True,
            progress=False,
        )
        assert (third.written, third.skipped, third.failed, third.index_count) == (3, 0, 1, 3)
        assert third.swapped and third.alias_version == "v-new"
    finally:
        service.close()
    assert active_version(old_cfg.index) == "v-new"
    with _open(new_cfg) as index:  # what a service (re)opening the alias now gets
        assert index.version == "v-new" and index.count() == 3
        stored = index.get(probe)
        assert not np.allclose(stored.vectors[FUSED], old_vec, atol=1e-3)
        assert stored.payload["schema_version"] == embedding_spec(new_cfg).schema_version
        assert stored.payload["hashtags"] == chosen[0]["hashtags"] and stored.payload["creator_id"] == "x"
        assert index.search(stored.vectors[FUSED], k=1)[0].item_id == probe
    with _open(old_cfg, version=v_old) as old:  # the old version is kept for rollback
        assert old.count() == len(clips) and np.allclose(old.get(probe).vectors[FUSED], old_vec)


def test_visual_stage_with_tiny_clip(
    ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]], tiny_clip_card: Path
) -> None:
    """With CLIP weights present the ClipStage runs: frames batched across items, vectors equal `ItemEmbedder`'s."""
    cfg = _cfg(tmp_path / "data", REELVEC__MODELS__CLIP__CARD=str(tiny_clip_card))
    chosen = [clips[0], clips[5], clips[10]]
    manifest = _write_jsonl(tmp_path / "m.jsonl", [_good_row(c, tmp_path) for c in chosen])
    report = run_backfill(cfg, manifest, progress=False)
    assert (report.written, report.failed, report.unavailable_models) == (3, 0, []), report.to_json()
    assert "clip_ms" in report.stage_s
    emb = ItemEmbedder(cfg)
    try:
        with _open(cfg) as index:
            for c in chosen:
                stored = index.get(c["item_id"])
                ref = emb.embed(ItemInput(c["item_id"], c["path"], c["caption"], c["hashtags"], c["creator_id"]))
                assert stored.vectors["visual"].shape == (32,) and set(ref.vectors) <= set(stored.vectors)
                for name, v in ref.vectors.items():
                    assert np.allclose(stored.vectors[name], v, atol=1e-5), (c["item_id"], name)
                assert stored.payload["models"]["tiny-clip-test"] == "test-only"
    finally:
        emb.close()


# -------------------------------------------------------------- duplicates, path confinement, ledger hygiene


def test_duplicate_ids_and_forbidden_paths(
    ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]]
) -> None:
    """A repeated id is `manifest/duplicate_id` and written once (report == index); uris escaping the allowed roots
    (`..`, absolute, a symlink out) are `manifest/forbidden_path`; a configured extra root lets its files in."""
    import shutil

    home, extra, outside = tmp_path / "manifests", tmp_path / "extra", tmp_path / "outside"
    for d in (home, extra, outside):
        d.mkdir()
    a, b, c, d_ = clips[0], clips[1], clips[2], clips[3]
    shutil.copy(a["path"], home / "a.mp4")
    shutil.copy(b["path"], extra / "b.mp4")
    shutil.copy(c["path"], outside / "c.mp4")
    (home / "link.mp4").symlink_to(outside / "c.mp4")  # inside the root by name, outside once resolved
    rows: list[dict[str, Any] | str] = [
        {"item_id": a["item_id"], "uri": "a.mp4", "caption": a["caption"]},
        {"item_id": b["item_id"], "uri": str(extra / "b.mp4"), "caption": b["caption"]},
        {"item_id": a["item_id"], "uri": "a.mp4", "caption": "the same id again"},
        {"item_id": "up", "uri": "../../../../etc/passwd", "caption": "x"},
        {"item_id": "abs", "uri": str(outside / "c.mp4"), "caption": "x"},
        {"item_id": "link", "uri": "link.mp4", "caption": "x"},
        {"item_id": d_["item_id"], "uri": os.path.relpath(d_["path"], home), "caption": d_["caption"]},
        {"item_id": b["item_id"], "uri": str(extra / "b.mp4"), "caption": "and again"},
    ]
    manifest = _write_jsonl(home / "m.jsonl", rows)
    cfg = make_config(tmp_path / "data", **FAST, REELVEC__BACKFILL__ALLOWED_ROOTS=roots(home, extra))
    report = run_backfill(cfg, manifest, progress=False, max_failures=10)
    assert report.failures == {"manifest/duplicate_id": 2, "manifest/forbidden_path": 3}, report.to_json()
    assert (report.written, report.failed, report.skipped) == (3, 5, 0)
    assert report.index_count == report.written == 3
    ledger = [json.loads(x) for x in Path(report.ledger).read_text().splitlines()]
    by_id = {(r["item_id"], r["reason"]) for r in ledger}
    assert by_id == {
        (a["item_id"], "duplicate_id"),
        (b["item_id"], "duplicate_id"),
        ("up", "forbidden_path"),
        ("abs", "forbidden_path"),
        ("link", "forbidden_path"),
    }
    for r in ledger:  # operator-facing: the row's own uri is there, nothing of the server's beyond it
        assert "\n" not in r["detail"] and "Traceback" not in r["detail"] and str(outside) not in r["detail"]
    with _open(cfg) as index:
        stored = index.get(a["item_id"])
        assert stored.payload["caption"] == a["caption"]  # the first row wins, never the duplicate
        assert index.existing([a["item_id"], b["item_id"], d_["item_id"], "up", "abs", "link"]) == {
            a["item_id"],
            b["item_id"],
            d_["item_id"],
        }

    # Without allowed_roots only the manifest's folder is allowed: the extra root's and samples/ rows are refused.
    strict = make_config(tmp_path / "data2", **FAST)
    again = run_backfill(strict, manifest, progress=False, max_failures=10)
    assert again.failures == {"manifest/duplicate_id": 1, "manifest/forbidden_path": 6}, again.to_json()
    assert again.written == again.index_count == 1


def test_ledger_details_are_operator_facing() -> None:
    from serving.backfill.ledger import clean_detail

    raw = "cannot open as video: [Errno 1094995529] Invalid data found when processing input: 'm/a.mp4'"
    assert clean_detail(raw) == "cannot open as video: Invalid data found when processing input: 'm/a.mp4'"
    tb = 'Traceback (most recent call last):\n  File "/srv/x.py", line 3, in f\nValueError: boom'
    assert "srv" not in clean_detail(tb) and "Traceback" not in clean_detail(tb)
    assert len(clean_detail("x" * 5000)) == 300 and clean_detail("two\nlines") == "two"


def test_quality_gate_refuses_a_worse_version_and_swaps_a_good_one(
    ray_cluster: dict[str, Any], tmp_path: Path, clips: list[dict[str, Any]]
) -> None:
    """--swap-alias runs eval.queries on the new and the live version: a version made worse on purpose (the
    transcript modality switched off, so speech-only clips cannot be found) is refused; a good one swaps."""
    import sys

    from index import active_version

    sys.path.insert(0, str(SAMPLES))
    from variants import make_variants

    chosen = [c for c in clips if c["item_id"] in ("cooking_01", "space_04", "ocean_04", "soccer_04")]
    trimmed = make_variants(Path(chosen[0]["path"]), tmp_path / "variants")["trim"]
    reupload = {"item_id": "reupload", "uri": str(trimmed), "caption": "a new caption"}
    manifest = _write_jsonl(tmp_path / "m.jsonl", [*(_good_row(c, tmp_path) for c in chosen), reupload])
    queries = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"query": "a telescope shows the rings of saturn", "expected": ["space_04"]},
            {"query": "seagulls over the water as the tide comes in", "expected": ["ocean_04"]},
            {"query": "fans cheering in a football stadium", "expected": ["soccer_04"]},
        ],
    )
    env = {**FAST, "REELVEC__BACKFILL__ALLOWED_ROOTS": roots(tmp_path), "REELVEC__EVAL__QUERIES": str(queries)}
    good_cfg = make_config(tmp_path / "data", **env, REELVEC__EVAL__K="1")
    good = run_backfill(good_cfg, manifest, target_version="v-good", swap_alias=True, progress=False)
    assert good.swapped and good.gate is not None and good.gate["new_recall"] == 1.0, good.gate
    rel = good.relations["reupload"]  # the relations check, backfill path
    assert (rel["kind"], rel["of"]) == ("duplicate_of", "cooking_01") and rel["segments"]
    assert good.to_json()["relations"]["reupload"] == rel
    assert active_version(good_cfg.index) == "v-good"

    bad_cfg = make_config(tmp_path / "data", **env, REELVEC__EVAL__K="1", REELVEC__TEXT__TRANSCRIPT_MAX_CHARS="0")
    bad = run_backfill(bad_cfg, manifest, target_version="v-bad", swap_alias=True, max_failures=10, progress=False)
    assert bad.exit_code == 5 and bad.failed == 3  # refused by the gate; speech-only clips have nothing to embed
    assert not bad.swapped and bad.gate is not None and not bad.gate["swap"], bad.gate
    assert bad.gate["live_version"] == "v-good" and bad.gate["new_recall"] < bad.gate["live_recall"] == 1.0
    assert active_version(bad_cfg.index) == "v-good"
