"""Run a backfill on a remote Ray cluster as a Ray Job (Ray's recommended way for Data workloads).

The entrypoint is `python -m serving.cli backfill … --json` on the head node: the code travels as the job's
`working_dir` (this checkout, without venv/data/git), `REELVEC__*` settings as its env vars, and the report
comes back as the job's last JSON line while its logs are followed here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.config import BackfillConfig
from embedder.types import ConfigError, ReelvecError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
# Never uploaded with the job: environments, indexes, caches, VCS (Ray also honours .gitignore).
EXCLUDES = [".venv", "venv", ".git", "data", "**/__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class JobOutcome:
    """How the submitted job ended: its id, Ray's status, the backfill's exit code and report (if it got one)."""

    job_id: str
    status: str
    exit_code: int
    report: dict[str, Any] | None
    missing: ReelvecError | None = None  # the job's interpreter lacked a module (see `missing_module`)


def entrypoint(manifest: str | Path, args: Sequence[str], python: str = "python") -> str:
    """The job's shell command: the backfill CLI on the head node, always with --json (the report travels back)."""
    argv = [python, "-m", "serving.cli", "backfill", str(Path(manifest).expanduser().absolute()), *args, "--json"]
    return shlex.join(argv)


def requirements() -> list[str]:
    """reelvec's own dependencies (from its installed metadata), for a `pip` runtime env; extras left out."""
    from importlib.metadata import requires

    return [r for r in requires("reelvec") or [] if "extra ==" not in r]


def job_request(
    manifest: str | Path,
    args: Sequence[str],
    bf: BackfillConfig,
    *,
    working_dir: Path | None = ROOT,
    env: dict[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The job's entrypoint and runtime env: the code as `working_dir`, `REELVEC__*` as env vars, the interpreter
    `backfill.submit_python` and, with `backfill.submit_pip`, reelvec's dependencies as `pip` (issue 18: a head
    node's bare `python` died with `No module named 'typer'`)."""
    env_vars = {k: v for k, v in (env if env is not None else os.environ).items() if k.startswith("REELVEC__")}
    env_vars.setdefault("PYTHONUNBUFFERED", "1")
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if working_dir is not None:  # None: the cluster has reelvec installed
        runtime_env.update(working_dir=str(working_dir), excludes=EXCLUDES)
    if bf.submit_pip:
        runtime_env["pip"] = requirements()
    return entrypoint(manifest, args, bf.submit_python), runtime_env


def missing_module(logs: str) -> ReelvecError | None:
    """The clear error for a job whose interpreter lacks reelvec's dependencies, if its logs say so."""
    found = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", logs)
    if found is None:
        return None
    return ConfigError(
        "job_environment",
        f"the job's python on the cluster has no module {found.group(1)!r}: set backfill.submit_python to an "
        "interpreter with reelvec installed, or backfill.submit_pip: true to ship its dependencies",
    )


def _client(url: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, ValueError) as e:
        log.error("Ray Job API at %s: %s", url, e)
        raise ConfigError(
            "cluster_unreachable", f"no Ray dashboard (Job API) answers at {url}; start the head with a dashboard"
        ) from e


def last_json(logs: str) -> dict[str, Any] | None:
    """The backfill report: the last log line that is a JSON object."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def backfill_args(
    ledger: str | Path | None = None,
    max_failures: int | None = None,
    force: bool = False,
    target_version: str | None = None,
    swap_alias: bool = False,
    config: str | Path | None = None,
    allow_roots: Sequence[str | Path] = (),
) -> list[str]:
    """`reelvec backfill` options for the job's command line (paths made absolute: the cluster must see them)."""
    args: list[str] = []
    if ledger is not None:
        args += ["--ledger", str(Path(ledger).expanduser().absolute())]
    if max_failures is not None:
        args += ["--max-failures", str(max_failures)]
    if force:
        args.append("--force")
    if target_version is not None:
        args += ["--target-version", target_version]
    if swap_alias:
        args.append("--swap-alias")
    if config is not None:
        args += ["--config", str(Path(config).expanduser().absolute())]
    for root in allow_roots or ():
        args += ["--allow-root", str(Path(root).expanduser().absolute())]
    return args


def submit_backfill(
    url: str,
    manifest: str | Path,
    args: Sequence[str] = (),
    *,
    bf: BackfillConfig | None = None,
    working_dir: Path | None = ROOT,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
) -> JobOutcome:
    """Submit `reelvec backfill MANIFEST ARGS` (see `backfill_args`) to the cluster whose dashboard is `url`,
    follow its logs through `echo` until it ends (Ctrl-C stops the job) and return its outcome.
    Paths must be valid on the cluster."""
    client = _client(url)
    command, runtime_env = job_request(manifest, args, bf or BackfillConfig(), working_dir=working_dir, env=env)
    try:
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError) as e:
        log.error("job submission to %s failed: %s", url, e)
        raise ReelvecError("submit_failed", f"the Ray Job could not be submitted to {url} (see the log)") from e
    log.info("submitted backfill as Ray Job %s on %s", job_id, url)
    shown = 0
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            logs = client.get_job_logs(job_id)
            if echo is not None and len(logs) > shown:
                echo(logs[shown:])
            shown = len(logs)
            if status in TERMINAL:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise
    info = client.get_job_info(job_id)
    report = last_json(logs)
    code = getattr(info, "driver_exit_code", None)
    if code is None:
        code = 0 if status == "SUCCEEDED" else 1
    return JobOutcome(job_id, status, int(code), report, missing_module(logs) if report is None else None)
