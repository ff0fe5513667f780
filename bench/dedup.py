"""Re-upload detection with the video fingerprint: true variants vs. other clips of the same or another topic.

Each sample clip (`samples/clips/<topic>_<NN>.mp4`) gets variants made with PyAV + Pillow (from
`samples/variants.py` when it exists, else the local generator below: 0.5× size at 80 kb/s, a centred 10 %
crop rescaled, the first 1 s trimmed, a mirror, and all of those at once), every one re-encoded with libx264.
Scores are `embedder.fingerprint.similarity(query, stored)`: a variant against its stored original and the
original against its stored variant are positives; every version of a clip against every other stored clip
is a negative. The threshold is the midpoint of the gap between negatives and positives when one exists
(else the best F1), chosen on these same pairs. Runs at `decode.num_frames` 8 (default) and 16.
Usage: python bench/dedup.py [--frames 8 16] [--no-write]   (writes its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import command, publish  # noqa: E402
from embedder.config import load_config  # noqa: E402
from embedder.decode import Decoder  # noqa: E402
from embedder.fingerprint import FINGERPRINT_DIM, FINGERPRINT_VERSION, Fingerprint, fingerprint, similarity  # noqa: E402

CLIP_NAME = re.compile(r"^([a-z]+)_(\d\d)\.mp4$")
Transform = Callable[[list[tuple[np.ndarray, float]]], list[np.ndarray]]


def _crop10(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    dy, dx = round(h * 0.05), round(w * 0.05)
    return a[dy : h - dy, dx : w - dx]


VARIANTS: dict[str, tuple[Transform, float, int | None]] = {
    # name: (frame transform, output scale, video bit rate or None for crf 23)
    "reencode_half": (lambda fr: [a for a, _ in fr], 0.5, 80_000),
    "crop10": (lambda fr: [_crop10(a) for a, _ in fr], 1.0, None),
    "trim1s": (lambda fr: [a for a, t in fr if t >= 1.0], 1.0, None),
    "mirror": (lambda fr: [a[:, ::-1] for a, _ in fr], 1.0, None),
    "all": (lambda fr: [_crop10(a)[:, ::-1] for a, t in fr if t >= 1.0], 0.5, 80_000),
}


def _write(path: Path, frames: list[np.ndarray], rate: object, w: int, h: int, bit_rate: int | None) -> None:
    opts = {"preset": "veryfast", "threads": "1"} | ({} if bit_rate else {"crf": "23"})
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate, options=opts)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if bit_rate:
            vs.bit_rate = bit_rate
        for a in frames:
            im = Image.fromarray(np.ascontiguousarray(a))
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")))
        out.mux(vs.encode(None))


def local_variants(src: Path, out_dir: Path) -> dict[str, Path]:
    """Every variant of `src` as a re-encoded mp4 under `out_dir` (video only: the fingerprint ignores audio)."""
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        rate = stream.average_rate
        frames = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in c.decode(stream)]
    h, w = frames[0][0].shape[:2]
    out = {}
    for name, (transform, scale, bit_rate) in VARIANTS.items():
        out[name] = out_dir / f"{src.stem}__{name}.mp4"
        _write(out[name], transform(frames), rate, round(w * scale / 2) * 2, round(h * scale / 2) * 2, bit_rate)
    return out


def make_variants() -> tuple[Callable[[Path, Path], dict[str, Path]], str]:
    """The shared generator from `samples/variants.py` when another change has added it, else the local one."""
    try:
        from samples.variants import make_variants as shared
    except ImportError:
        return local_variants, "bench/dedup.py local generator"
    return shared, "samples/variants.py"


def stats(xs: list[float]) -> str:
    a = np.asarray(xs)
    return f"{len(a)} | {a.min():.3f} | {np.percentile(a, 5):.3f} | {np.median(a):.3f} | {a.max():.3f}"


def choose_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Midpoint of the gap when positives and negatives separate, else the threshold with the best F1."""
    if pos.min() > neg.max():
        return round(float(pos.min() + neg.max()) / 2, 3)
    best, best_t = -1.0, 0.5
    for t in np.unique(np.concatenate([pos, neg])):
        tp, fp = (pos >= t).sum(), (neg >= t).sum()
        f1 = 2 * tp / (2 * tp + fp + (pos < t).sum())
        if f1 > best:
            best, best_t = f1, float(t)
    return round(best_t, 3)


def evaluate(
    clips: list[Path], variants: dict[str, dict[str, Path]], num_frames: int
) -> tuple[dict[str, list[float]], list[str]]:
    """Scores by pair category, and a line on the pooled vector, at `num_frames` sampled frames."""
    cfg = load_config()
    dcfg = cfg.decode.model_copy(update={"num_frames": num_frames})
    fps: dict[tuple[str, str], Fingerprint] = {}
    with Decoder(dcfg, cfg.limits) as decoder:
        for src in clips:
            for name, path in {"original": src, **variants[src.stem]}.items():
                m = decoder.decode(path)
                fps[src.stem, name] = fingerprint(m.frames, m.timestamps_s)
    cats: dict[str, list[float]] = {}
    pooled_pos, pooled_neg = [], []
    for src in clips:
        c, topic = src.stem, CLIP_NAME.match(src.name).group(1)  # type: ignore[union-attr]
        orig = fps[c, "original"]
        for name in variants[c]:
            cats.setdefault(f"variant → original: {name}", []).append(similarity(fps[c, name], orig))
            cats.setdefault(f"original → variant: {name}", []).append(similarity(orig, fps[c, name]))
            pooled_pos.append(float(fps[c, name].vector @ orig.vector))
        for other in clips:
            if other == src:
                continue
            kind = "same topic" if CLIP_NAME.match(other.name).group(1) == topic else "other topic"  # type: ignore[union-attr]
            for name in ["original", *variants[c]]:
                cats.setdefault(f"negative: {kind}", []).append(similarity(fps[c, name], fps[other.stem, "original"]))
                pooled_neg.append(float(fps[c, name].vector @ fps[other.stem, "original"].vector))
    pooled = (
        f"pooled `vector` cosine: positives min {min(pooled_pos):.3f}, negatives max {max(pooled_neg):.3f} "
        f"(overlapping: only a candidate fetch before the MaxSim rerank, never the decision)"
    )
    return cats, [pooled]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16], help="decode.num_frames settings to compare")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write bench/RESULTS.md")
    args = ap.parse_args()

    clips = sorted(p for p in (ROOT / "samples/clips").glob("*.mp4") if CLIP_NAME.match(p.name))
    generate, source = make_variants()
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = {src.stem: generate(src, Path(tmp)) for src in clips}
        for k in args.frames:
            cats, notes = evaluate(clips, variants, k)
            pos = np.concatenate([v for n, v in cats.items() if not n.startswith("negative")])
            neg = np.concatenate([v for n, v in cats.items() if n.startswith("negative")])
            t = choose_threshold(pos, neg)
            tp, fp = int((pos >= t).sum()), int((neg >= t).sum())
            precision, recall = tp / max(tp + fp, 1), tp / len(pos)
            rows = "".join(f"| {n} | {stats(v)} |\n" for n, v in sorted(cats.items()))
            parts.append(
                f"\n### {k} frames per clip\n\n"
                "| pairs (query → stored) | n | min | p5 | median | max |\n|---|---|---|---|---|---|\n"
                + rows
                + f"\nThreshold {t:.3f} (gap {pos.min() - neg.max():+.3f}): precision {precision:.3f}, "
                f"recall {recall:.3f} ({tp} of {len(pos)} positives, {fp} of {len(neg)} negatives above).\n"
                + "".join(f"{n}\n" for n in notes)
            )
    section = (
        f"\n## dedup — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{command()}` · {len(clips)} sample clips, {len({CLIP_NAME.match(p.name).group(1) for p in clips})}"  # type: ignore[union-attr]
        f" topics · variants from {source} · fingerprint {FINGERPRINT_VERSION}, {FINGERPRINT_DIM}-d ±1 per frame"
        " · the threshold is chosen on these same pairs (in-sample)\n" + "".join(parts)
    )
    publish("dedup", section, write=not args.no_write)


if __name__ == "__main__":
    main()
