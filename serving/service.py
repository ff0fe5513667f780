"""The Serve application: one deployment per model, the index owner and the ingress, composed from config.

`run` starts (or joins) Ray, deploys on host:port and tears everything down on Ctrl-C / SIGTERM (a watchdog reaps
the local cluster even after SIGKILL); `deploy` deploys to a running cluster and returns; `serve_config` writes the
same app as a Serve config for `serve deploy` / KubeRay."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.schema import LoggingConfig, ServeDeploySchema

from embedder.config import ENV_PREFIX, ReelvecConfig, load_config
from embedder.graph import Graph
from embedder.pipeline import embedding_spec
from embedder.steps import GRAPH
from embedder.types import ConfigError
from serving.backfill.cluster import driver_cwd_is_reelvec
from serving.graph_serve import bind_steps
from serving.http.admission import Admission
from serving.http.app import Ingress
from serving.http.errors import RETRY_AFTER_S
from serving.http.proxy import install_proxy_callback
from serving.index_writer import IndexWriter
from serving.reaper import Reaper

APP_NAME = "reelvec"
# The ingress mostly awaits handles; this bounds requests it holds at once, independently of batch size.
_INGRESS_MIN_ONGOING = 32


def _opts(replicas: int, max_ongoing: int) -> dict[str, Any]:
    return {
        "num_replicas": replicas,
        "max_ongoing_requests": max_ongoing,
        "ray_actor_options": {"num_cpus": 0.0},
        "logging_config": LoggingConfig(encoding="JSON"),
    }


def build_app(cfg: ReelvecConfig, graph: Graph = GRAPH) -> serve.Application:
    """The whole online path as one Serve application: a deployment per step of the graph, the index owner and
    the ingress; replicas, resources and batching from `cfg.serve`."""
    s = cfg.serve
    graph = graph.configured(cfg)
    spec = embedding_spec(cfg, graph)
    # Embedded Qdrant Edge: one process may open the path, so exactly one owner; a server takes many writers
    # (":memory:" is per process, so it too must have a single owner).
    shared_server = cfg.index.backend == "qdrant" and cfg.index.url not in (None, ":memory:")
    # Ingress and index owner mostly wait on I/O: like Serve's proxy they reserve no CPU.
    writer = IndexWriter.options(**_opts(s.ingress_replicas if shared_server else 1, _INGRESS_MIN_ONGOING)).bind(
        cfg, spec
    )
    # The ingress admits every request at once (a slow client must never hold /healthz's slot); its own gates
    # then bound uploads, body readers and anonymous clients with a JSON 503 (serving/http/admission.py).
    # Serve's own queue counts requests not yet assigned to a replica, which a burst fills in milliseconds, and
    # answers in plain text: sized like the ingress so that only a true flood reaches it.
    admission = Admission.from_config(s)
    ingress = Ingress.options(
        **_opts(s.ingress_replicas, admission.ingress_ongoing()),
        max_queued_requests=admission.ingress_ongoing(),
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    )
    return ingress.bind(cfg, graph, bind_steps(cfg, graph), writer, admission)


def app_from_config(args: dict[str, Any] | None = None) -> serve.Application:
    """App builder for `serve deploy` / KubeRay's RayService: `args: {config: PATH}` (absent: the default config),
    with `REELVEC__*` overrides from the application's runtime_env."""
    path = (args or {}).get("config")
    return build_app(load_config(path))


def serve_config(cfg: ReelvecConfig, config_path: Path | None, host: str, port: int) -> dict[str, Any]:
    """A Serve deploy config (`ServeDeploySchema`) for this app, as `serve build` would write it: the import path
    of `app_from_config`, its config file, the `REELVEC__*` overrides in effect, and each deployment's options."""
    from ray.serve._private.build_app import build_app as build_serve_app  # what `serve build` uses
    from ray.serve.deployment import deployment_to_schema

    built = build_serve_app(build_app(cfg), name=APP_NAME)
    # Overrides travel as env vars so the cluster's builder sees the same config; secrets never go into the file.
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and not k.endswith("API_KEY")}
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "logging_config": {"encoding": "JSON"},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": f"{__name__}:{app_from_config.__name__}",
                "args": {"config": str(config_path.resolve())} if config_path else {},
                "runtime_env": {"env_vars": env} if env else {},
                "deployments": [
                    deployment_to_schema(d).model_dump(mode="json", exclude_unset=True) for d in built.deployments
                ],
            }
        ],
    }
    ServeDeploySchema.model_validate(doc)
    return doc


def write_serve_config(doc: dict[str, Any], path: Path) -> None:
    """Write a Serve deploy config as YAML (for `serve deploy FILE` or a RayService's `serveConfigV2`)."""
    try:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    except OSError as e:
        raise ConfigError("unwritable", f"cannot write the Serve config to {path} ({e.strerror})") from e


def deploy(cfg: ReelvecConfig, address: str, host: str, port: int) -> str:
    """Deploy the app to the running cluster at `address` and return its URL; the app keeps running there
    (Serve's controller is a detached actor) until `serve shutdown` or a redeploy."""
    with driver_cwd_is_reelvec():  # the replicas import reelvec's packages, not folders named like them here
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})  # options apply only if Serve is not yet running
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
    finally:
        ray.shutdown()  # disconnects this driver only
    return f"http://{host}:{port}"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(cfg: ReelvecConfig, address: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start local Ray (or join the cluster at `address`), deploy on host:port, block until Ctrl-C / SIGTERM; a
    local cluster is torn down on the way out, and reaped even if this process is killed."""
    runlog = logging.getLogger("reelvec.serve")
    runlog.setLevel(logging.INFO)  # the URL is always shown, whatever the CLI's log level
    owns_cluster = not ray.is_initialized() and address is None
    # Explicit handlers: a process started in the background inherits SIGINT ignored, and SIGTERM (docker stop,
    # systemd, Kubernetes) must tear the app down too, also while it is still starting.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    reaper = Reaper() if owns_cluster else None
    try:
        if not ray.is_initialized():
            if owns_cluster:
                install_proxy_callback()  # one well-formed X-Request-ID per response
            with driver_cwd_is_reelvec():
                ray.init(address=address, include_dashboard=False)
            signal.signal(signal.SIGTERM, _interrupt)  # ray.init installs its own, which exits mid-teardown
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        runlog.info("reelvec serving on http://%s:%d (OpenAPI docs at /docs); Ctrl-C to stop", host, port)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        runlog.info("shutting down")
    except SystemExit as e:  # Ray's own SIGTERM handler, live while ray.init runs, exits with the signal number
        if e.code != signal.SIGTERM:
            raise
        runlog.info("shutting down")
    finally:
        try:
            with contextlib.suppress(Exception):  # best effort on the way out; the app may never have deployed
                if owns_cluster:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            if owns_cluster:
                ray.shutdown()
        finally:
            if reaper is not None:
                reaper.reap()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
