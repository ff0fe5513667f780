"""The browser UI's routes: the static pages at `/ui` (no build step, nothing fetched from elsewhere) and the
few read endpoints the pages need beyond search and items: thumbnails, duplicate groups, the latest eval report.

Included into the ingress's FastAPI app; `bind_ui` (called by `Ingress.__init__`) hands them the config and the
IndexWriter handle, as `bind_runtime` does for app.py's handlers (routes are pickled, a module global is not).
"""

# No `from __future__ import annotations`: FastAPI must see real types in the route signatures (see app.py).
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from ray.serve.handle import DeploymentHandle

from embedder.config import ReelvecConfig
from embedder.items import check_item_id
from embedder.thumbs import thumb_jpeg
from serving.http.errors import ERROR_RESPONSES, ApiError
from serving.http.schemas import MAX_K
from serving.http.upload import check_api_key, refuse_unknown
from serving.owner import DUPLICATE_KINDS

UI_DIR = Path(__file__).resolve().parent / "ui"
# The pages' own files: an allowlist made once, so a request names a file only by its plain name.
_ASSETS = {p.name: p for p in UI_DIR.iterdir() if p.is_file() and p.suffix in (".html", ".js", ".css", ".png")}
_REPORT_TYPES = {".html", ".png", ".svg", ".jpg", ".jpeg", ".css", ".json"}
# Pages and report: never cached stale after an upgrade; thumbnails are immutable per item version.
_NO_CACHE = {"Cache-Control": "no-cache"}


@dataclass
class _UiRuntime:
    cfg: ReelvecConfig | None = None
    writer: DeploymentHandle | None = None


_UI = _UiRuntime()


def bind_ui(cfg: ReelvecConfig, writer: DeploymentHandle) -> None:
    """Called by `Ingress.__init__` in the replica, where the routes run."""
    _UI.cfg, _UI.writer = cfg, writer


def _runtime() -> tuple[ReelvecConfig, DeploymentHandle]:
    """The bound config and writer (503 until the ingress has bound them)."""
    if _UI.cfg is None or _UI.writer is None:
        raise ApiError("overloaded", "the UI routes are not bound to an ingress yet", 503)
    return _UI.cfg, _UI.writer


def _check_request(request: Request, query: tuple[str, ...]) -> None:
    # A module function, as in app.py: the route closure below is shipped by value, this reads the real `_UI`.
    cfg, _ = _runtime()
    check_api_key(request, cfg.serve.api_key, required=not cfg.serve.public_read)
    refuse_unknown(request.query_params.keys(), query, "query parameter(s)")


def _guard(query: tuple[str, ...] = ()) -> Any:
    """A route dependency, run before FastAPI validates any parameter: the same read check as search and GET
    items (the API key first), then unknown query parameters refused with 400 naming them."""

    async def guard(request: Request) -> None:
        _check_request(request, query)

    return Depends(guard)


def report_dir(cfg: ReelvecConfig) -> Path:
    """Where the latest eval report lives: `ui.report_dir`, else `<data_dir>/report`."""
    return cfg.ui.report_dir if cfg.ui.report_dir is not None else cfg.data_dir / "report"


class DuplicateGroups(BaseModel):
    kinds: list[str] = Field(description="The relations that link a group (duplicate_of, remix_of).")
    groups: list[list[str]] = Field(description="Sorted item ids of each group (2 or more each).")


class ReportInfo(BaseModel):
    available: bool
    files: list[str] = Field(default_factory=list, description="Files of the report folder (index.html first).")


# The /v1 routes below stay out of /openapi.json for now: the contract there (openapi.py: security per path,
# item-id pattern) and its Schemathesis test count the core operations; publishing these means adding them there.
router = APIRouter()


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
async def ui_page() -> FileResponse:
    return FileResponse(_ASSETS["index.html"], media_type="text/html", headers=_NO_CACHE)


@router.get("/ui/static/{name}", include_in_schema=False)
async def ui_asset(name: str) -> FileResponse:
    path = _ASSETS.get(name)
    if path is None:
        raise ApiError("not_found", "no such UI file", 404)
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0], headers=_NO_CACHE)


@router.get(
    "/v1/items/{item_id:path}/thumbs/{n}",
    include_in_schema=False,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The n-th thumbnail (JPEG)"}, **ERROR_RESPONSES},
    summary="One stored thumbnail of an item (404 when the item has fewer)",
    dependencies=[_guard()],
)
async def item_thumb(request: Request, item_id: str, n: int) -> Response:
    cfg, writer = _runtime()
    request.state.item_id = item_id
    stored = await writer.get.remote(check_item_id(item_id, cfg.limits), False)
    jpeg = thumb_jpeg(stored["payload"], n)
    if jpeg is None:
        raise ApiError("not_found", f"item has no thumbnail {n}", 404)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/v1/duplicates",
    response_model=DuplicateGroups,
    responses=ERROR_RESPONSES,
    include_in_schema=False,
    dependencies=[_guard()],
)
async def duplicates() -> DuplicateGroups:
    """Groups of re-uploads and remixes (as `reelvec dups`), from the relations recorded at ingest."""
    _, writer = _runtime()
    kinds = list(DUPLICATE_KINDS)
    return DuplicateGroups(kinds=kinds, groups=await writer.relation_groups.remote(kinds))


class SharedSound(BaseModel):
    item_id: str
    audio_score: float = Field(description="Share of audio landmarks on the best alignment (0..1).")
    segments: list[dict[str, list[float]]] = Field(description="Seconds of the asked item ({new_s}) and of this one.")


class SharedSounds(BaseModel):
    item_id: str
    sounds: list[SharedSound]


@router.get(
    "/v1/items/{item_id:path}/sounds",
    response_model=SharedSounds,
    responses=ERROR_RESPONSES,
    include_in_schema=False,
    dependencies=[_guard(("k",))],
)
async def item_sounds(request: Request, item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> SharedSounds:
    """Stored clips that share an item's sound (as `reelvec sounds`), best first."""
    cfg, writer = _runtime()
    request.state.item_id = item_id
    found = await writer.shared_sound.remote(check_item_id(item_id, cfg.limits), k)
    return SharedSounds(item_id=item_id, sounds=found)


def _report_files(folder: Path) -> list[str]:
    if not (folder / "index.html").is_file():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _REPORT_TYPES)
    return ["index.html", *(n for n in names if n != "index.html")]


@router.get(
    "/v1/report", response_model=ReportInfo, responses=ERROR_RESPONSES, include_in_schema=False, dependencies=[_guard()]
)
async def report_info() -> ReportInfo:
    """Whether an eval report (`reelvec eval --compare --report DIR`, DIR = ui.report_dir) is there to show."""
    cfg, _ = _runtime()
    files = _report_files(report_dir(cfg))
    return ReportInfo(available=bool(files), files=files)


@router.get("/v1/report/{name}", response_class=Response, include_in_schema=False, dependencies=[_guard()])
async def report_file(name: str) -> Any:
    cfg, _ = _runtime()
    folder = report_dir(cfg)
    if name not in _report_files(folder):  # plain names listed in the folder only: no path ever reaches open()
        raise ApiError("not_found", "no such report file", 404)
    path = folder / name
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0], headers=_NO_CACHE)
