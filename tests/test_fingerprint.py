"""Video fingerprint: re-encoded, cropped, trimmed and mirrored copies of a real clip match; other clips do not."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from embedder.config import DecodeConfig, LimitsConfig
from embedder.decode import decode_file
from embedder.fingerprint import FINGERPRINT_DIM, Fingerprint, fingerprint, similarity, similarity_from_maxsim
from embedder.types import MediaError

# Chosen by bench/dedup.py on the sample clips at 8 frames (gap 0.798 → 0.807; bench/RESULTS.md, dedup).
THRESHOLD = 0.80
FPS = 10
W, H = 224, 168


def scene(i: int, palette: int) -> np.ndarray:
    """Frame `i` of a clip: a gradient backdrop with shapes moving across it; `palette` picks the colours."""
    rng = np.random.default_rng(palette)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    grad = np.linspace(0, 1, H)[:, None, None]
    img = Image.fromarray(((1 - grad) * top + grad * bottom).repeat(W, axis=1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for k in range(4):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0, r = rng.integers(20, W - 60), rng.integers(20, H - 60), rng.integers(12, 30)
        x = x0 + 2 * i * (1 if k % 2 else -1) % 40
        (d.ellipse if k % 2 else d.rectangle)([x, y0, x + r, y0 + r], fill=colour)
    return np.asarray(img)


def encode(path: Path, frames: list[np.ndarray], scale: float = 1.0, crf: str = "23") -> Path:
    w, h = round(frames[0].shape[1] * scale / 2) * 2, round(frames[0].shape[0] * scale / 2) * 2
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(FPS), options={"crf": crf, "preset": "veryfast", "threads": "1"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for a in frames:
            im = Image.fromarray(np.ascontiguousarray(a)).resize((w, h), Image.Resampling.BILINEAR)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")))
        out.mux(vs.encode(None))
    return path


def fp_of(path: Path) -> Fingerprint:
    m = decode_file(str(path), DecodeConfig(), LimitsConfig())
    return fingerprint(m.frames, m.timestamps_s)


@pytest.fixture(scope="module")
def clip_fps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fingerprint]:
    """Fingerprints of a 4 s synthetic clip, its variants (each re-encoded) and a clip with other shapes."""
    tmp = tmp_path_factory.mktemp("fp")
    frames = [scene(i, palette=1) for i in range(4 * FPS)]
    dy, dx = round(H * 0.05), round(W * 0.05)
    paths = {
        "original": encode(tmp / "original.mp4", frames),
        "reencode_half": encode(tmp / "half.mp4", frames, scale=0.5, crf="38"),
        "crop10": encode(tmp / "crop.mp4", [f[dy : H - dy, dx : W - dx] for f in frames], scale=W / (W - 2 * dx)),
        "trim1s": encode(tmp / "trim.mp4", frames[FPS:]),
        "mirror": encode(tmp / "mirror.mp4", [f[:, ::-1] for f in frames]),
        "other": encode(tmp / "other.mp4", [scene(i, palette=2) for i in range(4 * FPS)]),
    }
    return {k: fp_of(p) for k, p in paths.items()}


def test_shapes_and_ranges(clip_fps: dict[str, Fingerprint]) -> None:
    f = clip_fps["original"]
    assert f.frame_bits.shape == (8, FINGERPRINT_DIM) and f.frame_bits.dtype == np.float32
    assert set(np.unique(f.frame_bits)) == {-1.0, 1.0}
    assert f.index_bits.shape == (24, FINGERPRINT_DIM)
    assert abs(float(np.linalg.norm(f.vector)) - 1.0) < 1e-5
    assert len(f.timestamps_s) == 8


@pytest.mark.parametrize("variant", ["reencode_half", "crop10", "trim1s", "mirror"])
def test_variants_match_in_both_directions(clip_fps: dict[str, Fingerprint], variant: str) -> None:
    assert similarity(clip_fps[variant], clip_fps["original"]) >= THRESHOLD
    assert similarity(clip_fps["original"], clip_fps[variant]) >= THRESHOLD


def test_different_clip_does_not_match(clip_fps: dict[str, Fingerprint]) -> None:
    for name in ("original", "mirror"):
        assert similarity(clip_fps["other"], clip_fps[name]) < THRESHOLD
        assert similarity(clip_fps[name], clip_fps["other"]) < THRESHOLD


def test_same_topic_sample_clips_do_not_match(clips: list[dict]) -> None:
    path = {r["item_id"]: Path(r["path"]) for r in clips}
    a, b = fp_of(path["cooking_01"]), fp_of(path["cooking_02"])
    assert similarity(a, b) < THRESHOLD and similarity(b, a) < THRESHOLD
    assert similarity(a, a) > 0.99


def test_mirror_is_exact_on_the_same_pixels(clip_fps: dict[str, Fingerprint]) -> None:
    frames = np.stack([scene(i, palette=3) for i in range(0, 40, 5)])
    ts = [i / FPS for i in range(0, 40, 5)]
    assert similarity(fingerprint(frames[:, :, ::-1].copy(), ts), fingerprint(frames, ts)) > 0.99


def test_matches_qdrant_maxsim(clip_fps: dict[str, Fingerprint]) -> None:
    """Qdrant's MaxSim (sum over query rows of the best cosine) on `index_bits` gives `similarity` back."""
    from qdrant_client import QdrantClient, models

    q = QdrantClient(":memory:")
    cfg = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    q.create_collection(
        "fp",
        vectors_config=models.VectorParams(
            size=FINGERPRINT_DIM, distance=models.Distance.COSINE, multivector_config=cfg
        ),
    )
    names = ["original", "other"]
    q.upsert("fp", [models.PointStruct(id=i, vector=clip_fps[n].index_bits.tolist()) for i, n in enumerate(names)])
    query = clip_fps["trim1s"]
    hits = q.query_points("fp", query=query.frame_bits.tolist(), limit=2).points
    assert [names[h.id] for h in hits] == ["original", "other"]
    for h in hits:
        got = similarity_from_maxsim(h.score, len(query.frame_bits))
        assert abs(got - similarity(query, clip_fps[names[h.id]])) < 1e-4


def test_bad_input_is_a_media_error() -> None:
    with pytest.raises(MediaError) as e:
        fingerprint(np.zeros((0, 8, 8, 3), np.uint8), [])
    assert e.value.reason == "bad_frames"
    with pytest.raises(MediaError):
        fingerprint(np.zeros((2, 8, 8, 3), np.uint8), [0.0])
