"""Manifest and sidecar rows → ItemInput, with no Ray import: `reelvec ingest` and the backfill share it.

A manifest (JSONL / CSV / Parquet) is checked up front (format, required columns, parse); each row becomes an
item through `embedder.items.build_item` (the same validation as an HTTP upload), and its `uri` must resolve
inside an allowed root (`backfill.allowed_roots`, default the manifest's folder; the folder itself for sidecars).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from embedder.config import LimitsConfig
from embedder.items import build_item, check_depth, json_phrase, load_json
from embedder.types import ConfigError, ItemFailure, ItemInput, MediaError

REQUIRED_COLUMNS = ("item_id", "uri")
OPTIONAL_COLUMNS = ("caption", "metadata", "hashtags", "creator_id", "created_at")
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SIDECAR = "captions.jsonl"
# A row's uri (a path, PATH_MAX 4096 bytes) and flat CSV columns, on top of metadata, caption and id.
_ROW_OVERHEAD = 16 * 1024
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}


class ManifestError(ConfigError):
    """The manifest itself is unusable (missing, unreadable, wrong format, required column absent): exit 2."""


@dataclass(frozen=True)
class ManifestInfo:
    """A manifest checked on the driver: absolute path, format, row count and columns."""

    path: Path
    format: str
    rows: int
    columns: tuple[str, ...]


def _missing(columns: list[str] | tuple[str, ...], path: Path, where: str) -> None:
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise ManifestError(
            "bad_manifest",
            f"{path}: {where} lacks required column(s) {absent}; expected {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
        )


def inspect_manifest(path: str | Path) -> ManifestInfo:
    """Check a manifest is readable and has the required columns, and count its rows (for the progress ETA)."""
    p = Path(path).expanduser().absolute()
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ManifestError("bad_manifest", f"{p}: unknown manifest format {p.suffix!r}; use .jsonl, .csv or .parquet")
    if not p.is_file():
        raise ManifestError("bad_manifest", f"manifest not found: {p}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            columns = tuple(pf.schema_arrow.names)
            _missing(columns, p, "schema")
            return ManifestInfo(p, fmt, pf.metadata.num_rows, columns)
        if fmt == "csv":
            return _inspect_csv(p)
        return _inspect_jsonl(p)
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
        raise ManifestError("bad_manifest", f"{p}: cannot read manifest as {fmt}: {e}") from e


def row_bytes(limits: LimitsConfig) -> int:
    """Most bytes one manifest or sidecar line may take: its metadata, caption and id at their limits (UTF-8, up
    to 4 bytes a character) plus room for the uri and a few flat columns."""
    return limits.max_metadata_bytes + 4 * (limits.max_caption_chars + limits.max_item_id_chars) + _ROW_OVERHEAD


def json_object(line: str, limits: LimitsConfig | None = None) -> dict[str, Any]:
    """One JSONL line as an object, bounded in size and depth before parsing (`limits`, default the shipped
    ones); the ValueError says why it is not one."""
    limits = limits or LimitsConfig()
    obj = load_json(line, limits.max_json_depth, row_bytes(limits))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _inspect_jsonl(p: Path) -> ManifestInfo:
    rows, columns = 0, ()
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if rows == 0:
                try:
                    columns = tuple(json_object(line))
                except ValueError as e:
                    raise ManifestError("bad_manifest", f"{p}: line {lineno} is {e}; expected JSONL") from e
                _missing(columns, p, f"first row (line {lineno})")
            rows += 1
    return ManifestInfo(p, "jsonl", rows, columns)


def _inspect_csv(p: Path) -> ManifestInfo:
    import pyarrow.csv as pacsv

    with open(p, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    _missing(header, p, "header")
    rows = 0
    # Streaming parse of the whole file: a ragged or unparsable row fails here, before any work starts.
    with pacsv.open_csv(p, convert_options=csv_convert(header)) as reader:
        for batch in reader:
            rows += batch.num_rows
    return ManifestInfo(p, "csv", rows, tuple(header))


def csv_convert(header: list[str] | tuple[str, ...]) -> Any:
    import pyarrow.csv as pacsv

    # Every column as text: ids like "007" must not become integers, empty cells stay "".
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False)


def _plain(v: Any) -> Any:
    """Arrow/numpy values → plain JSON-able Python (parquet structs, lists and scalars)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _row_metadata(raw: dict[str, Any], limits: LimitsConfig) -> Any:
    """The row's metadata object: the `metadata` column (JSON text or object) plus flat-CSV convenience columns
    `hashtags` (space/comma separated text), `creator_id` and `created_at` when the object lacks them."""
    meta = raw.get("metadata")
    if meta is None or (isinstance(meta, str) and not meta.strip()):
        meta = {}
    try:
        if isinstance(meta, str):
            meta = load_json(meta, limits.max_json_depth, limits.max_metadata_bytes)
        check_depth(meta, limits.max_json_depth)  # before `_plain` recurses into a Parquet struct
    except ValueError as e:
        raise MediaError("bad_metadata", f"metadata {json_phrase(e)}") from e
    meta = _plain(meta)
    if not isinstance(meta, dict):
        return meta  # build_item refuses it with the same error as an upload
    for key in ("hashtags", "creator_id", "created_at"):
        value = raw.get(key)
        if key in meta or value in (None, ""):
            continue
        if key == "hashtags" and isinstance(value, str):
            value = value.replace(",", " ").split()
        meta[key] = _plain(value)
    return meta


def resolve_uri(uri: Any, base_dir: Path, roots: Sequence[Path]) -> str:
    """A row's `uri` as an absolute local path inside one of `roots` (symlinks resolved); `bad_uri` for URLs or
    empty values, `forbidden_path` for anything outside the roots."""
    if not isinstance(uri, str) or not uri.strip():
        raise MediaError("bad_uri", "row has no uri")
    uri = uri.strip()
    scheme = urlparse(uri).scheme
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise MediaError("bad_uri", f"uri must be a local file path, got a {scheme}: URL")
    path = Path(uri).expanduser()
    full = Path(os.path.realpath(path if path.is_absolute() else base_dir / path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if full == real_root or real_root in full.parents:
            return str(full)
    raise MediaError("forbidden_path", "uri resolves outside the allowed roots (backfill.allowed_roots)")


def parse_row(
    raw: dict[str, Any], base_dir: Path, limits: LimitsConfig, roots: Sequence[Path] | None = None
) -> ItemInput:
    """One manifest or sidecar row → a validated ItemInput (relative uris resolve against `base_dir`)."""
    item_id = raw.get("item_id")
    if isinstance(item_id, int | float) and not isinstance(item_id, bool):
        item_id = str(item_id)
    media = resolve_uri(raw.get("uri"), base_dir, roots if roots else [base_dir])
    return build_item(item_id, media, limits, caption=raw.get("caption"), metadata=_row_metadata(raw, limits))


def manifest_roots(info_path: Path, allowed: Iterable[Path]) -> list[Path]:
    """Where a manifest's uris may point: the configured roots, else the manifest's own folder."""
    roots = [Path(r).expanduser().absolute() for r in allowed]
    return roots or [info_path.parent]


def _sidecar_row(line: str, n: int, limits: LimitsConfig) -> tuple[str, dict[str, Any]]:
    """One sidecar line → (file name, row); MediaError for a line that is not an object naming a file here."""
    try:
        row = json_object(line, limits)
    except ValueError as e:
        raise MediaError("bad_row", f"{SIDECAR} line {n} {json_phrase(e)}") from e
    name = row.get("uri") or row.get("file")
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        raise MediaError("forbidden_path", f"{SIDECAR} line {n}: `uri` must be a file name in this folder")
    extra = {k: v for k, v in row.items() if k not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "file")}
    if extra:  # kept as metadata attributes, as the README says
        meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        attrs = {
            **{k: v for k, v in extra.items() if isinstance(v, str | int | float | bool)},
            **meta.get("attributes", {}),
        }
        row = {**row, "metadata": {**meta, "attributes": attrs}}
        for k in extra:
            row.pop(k)
    return name, {**row, "uri": name, "_line": n}


def sidecar_rows(folder: Path, limits: LimitsConfig) -> tuple[dict[str, dict[str, Any]], list[ItemFailure]]:
    """`captions.jsonl` of an ingest folder: file name → row, and the lines that are no usable row (stage
    `sidecar`). A row names a file in this folder only."""
    sidecar = folder / SIDECAR
    rows: dict[str, dict[str, Any]] = {}
    failures: list[ItemFailure] = []
    if not sidecar.is_file():
        return rows, failures
    for n, line in enumerate(sidecar.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            name, row = _sidecar_row(line, n, limits)
        except MediaError as e:
            failures.append(ItemFailure("", "sidecar", e.reason, e.detail))
            continue
        rows[name] = row
    return rows, failures


def collect_folder(folder: Path, limits: LimitsConfig) -> tuple[list[ItemInput], list[ItemFailure]]:
    """Every video in a folder, with metadata from its sidecar (default id: the file stem), and every sidecar
    line or video that cannot become an item: the good ones are not held back by the bad (issue 18)."""
    rows, failures = sidecar_rows(folder, limits)
    items: list[ItemInput] = []
    for f in sorted(x for x in folder.iterdir() if x.suffix.lower() in VIDEO_SUFFIXES):
        row = dict(rows.get(f.name, {"item_id": f.stem, "uri": f.name}))
        line = row.pop("_line", None)
        try:
            items.append(parse_row(row, folder, limits))
        except MediaError as e:
            item_id = row.get("item_id") if isinstance(row.get("item_id"), str) else ""
            where = f"{SIDECAR} line {line}" if line is not None else f.name
            failures.append(ItemFailure(item_id, "sidecar", e.reason, f"{where}: {e.detail}"))
    return items, failures
