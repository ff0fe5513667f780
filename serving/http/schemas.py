"""HTTP request/response models of the Serve API (pydantic, one place; the OpenAPI document is built from them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedder.items import json_phrase, load_json
from embedder.types import relation_fields
from index import SearchFilter

if TYPE_CHECKING:
    from embedder.types import ItemEmbedding
    from serving.owner import Written

# A named vector of the index: `fused` or a modality of the step graph (checked against the index).
Using = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Fusion = Literal["vector", "rrf", "dbsf"]
# The keys of a `filters` object (multipart search) and of the filter query parameters (GET search).
FILTER_KEYS = ("creator_id", "language", "since", "until", "exclude_ids")
# A filters object holds scalars and one list of ids: two levels.
_FILTERS_DEPTH = 2
# The most hits one search returns, over HTTP and in the CLI alike.
MAX_K = 100


def _drop_empty(data: Any) -> Any:
    """Form and query values given empty (`since=&until=`) mean absent, as browsers and curl send them."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = [v for v in value if v != ""]
            if not value:
                continue
        elif value == "":
            continue
        out[key] = value
    return out


class CopiedSegmentModel(BaseModel):
    new_s: list[float] = Field(description="[start, end] seconds of the new clip.")
    stored_s: list[float] = Field(description="[start, end] seconds of the stored clip they copy.")


class RelationModel(BaseModel):
    """How an upload relates to a stored item (`reelvec` README: relations)."""

    kind: Literal["duplicate_of", "remix_of", "sound_of"]
    of: str = Field(description="The stored item.")
    visual_score: float = Field(description="Mean per-frame fingerprint agreement on the best alignment (0..1).")
    audio_score: float | None = Field(description="Share of audio landmarks on the best alignment; null: no audio.")
    segments: list[CopiedSegmentModel]
    mirrored: bool
    speed: float = Field(description="Playback speed of the new clip relative to the stored one.")


class UploadResponse(BaseModel):
    """What `POST /v1/items` returns: 201 `created` or 200 `replaced`."""

    item_id: str
    status: Literal["created", "replaced"]
    modalities: list[str]
    models: dict[str, str] = Field(description="Model card id → version for every model that ran.")
    models_unavailable: list[str] = Field(description="Configured model cards not loaded (modality off).")
    schema_version: str
    duration_s: float
    transcript: str
    language: str | None
    speech: bool | None = Field(description="Speech gate: false = no voice (ASR skipped), null = not checked.")
    ocr_text: str = Field(description="On-screen text read from the frames.")
    decoder: str
    duplicate_of: str | None = Field(None, description="The stored item this upload re-uploads (same visuals, sound).")
    duplicate_score: float | None = Field(None, description="Aligned visual fingerprint agreement with it (0..1).")
    remix_of: str | None = Field(None, description="The stored item whose visuals this upload reuses with new sound.")
    sound_of: str | None = Field(None, description="The stored item whose sound this upload reuses.")
    relation: RelationModel | None = Field(None, description="The relation found at ingest, with copied segments.")
    semantic_id: list[int] | None = Field(None, description="Residual-quantization code, once fitted.")
    timings_ms: dict[str, float] = Field(description="Per-stage wall time of this upload.")

    @classmethod
    def of(cls, emb: ItemEmbedding, written: Written, extra_ms: dict[str, float]) -> UploadResponse:
        """The response for an embedded and written item (the item's own JSON view, less its vectors)."""
        view = {k: v for k, v in emb.to_json(vectors=False).items() if k in cls.model_fields}
        timings = {**emb.timings_ms, **{k: round(v, 3) for k, v in extra_ms.items()}}
        fields = relation_fields(written.relation)
        return cls(**{**view, **written.to_json(), **fields, "timings_ms": timings})


class ItemResponse(BaseModel):
    """A stored item: payload (caption, transcript, metadata…) and, on request, its vectors."""

    item_id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float] | list[list[float]]] | None = Field(
        None, description="Dense vectors (d floats) and MaxSim multivectors (n rows of d floats), by name."
    )


class DeleteResponse(BaseModel):
    item_id: str
    deleted: bool


class SearchFilters(SearchFilter):
    """Payload filters shared by text, clip and id searches (the index's own filter model); unknown keys are
    refused."""


class SearchQuery(SearchFilters):
    """`GET /v1/search` query parameters; unknown ones are refused (400 naming the parameter), empty = absent."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field("", description="Query text.", max_length=2200)
    k: int = Field(10, ge=1, le=MAX_K, description="How many hits.")
    using: Using = Field("fused", description="Which vector to search: fused or one modality.")
    fusion: Fusion | None = Field(None, description="With using=fused: vector, rrf or dbsf (default fusion.mode).")
    moments: bool = Field(False, description="Per hit, where in the clip the query matches best (`moment`).")

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: Any) -> Any:
        return _drop_empty(data)


class ClipSearchForm(BaseModel):
    """The text fields of a multipart `POST /v1/search` (the clip is the `file` part); unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, description="Caption of the query clip (embedded like an item's).")
    k: int = Field(10, ge=1, le=MAX_K)
    using: Using = "fused"
    fusion: Fusion | None = None
    filters: SearchFilters = Field(
        default_factory=SearchFilters, description=f"JSON object with any of {', '.join(FILTER_KEYS)}."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: Any) -> Any:
        return _drop_empty(data)

    @field_validator("filters", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        """The form sends `filters` as JSON text; its keys are then checked like any other field."""
        if not isinstance(v, str):
            return v
        try:  # bounded before parsing: a 10,000-deep array was a RecursionError, a 500 (issue 18)
            return load_json(v, max_depth=_FILTERS_DEPTH, max_bytes=len(v))
        except ValueError as e:
            raise ValueError(f"filters {json_phrase(e)}") from None


class SearchRequest(SearchFilters):
    """`POST /v1/search` with JSON: items like `like`, or recommend from `positive` / `negative` ids."""

    model_config = ConfigDict(extra="forbid")

    like: str | None = None
    positive: list[str] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)
    k: int = Field(10, ge=1, le=MAX_K)
    using: Using = "fused"

    @model_validator(mode="after")
    def _one_source(self) -> SearchRequest:
        if self.like is None and not self.positive:
            raise ValueError("give `like` (an item id) or `positive` ids")
        if self.like is not None and (self.positive or self.negative):
            raise ValueError("`like` cannot be combined with `positive` / `negative`")
        return self


class SearchResponse(BaseModel):
    hits: list[dict[str, Any]] = Field(description="Best first: item id, score and stored payload.")
    k: int
    using: str
    took_ms: float


class Health(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    """`/readyz`: every model deployment answered and the index is reachable."""

    ready: bool
    models: dict[str, str] = Field(description="Model role → `loaded`, `unavailable` (optional, off) or an error.")
    index: dict[str, Any]
