"""OCR: rendered overlays on real encoded clips, decoded by `Decoder` and read by the bundled PP-OCRv4 model."""

from __future__ import annotations

import glob
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from embedder.cards import load_card, sha256_file, status
from embedder.config import ReelvecConfig
from embedder.decode import Decoder
from embedder.factory import load_model
from embedder.ocr import OcrReader, _engine, normalize_text
from embedder.types import ModelUnavailableError, OcrResult
from tests.conftest import CLIPS, write_card

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


def with_cfg(cfg: ReelvecConfig, device: str = "cpu", **ocr: Any) -> OcrReader:
    """A second reader of the same card with other `ocr` settings."""
    card = load_card(CARD, cfg.models.cards_dir)
    return OcrReader(card, card.resolve(cfg.models.models_dir), cfg.ocr.model_copy(update=ocr), device)


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
    assert reader.stats == {"frames": 3, "frames_read": 1, "frames_gated": 0, "boxes": 2, "boxes_recognized": 2}
    assert [(line.first_s, line.last_s) for line in res.lines] == [(0.0, 2.0), (0.0, 2.0)]
    # Moving background, same text at the same place: every frame is detected, the boxes are read once.
    assert reader.read(np.stack([frame(t, steps(0.0)) for t in ts]), ts) == res
    assert reader.stats == {"frames": 3, "frames_read": 3, "frames_gated": 0, "boxes": 6, "boxes_recognized": 2}
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
        assert reader.stats == {"frames": 3, "frames_read": 3, "frames_gated": 0, "boxes": 6, "boxes_recognized": 6}
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


# The torch engine (onnx2torch, a dev dependency: a missing one fails these tests, never skips them).
# Measured on the 8 `*_text_*` sample clips: every line's text and span identical to onnxruntime's, confidence off by
# at most 4e-7 (fp32 kernels summing in another order). 1e-4 leaves that 250x headroom, while a misconverted layer
# moves confidences by 1e-2 or more, or changes the text.
TORCH_CONF_TOL = 1e-4


@pytest.fixture(scope="module")
def ort_reader(session_cfg: ReelvecConfig) -> OcrReader:
    """The onnxruntime engine on the CPU (`reader` runs the torch engine where models.device resolves to cuda)."""
    return with_cfg(session_cfg, engine="onnxruntime")


@pytest.fixture(scope="module")
def sample_text_clips(session_cfg: ReelvecConfig) -> list[tuple[np.ndarray, list[float]]]:
    with Decoder(session_cfg.decode, session_cfg.limits, ocr=session_cfg.ocr) as dec:
        decoded = [dec.decode(CLIPS / name) for name in ("cooking_text_02.mp4", "space_text_02.mp4")]
    return [(m.ocr_frames, m.ocr_timestamps_s) for m in decoded]


def assert_same_lines(a: list[OcrResult], b: list[OcrResult], conf_tol: float) -> None:
    assert [[(ln.text, ln.first_s, ln.last_s) for ln in r.lines] for r in a] == [
        [(ln.text, ln.first_s, ln.last_s) for ln in r.lines] for r in b
    ]
    diffs = [
        abs(x.confidence - y.confidence)
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra.lines, rb.lines, strict=True)
    ]
    assert max(diffs) <= conf_tol, max(diffs)


def test_torch_engine_reads_what_onnxruntime_reads(
    session_cfg: ReelvecConfig, ort_reader: OcrReader, sample_text_clips: list, decoded: dict[str, Any]
) -> None:
    torch_reader = with_cfg(session_cfg, engine="torch")
    assert (ort_reader.engine, ort_reader.providers) == ("onnxruntime", ["CPUExecutionProvider"])
    assert (torch_reader.engine, torch_reader.providers) == ("torch", ["torch:cpu"])
    expected = ort_reader.read_batch(sample_text_clips)
    assert [texts(r) for r in expected] == [
        ["sourdoughbread", "stepbystep", "kneadthedough", "andletitrise"],
        ["marsroveron", "theredplanet", "searchingforancientwater"],
    ]
    assert_same_lines(torch_reader.read_batch(sample_text_clips), expected, TORCH_CONF_TOL)
    # One clip at a time (other batch shapes), and the generated clip with a line that changes halfway.
    steps_clip = (decoded["steps"].ocr_frames, decoded["steps"].ocr_timestamps_s)
    for clip in [*sample_text_clips, steps_clip]:
        assert_same_lines([torch_reader.read(*clip)], [ort_reader.read(*clip)], TORCH_CONF_TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_engine_on_cuda_reads_what_onnxruntime_reads(
    session_cfg: ReelvecConfig, ort_reader: OcrReader, sample_text_clips: list
) -> None:
    gpu = with_cfg(session_cfg, device="cuda", engine="torch")
    assert gpu.providers == ["torch:cuda"]
    # cuDNN convolutions may run in TF32 on the GPU: the same lines, confidences looser than on the CPU. On an H200
    # (2026-11-26) the 8 `*_text_*` clips read the same lines with confidences within 3.5e-4 of onnxruntime's.
    assert_same_lines(gpu.read_batch(sample_text_clips), ort_reader.read_batch(sample_text_clips), 1e-2)


def test_engine_resolution() -> None:
    cpu_ort, gpu_ort = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _engine("auto", "cuda", cpu_ort) == "torch"  # onnx2torch is installed (dev dependency)
    assert _engine("auto", "cuda", gpu_ort) == "onnxruntime"
    assert _engine("auto", "cpu", cpu_ort) == "onnxruntime"
    assert _engine("torch", "cpu", gpu_ort) == "torch"
    assert _engine("onnxruntime", "cuda", cpu_ort) == "onnxruntime"


def test_onnxruntime_engine_on_cuda_without_cuda_provider_runs_on_cpu(
    session_cfg: ReelvecConfig, ort_reader: OcrReader, decoded: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has a CUDA provider")
    with caplog.at_level(logging.WARNING, logger="embedder.ocr"):
        cuda_ort = with_cfg(session_cfg, device="cuda", engine="onnxruntime")
    assert (cuda_ort.engine, cuda_ort.providers) == ("onnxruntime", ["CPUExecutionProvider"])
    assert "no CUDAExecutionProvider" in caplog.text and "onnx2torch" in caplog.text
    m = decoded["steps"]
    assert cuda_ort.read(m.ocr_frames, m.ocr_timestamps_s) == ort_reader.read(m.ocr_frames, m.ocr_timestamps_s)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_unreadable_model_file_is_corrupt(session_cfg: ReelvecConfig, tmp_path: Path, engine: str) -> None:
    card = load_card(CARD, session_cfg.models.cards_dir)
    src = card.resolve(session_cfg.models.models_dir)
    for f in card.files:
        shutil.copy(src / f.path, tmp_path / f.path)
    det = tmp_path / card.params["det_model"]
    det.write_bytes(det.read_bytes()[: det.stat().st_size // 3])  # past the sha256 check (called directly)
    with pytest.raises(ModelUnavailableError) as e:
        OcrReader(card, tmp_path, session_cfg.ocr.model_copy(update={"engine": engine}))
    assert e.value.reason == "corrupt"


def test_torch_engine_without_onnx2torch_is_a_clear_unavailable_model(
    session_cfg: ReelvecConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # `import onnx2torch` raises ImportError
    with pytest.raises(ModelUnavailableError) as e:
        with_cfg(session_cfg, engine="torch")
    assert e.value.reason == "not_installed" and "reelvec[gpu]" in e.value.detail
    # auto falls back to onnxruntime instead
    assert _engine("auto", "cuda", ["CPUExecutionProvider"]) == "onnxruntime"


# -- text gate ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay_clips(session_cfg: ReelvecConfig, clips: list[dict[str, Any]]) -> list[tuple[np.ndarray, list[float]]]:
    """OCR frames of every sample clip that carries overlay lines."""
    with Decoder(session_cfg.decode, session_cfg.limits, ocr=session_cfg.ocr) as dec:
        decoded = [dec.decode(r["path"]) for r in clips if r["overlay"]]
    return [(m.ocr_frames, m.ocr_timestamps_s) for m in decoded]


def test_text_gate_keeps_every_overlay_line_of_the_samples(
    session_cfg: ReelvecConfig, ort_reader: OcrReader, overlay_clips: list
) -> None:
    assert ort_reader.cfg.text_gate and len(overlay_clips) >= 8
    ungated = with_cfg(session_cfg, engine="onnxruntime", text_gate=False)
    expected = ungated.read_batch(overlay_clips)
    assert all(r.lines for r in expected)
    assert ort_reader.read_batch(overlay_clips) == expected
    assert ort_reader.stats["frames_gated"] == 0  # every overlay frame reached the full-size detector


def test_text_gate_skips_the_detector_on_frames_without_text(
    ort_reader: OcrReader, session_cfg: ReelvecConfig, clips: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Decoder(session_cfg.decode, session_cfg.limits, ocr=session_cfg.ocr) as dec:
        plain = [dec.decode(r["path"]) for r in clips if not r["overlay"] and r["topic"] != "space"][:4]
    shapes: list[tuple[int, ...]] = []
    run_det = ort_reader._run_det

    def recording(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return run_det(x)

    monkeypatch.setattr(ort_reader, "_run_det", recording)
    out = ort_reader.read_batch([(m.ocr_frames, m.ocr_timestamps_s) for m in plain])
    assert all(not r.lines for r in out)
    assert ort_reader.stats["frames_gated"] == ort_reader.stats["frames_read"] > 0
    full = plain[0].ocr_frames.shape[1:3]
    assert all(s[2] < full[0] and s[3] < full[1] for s in shapes)  # only the small gate pass ran


def test_torch_engine_in_float16_reads_what_onnxruntime_reads(
    session_cfg: ReelvecConfig, ort_reader: OcrReader, sample_text_clips: list
) -> None:
    # The GPU precision (fp16, torch_dtype auto on cuda), run on the CPU: same lines, confidences close.
    half = with_cfg(session_cfg, engine="torch", torch_dtype="float16")
    assert half.torch_dtype == "float16"
    assert_same_lines(half.read_batch(sample_text_clips), ort_reader.read_batch(sample_text_clips), 2e-2)
