"""OCR: rendered overlays on real encoded clips, decoded by `Decoder` and read by the bundled PP-OCRv4 model."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from embedder.cards import load_card, sha256_file, status
from embedder.config import ReelvecConfig
from embedder.decode import Decoder
from embedder.factory import load_model
from embedder.ocr import OcrReader, normalize_text
from embedder.types import ModelUnavailableError, OcrResult
from tests.conftest import write_card

CARD = "rapidocr-ppocrv4"
W, H, FPS, SECONDS = 640, 360, 10, 4
Overlay = tuple[int, int, str]  # x, y, text


def font(size: int, bold: bool = True) -> Any:
    """DejaVu Sans if the machine has it (found by Pillow or under /usr/share/fonts), else Pillow's own font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for candidate in [name, *glob.glob(f"/usr/share/fonts/**/{name}", recursive=True)]:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def frame(t: float, overlays: list[Overlay], size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A moving gradient with orange discs (so frames differ over time) and white outlined text overlays."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    base = (40 + 60 * x + 20 * np.sin(2 * np.pi * (x + t / 4))) * np.array([0.6, 0.9, 1.4])
    img = Image.fromarray(np.broadcast_to(base, (h, w, 3)).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for i in range(0, w, 80):
        cx = (i + 40 * t) % w
        d.ellipse((cx, h * 0.5, cx + 30, h * 0.5 + 30), fill=(210, 130, 40))
    for ox, oy, text in overlays:
        d.text((ox, oy), text, font=font(30), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def encode(path: Path, overlays_at: Callable[[float], list[Overlay]], seconds: float = SECONDS) -> Path:
    """An H.264 mp4 (PyAV) whose frame at time t shows `overlays_at(t)`."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for n in range(int(seconds * FPS)):
            t = n / FPS
            for packet in s.encode(av.VideoFrame.from_ndarray(frame(t, overlays_at(t)), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def steps(t: float) -> list[Overlay]:
    """A title shown throughout; one step line for the first half, another for the second."""
    return [(40, 30, "FRESH PASTA TONIGHT"), (40, 290, "Boil the water" if t < SECONDS / 2 else "Add the salt")]


@pytest.fixture(scope="module")
def reader(session_cfg: ReelvecConfig) -> OcrReader:
    model = load_model(CARD, session_cfg)
    assert isinstance(model, OcrReader)
    return model


@pytest.fixture(scope="module")
def decoded(session_cfg: ReelvecConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The steps clip and a blank clip, decoded once with OCR frames."""
    d = tmp_path_factory.mktemp("ocrclips")
    with Decoder(session_cfg.decode, session_cfg.limits, ocr=session_cfg.ocr) as dec:
        yield {
            "steps": dec.decode(encode(d / "steps.mp4", steps)),
            "blank": dec.decode(encode(d / "blank.mp4", lambda t: [])),
        }


def with_cfg(cfg: ReelvecConfig, **ocr: Any) -> OcrReader:
    """A second reader of the same card with other `ocr` settings."""
    card = load_card(CARD, cfg.models.cards_dir)
    return OcrReader(card, card.resolve(cfg.models.models_dir), cfg.ocr.model_copy(update=ocr))


def texts(res: OcrResult) -> list[str]:
    return [normalize_text(line.text) for line in res.lines]


def test_reads_decoded_overlays_once_each_in_order_with_timestamps(reader: OcrReader, decoded: dict[str, Any]) -> None:
    m = decoded["steps"]
    ts = m.ocr_timestamps_s
    assert m.ocr_frames is not None and len(ts) == 4
    res = reader.read(m.ocr_frames, ts)
    assert texts(res) == ["freshpastatonight", "boilthewater", "addthesalt"]
    title, first, second = res.lines
    # The title is on every frame: one line, from the first frame to the last.
    assert (title.first_s, title.last_s) == (ts[0], ts[-1])
    assert (first.first_s, first.last_s) == (ts[0], ts[1])
    assert (second.first_s, second.last_s) == (ts[2], ts[3])
    assert all(line.confidence >= 0.6 for line in res.lines)


def test_blank_clip_reads_empty(reader: OcrReader, decoded: dict[str, Any]) -> None:
    m = decoded["blank"]
    assert reader.read(m.ocr_frames, m.ocr_timestamps_s) == OcrResult.empty()
    assert reader.read(None, []) == OcrResult.empty()


def test_read_batch_equals_read_per_clip(reader: OcrReader, decoded: dict[str, Any]) -> None:
    s, b = decoded["steps"], decoded["blank"]
    ts = s.ocr_timestamps_s
    clips = [(s.ocr_frames[:2], ts[:2]), (b.ocr_frames[:1], b.ocr_timestamps_s[:1]), (s.ocr_frames[2:], [0.0, 1.0])]
    batch = reader.read_batch(clips)
    assert batch == [reader.read(f, t) for f, t in clips]
    assert texts(batch[0]) == ["freshpastatonight", "boilthewater"] and batch[1] == OcrResult.empty()
    assert texts(batch[2]) == ["freshpastatonight", "addthesalt"]


def test_low_confidence_lines_dropped(session_cfg: ReelvecConfig) -> None:
    # Greek and Cyrillic glyphs are outside PP-OCR's dictionary: detected, but read with low confidence.
    f = frame(0.0, [(40, 30, "FRESH PASTA TONIGHT"), (40, 250, "ΨΩξ ЖЮЯ ЩФ")])[None]
    everything = with_cfg(session_cfg, min_confidence=0.0).read(f, [0.0])
    assert len(everything.lines) == 2
    crisp, garbled = everything.lines
    assert normalize_text(crisp.text) == "freshpastatonight" and garbled.confidence < crisp.confidence
    strict = with_cfg(session_cfg, min_confidence=(crisp.confidence + garbled.confidence) / 2)
    assert texts(strict.read(f, [0.0])) == ["freshpastatonight"]


def test_reading_order_and_fuzzy_dedup(reader: OcrReader) -> None:
    a = frame(0.0, [(330, 40, "BRAVO"), (40, 40, "ALPHA"), (40, 200, "CHARLIE")])
    # The same words moved and re-cased, with punctuation: the same line, not a new one.
    b = frame(1.0, [(60, 120, "alpha!"), (300, 260, "Delta")])
    res = reader.read(np.stack([a, b]), [0.0, 1.0])
    assert texts(res) == ["alpha", "bravo", "charlie", "delta"]
    assert (res.lines[0].first_s, res.lines[0].last_s) == (0.0, 1.0)
    assert (res.lines[3].first_s, res.lines[3].last_s) == (1.0, 1.0)


def test_max_lines_caps_in_order(session_cfg: ReelvecConfig, decoded: dict[str, Any]) -> None:
    m = decoded["steps"]
    res = with_cfg(session_cfg, max_lines=2).read(m.ocr_frames, m.ocr_timestamps_s)
    assert texts(res) == ["freshpastatonight", "boilthewater"]


def test_identical_frames_and_unchanged_boxes_are_not_reread(reader: OcrReader) -> None:
    ts = [0.0, 1.0, 2.0]
    still = np.stack([frame(0.0, steps(0.0))] * 3)
    res = reader.read(still, ts)
    assert reader.stats == {"frames": 3, "frames_read": 1, "boxes": 2, "boxes_recognized": 2}
    assert [(line.first_s, line.last_s) for line in res.lines] == [(0.0, 2.0), (0.0, 2.0)]
    # Moving background, same text at the same place: every frame is detected, the boxes are read once.
    assert reader.read(np.stack([frame(t, steps(0.0)) for t in ts]), ts) == res
    assert reader.stats == {"frames": 3, "frames_read": 3, "boxes": 6, "boxes_recognized": 2}
    # New text in a box at the same place is read again, never taken from the previous frame.
    changing = np.stack(
        [
            frame(t, [(40, 30, "FRESH PASTA TONIGHT"), (40, 290, f"Step {n}")])
            for t, n in zip(ts, ["one", "two", "six"], strict=True)
        ]
    )
    assert texts(reader.read(changing, ts)) == ["freshpastatonight", "stepone", "steptwo", "stepsix"]
    assert reader.stats["boxes_recognized"] == 4
    reader.skip_identical = False
    try:
        assert reader.read(still, ts) == res
        assert reader.stats == {"frames": 3, "frames_read": 3, "boxes": 6, "boxes_recognized": 6}
    finally:
        reader.skip_identical = True


def test_card_is_present_verified_and_listed(session_cfg: ReelvecConfig) -> None:
    card = load_card(CARD, session_cfg.models.cards_dir)
    assert (card.family, card.modality) == ("rapidocr", "ocr")
    st = status(card, session_cfg.models.models_dir, verify=True)
    assert st.present and st.verified is True, st.detail


def test_tampered_weights_fail_verify_and_load(session_cfg: ReelvecConfig, tmp_path: Path) -> None:
    card = load_card(CARD, session_cfg.models.cards_dir)
    src = card.resolve(session_cfg.models.models_dir)
    for f in card.files:
        shutil.copy(src / f.path, tmp_path / f.path)
    fields = card.model_dump(exclude={"card_path", "source"})
    path = write_card(tmp_path / "copy.yaml", **{**fields, "id": "ocr-copy", "source": {"kind": "local", "path": "."}})
    copy = load_card(path, session_cfg.models.cards_dir)
    assert status(copy, session_cfg.models.models_dir, verify=True).verified is True
    assert isinstance(load_model(path, session_cfg), OcrReader)

    det = tmp_path / card.files[0].path
    data = bytearray(det.read_bytes())
    data[len(data) // 2] ^= 0xFF
    det.write_bytes(bytes(data))
    st = status(copy, session_cfg.models.models_dir, verify=True)
    assert st.verified is False and card.files[0].path in st.detail
    assert sha256_file(det) != card.files[0].sha256

    det.write_bytes(bytes(data[: len(data) // 3]))  # a truncated download: refused before it is parsed
    with pytest.raises(ModelUnavailableError) as e:
        load_model(path, session_cfg)
    assert e.value.reason == "sha256_mismatch" and str(tmp_path) not in e.value.detail
