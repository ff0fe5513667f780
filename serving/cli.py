"""`reelvec` command line: embed, models, ingest, search, recommend, show, delete, stats, alias, serve, backfill.

Every command takes `--config FILE` and `--json`; errors print one clear line (or a JSON object) and
exit non-zero: 2 bad input / unknown item, 3 model unavailable, 4 index unavailable or locked, 1 other.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from embedder.config import ReelvecConfig, load_config
from embedder.fusion import late_fusion
from embedder.reasons import reason
from embedder.types import ConfigError, MediaError, ReelvecError, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="reelvec: multimodal short-video embeddings.")
models_app = typer.Typer(no_args_is_help=True, help="Model cards: list, pull and verify weights.")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)
log = logging.getLogger("reelvec.cli")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Config YAML (default: configs/default.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
# Result size, vector and filters shared by `search` and `recommend`.
KOpt = Annotated[int, typer.Option("-k", help="Number of results.")]
UsingOpt = Annotated[str, typer.Option(help="Vector to compare: fused, visual, caption, transcript or ocr.")]
FusionOpt = Annotated[
    str | None,
    typer.Option(
        help="With --using fused: vector (the fused vector), rrf or dbsf (Qdrant late fusion); default fusion.mode."
    ),
]
CreatorOpt = Annotated[str | None, typer.Option(help="Only this creator id.")]
LanguageOpt = Annotated[str | None, typer.Option(help="Only this transcript language.")]
SinceOpt = Annotated[str | None, typer.Option(help="Created at or after this (inclusive; ISO date or datetime).")]
UntilOpt = Annotated[
    str | None, typer.Option(help="Created strictly before this (exclusive: --until 2026-11-08 ends on the 7th).")
]
ExcludeOpt = Annotated[list[str] | None, typer.Option(help="Item id to leave out (repeatable).")]


def exit_code_for(e: ReelvecError) -> int:
    """The CLI exit code of a reason (the registry in embedder/reasons.py)."""
    return reason(e.reason).exit


def say_error(styled: str, plain: str) -> None:
    """One line on stderr: rich markup at a terminal, plain text otherwise (rich would wrap it at 80 columns)."""
    if sys.stderr.isatty():
        err.print(styled)
    else:
        print(plain, file=sys.stderr, flush=True)


def fail(e: ReelvecError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": e.reason, "detail": e.detail}))
    else:
        detail = " ".join(e.detail.split())  # one line, whatever the detail holds
        say_error(f"[bold red]error[/] ({e.reason}): {escape(detail)}", f"error ({e.reason}): {detail}")
    raise typer.Exit(exit_code_for(e))


@contextmanager
def cli_errors(as_json: bool) -> Iterator[None]:
    """Turn reelvec's typed errors into a message and an exit code."""
    try:
        yield
    except ReelvecError as e:
        fail(e, as_json)


def emit(payload: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        human()


def get_config(path: Path | None) -> ReelvecConfig:
    return load_config(path)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Logs as JSON lines (the default when stderr is not a terminal).")
    ] = False,
) -> None:
    from serving.logs import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.WARNING, json_lines=True if log_json else None)


@app.command()
def embed(
    video: Annotated[Path, typer.Argument(help="Video file to embed.")],
    caption: Annotated[str, typer.Option(help="Creator caption.")] = "",
    hashtag: Annotated[list[str] | None, typer.Option("--hashtag", "-t", help="Hashtag (repeatable).")] = None,
    item_id: Annotated[str | None, typer.Option("--id", help="Item id (default: file stem).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed one video and print its vectors, transcript, models and stage timings."""
    from embedder.decode import probe_file
    from embedder.items import build_item
    from embedder.pipeline import ItemEmbedder

    with cli_errors(as_json):
        cfg = get_config(config)
        if video.is_dir():
            raise MediaError("not_a_video", f"{video} is a folder: `reelvec ingest FOLDER` embeds a folder")
        if not video.is_file():
            raise MediaError("not_found", f"no such file: {video}")
        item = build_item(item_id or video.stem, str(video), cfg.limits, caption, {"hashtags": hashtag or []})
        probe_file(str(video))  # a bad file fails here, before any model loads
        emb = ItemEmbedder(cfg)
        try:
            result = emb.embed(item)
        finally:
            emb.close()

    def human() -> None:
        out.print(f"[bold]{result.item_id}[/]  modalities: {', '.join(result.modalities)}  decoder: {result.decoder}")
        out.print(f"transcript: {result.transcript.text or '[dim](none)[/]'}")
        for name, v in result.vectors.items():
            out.print(f"  {name:<11} dim={len(v):<5} head={[round(float(x), 4) for x in v[:4]]}")
        out.print(f"models: {result.models}")
        out.print(f"timings_ms: {result.timings_ms}")
        if emb.unavailable:
            out.print(f"[yellow]unavailable models (modality off): {', '.join(emb.unavailable)}[/]")

    emit(result.to_json(), as_json, human)


@models_app.command("list")
def models_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List model cards and whether their weights are present."""
    from embedder.cards import list_cards, status

    with cli_errors(as_json):
        cfg = get_config(config)
        rows = [status(c, cfg.models.models_dir) for c in list_cards(cfg.models.cards_dir)]
    _print_status(rows, as_json)


@models_app.command("verify")
def models_verify(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check the sha256 of every present model file against its card; exit 3 on a mismatch."""
    from embedder.cards import list_cards, status

    with cli_errors(as_json):
        cfg = get_config(config)
        rows = [status(c, cfg.models.models_dir, verify=True) for c in list_cards(cfg.models.cards_dir)]
    _print_status(rows, as_json)
    if any(r.present and r.verified is False and "mismatch" in r.detail for r in rows):
        raise typer.Exit(3)


@models_app.command("pull")
def models_pull(
    card_id: Annotated[str | None, typer.Argument(help="Card id (default: every configured model).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch missing weights named by the cards (needs network access to the card's URL)."""
    from embedder.cards import load_card, pull, status

    with cli_errors(as_json):
        cfg = get_config(config)
        refs = [card_id] if card_id else [cfg.models.clip.card, cfg.models.text.card, cfg.models.asr.card]
        refs += [cfg.models.omni.card] if cfg.models.omni and not card_id else []
        cards = [load_card(r, cfg.models.cards_dir) for r in refs]
        for c in cards:
            pull(c, cfg.models.models_dir)
        rows = [status(c, cfg.models.models_dir) for c in cards]
    _print_status(rows, as_json)


def fit_table(columns: list[tuple[str, str]], rows: list[list[str]], title: str | None = None) -> Any:
    """A rich table that fits the terminal: `id` columns (item ids, card ids) are never cut (wider than the terminal:
    folded onto more lines), `num` and `short` columns (scores, dates) keep their width, `text` columns share what
    is left, one line each, ending in an ellipsis; a text column that would get under 6 characters is left out,
    the rightmost first."""
    from rich.table import Table
    from rich.text import Text

    widths = [max([Text.from_markup(r[n]).cell_len for r in rows] + [len(name)]) for n, (name, _) in enumerate(columns)]
    keep = list(range(len(columns)))
    while True:
        text = [n for n in keep if columns[n][1] == "text"]
        room = out.width - (3 * len(keep) + 1) - sum(widths[n] for n in keep if n not in text)
        share = _share([widths[n] for n in text], room)
        if not text or min(share) >= min(6, *(widths[n] for n in text)):
            break
        keep.remove(text[-1])
    given = dict(zip(text, share, strict=True))
    for n in (n for n in keep if columns[n][1] == "id" and room < 0):  # an id wider than the terminal folds
        given[n], room = max(widths[n] + room, 8), 0
    t = Table(title=title)
    for n in keep:
        name, kind = columns[n]
        fold = kind == "id" and n in given
        t.add_column(name, width=given.get(n, widths[n]), no_wrap=not fold, overflow="fold" if fold else "ellipsis",
                     justify="right" if kind == "num" else "left")  # fmt: skip
    for r in rows:
        t.add_row(*[r[n] for n in keep])
    return t


def _share(wants: list[int], room: int) -> list[int]:
    """Split `room` characters among columns wanting `wants`: small wants are met whole, the rest share equally."""
    give = [0] * len(wants)
    left = sorted(range(len(wants)), key=lambda i: wants[i])
    while left:
        each = max(room, 0) // len(left)
        i = left.pop(0)
        give[i] = min(wants[i], each)
        room -= give[i]
    return give


def _print_status(rows: list[Any], as_json: bool) -> None:
    def human() -> None:
        cols = [("id", "id"), ("family", "short"), ("modality", "short"), ("present", "short")]
        cols += [("verified", "short"), ("detail", "text")]
        present = {True: "[green]yes[/]", False: "[red]missing[/]"}
        cells = [
            [escape(r.id), r.family, r.modality, present[r.present], str(r.verified), escape(r.detail)] for r in rows
        ]
        out.print(fit_table(cols, cells))

    emit([r.to_json() for r in rows], as_json, human)


def _spec(cfg: ReelvecConfig) -> Any:
    from embedder.pipeline import embedding_spec

    return embedding_spec(cfg)


def _open_index(cfg: ReelvecConfig, create: bool = True, version: str | None = None) -> Any:
    """The index the alias serves (created on first ingest); opened before models load so errors come fast."""
    from index import open_index

    spec = _spec(cfg)
    return open_index(cfg.index, spec.dims, spec.schema_version, version=version, create=create)


def _filter(
    creator: str | None, language: str | None, since: str | None, until: str | None, exclude: list[str] | None
) -> Any:
    from datetime import datetime

    from index import SearchFilter

    def when(value: str | None, name: str) -> datetime | None:
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise StoreError("bad_query", f"--{name} must be an ISO date or datetime, got {value!r}") from e

    return SearchFilter(
        creator_id=creator,
        language=language,
        since=when(since, "since"),
        until=when(until, "until"),
        exclude_ids=list(exclude or []),
    )


def _check_k(k: int) -> None:
    """The same range as the HTTP API's `k`."""
    from serving.http.schemas import MAX_K

    if not 1 <= k <= MAX_K:
        raise StoreError("bad_query", f"-k must be between 1 and {MAX_K}, got {k}")


def _ids(values: list[str] | None) -> list[str]:
    """Ids given as repeated options and/or comma-separated lists."""
    return [i.strip() for v in values or [] for i in v.split(",") if i.strip()]


def _print_hits(hits: list[Any], as_json: bool, title: str, moments: list[Any] | None = None) -> None:
    rows = [h.to_json() for h in hits]
    if moments is not None:
        for row, m in zip(rows, moments, strict=True):
            row["moment"] = m.to_json() if m is not None else None

    def human() -> None:
        cols = [("score", "num"), ("item id", "id"), ("caption", "text"), ("modalities", "text")]
        cols += [("creator", "text"), ("created", "short")] + ([("moment", "text")] if moments is not None else [])
        cells = []
        for row, h in zip(rows, hits, strict=True):
            cap = escape(" ".join((h.payload.get("caption") or "").split())) or "[dim](no caption)[/]"
            created = str(h.payload.get("created_at") or "")[:10]
            mods = ",".join(h.payload.get("modalities") or [])
            creator = str(h.payload.get("creator_id") or "")
            line = [f"{h.score:.4f}", escape(h.item_id), cap, mods, escape(creator), created]
            if moments is not None:
                m = row["moment"]
                text = " ".join(str(m["text"]).split()) if m is not None else ""
                line.append("-" if m is None else f"{m['start_s']:.1f}-{m['end_s']:.1f}s {m['source']}: {escape(text)}")
            cells.append(line)
        out.print(fit_table(cols, cells, title=title))

    emit(rows, as_json, human)


def _fusion(cfg: ReelvecConfig, given: str | None) -> str:
    fusion = given or cfg.fusion.mode
    if fusion not in ("vector", "rrf", "dbsf"):
        raise StoreError("bad_query", f"--fusion must be vector, rrf or dbsf, got {fusion!r}")
    return fusion


def collect_items(
    paths: list[Path],
    limits: Any,
    item_id: str | None,
    caption: str | None,
    hashtags: list[str],
    creator: str | None = None,
) -> tuple[list[Any], list[Any]]:
    """Files given directly, or every video in a folder with metadata from its `captions.jsonl` sidecar; also
    the sidecar rows that cannot become items (reported, while the good ones are written)."""
    from embedder.items import build_item
    from serving.manifest import VIDEO_SUFFIXES, collect_folder

    items, bad = [], []
    for p in paths:
        if p.is_dir():
            found, failed = collect_folder(p, limits)
            items += found
            bad += failed
        elif p.is_file():
            items.append(build_item(p.stem, str(p.resolve()), limits))
        else:
            raise MediaError("not_found", f"no such file or folder: {p}")
    if not items and bad:
        return items, bad
    if not items:
        raise MediaError("not_found", f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under {paths}")
    if item_id is not None or caption is not None or hashtags or creator is not None:
        if len(items) != 1:
            raise MediaError("bad_item_id", "--id, --caption, --hashtag and --creator apply to a single file only")
        it = items[0]
        meta = {"hashtags": hashtags or it.hashtags, "creator_id": creator or it.creator_id}
        items = [
            build_item(
                item_id or it.item_id,
                it.media,
                limits,
                caption=caption if caption is not None else it.caption,
                metadata={**meta, "created_at": it.created_at, "attributes": it.metadata},
            )
        ]
    return items, bad


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Video files, or folders (with an optional captions.jsonl).")],
    item_id: Annotated[str | None, typer.Option("--id", help="Item id for a single file (default: stem).")] = None,
    caption: Annotated[str | None, typer.Option(help="Caption for a single file.")] = None,
    hashtag: Annotated[list[str] | None, typer.Option("--hashtag", "-t", help="Hashtag (repeatable).")] = None,
    creator: Annotated[str | None, typer.Option(help="Creator id for a single file.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed videos and upsert them into the index (idempotent by item id); exit 2 if any item failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from embedder.pipeline import ItemEmbedder
    from embedder.types import ItemEmbedding, ItemFailure
    from serving.owner import IndexOwner, WriteReport

    with cli_errors(as_json):
        cfg = get_config(config)
        items, rejected = collect_items(paths, cfg.limits, item_id, caption, hashtag or [], creator)
        owner = IndexOwner.open(cfg, _spec(cfg))
        emb = None
        written = WriteReport(failed=list(rejected))
        try:
            emb = ItemEmbedder(cfg)
            columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err, disable=as_json or len(items) < 2) as bar:
                task = bar.add_task("ingest", total=len(items))
                step = cfg.backfill.batch_size
                for s in range(0, len(items), step):
                    results = emb.embed_batch(items[s : s + step])
                    written.failed += [r for r in results if isinstance(r, ItemFailure)]
                    report = owner.write([r for r in results if isinstance(r, ItemEmbedding)])
                    written.written += report.written
                    written.failed += report.failed
                    bar.advance(task, len(results))
            created, replaced, failed = written.created, written.replaced, written.failed
            relations = written.relations
            summary = {
                "created": created,
                "replaced": replaced,
                "failed": [f.__dict__ for f in failed],
                "relations": relations,
                "count": owner.index.count(),
                "collection": owner.index.collection,
                "version": owner.index.version,
                "unavailable_models": emb.unavailable,
            }
        finally:
            owner.close()
            if emb is not None:
                emb.close()

    def human() -> None:
        out.print(
            f"indexed [bold]{len(created) + len(replaced)}[/] item(s) ({len(created)} new, {len(replaced)} replaced) "
            f"into {summary['collection']}; {summary['count']} item(s) in the index"
        )
        from serving.owner import relation_line

        for i, rel in relations.items():
            out.print(f"[yellow]{rel['kind']}[/] {escape(i)} → {escape(rel['of'])} ({relation_line(rel)})")
        for f in failed:
            line = f"{f.item_id or '(no id)'} at {f.stage}: {f.reason}: {' '.join(f.detail.split())}"
            say_error(f"[red]failed[/] {escape(line)}", f"failed {line}")

    emit(summary, as_json, human)
    if failed:
        raise typer.Exit(2)


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="Query text.")] = None,
    video: Annotated[Path | None, typer.Option(help="Query by a video clip.")] = None,
    like: Annotated[str | None, typer.Option(help="More like this stored item id.")] = None,
    k: KOpt = 10,
    using: UsingOpt = "fused",
    creator: CreatorOpt = None,
    language: LanguageOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    exclude: ExcludeOpt = None,
    fusion: FusionOpt = None,
    moments: Annotated[bool, typer.Option("--moments", help="Per hit, where in the clip the text matches.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search by text (CLIP text tower + text encoder, fused), by a video, or more-like-this an item."""
    from embedder.items import build_item
    from embedder.pipeline import ItemEmbedder

    with cli_errors(as_json):
        modes = [m for m in (text is not None, video is not None, like is not None) if m]
        if len(modes) != 1:
            raise StoreError("bad_query", "give exactly one of TEXT, --video PATH or --like ITEM_ID")
        if text is not None and not text.strip():
            raise StoreError("bad_query", "query text is empty")
        _check_k(k)
        cfg = get_config(config)
        mode = _fusion(cfg, fusion)
        late = mode if late_fusion(using, mode) else None
        if moments and text is None:
            raise StoreError("bad_query", "--moments applies to a TEXT query")
        flt = _filter(creator, language, since, until, exclude)
        index = _open_index(cfg, create=False)
        found_moments = None
        try:
            if like is not None:
                hits = index.search_like(like, using=using, k=k, flt=flt, fusion=late)
                title = f"more like {like}"
            else:
                emb = ItemEmbedder(cfg)
                try:
                    if text is not None:
                        vectors = emb.encode_query(text)
                        title = f"search: {text}"
                    else:
                        vectors = emb.embed(build_item("query", str(video), cfg.limits)).vectors
                        title = f"search by video: {video}"
                    if late is not None:
                        hits = index.search_multi({m: v for m, v in vectors.items() if m != "fused"}, k, flt, late)
                    elif using not in vectors:
                        raise StoreError("bad_query", f"the query has no {using!r} vector (is its model unavailable?)")
                    else:
                        hits = index.search(vectors[using], using=using, k=k, flt=flt)
                    if moments:
                        found_moments = emb.moments(vectors, *index.moment_inputs([h.item_id for h in hits]))
                finally:
                    emb.close()
        finally:
            index.close()
    _print_hits(hits, as_json, title, found_moments)


@app.command()
def recommend(
    positive: Annotated[list[str], typer.Option("--positive", "-p", help="Liked item ids (comma-separated).")],
    negative: Annotated[list[str] | None, typer.Option("--negative", "-n", help="Disliked item ids.")] = None,
    k: KOpt = 10,
    using: UsingOpt = "fused",
    creator: CreatorOpt = None,
    language: LanguageOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    exclude: ExcludeOpt = None,
    fusion: FusionOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cold-start recommend: items like a user's recent likes and unlike their dislikes (never the examples)."""
    with cli_errors(as_json):
        pos, neg = _ids(positive), _ids(negative)
        if not pos:
            raise StoreError("bad_query", "--positive needs at least one item id")
        _check_k(k)
        cfg = get_config(config)
        flt = _filter(creator, language, since, until, exclude)
        with _open_index(cfg, create=False) as index:
            mode = _fusion(cfg, fusion)
            late = mode if late_fusion(using, mode) else None
            hits = index.recommend(pos, neg, using=using, k=k, flt=flt, fusion=late)
    _print_hits(hits, as_json, f"recommend for +{','.join(pos)}" + (f" -{','.join(neg)}" if neg else ""))


@app.command()
def show(
    item_id: Annotated[str, typer.Argument(help="Stored item id.")],
    vectors: Annotated[bool, typer.Option("--vectors", help="Include the stored vectors.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a stored item as `GET /v1/items/{id}` returns it: its payload, and with --vectors its vectors."""
    import numpy as np

    from embedder.items import check_item_id

    with cli_errors(as_json):
        cfg = get_config(config)
        check_item_id(item_id, cfg.limits)
        with _open_index(cfg, create=False) as index:
            stored = index.get(item_id)
    # tolist(): dense vectors and multi-vectors (a list of rows, e.g. the per-frame visual vectors) alike.
    arrays = {k: np.asarray(v) for k, v in stored.vectors.items()}
    doc = {
        "item_id": stored.item_id,
        "payload": stored.payload,
        "vectors": {k: a.tolist() for k, a in arrays.items()} if vectors else None,
    }

    def human() -> None:
        out.print(f"[bold]{escape(stored.item_id)}[/]")
        for key, value in stored.payload.items():
            if key not in ("item_id", "segments", "ocr_lines"):
                out.print(f"[bold]{key:>18}[/]  {escape(str(value))}")
        for name, a in arrays.items() if vectors else ():
            out.print(f"[bold]{name:>18}[/]  shape={a.shape} head={[round(float(x), 4) for x in a.ravel()[:4]]}")

    emit(doc, as_json, human)


@app.command()
def dups(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List groups of re-uploads and remixes in the index (the relations recorded at ingest)."""
    from serving.owner import DUPLICATE_KINDS

    with cli_errors(as_json):
        cfg = get_config(config)
        with _open_index(cfg, create=False) as index:
            groups = index.relation_groups(DUPLICATE_KINDS)

    def human() -> None:
        out.print(f"{len(groups)} group(s) of duplicates and remixes")
        for g in groups:
            out.print("  " + ", ".join(escape(i) for i in g))

    emit({"kinds": list(DUPLICATE_KINDS), "groups": groups}, as_json, human)


@app.command()
def sounds(
    item_id: Annotated[str, typer.Argument(help="The item whose sound to look for.")],
    k: Annotated[int, typer.Option("-k", help="Most clips to list.")] = 10,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored clips that share an item's sound (aligned audio fingerprints), with the shared seconds."""
    from embedder.items import check_item_id
    from serving.owner import shared_sound

    with cli_errors(as_json):
        cfg = get_config(config)
        check_item_id(item_id, cfg.limits)
        _check_k(k)
        with _open_index(cfg, create=False) as index:
            found = shared_sound(index, item_id, cfg.dedup, k)

    def human() -> None:
        out.print(f"{len(found)} clip(s) share the sound of {escape(item_id)}")
        for f in found:
            spans = ", ".join(f"{s['new_s'][0]:.1f}-{s['new_s'][1]:.1f}s" for s in f["segments"]) or "-"
            out.print(f"  {escape(f['item_id'])}  audio {f['audio_score']:.3f}  ({spans} of {escape(item_id)})")

    emit({"item_id": item_id, "sounds": found}, as_json, human)


semantic_app = typer.Typer(no_args_is_help=True, help="Semantic IDs: residual-quantization codes of items.")
app.add_typer(semantic_app, name="semantic-ids")


@semantic_app.command("fit")
def semantic_fit(
    levels: Annotated[int | None, typer.Option(help="Code levels (default semantic_ids.levels).")] = None,
    codebook: Annotated[int | None, typer.Option(help="Codes per level (default semantic_ids.codebook_size).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit codebooks on the stored fused vectors, save them with the schema version, and code every item."""
    from serving.semantic import fit_index

    with cli_errors(as_json):
        cfg = get_config(config)
        lv = cfg.semantic_ids.levels if levels is None else levels
        cb = cfg.semantic_ids.codebook_size if codebook is None else codebook
        if lv < 1 or cb < 2:
            raise StoreError("bad_query", "--levels must be >= 1 and --codebook >= 2")
        with _open_index(cfg, create=False) as index:
            report = fit_index(cfg, index, _spec(cfg).schema_version, lv, cb)

    def human() -> None:
        out.print(
            f"fitted {report['levels']} level(s), codebooks {report['codebook_sizes']} on {report['items']} items"
        )
        if "prefix_purity" in report:
            out.print(f"prefix purity by depth (items' `topic` attribute): {report['prefix_purity']}")

    emit(report, as_json, human)


@semantic_app.command("assign")
def semantic_assign(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Write `semantic_id` into every stored item with the fitted codebooks (after a fit or a backfill)."""
    from serving.semantic import assign_all, load_model

    with cli_errors(as_json):
        cfg = get_config(config)
        with _open_index(cfg, create=False) as index:
            model = load_model(cfg, index.collection, _spec(cfg).schema_version)
            if model is None:
                raise ConfigError(
                    "semantic_ids_missing", "no codebooks for this version: run `reelvec semantic-ids fit`"
                )
            n = assign_all(index, model)
    emit({"assigned": n}, as_json, lambda: out.print(f"assigned semantic ids to {n} item(s)"))


@app.command("eval")
def evaluate_cmd(
    version: Annotated[str | None, typer.Option(help="Index version to score (default: the alias's).")] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(help="Compare two index versions A B: metrics, B − A with a paired-bootstrap interval."),
    ] = None,
    config_b: Annotated[
        Path | None, typer.Option(help="With --compare: config whose models built B (default: --config's).")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="With --compare: write an HTML report into this folder.")] = None,
    queries: Annotated[Path | None, typer.Option(help="JSONL of {query, expected} (default eval.queries).")] = None,
    k: Annotated[int | None, typer.Option("-k", help="Recall@k (default eval.k).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recall@k, Recall@1/5/10, nDCG@10 and MRR of the evaluation queries against one index version, or with
    --compare A B both versions, the change with its interval, per-query wins/losses and modality ablations."""
    from serving.evaluation import load_queries

    with cli_errors(as_json):
        cfg = get_config(config)
        qs = load_queries(queries or cfg.eval.queries)
        kk = cfg.eval.k if k is None else k
        _check_k(kk)
        if compare is not None and all(compare):
            _eval_compare(cfg, get_config(config_b) if config_b else cfg, compare, qs, kk, report, as_json)
            return
        with _open_index(cfg, create=False, version=version) as index:
            result = _eval_side(cfg, index, qs, kk)[0]

    def human() -> None:
        m = result.metrics
        out.print(
            f"version {escape(result.version)}: Recall@{result.k} = {result.recall:.3f} · nDCG@10 "
            f"{m['ndcg@10']:.3f} · MRR {m['mrr']:.3f} over {len(qs)} queries"
        )

    emit(result.to_json(), as_json, human)


def _eval_side(cfg: ReelvecConfig, index: Any, qs: list[Any], k: int) -> tuple[Any, Any]:
    """Encode the queries with `cfg`'s query models and score `index`: (EvalResult, the comparison side)."""
    from embedder.pipeline import ItemEmbedder
    from embedder.steps import GRAPH
    from serving.evalcompare import Side
    from serving.evaluation import evaluate_vectors

    encoder = ItemEmbedder(cfg, GRAPH, steps=[s.name for s in GRAPH.steps if s.query is not None])
    spec = encoder.spec
    encoded = [encoder.encode_query(q.query) for q in qs]
    side = Side(index, encoded, spec.weights, spec.dims)
    return evaluate_vectors(index, [e["fused"] for e in encoded], qs, k), side


def _eval_compare(
    cfg: ReelvecConfig, cfg_b: ReelvecConfig, pair: tuple[str, str], qs: list[Any], k: int, report: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    from contextlib import ExitStack
    from dataclasses import replace

    from serving.evalcompare import compare_versions
    from serving.evalreport import write_report

    with ExitStack() as stack:
        ia = stack.enter_context(_open_index(cfg, create=False, version=pair[0]))
        same = pair[0] == pair[1] and cfg_b is cfg  # an embedded index opens once per process
        ib = ia if same else stack.enter_context(_open_index(cfg_b, create=False, version=pair[1]))
        side_a = _eval_side(cfg, ia, qs, k)[1]
        side_b = _eval_side(cfg_b, ib, qs, k)[1] if cfg_b is not cfg else replace(side_a, index=ib)
        result = compare_versions(side_a, side_b, qs, cfg.eval, k)
    doc = result.to_json()
    if report is not None:
        doc["report"] = str(write_report(result, report))
    emit(doc, as_json, lambda: _print_comparison(result, doc.get("report")))


def _print_comparison(c: Any, report: str | None) -> None:
    from serving.evalcompare import PRIMARY
    from serving.evalstats import LABELS, METRICS

    pct = f"{c.confidence:.0%}"
    cols = [("metric", "short"), ("A", "num"), ("B", "num"), ("B − A", "num"), (f"{pct} CI", "num")]
    cells = [
        [LABELS[i.metric], f"{i.a:.3f}", f"{i.b:.3f}", f"{i.diff:+.3f}", f"[{i.low:+.3f}, {i.high:+.3f}]", i.counts]
        for i in c.intervals
    ]
    title = f"B = {escape(c.b.version)} vs A = {escape(c.a.version)} ({len(c.per_query)} queries)"
    out.print(fit_table([*cols, ("wins/losses/ties", "short")], cells, title=title))
    o = c.outcomes()
    out.print(f"per query by {LABELS[PRIMARY]}: {o['win']} wins, {o['loss']} losses, {o['tie']} ties")
    abl = [
        [escape(m), *[f"{sides[s][x]:.3f}" if s in sides else "-" for s in ("a", "b") for x in ("ndcg@10", "mrr")]]
        for m, sides in c.ablations.items()
    ]
    if abl:
        heads = [("fused without", "short")] + [(f"{s} {LABELS[x]}", "num") for s in "AB" for x in METRICS[3:]]
        out.print(fit_table(heads, abl, title="ablations"))
    for note in c.notes:
        out.print(f"[dim]{escape(note)}[/]")
    if report:
        out.print(f"report: {escape(report)}")


@app.command()
def delete(
    item_ids: Annotated[list[str], typer.Argument(help="Item ids to delete.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete items by id; exit 2 (and delete nothing) if any id is unknown."""
    with cli_errors(as_json):
        cfg = get_config(config)
        with _open_index(cfg, create=False) as index:
            unknown = sorted(set(item_ids) - index.existing(item_ids))
            if unknown:
                raise StoreError("unknown_item", f"no such item(s) in {index.collection}: {unknown}")
            deleted = index.delete(item_ids)
            count = index.count()
    emit({"deleted": deleted, "count": count}, as_json, lambda: out.print(f"deleted {deleted}; {count} left"))


@app.command()
def stats(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Index statistics: item count, collection, alias, versions and the configured schema version."""
    from index import list_versions

    with cli_errors(as_json):
        cfg = get_config(config)
        spec = _spec(cfg)
        with _open_index(cfg, create=False) as index:
            info = {
                "count": index.count(),
                "collection": index.collection,
                "alias": cfg.index.collection,
                "active_version": index.version,
                "schema_version": spec.schema_version,
                "versions": list_versions(cfg.index),
                "backend": cfg.index.backend,
                "location": str(cfg.index.url if cfg.index.backend == "qdrant" else cfg.index.path),
                "models": spec.models,
            }

    def human() -> None:
        for key, value in info.items():
            out.print(f"[bold]{key:>15}[/]  {value}")

    emit(info, as_json, human)


@app.command()
def alias(
    version: Annotated[str, typer.Argument(help="Stored version the alias should serve.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point the stable alias at another stored version (switch or roll back a model upgrade)."""
    from index import active_version, list_versions, set_active_version

    with cli_errors(as_json):
        cfg = get_config(config)
        known = list_versions(cfg.index)
        if version not in known:
            raise StoreError("unknown_version", f"no version {version!r}; stored: {known}")
        before = active_version(cfg.index)
        set_active_version(cfg.index, version)
    emit(
        {"alias": cfg.index.collection, "from": before, "to": version},
        as_json,
        lambda: out.print(f"{cfg.index.collection}: {before} → {version}"),
    )


def check_port(host: str, port: int) -> None:
    """`port_in_use` now, rather than after Ray and Serve started (a busy port used to surface 16 s later as four
    proxy tracebacks)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "port_in_use", f"{host}:{port} is already in use; stop what holds it or pick another --port"
                ) from None
            why = errno.errorcode.get(e.errno or 0, "unresolvable host")
            raise ConfigError("bad_address", f"cannot listen on {host}:{port} ({why})") from None


@app.command()
def serve(
    address: Annotated[str | None, typer.Option(help="Ray cluster (ray://host:10001); default: local.")] = None,
    host: Annotated[
        str | None, typer.Option(help="HTTP host (default: serve.host; 0.0.0.0 with --write-config).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port).")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Deploy to the cluster at --address and return; the app keeps running.")
    ] = False,
    write_config: Annotated[
        Path | None,
        typer.Option("--write-config", help="Write a Serve config YAML (for `serve deploy` / KubeRay) and exit."),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the Ray Serve HTTP endpoint until Ctrl-C / SIGTERM, deploy it to a cluster (--detach), or write its
    Serve config (--write-config)."""
    with cli_errors(as_json):
        cfg = get_config(config)
        address = address or cfg.serve.ray_address
        port = port or cfg.serve.port
        if detach and write_config is not None:
            raise ConfigError("bad_option", "give either --detach or --write-config, not both")
        if write_config is not None:
            from serving.service import serve_config, write_serve_config

            doc = serve_config(cfg, config, host or "0.0.0.0", port)
            write_serve_config(doc, write_config)
            app_doc = doc["applications"][0]
            summary = {
                "written": str(write_config),
                "import_path": app_doc["import_path"],
                "args": app_doc["args"],
                "deployments": [d["name"] for d in app_doc["deployments"]],
            }
            emit(summary, as_json, lambda: out.print(f"wrote {write_config}: `serve deploy {write_config}`"))
            return
        if detach:
            if address is None:
                raise ConfigError("needs_cluster", "--detach deploys to a running cluster: give --address")
            from serving.service import deploy

            url = deploy(cfg, address, host or cfg.serve.host, port)
            emit({"url": url, "address": address}, as_json, lambda: out.print(f"reelvec deployed at {url}"))
            return
        if address is None:
            check_port(host or cfg.serve.host, port)  # before Ray is even imported: a busy port fails in a second
        from serving.service import run

        run(cfg, address=address, host=host or cfg.serve.host, port=port)


@app.command()
def backfill(
    manifest: Annotated[Path, typer.Argument(help="JSONL, CSV or Parquet: item_id, uri, caption, metadata.")],
    ledger: Annotated[Path | None, typer.Option(help="Failure ledger JSONL (default under data_dir).")] = None,
    max_failures: Annotated[int | None, typer.Option(help="Exit non-zero when failures exceed this.")] = None,
    force: Annotated[bool, typer.Option(help="Re-embed items already indexed with this schema version.")] = False,
    target_version: Annotated[str | None, typer.Option(help="Write into this versioned collection.")] = None,
    swap_alias: Annotated[bool, typer.Option(help="Point the alias at the target version after success.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster's GCS address HEAD:6379 (ray:// is refused; use --submit).")
    ] = None,
    submit: Annotated[
        str | None, typer.Option(help="Run as a Ray Job through the dashboard at this URL, e.g. http://HEAD:8265.")
    ] = None,
    allow_root: Annotated[
        list[Path] | None,
        typer.Option("--allow-root", help="Also allow uris under this folder (repeatable; backfill.allowed_roots)."),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """(Re-)embed every row of a manifest with Ray Data; resumable, with a failure ledger."""
    from serving.backfill import BackfillReport, run_backfill

    with cli_errors(as_json):
        cfg = allowed_roots_with(get_config(config), manifest, allow_root or [])
        if target_version is not None:
            from index import check_version

            check_version(target_version)  # bad input (exit 2), before any cluster starts
        if submit:
            from serving.backfill.submit import backfill_args, submit_backfill

            args = backfill_args(ledger, max_failures, force, target_version, swap_alias, config, allow_root)
            outcome = submit_backfill(submit, manifest, args, bf=cfg.backfill, echo=None if as_json else err.file.write)
            if outcome.report is None and outcome.missing is not None:
                raise outcome.missing
            if outcome.report is None:
                raise ReelvecError(
                    "backfill_failed", f"Ray Job {outcome.job_id} ended {outcome.status} without a report"
                )
            report = BackfillReport.from_json(outcome.report)
        else:
            report = run_backfill(
                cfg,
                manifest,
                ledger=ledger,
                max_failures=max_failures,
                force=force,
                target_version=target_version,
                swap_alias=swap_alias,
                address=address or cfg.serve.ray_address,
                progress=not as_json,
            )
    emit(report.to_json(), as_json, lambda: out.print(report.render()))
    raise typer.Exit(report.exit_code)


def allowed_roots_with(cfg: ReelvecConfig, manifest: Path, extra: list[Path]) -> ReelvecConfig:
    """`cfg` with `--allow-root` folders added to `backfill.allowed_roots` (to the manifest's own folder, the
    default, when none is configured)."""
    if not extra:
        return cfg
    roots = list(cfg.backfill.allowed_roots) or [manifest.expanduser().absolute().parent]
    roots += [p.expanduser().absolute() for p in extra]
    return cfg.model_copy(update={"backfill": cfg.backfill.model_copy(update={"allowed_roots": roots})})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
