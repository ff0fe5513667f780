"""Relations between generated clips (issue 17): duplicates under edits, remixes, reused sounds, copied segments,
and negatives (other footage, textures of the same kind), through real H.264/AAC encodes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from embedder.audio_fp import audio_fingerprint
from embedder.config import DedupConfig
from embedder.fingerprint import video_fingerprint
from embedder.relations import ItemPrints, relate
from samples.variants import (
    FAMILIES,
    Clip,
    crop_by,
    cut,
    decode_for_fingerprint,
    mirror,
    pad,
    speed,
    with_audio,
    write_clip,
)

FPS, RATE, W, H, SECONDS = 15, 16_000, 160, 120, 5.0
CFG = DedupConfig()


def footage(seed: int) -> list[np.ndarray]:
    """A drifting view over smooth random blobs with a moving square: camera-like, no two seeds alike."""
    rng = np.random.default_rng(seed)
    big = rng.normal(0, 1, (H // 8 + 8, W // 8 + 8, 3))
    big = np.kron(big, np.ones((8, 8, 1)))
    k = np.ones(9) / 9
    for ax in (0, 1):
        big = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, big)
    big = np.clip(128 + big * 150, 0, 255).astype(np.uint8)
    out = []
    for i in range(int(SECONDS * FPS)):
        x = int(i * 32 / (SECONDS * FPS))
        f = big[16:, x : x + W][:H].copy()
        s = 20 + (i * 3) % (W - 40)
        f[40:60, s : s + 20] = rng.integers(0, 255, 3) if i == 0 else f[40:60, s : s + 20] // 2
        out.append(f)
    return out


def dots(seed: int) -> list[np.ndarray]:
    """A random-dot texture sliding sideways: every seed the same kind of picture."""
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.random((H // 3, W // 3 + 20)) < 0.5, np.ones((3, 3), bool))
    return [np.repeat(tex[:H, i // 2 : i // 2 + W, None] * 200 + 25, 3, axis=2).astype(np.uint8) for i in range(75)]


def tune(seed: int) -> np.ndarray:
    """Plucked notes of one scale at a random tempo: music of one kind, a different tune per seed (int16)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    out, beat = np.zeros_like(t), rng.uniform(0.2, 0.3)
    for start in np.arange(0, SECONDS, beat):
        seg = (t >= start) & (t < start + 2 * beat)
        f = 220 * 2 ** (rng.choice([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
        out[seg] += np.exp(-6 * (t[seg] - start)) * np.sin(2 * np.pi * f * (t[seg] - start))
    return np.round(out / np.abs(out).max() * 12000).astype(np.int16)


def clip(frames: list[np.ndarray], audio: np.ndarray | None) -> Clip:
    return Clip(frames, Fraction(FPS), audio, RATE, "mono")


def prints(tmp: Path, name: str, c: Clip, crf: str = "28") -> ItemPrints:
    path = tmp / f"{name}.mp4"
    write_clip(path, c, crf, "veryfast")
    m = decode_for_fingerprint(path, 64, 4.0)
    return ItemPrints(video_fingerprint(m.frames, m.timestamps_s, CFG), audio_fingerprint(m.audio, CFG))


@pytest.fixture(scope="session")
def items(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ItemPrints]:
    tmp = tmp_path_factory.mktemp("relations")
    a = clip(footage(1), tune(1))
    rng = np.random.default_rng(0)
    reencoded, crf, _ = FAMILIES["reencode"](a, rng)
    clips = {
        "a": (a, "28"),
        "a_trim": (cut(a, 1.2, 0.0), "28"),
        "a_edits": (pad(crop_by(mirror(a), 0.1), 9 / 16), "33"),
        "a_speed": (speed(a, 1.08, keep_pitch=True), "28"),
        "a_reencode": (reencoded, crf),
        "a_silent": (with_audio(a, None, RATE), "28"),
        "a_new_voice": (with_audio(a, tune(7), RATE), "28"),
        "a_sound_on_b": (clip(footage(2), tune(1)), "28"),
        "b": (clip(footage(3), tune(3)), "28"),
        "dots1": (clip(dots(11), tune(11)), "28"),
        "dots2": (clip(dots(12), tune(12)), "28"),
    }
    return {k: prints(tmp, k, c, q) for k, (c, q) in clips.items()}


@pytest.mark.parametrize("variant", ["a_trim", "a_edits", "a_speed", "a_reencode", "a_silent"])
def test_edited_reuploads_are_duplicates_both_ways(items: dict[str, ItemPrints], variant: str) -> None:
    assert relate(items[variant], items["a"], CFG).kind == "duplicate_of"
    assert relate(items["a"], items[variant], CFG).kind == "duplicate_of"


def test_trim_reports_the_copied_seconds(items: dict[str, ItemPrints]) -> None:
    r = relate(items["a_trim"], items["a"], CFG)
    (seg,) = r.segments
    assert seg.new_s[0] <= 0.5 and seg.new_s[1] >= SECONDS - 1.2 - 0.75
    # the trimmed clip's first second is the original's 1.2 s mark (frames every 0.25 s)
    assert abs((seg.stored_s[0] - seg.new_s[0]) - 1.2) <= 0.3
    assert r.to_dict()["kind"] == "duplicate_of" and r.to_dict()["segments"] == [seg.to_dict()]


def test_mirror_is_reported(items: dict[str, ItemPrints]) -> None:
    assert relate(items["a_edits"], items["a"], CFG).mirrored
    assert not relate(items["a_trim"], items["a"], CFG).mirrored


def test_same_frames_new_voice_is_a_remix(items: dict[str, ItemPrints]) -> None:
    r = relate(items["a_new_voice"], items["a"], CFG)
    assert r.kind == "remix_of" and r.segments
    assert r.audio_score is not None and r.audio_score < CFG.audio_threshold


def test_same_sound_new_footage_is_a_reused_sound(items: dict[str, ItemPrints]) -> None:
    r = relate(items["a_sound_on_b"], items["a"], CFG)
    assert r.kind == "sound_of" and r.visual_score < CFG.visual_threshold
    (seg,) = r.segments
    assert seg.new_s[1] - seg.new_s[0] >= SECONDS - 1.5


@pytest.mark.parametrize(("x", "y"), [("b", "a"), ("dots1", "dots2"), ("dots2", "dots1"), ("b", "a_edits")])
def test_unrelated_clips_have_no_relation(items: dict[str, ItemPrints], x: str, y: str) -> None:
    r = relate(items[x], items[y], CFG)
    assert r.kind is None and not r.segments


def test_no_audio_on_either_side_leaves_visuals_to_decide(items: dict[str, ItemPrints]) -> None:
    r = relate(items["a_silent"], items["a_new_voice"], CFG)
    assert r.audio_score is None and r.kind == "duplicate_of"
