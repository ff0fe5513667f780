"""The OpenAPI document as the contract: FastAPI's routes plus what it cannot see — the multipart bodies, and
the limits, id alphabet and enums that come from config — so a generated client (or Schemathesis) sends what
the server accepts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from embedder.config import ReelvecConfig
from serving.http.schemas import FILTER_KEYS, ClipSearchForm, SearchRequest
from serving.http.upload import API_KEY_HEADER


def _item_id(cfg: ReelvecConfig) -> dict[str, Any]:
    lim = cfg.limits
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": lim.max_item_id_chars,
        "pattern": f"^(?:{lim.item_id_pattern})$",
        "description": "Printable characters except `/` and `\\`, no leading/trailing space (limits.item_id_pattern).",
    }


def _file(cfg: ReelvecConfig) -> dict[str, Any]:
    return {
        "type": "string",
        "format": "binary",
        "contentMediaType": "video/*",
        "description": f"The clip's bytes, at most limits.max_bytes={cfg.limits.max_bytes} "
        f"and {cfg.limits.max_duration_s:g} s long.",
    }


def _upload_body(cfg: ReelvecConfig) -> dict[str, Any]:
    lim = cfg.limits
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "item_id"],
                    "additionalProperties": False,
                    "properties": {
                        "file": _file(cfg),
                        "item_id": _item_id(cfg),
                        "caption": {"type": "string", "maxLength": lim.max_caption_chars},
                        "metadata": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "description": "JSON object: hashtags (list, at most limits.max_hashtags="
                            f"{lim.max_hashtags}), creator_id, created_at (ISO 8601), attributes (scalars)",
                        },
                    },
                }
            }
        },
    }


def _search_body(cfg: ReelvecConfig) -> dict[str, Any]:
    form = ClipSearchForm.model_json_schema()["properties"]
    json_schema = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    json_schema.pop("$defs", None)
    for key in ("like", "positive", "negative", "exclude_ids"):
        prop = json_schema["properties"][key]
        ids = prop.get("items") if prop.get("type") == "array" else None
        if ids is not None:
            prop["items"] = _item_id(cfg)
    json_schema["properties"]["like"] = {"anyOf": [_item_id(cfg), {"type": "null"}], "default": None}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": json_schema},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": _file(cfg),
                        "caption": {"type": "string", "maxLength": cfg.limits.max_caption_chars},
                        "k": {k: v for k, v in form["k"].items() if k != "title"},
                        "using": {k: v for k, v in form["using"].items() if k != "title"},
                        "fusion": {"type": "string", "enum": ["vector", "rrf", "dbsf"]},
                        "filters": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "description": f"JSON object with any of {', '.join(FILTER_KEYS)}; other keys → 400.",
                        },
                    },
                }
            },
        },
    }


def openapi_document(app: FastAPI, cfg: ReelvecConfig) -> dict[str, Any]:
    """FastAPI's document with the request bodies and config-derived constraints filled in."""
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    paths = doc["paths"]
    paths["/v1/items"]["post"]["requestBody"] = _upload_body(cfg)
    paths["/v1/search"]["post"]["requestBody"] = _search_body(cfg)
    for method in ("get", "delete"):
        for param in paths["/v1/items/{item_id}"][method]["parameters"]:
            if param["name"] == "item_id":
                param["schema"] = _item_id(cfg)
    for param in paths["/v1/search"]["get"]["parameters"]:
        if param["name"] == "q":  # required: without it the search is 400 (`empty_query`)
            param["required"] = True
            param["schema"].update(minLength=1, maxLength=cfg.limits.max_caption_chars)
            param["schema"].pop("default", None)
        if param["name"] == "exclude_ids":
            param["schema"]["items"] = _item_id(cfg)
    if cfg.serve.api_key is not None:
        doc.setdefault("components", {})["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        }
        guarded = [("/v1/items", "post"), ("/v1/items/{item_id}", "delete")]
        if not cfg.serve.public_read:
            guarded += [("/v1/items/{item_id}", "get"), ("/v1/search", "get"), ("/v1/search", "post")]
        for path, method in guarded:
            paths[path][method]["security"] = [{"apiKey": []}]
    return doc
