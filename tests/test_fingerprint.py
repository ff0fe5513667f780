"""Fingerprints: the legacy fp1 print (re-encoded, cropped, trimmed, mirrored copies match) and the time-aligned
visual and audio prints of issue 17 (hash layout, mirror mask, bars, alignment offsets, silence)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from embedder.audio_fp import (
    align_audio,
    audio_fingerprint,
    audio_print_from_payload,
    audio_print_payload,
    sparse_hashes,
)
from embedder.config import DecodeConfig, DedupConfig, LimitsConfig
from embedder.decode import decode_file
from embedder.fingerprint import (
    FINGERPRINT_DIM,
    Fingerprint,
    align_video,
    content_box,
    fingerprint,
    mirror_mask,
    similarity,
    similarity_from_maxsim,
    video_fingerprint,
    video_print_from_payload,
    video_print_payload,
)
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


# ----------------------------------------------------------------------- time-aligned print and audio (issue 17)


def grey_frames(seed: int, n: int = 24, size: int = 64) -> np.ndarray:
    """n grey frames of smooth random blobs drifting sideways (a stand-in for `DecodedMedia.fp_frames`)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8 + n // 4)).astype(np.uint8))
    big = np.asarray(small.resize((size + 2 * n, size), Image.Resampling.BICUBIC))
    return np.stack([big[:, 2 * i : 2 * i + size] for i in range(n)])


def test_video_print_shapes_and_mirror_mask() -> None:
    cfg = DedupConfig()
    frames = grey_frames(1)
    p = video_fingerprint(frames, [i / 4 for i in range(24)], cfg)
    assert p.bits.shape == (24, len(cfg.crops), cfg.hash_size**2 // 8) and p.bits.dtype == np.uint8
    assert p.duration_s == pytest.approx(6.0) and p.step_s == pytest.approx(0.25)
    # A left-right flip inverts exactly the odd horizontal frequencies: the mask turns one print into the other.
    flipped = video_fingerprint(frames[:, :, ::-1].copy(), [i / 4 for i in range(24)], cfg)
    np.testing.assert_array_equal(flipped.bits[:, 0] ^ mirror_mask(cfg.hash_size), p.bits[:, 0])


def test_content_box_drops_letterbox_bars() -> None:
    frames = grey_frames(2)
    boxed = np.zeros((24, 64, 64), np.uint8)
    boxed[:, 16:48] = frames[:, ::2]  # squashed to half height, black bars above and below
    assert content_box(boxed) == (16, 48, 0, 64)
    assert content_box(frames) == (0, 64, 0, 64)


def test_alignment_finds_offset_and_rejects_other_frames() -> None:
    cfg = DedupConfig()
    frames = grey_frames(3, n=40)
    ts = [i / 4 for i in range(40)]
    full = video_fingerprint(frames, ts, cfg)
    tail = video_fingerprint(frames[8:], ts[:32], cfg)  # the first 2 s cut
    a = align_video(tail, full, cfg)
    assert a.score > 0.95 and a.offset_s == pytest.approx(2.0, abs=0.13) and a.speed == pytest.approx(1.0, abs=0.02)
    other = align_video(video_fingerprint(grey_frames(4, n=40), ts, cfg), full, cfg)
    assert other.score < cfg.visual_threshold


def chirps(seed: int, seconds: float = 6.0) -> np.ndarray:
    """Random short tones: enough spectral peaks for landmarks, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.15):
        seg = (t >= start) & (t < start + 0.12)
        x[seg] += np.sin(2 * np.pi * rng.uniform(200, 4000) * t[seg])
    return (0.3 * x).astype(np.float32)


def test_audio_print_alignment_and_sparse_vector() -> None:
    cfg = DedupConfig()
    x = chirps(1)
    full = audio_fingerprint(x, cfg)
    assert full is not None and full.peaks.shape[1] == 2
    assert len(full.peaks) <= cfg.audio_peaks_per_s * 7
    cut_print = audio_fingerprint(x[16000:], cfg)  # the first second cut
    assert cut_print is not None
    a = align_audio(cut_print, full, cfg)
    assert a.score > 0.5 and a.offset_s == pytest.approx(1.0, abs=0.07) and a.speed == pytest.approx(1.0)
    assert align_audio(audio_fingerprint(chirps(2), cfg), full, cfg).score < cfg.audio_threshold  # type: ignore[arg-type]
    idx, val = sparse_hashes(full, cfg.audio_fan_out)
    assert idx.dtype == np.uint32 and len(idx) == len(np.unique(idx)) and val.min() >= 1


def test_silence_and_missing_audio_have_no_print() -> None:
    assert audio_fingerprint(None, DedupConfig()) is None
    assert audio_fingerprint(np.zeros(32000, np.float32), DedupConfig()) is None
    with pytest.raises(MediaError):
        audio_fingerprint(np.zeros((2, 32000), np.float32), DedupConfig())
    with pytest.raises(MediaError):
        video_fingerprint(np.zeros((2, 8, 8, 3), np.uint8), [0.0, 0.25], DedupConfig())


def test_payload_round_trip() -> None:
    """What the index stores gives back the same prints, so stored items align exactly like fresh ones."""
    import json

    cfg = DedupConfig()
    v = video_fingerprint(grey_frames(5), [0.125 + i / 4 for i in range(24)], cfg)
    v2 = video_print_from_payload(json.loads(json.dumps(video_print_payload(v))))
    np.testing.assert_array_equal(v2.bits, v.bits)
    assert v2.timestamps_s == pytest.approx(v.timestamps_s) and v2.crops == v.crops
    a = audio_fingerprint(chirps(3), cfg)
    assert a is not None
    a2 = audio_print_from_payload(json.loads(json.dumps(audio_print_payload(a))))
    np.testing.assert_array_equal(a2.peaks, a.peaks)
    assert align_audio(a2, a, cfg).score == pytest.approx(1.0)
