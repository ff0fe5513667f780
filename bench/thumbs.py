"""What thumbnails for the UI cost: JPEG encode time and stored bytes per item, and per 1 M items.

Frames come from decoding the sample clips with the default decode config (the frames the pipeline already
has). Storage options side by side for the same JPEGs: base64 in the item's payload (what reelvec stores: it
travels with the item to a Qdrant server and is deleted with it) vs one file per thumbnail under data_dir (raw
bytes, and the disk blocks the files really take here). The item's dense vectors (float32) are the yardstick.
Usage: python bench/thumbs.py [--smoke] [--reps 5] [--no-write]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.decode import decode_file  # noqa: E402
from embedder.pipeline import embedding_spec  # noqa: E402
from embedder.thumbs import make_thumbs, thumbs_payload  # noqa: E402

# (count, longest side px, JPEG quality); the first row is the configured default (ui.*).
VARIANTS = [(4, 96, 70), (4, 64, 70), (4, 128, 80), (8, 96, 70)]
PER = 1_000_000


def _disk_bytes(jpegs: list[bytes]) -> int:
    """Blocks the thumbnails take as one file each on this filesystem (st_blocks, 512-byte units)."""
    with tempfile.TemporaryDirectory() as d:
        total = 0
        for i, j in enumerate(jpegs):
            p = Path(d) / f"{i}.jpg"
            p.write_bytes(j)
            total += p.stat().st_blocks * 512
        return total


def measure(frames: list[tuple], count: int, size: int, quality: int, reps: int) -> dict[str, float]:
    """Medians over the clips: encode ms, raw JPEG bytes, payload (JSON) bytes, file-per-thumb disk bytes."""
    enc, raw, payload, disk = [], [], [], []
    for fr, ts in frames:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            jpegs = make_thumbs(fr, ts, count, size, quality)
            times.append((time.perf_counter() - t) * 1000)
        enc.append(statistics.median(times))
        raw.append(sum(len(j) for j in jpegs))
        payload.append(len(json.dumps(thumbs_payload(fr, ts, count, size, quality))))
        disk.append(_disk_bytes(jpegs))
    return {k: statistics.median(v) for k, v in (("enc", enc), ("raw", raw), ("payload", payload), ("disk", disk))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="4 clips, 1 rep, nothing written")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cfg = load_config()
    clips = sorted((ROOT / "samples" / "clips").glob("*.mp4"))[: 4 if args.smoke else None]
    reps = 1 if args.smoke else args.reps
    frames = []
    for c in clips:
        d = decode_file(str(c), cfg.decode, cfg.limits)
        frames.append((d.frames, d.timestamps_s))
    shape = frames[0][0].shape
    vec_bytes = 4 * sum(embedding_spec(cfg).dims.values())
    rows = [
        "| thumbs | px | quality | encode ms/item | JPEG B/item | payload B/item (base64 JSON) | files B/item "
        "(disk blocks) | payload GB / 1 M | files GB / 1 M | encode CPU-h / 1 M |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, size, quality in VARIANTS:
        m = measure(frames, count, size, quality, reps)
        rows.append(
            f"| {count} | {size} | {quality} | {m['enc']:.2f} | {m['raw']:.0f} | {m['payload']:.0f} | "
            f"{m['disk']:.0f} | {m['payload'] * PER / 1e9:.2f} | {m['disk'] * PER / 1e9:.2f} | "
            f"{m['enc'] * PER / 3.6e6:.2f} |"
        )
    section = "\n".join(
        [
            f"## thumbs — UI thumbnails: cost per item and per 1 M items ({time.strftime('%Y-%m-%d')})",
            "",
            f"`{command()}` — {len(clips)} sample clips decoded at the default config (frames {shape[1]}×{shape[2]}, "
            f"{cfg.decode.num_frames} per clip); medians over clips of the median of {reps} encodes. Yardstick: the "
            f"dense named vectors (fused + per modality, float32) of one item are {vec_bytes} B "
            f"({vec_bytes * PER / 1e9:.2f} GB / 1 M). "
            "Timings on a shared, loaded 2-core machine.",
            "",
            *rows,
            "",
            "Stored as base64 in the payload (`thumbs`, `thumb_times_s`): +33 % over the raw JPEGs, but one write, "
            "one delete and one place with a Qdrant server; a file per thumbnail takes a whole disk block each.",
        ]
    )
    publish("thumbs", section, write=not (args.smoke or args.no_write))


if __name__ == "__main__":
    main()
