"""The backfill on Ray clusters it does not own: a plan sized to what is free (session cluster, fast), a Ray
Client address refused up front, and — slow — a real `ray start --head` cluster of 2 CPUs reached by its GCS
address and by Ray Job submission through its dashboard.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from embedder.config import BackfillConfig
from embedder.types import ConfigError, ReelvecError
from serving.backfill import BackfillReport, run_backfill
from serving.backfill.plan import plan_resources
from serving.cli import app
from tests.conftest import ROOT, SAMPLES, free_port, make_config, temp_env

FAST = {"REELVEC__BACKFILL__BATCH_SIZE": "2", "REELVEC__BACKFILL__UPSERT_BATCH_SIZE": "2"}


def _env(tmp: Path) -> dict[str, str]:
    return temp_env(tmp / "data", **FAST, REELVEC__BACKFILL__ALLOWED_ROOTS=json.dumps([str(SAMPLES), str(tmp)]))


def _manifest(tmp: Path, clips: list[dict[str, Any]]) -> Path:
    rows = [{"item_id": c["item_id"], "uri": c["path"], "caption": c["caption"]} for c in clips]
    path = tmp / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plan_from_available_resources() -> None:

    bf = BackfillConfig()
    roomy = plan_resources({"CPU": 16.0}, bf, {"decode": False, "asr": True, "ocr": True, "text": True})
    assert roomy.stages["asr"].num_cpus == 0.5 and roomy.stages["decode"].max_size == bf.decode_concurrency
    for free in (2.0, 1.0, 0.5):
        p = plan_resources({"CPU": free}, bf, {"decode": False, "asr": True, "ocr": True, "text": True})
        assert p.cpus <= free and all(s.min_size == 1 <= s.max_size for s in p.stages.values()), (free, p)
    with pytest.raises(ConfigError) as e:
        plan_resources(
            {"CPU": 0.2}, bf, {"decode": False, "asr": True, "ocr": True, "text": True}, address="10.0.0.1:6379"
        )
    assert e.value.reason == "insufficient_resources" and "10.0.0.1:6379 has 0.2 CPU free" in e.value.detail
    gpu = BackfillConfig(num_gpus=1.0)
    with pytest.raises(ConfigError, match="GPU"):
        plan_resources({"CPU": 8.0, "GPU": 1.0}, gpu, {"decode": False, "asr": True, "text": True})
    assert (
        plan_resources({"CPU": 8.0, "GPU": 2.0}, gpu, {"decode": False, "asr": True, "text": True})
        .stages["asr"]
        .num_gpus
        == 1.0
    )


@pytest.fixture
def hog(ray_cluster: dict[str, Any]) -> Any:
    """Holds CPUs of the session cluster (as another job would) until the test ends; call it with how many."""
    import ray

    held: list[Any] = []

    class Idle:  # defined here so Ray ships it by value (workers cannot import test modules)
        def ping(self) -> int:
            return 1

    def take(cpus: float) -> None:
        actor = ray.remote(num_cpus=cpus)(Idle).remote()
        ray.get(actor.ping.remote())
        held.append(actor)

    yield take
    for actor in held:
        ray.kill(actor)


def test_backfill_fits_what_the_cluster_has_free(
    hog: Any, tmp_path: Path, clips: list[dict[str, Any]], fixtures_dir: Path
) -> None:
    """With all but 1.5 CPUs held elsewhere, fixed pools (4.8 CPUs) waited forever; the sized plan completes,
    and a cluster with almost nothing free is refused at once with one line."""

    import ray

    hog(ray.available_resources()["CPU"] - 1.5)
    cfg = make_config(tmp_path / "data", **FAST, REELVEC__BACKFILL__ALLOWED_ROOTS=json.dumps([str(SAMPLES)]))
    manifest = _manifest(tmp_path, clips[:3])
    done: list[BackfillReport] = []
    t = threading.Thread(target=lambda: done.append(run_backfill(cfg, manifest, progress=False)), daemon=True)
    t.start()
    t.join(timeout=300)
    assert done and done[0].written == 3, "the backfill did not finish on 1.5 free CPUs"

    hog(ray.available_resources()["CPU"] - 0.2)
    t0 = time.monotonic()
    with pytest.raises(ReelvecError) as e:
        run_backfill(cfg, manifest, progress=False)
    assert e.value.reason == "insufficient_resources" and time.monotonic() - t0 < 30
    assert "\n" not in e.value.detail and "CPU free" in e.value.detail


def test_ray_client_address_is_refused_up_front(tmp_path: Path) -> None:
    """Ray Data cannot run over Ray Client (`'Worker' object has no attribute 'core_worker'`): one clear line."""
    manifest = _manifest(tmp_path, [{"item_id": "a", "path": "a.mp4", "caption": ""}])
    argv = ["backfill", str(manifest), "--address", "ray://127.0.0.1:10001", "--json"]
    r = CliRunner().invoke(app, argv, env=_env(tmp_path))
    body = json.loads(r.stdout)
    assert r.exit_code == 2 and body["error"] == "unsupported_address", r.stdout
    assert "--submit" in body["detail"] and "6379" in body["detail"]


# ------------------------------------------------------------------------ a real `ray start --head` cluster


@dataclass
class Head:
    """A 2-CPU head node started by the test: GCS, Ray Client and dashboard ports, its own temp dir."""

    gcs: str
    client: str
    dashboard: str
    temp_dir: str


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    ports = {k: free_port() for k in ("gcs", "client", "dashboard", "agent")}
    temp_dir = tempfile.mkdtemp(prefix="rvhead-", dir="/tmp")  # AF_UNIX paths must stay short
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        f"{venv_bin}/ray",
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--port",
        str(ports["gcs"]),
        "--ray-client-server-port",
        str(ports["client"]),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(ports["dashboard"]),
        "--dashboard-agent-listen-port",
        str(ports["agent"]),
        "--temp-dir",
        temp_dir,
        "--block",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115 — closed below
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come up in 180 s"
            time.sleep(1)
        yield Head(f"127.0.0.1:{ports['gcs']}", f"ray://127.0.0.1:{ports['client']}", url, temp_dir)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this head still in its process group
        log.close()


@pytest.mark.slow
def test_real_cluster_gcs_address_client_address_and_job_submission(
    head: Head, tmp_path: Path, clips: list[dict[str, Any]]
) -> None:
    from serving.backfill.submit import backfill_args, submit_backfill

    chosen = clips[:3]
    manifest = _manifest(tmp_path, chosen)
    env = {**os.environ, **_env(tmp_path), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "serving.cli", "backfill", str(manifest), "--json", "--address"]

    # (a) Ray Client: refused before connecting, naming what to use instead.
    r = subprocess.run([*cli, head.client], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "unsupported_address", r.stdout + r.stderr

    # (b) GCS address of a 2-CPU cluster: the plan fits in what is free and the job completes.
    t0 = time.monotonic()
    r = subprocess.run([*cli, head.gcs], env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["written"] == len(chosen), r.stdout + r.stderr[-3000:]
    print(f"GCS-address backfill of {len(chosen)} items on a 2-CPU head: {time.monotonic() - t0:.1f} s")

    # (c) Ray Job through the dashboard: the code travels as working_dir, the report comes back from the logs.
    shown: list[str] = []
    outcome = submit_backfill(
        head.dashboard, manifest, backfill_args(force=True), env=_env(tmp_path), echo=shown.append, poll_s=2.0
    )
    assert outcome.status == "SUCCEEDED" and outcome.exit_code == 0, "".join(shown)[-3000:]
    assert outcome.report is not None and outcome.report["written"] == len(chosen)
    assert BackfillReport.from_json(outcome.report).written == len(chosen)
    assert any("backfill" in s for s in shown)
