"""The HTTP front door (FastAPI ingress on Ray Serve): guards requests, parses them, and hands them to the step
graph's client (`GraphClient`) and to the index owner (`IndexWriter`). It computes nothing itself.

Upload: auth → upload slot (admission) → body (bounded size and time) → `build_item` → the step graph
(decode → ASR ‖ OCR ‖ CLIP → text, media by reference) → one write through the index owner. Every refusal is
`{error, detail, request_id}` (see `errors`); nothing is queued in the ingress: a full gate answers 503 at once.
"""

# No `from __future__ import annotations`: serve.ingress rebuilds the route methods and FastAPI must see
# real types (Request, Response) in their signatures, not strings.
import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from embedder.config import ReelvecConfig, describe_errors
from embedder.fusion import late_fusion
from embedder.graph import Graph
from embedder.items import build_item, check_item_id
from embedder.moments import find_moments, text_candidates
from embedder.pipeline import check_query, embedding_spec
from embedder.types import ItemEmbedding, ItemInput, ReelvecError, StoreError
from index import SearchFilter
from serving.graph_serve import GraphClient
from serving.http import ui_routes
from serving.http.admission import Admission, Gates
from serving.http.errors import ERROR_RESPONSES, ApiError, error_body, error_headers, status_for
from serving.http.openapi import openapi_document
from serving.http.schemas import (
    ClipSearchForm,
    DeleteResponse,
    Health,
    ItemResponse,
    Readiness,
    SearchFilters,
    SearchQuery,
    SearchRequest,
    SearchResponse,
    UploadResponse,
)
from serving.http.upload import (
    API_KEY_HEADER,
    UPLOAD_FIELDS,
    UploadForm,
    check_api_key,
    read_form,
    read_small_body,
    refuse_unknown,
)
from serving.metrics import ServeMetrics
from serving.rayerrors import cause_of

log = logging.getLogger("ray.serve.reelvec")

_READY_TIMEOUT_S = 10.0
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A JSON search names a few ids and filters; anything bigger is not a search.
_JSON_BODY_BYTES = 64 * 1024


class _AnySegment(Convertor[str]):
    """A path parameter that takes any characters, newlines and `/` included (Starlette's `path` stops at a
    newline), so every malformed item id reaches `check_item_id` and gets 422 `bad_item_id`, not a bare 404."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", _AnySegment())

api = FastAPI(
    title="reelvec",
    version="1",
    summary="Embed and index short videos on upload; search them by text, clip or item id.",
    docs_url="/docs",
)
api.include_router(ui_routes.router)  # the browser UI at /ui and its read endpoints (thumbnails, duplicates, report)


@dataclass
class _Runtime:
    """What the module-level handlers need from the replica's Ingress. Serve serves a frozen copy of `api` and
    ships `Ingress` by value, so neither `api.state` nor a global read inside a method reaches the handlers."""

    cfg: ReelvecConfig | None = None
    metrics: ServeMetrics | None = None


_RUNTIME = _Runtime()


def bind_runtime(cfg: ReelvecConfig, metrics: ServeMetrics) -> None:
    """Called by `Ingress.__init__`: a module function is pickled by reference, so this sets the real global."""
    _RUNTIME.cfg, _RUNTIME.metrics = cfg, metrics


def request_id(request: Request) -> str:
    """The request's `X-Request-ID` when well-formed (Serve's proxy sets one when the client did not), else a
    new one; kept on the request for logs and errors."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def _set_request_id(request: Request, response: Response, rid: str) -> None:
    # Serve's proxy echoes the request's X-Request-ID on every response: add ours only when it differs
    # (a malformed client id we replaced, or no proxy in front), else the header would carry it twice.
    if request.headers.get("x-request-id") != rid:
        response.headers["X-Request-ID"] = rid


def _bind_contract(app: FastAPI) -> None:
    """Serve the config-aware OpenAPI document (limits and id alphabet come from config, known only in the
    replica); replacing `openapi` itself, since FastAPI regenerates its cached schema when routes change."""
    if _RUNTIME.cfg is not None and "openapi" not in vars(app):
        doc = openapi_document(app, _RUNTIME.cfg)
        app.openapi = lambda: doc  # type: ignore[method-assign]


@api.middleware("http")
async def _request_id(request: Request, call_next: Any) -> Response:
    rid = request_id(request)
    _bind_contract(request.app)
    response = await call_next(request)
    _set_request_id(request, response, rid)
    return response


def _error(request: Request, e: ReelvecError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error response: `{error, detail, request_id}`, sanitized; the full detail goes to the log."""
    status = status_for(e)
    rid = request_id(request)
    if _RUNTIME.metrics is not None and (status < 500 or status in (429, 503)):
        _RUNTIME.metrics.reject(e.reason)
    item_id = getattr(request.state, "item_id", None)
    log.info(
        "%s %s -> %d %s: %s (item_id=%s request_id=%s)",
        request.method,
        request.url.path,
        status,
        e.reason,
        e.detail,
        item_id,
        rid,
        extra={"item_id": item_id, "reason": e.reason, "status": status, "request_id": rid},
    )
    out = {**error_headers(status), **(headers or {})}
    response = JSONResponse(error_body(e, rid), status_code=status, headers=out)
    _set_request_id(request, response, rid)  # also here: a 500 is answered outside the middleware
    return response


@api.exception_handler(ReelvecError)
async def _reelvec_error(request: Request, e: Exception) -> JSONResponse:
    cause = cause_of(e)
    err = cause if isinstance(cause, ReelvecError) else ReelvecError("internal_error", str(cause))
    return _error(request, err)


@api.exception_handler(BackPressureError)
@api.exception_handler(DeploymentUnavailableError)
@api.exception_handler(RayActorError)
async def _overloaded(request: Request, e: Exception) -> JSONResponse:
    return _error(request, ApiError("overloaded", f"a model deployment is busy or restarting: {e}", 503))


@api.exception_handler(RayTaskError)
async def _task_error(request: Request, e: Exception) -> JSONResponse:
    cause = cause_of(e)
    if isinstance(cause, ReelvecError):
        return _error(request, cause)
    if isinstance(cause, BackPressureError | DeploymentUnavailableError | RayActorError):
        return await _overloaded(request, cause)
    return await _internal(request, cause)


@api.exception_handler(Exception)
async def _internal(request: Request, e: Exception) -> JSONResponse:
    """Anything unexpected: 500 with a fixed text; the traceback is logged under the request id."""
    log.error("internal error on %s (request_id=%s)", request.url.path, request_id(request), exc_info=e)
    return _error(request, ApiError("internal_error", f"{type(e).__name__}: {e}", 500))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: Exception) -> JSONResponse:
    """FastAPI's parameter validation → 400 naming the parameter (the same status as a bad JSON / form search)."""
    errs = e.errors() if isinstance(e, RequestValidationError) else []
    detail = describe_errors(errs) or "invalid request"
    in_query = bool(errs) and all(err.get("loc", ("",))[0] == "query" for err in errs)
    return _error(request, ApiError("bad_query" if in_query else "invalid_request", detail, 400))


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, e: Exception) -> JSONResponse:
    status = e.status_code if isinstance(e, StarletteHTTPException) else 500
    reason = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = e.detail if isinstance(e, StarletteHTTPException) else "error"
    headers = dict(e.headers or {}) if isinstance(e, StarletteHTTPException) else {}
    if status == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return _error(request, ApiError(reason, str(detail), status), headers)


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes as registered: FastAPI wraps an included router (Serve's class-based view) in one more route."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _guard(write: bool, query: tuple[str, ...] | None = ()) -> Any:
    """A route dependency, which FastAPI runs before it validates any parameter: the API key first (issue 18: a
    keyless `k=0` was a 400, not a 401), then unknown query parameters (`None`: the route's own model names them)."""

    async def guard(request: Request) -> None:
        _check_request(request, write, query)

    return Depends(guard)


def _check_request(request: Request, write: bool, query: tuple[str, ...] | None) -> None:
    # A module function, pickled by reference, so it reads the replica's real `_RUNTIME` (the closure above is
    # shipped by value with the routes, and a copy of `_RUNTIME` in it would never be bound).
    cfg = _RUNTIME.cfg
    if cfg is not None:
        check_api_key(request, cfg.serve.api_key, required=write or not cfg.serve.public_read)
    if query is not None:
        refuse_unknown(request.query_params.keys(), query, "query parameter(s)")


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: bytes | dict[str, str]) -> M:
    """A search request (JSON body or form fields) or 400 `bad_query` naming the offending key."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as e:
        raise StoreError("bad_query", describe_errors(e.errors())) from e


# Everything the route methods call is defined above the class: `serve.ingress` pickles the routes by value
# while the class body runs, so a name defined below it would be missing in the replica (NameError).
@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front door: guards requests and schedules the steps on the model deployments; writes via IndexWriter."""

    def __init__(
        self,
        cfg: ReelvecConfig,
        graph: Graph,
        steps: dict[str, DeploymentHandle],
        writer: DeploymentHandle,
        admission: Admission | None = None,
    ) -> None:
        self.cfg = cfg
        self.graph = GraphClient(graph, embedding_spec(cfg, graph), steps)
        self.writer = writer
        self.metrics = ServeMetrics()
        self.gates = Gates(admission or Admission.from_config(cfg.serve))
        bind_runtime(cfg, self.metrics)
        ui_routes.bind_ui(cfg, writer)
        self._inflight = 0
        self._writer_open = False

    def _auth(self, request: Request, write: bool) -> bool:
        """Writes, and anything that costs model compute or returns stored content, need the key (when one is
        set) unless `serve.public_read` opens the reads. Returns whether the client is keyed (see admission)."""
        return check_api_key(request, self.cfg.serve.api_key, required=write or not self.cfg.serve.public_read)

    def _item_id(self, request: Request, item_id: str) -> str:
        """An id from the path or a search body, checked like an upload's (422 `bad_item_id`) and logged."""
        request.state.item_id = item_id
        return check_item_id(item_id, self.cfg.limits)

    async def _read_form(self, request: Request, keyed: bool) -> UploadForm:
        """The multipart body under the body-reader gate (anonymous clients get their own, smaller pool)."""
        async with self.gates.body(keyed).hold():
            s = self.cfg.serve
            return await read_form(request, self.cfg.limits, s.body_timeout_s, min_rate_kib_s=s.min_body_rate_kib_s)

    # ---- embedding ---------------------------------------------------------------------------------

    async def _embed(self, item: ItemInput) -> ItemEmbedding:
        """Every step of the graph for one item, through the step deployments."""
        emb = await self.graph.embed(item)
        for stage, ms in emb.timings_ms.items():
            self.metrics.stage(stage.removesuffix("_ms"), ms)
        return emb

    async def _query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → per-modality and fused query vectors, exactly as `ItemEmbedder.encode_query`."""
        check_query(text, self.cfg.limits)
        return await self.graph.query(text)

    # ---- endpoints ---------------------------------------------------------------------------------

    @api.post(
        "/v1/items",
        status_code=201,
        response_model=UploadResponse,
        responses={200: {"model": UploadResponse, "description": "Replaced an existing item"}, **ERROR_RESPONSES},
        summary=f"Upload a clip (multipart); needs {API_KEY_HEADER} when serve.api_key is set",
        dependencies=[_guard(write=True)],
    )
    async def upload(self, request: Request, response: Response) -> UploadResponse:
        keyed = self._auth(request, write=True)
        t0 = time.perf_counter()
        # The upload slot is taken before the body is read: it bounds the bytes this replica holds (slots x
        # limits.max_bytes) and a full service answers 503 before the client sends its file.
        async with self.gates.media.hold():
            form = await self._read_form(request, keyed)
            refuse_unknown(form.fields, UPLOAD_FIELDS, "form field(s)")
            request.state.item_id = form.fields.get("item_id")
            if "item_id" not in form.fields:
                raise ApiError("missing_field", "item_id is required")
            item = build_item(
                form.fields["item_id"],
                form.media,
                self.cfg.limits,
                caption=form.fields.get("caption"),
                metadata=form.fields.get("metadata"),
            )
            del form
            answer = await self._ingest(item, t0)
        response.status_code = 201 if answer.status == "created" else 200
        return answer

    async def _writable(self) -> None:
        """Until the index owner has opened the index once (it then holds it), ask it first: a locked or
        unreachable index refuses an upload or clip search before any decode or ASR runs (503)."""
        if not self._writer_open:
            await self.writer.writable.remote()
            self._writer_open = True

    async def _ingest(self, item: ItemInput, t0: float) -> UploadResponse:
        """Embed one item through the graph and write it through the index owner (one call once it is open)."""
        await self._writable()
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        try:
            emb = await self._embed(item)
            t = time.perf_counter()
            written = await self.writer.write.remote(emb)
            index_ms = (time.perf_counter() - t) * 1000
        finally:
            self._inflight -= 1
            self.metrics.inflight.set(self._inflight)
        total_ms = (time.perf_counter() - t0) * 1000
        self.metrics.stage("index", index_ms)
        self.metrics.stage("total", total_ms)
        log.info(
            "item %s %s: modalities=%s total_ms=%.0f",
            emb.item_id,
            written.status,
            ",".join(emb.modalities),
            total_ms,
            extra={"item_id": emb.item_id, "outcome": written.status, "modalities": emb.modalities},
        )
        return UploadResponse.of(emb, written, {"index_ms": index_ms, "total_ms": total_ms})

    @api.get(
        "/v1/items/{item_id:item_id}",
        response_model=ItemResponse,
        responses=ERROR_RESPONSES,
        dependencies=[_guard(write=False, query=("vectors",))],
    )
    async def get_item(self, request: Request, item_id: str, vectors: bool = False) -> ItemResponse:
        self._auth(request, write=False)
        return ItemResponse(**await self.writer.get.remote(self._item_id(request, item_id), vectors))

    @api.delete(
        "/v1/items/{item_id:item_id}",
        response_model=DeleteResponse,
        responses=ERROR_RESPONSES,
        dependencies=[_guard(write=True)],
    )
    async def delete_item(self, request: Request, item_id: str) -> DeleteResponse:
        self._auth(request, write=True)
        if not await self.writer.delete.remote(self._item_id(request, item_id)):
            raise StoreError("unknown_item", f"no item {item_id!r}")  # as GET words it
        log.info("item %s deleted", item_id, extra={"item_id": item_id, "outcome": "deleted"})
        return DeleteResponse(item_id=item_id, deleted=True)

    @api.get("/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES, dependencies=[_guard(False, None)])
    async def search_text(self, request: Request, params: Annotated[SearchQuery, Query()]) -> SearchResponse:
        self._auth(request, write=False)
        t0 = time.perf_counter()
        flt = self._filter(params)
        vecs = await self._query(params.q)
        self.metrics.stage("query_encode", (time.perf_counter() - t0) * 1000)
        found = await self._search(vecs, params.using, self._fusion(params.fusion), params.k, flt, t0)
        if params.moments and found.hits:
            await self._moments(found, vecs)
        return found

    async def _moments(self, found: SearchResponse, vecs: dict[str, np.ndarray]) -> None:
        """Add `moment` to every hit: the stored segments / OCR lines / frames scored by `find_moments`."""
        payloads, frames = await self.writer.moment_inputs.remote([h["item_id"] for h in found.hits])
        # find_moments asks for exactly these texts (every hit's candidates, in order): encode them here, by handle.
        encode = await self.graph.documents([c.text for p in payloads for c in text_candidates(p)])
        moments = find_moments(payloads, vecs, encode, frames)
        for hit, moment in zip(found.hits, moments, strict=True):
            hit["moment"] = moment.to_json() if moment is not None else None

    @api.post(
        "/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES, dependencies=[_guard(write=False)]
    )
    async def search_by(self, request: Request) -> SearchResponse:
        """Search with an uploaded clip (multipart) or by item ids (JSON `like` or `positive`/`negative`)."""
        keyed = self._auth(request, write=False)
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("application/json"):
            async with self.gates.body(keyed).hold():
                s = self.cfg.serve
                raw = await read_small_body(request, _JSON_BODY_BYTES, s.body_timeout_s, s.min_body_rate_kib_s)
            req = _parse(SearchRequest, raw)
            for item_id in [*([req.like] if req.like is not None else []), *req.positive, *req.negative]:
                self._item_id(request, item_id)
            flt = self._filter(req)
            if req.like:
                hits = await self.writer.search_like.remote(req.like, req.using, req.k, flt)
            else:
                hits = await self.writer.recommend.remote(req.positive, req.negative, req.using, req.k, flt)
            return self._hits(hits, req.k, req.using, t0)
        async with self.gates.media.hold():
            form = await self._read_form(request, keyed)  # 415 unless multipart
            params = _parse(ClipSearchForm, form.fields)
            flt = self._filter(params.filters)
            fusion = self._fusion(params.fusion)
            probe = build_item("_query", form.media, self.cfg.limits, caption=params.caption)
            del form
            await self._writable()
            emb = await self._embed(probe)
        return await self._search(emb.vectors, params.using, fusion, params.k, flt, t0)

    def _filter(self, f: SearchFilters) -> SearchFilter:
        """The HTTP filter → the index's (same fields; kept apart so index/ never depends on serving/)."""
        for item_id in f.exclude_ids:
            check_item_id(item_id, self.cfg.limits)
        return SearchFilter.model_validate(f.model_dump(include=set(SearchFilter.model_fields)))

    def _fusion(self, given: str | None) -> str:
        return given or self.cfg.fusion.mode

    async def _search(
        self, vecs: dict[str, np.ndarray], using: str, fusion: str, k: int, flt: SearchFilter, t0: float
    ) -> SearchResponse:
        if late_fusion(using, fusion):
            per_modality = {m: v for m, v in vecs.items() if m != "fused"}
            hits = await self.writer.search_multi.remote(per_modality, fusion, k, flt)
            return self._hits(hits, k, f"{fusion}", t0)
        if using not in vecs:
            raise StoreError("bad_query", f"no {using} vector for this query (modality off or absent)")
        hits = await self.writer.search.remote(vecs[using], using, k, flt)
        return self._hits(hits, k, using, t0)

    def _hits(self, hits: list[dict[str, Any]], k: int, using: str, t0: float) -> SearchResponse:
        took = (time.perf_counter() - t0) * 1000
        self.metrics.stage("search", took)
        return SearchResponse(hits=hits, k=k, using=using, took_ms=round(took, 3))

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health()

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(self) -> Response:
        """Ready when every model deployment answers (optional models may be `unavailable`) and the index is open.
        Open without a key, so it names model roles and reason codes only: no counts, paths or versions."""
        models: dict[str, str] = {}
        ready = True
        try:
            for step, info in (await asyncio.wait_for(self.graph.infos(), _READY_TIMEOUT_S)).items():
                models[step] = "loaded" if info.loaded else "unavailable"
                ready = ready and (info.loaded or not info.required)
        except Exception as e:
            self.graph.forget()
            log.warning("readyz: model deployments not answering: %s", cause_of(e))
            ready, models["error"] = False, "model deployments not answering"
        try:
            await asyncio.wait_for(self.writer.ping.remote(), _READY_TIMEOUT_S)
            index: dict[str, Any] = {"reachable": True}
        except Exception as e:
            cause = cause_of(e)
            log.warning("readyz: index not ready: %s", cause)
            reason = cause.reason if isinstance(cause, StoreError) else "unreachable"
            index = {"reachable": False, "error": reason if reason in ("locked", "unreachable") else "unreachable"}
            ready = False
        body = Readiness(ready=ready, models=models, index=index).model_dump(mode="json")
        status = 200 if ready else 503
        return JSONResponse(body, status_code=status, headers=error_headers(status))
