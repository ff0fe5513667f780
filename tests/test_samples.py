"""Bundled sample media: the sidecar matches the files, overlay clips decode as stated, re-upload variants differ as
intended. Real files decoded with PyAV; OCR checks use the bundled PP-OCR (rapidocr)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from embedder.types import MediaError
from samples.variants import make_variants

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CLIPS = SAMPLES / "clips"
ROW_KEYS = {"file", "item_id", "caption", "hashtags", "creator_id", "created_at", "topic", "speech", "language"}
ROW_KEYS |= {"audio", "overlay"}
TOPICS = {"cooking", "soccer", "ocean", "space"}
OVERLAY_SIZE = (640, 360)
TEXT_CLIP_S = 4.0


def _rows() -> list[dict[str, Any]]:
    return [json.loads(x) for x in (CLIPS / "captions.jsonl").read_text().splitlines() if x.strip()]


ROWS = _rows()
OVERLAY_ROWS = [r for r in ROWS if r["overlay"]]
TEXT_ROWS = [r for r in ROWS if "_text_" in r["item_id"]]


def _stream_facts(path: Path) -> dict[str, Any]:
    """Frame size, frame count, duration and audio RMS (None without an audio stream) of a file."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames = sum(1 for _ in c.decode(vs))
        size = (vs.codec_context.width, vs.codec_context.height)
        duration = frames / float(vs.average_rate)
        if not c.streams.audio:
            return {"size": size, "frames": frames, "duration_s": duration, "audio_rms": None}
        c.seek(0)
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float64)
    return {"size": size, "frames": frames, "duration_s": duration, "audio_rms": float(np.sqrt(np.mean(pcm**2)))}


def _frame_at(path: Path, share: float) -> np.ndarray:
    """The RGB frame at `share` (0..1) of the clip's length."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames[min(len(frames) - 1, int(len(frames) * share))]


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z ]", " ", text.lower()).split())


def test_sidecar_rows_name_existing_clips_with_unique_ids() -> None:
    ids = [r["item_id"] for r in ROWS]
    assert len(ids) == len(set(ids)) and len(ROWS) == 29
    for r in ROWS:
        assert set(r) == ROW_KEYS, r["item_id"]
        assert (CLIPS / r["file"]).is_file() and Path(r["file"]).stem == r["item_id"]
        assert r["topic"] in TOPICS and r["audio"] in ("speech", "music", "none")
    on_disk = {p.name for p in CLIPS.glob("*.mp4")}
    assert on_disk == {r["file"] for r in ROWS}, "every committed clip has exactly one row"


def test_overlay_rows_say_which_modality_carries_the_topic() -> None:
    assert len(TEXT_ROWS) == 8 and {r["topic"] for r in TEXT_ROWS} == TOPICS
    for r in TEXT_ROWS:  # topic only on screen
        assert r["caption"] == "" and r["hashtags"] == [] and r["speech"] == "" and r["audio"] in ("music", "none")
        assert len(r["overlay"]) == 2 and r["overlay"][0] != r["overlay"][1]
    assert sorted(r["audio"] for r in TEXT_ROWS) == ["music"] * 4 + ["none"] * 4
    agree = [r for r in OVERLAY_ROWS if "_agree_" in r["item_id"]]
    assert {r["topic"] for r in agree} == TOPICS and all(r["caption"] and r["speech"] for r in agree)
    for r in agree:  # caption, speech and on-screen text share content words
        text = _words(" ".join(r["overlay"]))
        assert len(_words(r["caption"]) & _words(r["speech"]) & text) >= 2, r["item_id"]
    (noisy,) = [r for r in OVERLAY_ROWS if "noisycap" in r["item_id"]]
    on_topic = _words(noisy["speech"]) | _words(" ".join(noisy["overlay"]))
    assert noisy["caption"] and not (_words(noisy["caption"]) & on_topic) and noisy["speech"]


@pytest.mark.parametrize("row", OVERLAY_ROWS, ids=lambda r: r["item_id"])
def test_overlay_clip_decodes_at_stated_size_duration_and_audio(row: dict[str, Any]) -> None:
    facts = _stream_facts(CLIPS / row["file"])
    assert facts["size"] == OVERLAY_SIZE
    if row in TEXT_ROWS:
        assert facts["frames"] == 100 and facts["duration_s"] == pytest.approx(TEXT_CLIP_S)
    else:
        assert 3.0 <= facts["duration_s"] <= 5.0
    if row["audio"] == "none":
        assert facts["audio_rms"] is None
    else:  # music and reused speech are clearly audible (the quiet_audio fixture is ~0.002)
        assert facts["audio_rms"] is not None and facts["audio_rms"] > 0.02, facts


def test_eval_queries_expect_every_clip_of_their_topic() -> None:
    queries = [json.loads(x) for x in (SAMPLES / "eval_queries.jsonl").read_text().splitlines() if x.strip()]
    assert 16 <= len(queries) <= 24
    topic_of = {r["item_id"]: r["topic"] for r in ROWS}
    text_ids = {r["item_id"] for r in TEXT_ROWS}
    for q in queries:
        assert sorted(q["expected"]) == sorted(i for i, t in topic_of.items() if t == q["topic"]), q["query"]
        if q["source"] == "overlay":  # answerable only from the on-screen text of a text-only clip
            assert q["primary"] and set(q["primary"]) <= text_ids & set(q["expected"])
    assert {q["topic"] for q in queries if q["source"] == "overlay"} == TOPICS


@pytest.fixture(scope="module")
def ocr() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def _ocr_words(ocr: Any, rgb: np.ndarray) -> set[str]:
    result, _ = ocr(np.ascontiguousarray(rgb[:, :, ::-1]))  # rapidocr takes BGR
    return _words(" ".join(line[1] for line in result or []))


def _assert_cards_read(ocr: Any, row: dict[str, Any]) -> None:
    """Each card is read in its half of the clip, and the other card is not on screen then."""
    for k, card in enumerate(row["overlay"]):
        seen = _ocr_words(ocr, _frame_at(CLIPS / row["file"], 0.25 + 0.5 * k))
        want, other = _words(card), _words(row["overlay"][1 - k]) - _words(card)
        assert len(want & seen) >= len(want) - 1, (row["item_id"], card, seen)
        assert not (other & seen), (row["item_id"], row["overlay"][1 - k], seen)


def test_overlay_text_is_read_by_ppocr(ocr: Any) -> None:
    _assert_cards_read(ocr, TEXT_ROWS[0])


@pytest.mark.slow
@pytest.mark.parametrize("row", OVERLAY_ROWS, ids=lambda r: r["item_id"])
def test_every_overlay_card_is_read_by_ppocr(ocr: Any, row: dict[str, Any]) -> None:
    _assert_cards_read(ocr, row)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    src = CLIPS / "cooking_01.mp4"
    return src, make_variants(src, tmp_path_factory.mktemp("variants"))


def test_make_variants_writes_four_decodable_reuploads(variants: tuple[Path, dict[str, Path]]) -> None:
    src, paths = variants
    assert set(paths) == {"reencode", "crop", "trim", "mirror"}
    s = _stream_facts(src)
    v = {name: _stream_facts(p) for name, p in paths.items()}
    w, h = s["size"]
    assert v["reencode"]["size"] == (w // 2, h // 2)
    assert paths["reencode"].stat().st_size < src.stat().st_size / 1.5
    assert v["crop"]["size"][0] < w and v["crop"]["size"][1] < h
    assert v["trim"]["duration_s"] == pytest.approx(s["duration_s"] - 1.0, abs=0.05)
    assert v["mirror"]["size"] == (w, h) and v["mirror"]["frames"] == s["frames"]
    assert all(f["audio_rms"] is not None and f["audio_rms"] > 0.02 for f in v.values()), "audio is kept"


def test_mirror_is_the_flipped_source_and_crop_is_the_rescaled_centre(variants: tuple[Path, dict[str, Path]]) -> None:
    src, paths = variants
    a = _frame_at(src, 0.5)
    m = _frame_at(paths["mirror"], 0.5).astype(np.float32)
    assert np.abs(m - a[:, ::-1]).mean() < np.abs(m - a).mean() / 3
    c = _frame_at(paths["crop"], 0.5).astype(np.float32)
    h, w = a.shape[:2]
    dy, dx = round(h * 0.05), round(w * 0.05)  # the central 90 %
    centre = Image.fromarray(a[dy : h - dy, dx : w - dx]).resize(c.shape[1::-1], Image.Resampling.LANCZOS)
    whole = Image.fromarray(a).resize(c.shape[1::-1], Image.Resampling.LANCZOS)
    assert np.abs(c - np.asarray(centre)).mean() < np.abs(c - np.asarray(whole)).mean() / 2


def test_make_variants_refuses_a_non_video(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 20)
    with pytest.raises(MediaError) as e:
        make_variants(bad, tmp_path / "out")
    assert e.value.reason == "not_a_video" and str(tmp_path) not in e.value.detail


def test_variants_cli_prints_the_paths(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SAMPLES / "variants.py"), str(CLIPS / "space_01.mp4"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    paths = json.loads(out.stdout)
    assert sorted(paths) == ["crop", "mirror", "reencode", "trim"] and all(Path(p).is_file() for p in paths.values())


@pytest.mark.slow
def test_make_samples_verify_only_passes() -> None:
    r = subprocess.run(
        [sys.executable, str(SAMPLES / "make_samples.py"), "--verify-only"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].startswith("total")
