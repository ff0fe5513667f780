"""Ray Serve online path: one deployment per model, one index owner, and a FastAPI ingress composing them.

decode (bytes → DecodedMedia) · asr · clip (frames + query text, `@serve.batch`) · text (documents + queries,
`@serve.batch`) · IndexWriter (owns the VectorIndex) · Ingress (HTTP). Each scales on its own from `serve.*`.
Vectors equal `ItemEmbedder`'s because every stage calls the same helpers from `embedder.pipeline`.
"""

# No `from __future__ import annotations`: serve.ingress rebuilds the route methods and FastAPI must see
# real types (Request, Response) in their signatures, not strings.
import asyncio
import contextlib
import itertools
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import ray
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import LoggingConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedder.config import IndexConfig, ReelvecConfig, ServeConfig, describe_errors
from embedder.decode import Decoder
from embedder.pipeline import (
    assemble,
    caption_text,
    check_query,
    embedding_spec,
    load_optional,
    query_vectors,
    transcript_text,
    validate_item,
)
from embedder.types import (
    DecodedMedia,
    ItemEmbedding,
    ItemInput,
    MediaError,
    ModelUnavailableError,
    ReelvecError,
    StoreError,
    Transcript,
)
from index import SearchFilter, VectorIndex, open_index
from serving.metrics import ServeMetrics
from serving.schemas import (
    ERROR_RESPONSES,
    RETRY_AFTER_S,
    ApiError,
    DeleteResponse,
    Health,
    ItemResponse,
    Readiness,
    SearchFilters,
    SearchRequest,
    SearchResponse,
    UploadResponse,
    Using,
    error_headers,
    status_for,
)
from serving.upload import API_KEY_HEADER, UploadForm, check_api_key, parse_metadata, read_form

log = logging.getLogger("ray.serve.reelvec")  # a child of Serve's logger: lands in the replica logs, JSON-encoded

APP_NAME = "reelvec"
# The ingress mostly awaits handles; this bounds uploads held in memory at once, independently of batch size.
_INGRESS_MIN_ONGOING = 32
# Decode and ASR run one item at a time per replica; one more waits inside so the replica never idles.
_SERIAL_ONGOING = 2
_READY_TIMEOUT_S = 10.0

T = TypeVar("T")
R = TypeVar("R")


def _batched(s: ServeConfig, fn: Callable[[list[T]], Awaitable[list[R]]]) -> Callable[[T], Awaitable[R]]:
    """`@serve.batch` applied per replica so max size, wait and concurrent batches all come from config."""
    return serve.batch(
        max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s,
        max_concurrent_batches=s.max_concurrent_batches,
    )(fn)


def _unwrap(e: BaseException) -> BaseException:
    """The error a replica raised: Ray wraps it in RayTaskError, which keeps the class but not `reason`."""
    while isinstance(e, RayTaskError) and e.cause is not None and e.cause is not e:
        e = e.cause
    return e


@dataclass(frozen=True)
class ModelInfo:
    """What a model deployment reports about itself (used for `models`, `/readyz` and routing)."""

    role: str
    card: str
    version: str | None
    loaded: bool
    required: bool


class _ModelDeployment:
    """Loads one configured model once; None when it is optional and its weights are absent."""

    role = ""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.ref = getattr(cfg.models, self.role)
        self.model: Any = load_optional(self.ref, cfg)
        self.metrics = ServeMetrics()
        self._batch_handlers: list[Any] = []

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's `user_config` hook: retune `max_batch_size` / `batch_wait_timeout_s` live, without a reload.

        max_ongoing_requests is a deployment option and keeps its value; see `build_app`."""
        for handler in self._batch_handlers:
            if "max_batch_size" in config:
                handler.set_max_batch_size(int(config["max_batch_size"]))
            if "batch_wait_timeout_s" in config:
                handler.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def info(self) -> ModelInfo:
        if self.model is None:
            return ModelInfo(self.role, self.ref.card, None, False, self.ref.required)
        return ModelInfo(self.role, self.model.card.id, self.model.card.version, True, self.ref.required)

    def batch_sizes(self) -> dict[str, dict[int, int]]:
        """Requests per batch actually seen, by method (the benchmark reports these)."""
        return {m: dict(t) for m, t in self.metrics.batch_sizes_seen.items()}

    def _loaded(self) -> Any:
        if self.model is None:
            raise ModelUnavailableError("missing", f"{self.ref.card} is not loaded (its modality is off)")
        return self.model


@serve.deployment
class DecodeDeployment:
    """Raw upload bytes → DecodedMedia, in the killable decode worker of `embedder.decode.Decoder`."""

    def __init__(self, cfg: ReelvecConfig) -> None:
        self.decoder = Decoder(cfg.decode, cfg.limits)
        self.metrics = ServeMetrics()

    async def decode(self, data: bytes) -> DecodedMedia:
        # Only bytes are accepted: a str would be read as a server-side path by Decoder.decode.
        if not isinstance(data, bytes):
            raise MediaError("not_a_video", "decode accepts uploaded bytes only")
        t0 = time.perf_counter()
        media = await asyncio.to_thread(self.decoder.decode, data)
        self.metrics.stage("decode_worker", (time.perf_counter() - t0) * 1000)
        return media

    async def decode_split(self, data: bytes) -> tuple[DecodedMedia, ray.ObjectRef, ray.ObjectRef | None]:
        """Decode, and leave frames and audio in the object store: the ingress only forwards their refs."""
        media = await self.decode(data)
        frames_ref = ray.put(media.frames)
        audio_ref = ray.put(media.audio) if media.audio is not None else None
        light = replace(media, frames=np.zeros((0, 0, 0, 3), dtype=np.uint8), audio=None)
        return light, frames_ref, audio_ref

    def __del__(self) -> None:
        self.decoder.close()


@serve.deployment
class AsrDeployment(_ModelDeployment):
    """16 kHz audio → Transcript (faster-whisper), one item at a time per replica."""

    role = "asr"

    def __init__(self, cfg: ReelvecConfig) -> None:
        super().__init__(cfg)
        self._lock = asyncio.Lock()

    async def transcribe(self, audio: np.ndarray | None) -> Transcript:
        if self.model is None or audio is None:
            return Transcript.empty()
        async with self._lock:
            t0 = time.perf_counter()
            out = await asyncio.to_thread(self.model.transcribe, audio)
            self.metrics.stage("asr_model", (time.perf_counter() - t0) * 1000)
            return out


@serve.deployment
class ClipDeployment(_ModelDeployment):
    """CLIP image tower (frames → pooled visual vector) and text tower (query → visual space), batched."""

    role = "clip"

    def __init__(self, cfg: ReelvecConfig) -> None:
        super().__init__(cfg)
        self.encode_frames = _batched(cfg.serve, self._encode_frames)
        self.encode_text = _batched(cfg.serve, self._encode_text)
        self._batch_handlers = [self.encode_frames, self.encode_text]

    async def _encode_frames(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        self.metrics.batch("clip.encode_frames", len(clips))
        return list(await asyncio.to_thread(self._loaded().encode_frames, clips))

    async def _encode_text(self, texts: list[str]) -> list[np.ndarray]:
        self.metrics.batch("clip.encode_text", len(texts))
        return list(await asyncio.to_thread(self._loaded().encode_text, texts))


@serve.deployment
class TextDeployment(_ModelDeployment):
    """Text encoder: an item's caption + transcript (documents) and search queries, batched across requests."""

    role = "text"

    def __init__(self, cfg: ReelvecConfig) -> None:
        super().__init__(cfg)
        self.encode_documents = _batched(cfg.serve, self._encode_documents)
        self.encode_query = _batched(cfg.serve, self._encode_query)
        self._batch_handlers = [self.encode_documents, self.encode_query]

    async def _encode_documents(self, per_item: list[list[str]]) -> list[np.ndarray]:
        self.metrics.batch("text.encode_documents", len(per_item))
        flat = [t for texts in per_item for t in texts]
        enc = await asyncio.to_thread(self._loaded().encode, flat, "document")
        bounds = np.cumsum([0, *(len(t) for t in per_item)])
        return [enc[a:b] for a, b in itertools.pairwise(bounds)]

    async def _encode_query(self, texts: list[str]) -> list[np.ndarray]:
        self.metrics.batch("text.encode_query", len(texts))
        return list(await asyncio.to_thread(self._loaded().encode, texts, "query"))


@serve.deployment
class IndexWriter:
    """Owns the VectorIndex: with the embedded (edge) backend only one process may open the path, so every
    read and write goes through this single replica; against a Qdrant server it may run several."""

    def __init__(self, cfg: IndexConfig, dims: dict[str, int], schema_version: str) -> None:
        self.cfg, self.dims, self.schema_version = cfg, dims, schema_version
        self.metrics = ServeMetrics()
        self._index: VectorIndex | None = None
        self._open_lock = asyncio.Lock()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        try:
            self._index = self._open_now()
        except StoreError as e:  # stay up and report not-ready; the next call retries the open
            log.warning("index not open yet (%s): %s", e.reason, e.detail)

    def _open_now(self) -> VectorIndex:
        index = open_index(self.cfg, self.dims, self.schema_version)
        log.info("index open: collection=%s version=%s", index.collection, index.version)
        return index

    async def _open(self) -> VectorIndex:
        """The open index; (re)tries the open off the event loop, one attempt at a time (locked → 503)."""
        if self._index is None:
            async with self._open_lock:
                if self._index is None:
                    self._index = await asyncio.to_thread(self._open_now)
        return self._index

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a VectorIndex method in a worker thread (the engines block; reads may run concurrently)."""
        index = await self._open()
        return await asyncio.to_thread(getattr(index, method), *args, **kwargs)

    @asynccontextmanager
    async def _item_lock(self, item_id: str) -> AsyncIterator[None]:
        """Serialize work on one item id so concurrent uploads of it end as exactly one point."""
        lock, users = self._locks.setdefault(item_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[item_id]

    async def upsert(self, emb: ItemEmbedding) -> str:
        """Write one item; returns `created` or `replaced`. A failed write raises and leaves nothing new."""
        async with self._item_lock(emb.item_id):
            existed = emb.item_id in await self._run("existing", [emb.item_id])
            report = await self._run("upsert", [emb])
            if report.failed:
                raise StoreError(report.failed[0].reason, report.failed[0].detail)
        outcome = "replaced" if existed else "created"
        self.metrics.indexed.inc(tags={"outcome": outcome})
        self.metrics.index_items.set(await self._run("count"))
        return outcome

    async def delete(self, item_id: str) -> int:
        async with self._item_lock(item_id):
            return await self._run("delete", [item_id])

    async def get(self, item_id: str, with_vectors: bool) -> dict[str, Any]:
        stored = await self._run("get", item_id)
        vectors = {k: [float(x) for x in v] for k, v in stored.vectors.items()} if with_vectors else None
        return {"item_id": stored.item_id, "payload": stored.payload, "vectors": vectors}

    async def search(self, vector: np.ndarray, using: str, k: int, flt: SearchFilters) -> list[dict[str, Any]]:
        hits = await self._run("search", vector, using=using, k=k, flt=_store_filter(flt))
        return [h.to_json() for h in hits]

    async def recommend(
        self, positive: list[str], negative: list[str], using: str, k: int, flt: SearchFilters
    ) -> list[dict[str, Any]]:
        hits = await self._run("recommend", positive, negative, using=using, k=k, flt=_store_filter(flt))
        return [h.to_json() for h in hits]

    async def search_like(self, item_id: str, using: str, k: int, flt: SearchFilters) -> list[dict[str, Any]]:
        hits = await self._run("search_like", item_id, using=using, k=k, flt=_store_filter(flt))
        return [h.to_json() for h in hits]

    async def count(self) -> int:
        return await self._run("count")

    async def ping(self) -> dict[str, Any]:
        count = await self._run("count")
        return {"reachable": True, "count": count, "collection": self._index.collection if self._index else None}

    def __del__(self) -> None:
        if self._index is not None:
            self._index.close()


def _store_filter(f: SearchFilters) -> SearchFilter:
    """The HTTP filter model → the index's (same fields; kept apart so index/ never depends on serving/)."""
    return SearchFilter.model_validate(f.model_dump(include=set(SearchFilter.model_fields)))


api = FastAPI(
    title="reelvec",
    version="1",
    summary="Embed and index short videos on upload; search them by text, clip or item id.",
    docs_url="/docs",
)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "item_id"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The clip (video/*)."},
                        "item_id": {"type": "string"},
                        "caption": {"type": "string"},
                        "metadata": {
                            "type": "string",
                            "description": "JSON: hashtags (list), creator_id, created_at (ISO), attributes (dict)",
                        },
                    },
                }
            }
        },
    }
}
_SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "caption": {"type": "string"},
                        "k": {"type": "integer", "default": 10},
                        "using": {"type": "string", "default": "fused"},
                        "filters": {"type": "string", "description": "JSON of the search filters"},
                    },
                }
            },
        },
    }
}


def _error(request: Request, e: ReelvecError) -> JSONResponse:
    status = status_for(e)
    metrics: ServeMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None and (status < 500 or status in (429, 503)):
        metrics.reject(e.reason)
    item_id = getattr(request.state, "item_id", None)
    log.info(
        "%s %s -> %d %s: %s (item_id=%s)",
        request.method,
        request.url.path,
        status,
        e.reason,
        e.detail,
        item_id,
        extra={"item_id": item_id, "reason": e.reason, "status": status},
    )
    return JSONResponse({"error": e.reason, "detail": e.detail}, status_code=status, headers=error_headers(status))


@api.exception_handler(ReelvecError)
async def _reelvec_error(request: Request, e: Exception) -> JSONResponse:
    cause = _unwrap(e)
    err = cause if isinstance(cause, ReelvecError) else ReelvecError("internal", str(cause))
    return _error(request, err)


@api.exception_handler(BackPressureError)
@api.exception_handler(DeploymentUnavailableError)
@api.exception_handler(RayActorError)
async def _overloaded(request: Request, e: Exception) -> JSONResponse:
    return _error(request, ApiError("overloaded", f"a model deployment is busy or restarting: {e}", 503))


@api.exception_handler(RayTaskError)
async def _task_error(request: Request, e: Exception) -> JSONResponse:
    cause = _unwrap(e)
    if isinstance(cause, ReelvecError):
        return _error(request, cause)
    if isinstance(cause, BackPressureError | DeploymentUnavailableError | RayActorError):
        return await _overloaded(request, cause)
    log.exception("internal error on %s", request.url.path, exc_info=cause)
    return _error(request, ApiError("internal", f"{type(cause).__name__}: {cause}", 500))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: Exception) -> JSONResponse:
    errs = e.errors() if isinstance(e, RequestValidationError) else []
    detail = describe_errors(errs) or str(e)
    return _error(request, ApiError("invalid_request", detail, 422))


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, e: Exception) -> JSONResponse:
    status = e.status_code if isinstance(e, StarletteHTTPException) else 500
    reason = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = e.detail if isinstance(e, StarletteHTTPException) else str(e)
    return _error(request, ApiError(reason, str(detail), status))


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front door: guards uploads, runs decode → (asr → text ‖ clip) → fuse by handle, writes via IndexWriter."""

    def __init__(
        self,
        cfg: ReelvecConfig,
        decode: DeploymentHandle,
        asr: DeploymentHandle,
        clip: DeploymentHandle,
        text: DeploymentHandle,
        writer: DeploymentHandle,
        frames_by_ref: bool,
    ) -> None:
        self.cfg = cfg
        self.spec = embedding_spec(cfg)
        self.decode, self.asr, self.clip, self.text, self.writer = decode, asr, clip, text, writer
        self.frames_by_ref = frames_by_ref
        self.metrics = ServeMetrics()
        api.state.metrics = self.metrics
        self._models: dict[str, ModelInfo] | None = None
        self._inflight = 0

    async def models(self) -> dict[str, ModelInfo]:
        """Role → ModelInfo of every model deployment, asked once (a replica's model never changes)."""
        if self._models is None:
            roles = {"clip": self.clip, "text": self.text, "asr": self.asr}
            infos = await asyncio.gather(*(h.info.remote() for h in roles.values()))
            self._models = dict(zip(roles, infos, strict=True))
        return self._models

    # ---- embedding ---------------------------------------------------------------------------------

    async def _embed(self, item: ItemInput) -> ItemEmbedding:
        """Run every stage for one item through the model deployments; same helpers as ItemEmbedder."""
        models = await self.models()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        frames: Any
        audio: Any
        if self.frames_by_ref:
            decoded, frames, audio = await self.decode.decode_split.remote(item.media)
        else:
            decoded = await self.decode.decode.remote(item.media)
            frames, audio = decoded.frames, decoded.audio
        timings["decode_ms"] = (time.perf_counter() - t0) * 1000

        async def visual() -> dict[str, np.ndarray]:
            if not models["clip"].loaded:
                return {}
            t = time.perf_counter()
            vec = await self.clip.encode_frames.remote(frames)
            timings["clip_ms"] = (time.perf_counter() - t) * 1000
            return {"visual": vec}

        async def spoken_and_written() -> tuple[Transcript, dict[str, np.ndarray]]:
            t = time.perf_counter()
            has_audio = audio is not None and models["asr"].loaded
            transcript = await self.asr.transcribe.remote(audio) if has_audio else Transcript.empty()
            timings["asr_ms"] = (time.perf_counter() - t) * 1000
            texts = {
                "caption": caption_text(item),
                "transcript": transcript_text(transcript, self.cfg.text.transcript_max_chars),
            }
            texts = {k: v for k, v in texts.items() if v}
            t = time.perf_counter()
            enc = await self.text.encode_documents.remote(list(texts.values())) if texts else []
            timings["text_ms"] = (time.perf_counter() - t) * 1000
            return transcript, dict(zip(texts, enc, strict=True))

        vis, (transcript, txt) = await asyncio.gather(visual(), spoken_and_written())
        used = {m.card: m.version for m in models.values() if m.loaded and m.version is not None}
        emb = assemble(item, decoded, transcript, {**vis, **txt}, self.spec, used, timings)
        for stage, ms in emb.timings_ms.items():
            self.metrics.stage(stage.removesuffix("_ms"), ms)
        return emb

    async def _query(self, text: str) -> dict[str, np.ndarray]:
        """Query text → per-modality and fused query vectors, exactly as `ItemEmbedder.encode_query`."""
        check_query(text)
        if len(text) > self.cfg.limits.max_caption_chars:
            limit = self.cfg.limits.max_caption_chars
            raise StoreError("bad_query", f"query longer than limits.max_caption_chars={limit}")
        models = await self.models()
        visual = self.clip.encode_text.remote(text) if models["clip"].loaded else None
        textual = self.text.encode_query.remote(text) if models["text"].loaded else None
        return query_vectors(
            self.spec,
            await visual if visual is not None else None,
            await textual if textual is not None else None,
        )

    def _item(self, form: UploadForm, item_id: str | None) -> ItemInput:
        """Build and validate the ItemInput of an upload (422 for missing id, bad metadata, over limits)."""
        if not item_id or not item_id.strip():
            raise ApiError("missing_field", "item_id is required")
        meta = parse_metadata(form.fields.get("metadata"))
        item = ItemInput(
            item_id=item_id.strip(),
            media=form.media,
            caption=form.fields.get("caption", ""),
            hashtags=meta.hashtags,
            creator_id=meta.creator_id,
            created_at=meta.created_at,
            metadata=dict(meta.attributes),
        )
        validate_item(item, self.cfg.limits)
        return item

    # ---- endpoints ---------------------------------------------------------------------------------

    @api.post(
        "/v1/items",
        status_code=201,
        response_model=UploadResponse,
        responses={200: {"model": UploadResponse, "description": "Replaced an existing item"}, **ERROR_RESPONSES},
        openapi_extra=_UPLOAD_BODY,
        summary=f"Upload a clip (multipart); needs {API_KEY_HEADER} when serve.api_key is set",
    )
    async def upload(self, request: Request, response: Response) -> UploadResponse:
        check_api_key(request, self.cfg.serve.api_key)
        t0 = time.perf_counter()
        form = await read_form(request, self.cfg.limits)
        request.state.item_id = form.fields.get("item_id")
        item = self._item(form, form.fields.get("item_id"))
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        try:
            emb = await self._embed(item)
            t = time.perf_counter()
            outcome = await self.writer.upsert.remote(emb)
            index_ms = (time.perf_counter() - t) * 1000
        finally:
            self._inflight -= 1
            self.metrics.inflight.set(self._inflight)
        total_ms = (time.perf_counter() - t0) * 1000
        self.metrics.stage("index", index_ms)
        self.metrics.stage("total", total_ms)
        response.status_code = 201 if outcome == "created" else 200
        log.info(
            "item %s %s: modalities=%s total_ms=%.0f",
            emb.item_id,
            outcome,
            ",".join(emb.modalities),
            total_ms,
            extra={"item_id": emb.item_id, "outcome": outcome, "modalities": emb.modalities, "total_ms": total_ms},
        )
        return UploadResponse(
            item_id=emb.item_id,
            status=outcome,  # type: ignore[arg-type]
            modalities=emb.modalities,
            models=emb.models,
            schema_version=emb.schema_version,
            duration_s=emb.duration_s,
            transcript=emb.transcript.text,
            language=emb.transcript.language,
            decoder=emb.decoder,
            timings_ms={**emb.timings_ms, "index_ms": round(index_ms, 3), "total_ms": round(total_ms, 3)},
        )

    @api.get("/v1/items/{item_id}", response_model=ItemResponse, responses=ERROR_RESPONSES)
    async def get_item(self, item_id: str, vectors: bool = False) -> ItemResponse:
        return ItemResponse(**await self.writer.get.remote(item_id, vectors))

    @api.delete("/v1/items/{item_id}", response_model=DeleteResponse, responses=ERROR_RESPONSES)
    async def delete_item(self, request: Request, item_id: str) -> DeleteResponse:
        check_api_key(request, self.cfg.serve.api_key)
        request.state.item_id = item_id
        if not await self.writer.delete.remote(item_id):
            raise StoreError("unknown_item", f"no item {item_id!r}")
        log.info("item %s deleted", item_id, extra={"item_id": item_id, "outcome": "deleted"})
        return DeleteResponse(item_id=item_id, deleted=True)

    @api.get("/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
    async def search_text(
        self,
        q: str = Query("", description="Query text."),
        k: int = Query(10, ge=1, le=100),
        using: Using = Query("fused", description="Which vector to search: fused or one modality."),
        creator_id: str | None = None,
        language: str | None = None,
        since: str | None = Query(None, description="ISO time; items created at or after."),
        until: str | None = Query(None, description="ISO time; items created at or before."),
        exclude_ids: list[str] = Query(default=[]),
    ) -> SearchResponse:
        t0 = time.perf_counter()
        try:
            flt = SearchFilters(
                creator_id=creator_id, language=language, since=since, until=until, exclude_ids=exclude_ids
            )
        except ValidationError as e:
            raise StoreError("bad_query", f"bad filter: {e.errors()[0]['msg']}") from e
        vecs = await self._query(q)
        self.metrics.stage("query_encode", (time.perf_counter() - t0) * 1000)
        return await self._search(vecs, using, k, flt, t0)

    @api.post("/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES, openapi_extra=_SEARCH_BODY)
    async def search_by(self, request: Request) -> SearchResponse:
        """Search with an uploaded clip (multipart) or by item ids (JSON `like` or `positive`/`negative`)."""
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("application/json"):
            try:
                req = SearchRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise StoreError("bad_query", "; ".join(str(x["msg"]) for x in e.errors())) from e
            if req.like:
                hits = await self.writer.search_like.remote(req.like, req.using, req.k, req)
            else:
                hits = await self.writer.recommend.remote(req.positive, req.negative, req.using, req.k, req)
            return self._hits(hits, req.k, req.using, t0)
        form = await read_form(request, self.cfg.limits)  # 415 unless multipart
        try:
            k = int(form.fields.get("k", "10"))
            using = form.fields.get("using", "fused")
            flt = SearchFilters.model_validate_json(form.fields.get("filters") or "{}")
        except (ValueError, ValidationError) as e:
            raise StoreError("bad_query", f"bad k / filters: {e}") from e
        if not 1 <= k <= 100 or using not in ("fused", "visual", "caption", "transcript"):
            raise StoreError("bad_query", "k must be 1..100 and using one of fused, visual, caption, transcript")
        probe = ItemInput(item_id="_query", media=form.media, caption=form.fields.get("caption", ""))
        validate_item(probe, self.cfg.limits)
        emb = await self._embed(probe)
        return await self._search(emb.vectors, using, k, flt, t0)

    async def _search(
        self, vecs: dict[str, np.ndarray], using: str, k: int, flt: SearchFilters, t0: float
    ) -> SearchResponse:
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
        """Ready when every model deployment answers (optional models may be `unavailable`) and the index is open."""
        models: dict[str, str] = {}
        ready = True
        try:
            for role, info in (await asyncio.wait_for(self.models(), _READY_TIMEOUT_S)).items():
                models[role] = "loaded" if info.loaded else "unavailable"
                ready = ready and (info.loaded or not info.required)
        except Exception as e:
            self._models = None
            ready, models["error"] = False, f"{type(_unwrap(e)).__name__}: {_unwrap(e)}"
        try:
            index: dict[str, Any] = await asyncio.wait_for(self.writer.ping.remote(), _READY_TIMEOUT_S)
        except Exception as e:
            cause = _unwrap(e)
            index = {"reachable": False, "error": getattr(cause, "reason", type(cause).__name__), "detail": str(cause)}
            ready = False
        body = Readiness(ready=ready, models=models, index=index).model_dump(mode="json")
        status = 200 if ready else 503
        return JSONResponse(body, status_code=status, headers=error_headers(status))


def _opts(replicas: int, max_ongoing: int, num_cpus: float = 0.0, num_gpus: float = 0.0) -> dict[str, Any]:
    return {
        "num_replicas": replicas,
        "max_ongoing_requests": max_ongoing,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "logging_config": LoggingConfig(encoding="JSON"),
    }


def build_app(cfg: ReelvecConfig, frames_by_ref: bool = True) -> serve.Application:
    """The whole online path as one Serve application; replicas, resources and batching from `cfg.serve`."""
    s = cfg.serve
    spec = embedding_spec(cfg)
    # @serve.batch only fills when a replica may hold a full batch per concurrent batch (see the issue); twice
    # that lets the next batch gather while one runs, so the model never waits for its queue to refill.
    batch_capacity = 2 * s.max_batch_size * s.max_concurrent_batches
    batching = {"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}
    # Embedded Qdrant Edge: one process may open the path, so exactly one owner; a server takes many writers
    # (":memory:" is per process, so it too must have a single owner).
    shared_server = cfg.index.backend == "qdrant" and cfg.index.url not in (None, ":memory:")
    writer_replicas = s.ingress_replicas if shared_server else 1
    cpu, gpu = s.num_cpus_per_model, s.num_gpus_per_model
    decode = DecodeDeployment.options(**_opts(s.decode_replicas, _SERIAL_ONGOING, cpu)).bind(cfg)
    asr = AsrDeployment.options(**_opts(s.asr_replicas, _SERIAL_ONGOING, cpu, gpu)).bind(cfg)
    clip = ClipDeployment.options(**_opts(s.clip_replicas, batch_capacity, cpu, gpu), user_config=batching).bind(cfg)
    text = TextDeployment.options(**_opts(s.text_replicas, batch_capacity, cpu, gpu), user_config=batching).bind(cfg)
    # Ingress and index owner mostly wait on I/O: like Serve's proxy they reserve no CPU, so the default
    # config (4 models x 0.5 CPU) fits a 2-core machine.
    writer = IndexWriter.options(**_opts(writer_replicas, _INGRESS_MIN_ONGOING)).bind(
        cfg.index, spec.dims, spec.schema_version
    )
    ingress = Ingress.options(
        **_opts(s.ingress_replicas, max(_INGRESS_MIN_ONGOING, 2 * batch_capacity)),
        max_queued_requests=s.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    )
    return ingress.bind(cfg, decode, asr, clip, text, writer, frames_by_ref)


def run(cfg: ReelvecConfig, address: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start local Ray (or join the cluster at `address`), deploy on host:port, block until Ctrl-C / SIGTERM."""
    runlog = logging.getLogger("reelvec.serve")
    runlog.setLevel(logging.INFO)  # the URL is always shown, whatever the CLI's log level
    owns_cluster = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    stop = threading.Event()
    # Explicit handlers: a process started in the background inherits SIGINT ignored, and SIGTERM (docker stop,
    # systemd) must tear the app down too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        runlog.info("reelvec serving on http://%s:%d (OpenAPI docs at /docs); Ctrl-C to stop", host, port)
        stop.wait()
        runlog.info("shutting down")
    finally:
        with contextlib.suppress(Exception):  # best effort on the way out; the app may never have deployed
            serve.delete(APP_NAME)
        if owns_cluster:
            serve.shutdown()
            ray.shutdown()
