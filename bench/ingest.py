"""`reelvec ingest samples/clips` items/s with the ASR/OCR defaults before vs after issue 16, side by side.

before: asr.batch_mode none, ocr.text_gate off (the previous defaults); after: this branch's defaults. Each variant
runs the real CLI (`python -m serving.cli ingest samples/clips --json`) in a fresh process on a fresh temp index,
so model loading is included; then the stored payloads are read back: WER of the transcripts against the spoken
text (captions.jsonl `speech`) and recall of the overlay lines (captions.jsonl `overlay`) in the stored OCR lines.
Usage: python bench/ingest.py [--repeats 3] [--smoke] [--no-write]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.asr import wer  # noqa: E402
from bench.ocr import overlay_recall  # noqa: E402
from bench.results import command, publish  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.types import OcrLine, OcrResult  # noqa: E402

VARIANTS = {
    "before (batch_mode none, text gate off)": {"REELVEC__ASR__BATCH_MODE": "none", "REELVEC__OCR__TEXT_GATE": "false"},
    "after (this branch's defaults)": {},
}


def ingest(folder: Path, tmp: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one `reelvec ingest` run on a fresh index under `tmp`, and its JSON summary."""
    shutil.rmtree(tmp, ignore_errors=True)
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REELVEC__DATA_DIR": str(tmp),
        "REELVEC__INDEX__PATH": str(tmp / "index"),
        **env,
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "ingest", str(folder), "--json"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return took, json.loads(proc.stdout)


def stored(tmp: Path, env: dict[str, str], ids: list[str]) -> dict[str, dict[str, Any]]:
    """Payloads of `ids` in the index the run wrote."""
    from serving.cli import _open_index

    cfg = load_config(environ={**os.environ, "REELVEC__INDEX__PATH": str(tmp / "index"), **env})
    with _open_index(cfg, create=False) as index:
        return {i: index.get(i).payload for i in ids}


def quality(rows: list[dict[str, Any]], payloads: dict[str, dict[str, Any]]) -> tuple[float, tuple[int, int]]:
    """(WER % against the spoken text over clips with speech, (overlay lines found, total))."""
    spoken = [r for r in rows if r["speech"]]
    w = wer([r["speech"] for r in spoken], [payloads[r["item_id"]].get("transcript") or "" for r in spoken])
    results = [
        OcrResult(tuple(OcrLine(x["text"], 1.0, 0.0, 0.0) for x in payloads[r["item_id"]].get("ocr_lines") or []))
        for r in rows
    ]
    return w, overlay_recall(results, [r["overlay"] for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="6 clips, 1 run each, print only")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update bench/RESULTS.md")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.no_write = 1, True
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = [json.loads(x) for x in (ROOT / "samples/clips/captions.jsonl").read_text().splitlines() if x.strip()]
    with tempfile.TemporaryDirectory() as tmp_root:
        folder = ROOT / "samples/clips"
        if args.smoke:
            rows = [r for r in rows if r["overlay"]][:3] + [r for r in rows if r["speech"] and not r["overlay"]][:3]
            folder = Path(tmp_root) / "clips"
            folder.mkdir()
            for r in rows:
                shutil.copy(ROOT / "samples/clips" / r["file"], folder / r["file"])
            (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ids = [r["item_id"] for r in rows]
        table = []
        for name, env in VARIANTS.items():
            tmp = Path(tmp_root) / "run"
            times = []
            for _ in range(args.repeats):
                took, summary = ingest(folder, tmp, env)
                times.append(took)
            n = len(summary["created"]) + len(summary["replaced"])
            w, (found, total) = quality(rows, stored(tmp, env, ids))
            table.append((name, n, statistics.median(times), w, found, total))
    base = table[0][1] / table[0][2]
    lines = [
        f"## ingest — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{command()}` · `reelvec ingest` ({'6-clip subset' if args.smoke else 'samples/clips'}) in a fresh "
        f"process on a fresh index, model loading included · median of {args.repeats} · {platform.machine()}, "
        f"{os.cpu_count()} cores, shared machine (loaded: 1-min load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end) · run took {time.perf_counter() - started:.0f} s",
        "",
        "| defaults | items | seconds | items/s | speed-up | WER vs spoken text (%) | overlay lines found |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n, secs, w, found, total in table:
        lines.append(
            f"| {name} | {n} | {secs:.1f} | {n / secs:.3f} | {n / secs / base:.2f}x | {w:.1f} | {found}/{total} |"
        )
    publish("ingest", "\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
