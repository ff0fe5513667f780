"""`reelvec` command line: embed, models, ingest, search, recommend, delete, stats, serve, backfill.

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

from embedder.config import ReelvecConfig, load_config
from embedder.types import ConfigError, MediaError, ModelUnavailableError, ReelvecError, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="reelvec: multimodal short-video embeddings.")
models_app = typer.Typer(no_args_is_help=True, help="Model cards: list, pull and verify weights.")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)
log = logging.getLogger("reelvec.cli")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Config YAML (default: configs/default.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

EXIT_CODES: dict[type[ReelvecError], int] = {
    MediaError: 2,
    ConfigError: 2,
    ModelUnavailableError: 3,
    StoreError: 4,
}


def exit_code_for(e: ReelvecError) -> int:
    if isinstance(e, StoreError) and e.reason in ("unknown_item", "bad_query"):
        return 2
    return next((code for cls, code in EXIT_CODES.items() if isinstance(e, cls)), 1)


def fail(e: ReelvecError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": e.reason, "detail": e.detail}))
    else:
        err.print(f"[bold red]error[/] ({e.reason}): {e.detail}")
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
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
        stream=sys.stderr,
    )


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
    from embedder.pipeline import ItemEmbedder
    from embedder.types import ItemInput

    with cli_errors(as_json):
        cfg = get_config(config)
        emb = ItemEmbedder(cfg)
        try:
            item = ItemInput(item_id=item_id or video.stem, media=str(video), caption=caption, hashtags=hashtag or [])
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
        cards = [load_card(r, cfg.models.cards_dir) for r in refs]
        for c in cards:
            pull(c, cfg.models.models_dir)
        rows = [status(c, cfg.models.models_dir) for c in cards]
    _print_status(rows, as_json)


def _print_status(rows: list[Any], as_json: bool) -> None:
    def human() -> None:
        from rich.table import Table

        t = Table("id", "family", "modality", "present", "verified", "detail")
        for r in rows:
            present = "[green]yes[/]" if r.present else "[red]missing[/]"
            t.add_row(r.id, r.family, r.modality, present, str(r.verified), r.detail)
        out.print(t)

    emit([r.to_json() for r in rows], as_json, human)


@app.command()
def serve(
    address: Annotated[str | None, typer.Option(help="Ray cluster (ray://host:10001); default: local.")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the Ray Serve HTTP endpoint for new uploads until interrupted."""
    from serving.app import run

    with cli_errors(as_json):
        cfg = get_config(config)
        run(cfg, address=address or cfg.serve.ray_address, host=host or cfg.serve.host, port=port or cfg.serve.port)


@app.command()
def backfill(
    manifest: Annotated[Path, typer.Argument(help="JSONL, CSV or Parquet: item_id, uri, caption, metadata.")],
    ledger: Annotated[Path | None, typer.Option(help="Failure ledger JSONL (default under data_dir).")] = None,
    max_failures: Annotated[int | None, typer.Option(help="Exit non-zero when failures exceed this.")] = None,
    force: Annotated[bool, typer.Option(help="Re-embed items already indexed with this schema version.")] = False,
    target_version: Annotated[str | None, typer.Option(help="Write into this versioned collection.")] = None,
    swap_alias: Annotated[bool, typer.Option(help="Point the alias at the target version after success.")] = False,
    address: Annotated[str | None, typer.Option(help="Existing Ray cluster (ray://host:10001).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """(Re-)embed every row of a manifest with Ray Data; resumable, with a failure ledger."""
    from serving.backfill import run_backfill

    with cli_errors(as_json):
        cfg = get_config(config)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
