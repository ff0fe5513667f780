"""Decode: real clips sampled by decord (PyAV fallback), audio at 16 kHz, and every bad input's reason."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.config import DecodeConfig, FingerprintConfig, LimitsConfig, OcrConfig
from embedder.decode import Decoder, decode_file, nvdec_usable, probe_file, sample_indices, snap_to_keyframes
from embedder.types import MediaError, ModelUnavailableError


@pytest.fixture(scope="module")
def decoder() -> Any:
    d = Decoder(DecodeConfig(), LimitsConfig())
    yield d
    d.close()


def test_real_clips_give_sampled_frames_and_audio(decoder: Decoder, clips: list[dict[str, Any]]) -> None:
    for row in clips[:4]:
        m = decoder.decode(row["path"])
        assert m.decoder == "decord"
        assert m.frames.dtype == np.uint8 and m.frames.ndim == 4 and m.frames.shape[0] == 8
        assert min(m.frames.shape[1:3]) <= 224 and m.frames.shape[3] == 3
        assert m.timestamps_s == sorted(m.timestamps_s) and len(set(m.timestamps_s)) == 8
        assert m.timestamps_s[0] >= 0 and m.timestamps_s[-1] <= m.probe.duration_s
        assert m.decodable_frames == m.probe.num_frames
        assert m.audio is not None and m.audio.dtype == np.float32
        assert abs(len(m.audio) / 16000 - m.probe.duration_s) < 0.5
        # frames differ over time (motion), so sampling really spread over the clip
        assert np.abs(m.frames[0].astype(int) - m.frames[-1].astype(int)).mean() > 1


def test_fps_mode_caps_frames(clips: list[dict[str, Any]]) -> None:
    cfg = DecodeConfig(mode="fps", fps=1.0, num_frames=8)
    m = decode_file(clips[0]["path"], cfg, LimitsConfig())
    assert len(m.frame_indices) == max(1, int(m.probe.duration_s))
    assert len(m.frame_indices) == len(set(m.frame_indices)) == len(m.frames)


def test_sample_indices_uniform_and_fps() -> None:
    assert sample_indices(80, 25.0, DecodeConfig(num_frames=8)) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(3, 25.0, DecodeConfig(num_frames=8)) == [0, 1, 2]
    assert sample_indices(100, 25.0, DecodeConfig(mode="fps", fps=1.0, num_frames=8)) == [12, 37, 62, 87]
    assert len(sample_indices(2500, 25.0, DecodeConfig(mode="fps", fps=1.0, num_frames=8))) == 8
    assert sample_indices(0, 25.0, DecodeConfig()) == []


def test_silent_video_gives_frames_and_no_audio(decoder: Decoder, fixtures_dir: Path) -> None:
    m = decoder.decode(str(fixtures_dir / "silent.mp4"))
    assert not m.probe.has_audio and m.audio is None
    assert len(m.frames) > 0


def test_bframes_decord_matches_pyav(fixtures_dir: Path) -> None:
    path = str(fixtures_dir / "bframes.mp4")
    cfg = DecodeConfig(num_frames=8, short_side=2160)  # no resize: compare codec output directly
    a = decode_file(path, cfg, LimitsConfig())
    b = decode_file(path, cfg.model_copy(update={"backend": "pyav"}), LimitsConfig())
    assert a.decoder == "decord" and b.decoder == "pyav"
    assert a.frame_indices == b.frame_indices
    assert np.allclose(a.timestamps_s, b.timestamps_s, atol=1e-3)
    diff = np.abs(a.frames.astype(int) - b.frames.astype(int)).mean(axis=(1, 2, 3))
    assert diff.max() < 2.0, diff


def test_webm_probes_and_decodes(fixtures_dir: Path) -> None:
    webm = fixtures_dir / "clip.webm"
    if not webm.exists():
        pytest.skip("no VP8/VP9 encoder was available when the samples were generated")
    m = decode_file(str(webm), DecodeConfig(), LimitsConfig())
    assert len(m.frames) > 0 and m.probe.video_codec in {"vp8", "vp9", "av1"}


# --- bad input matrix: each gets its MediaError reason -----------------------------------------


def test_empty_bytes(decoder: Decoder) -> None:
    with pytest.raises(MediaError) as e:
        decoder.decode(b"")
    assert e.value.reason == "empty"


def test_not_a_video(decoder: Decoder) -> None:
    with pytest.raises(MediaError) as e:
        decoder.decode(b"hello, this is a text file and not a video at all\n" * 50)
    assert e.value.reason == "not_a_video"


def test_truncated(decoder: Decoder, clips: list[dict[str, Any]]) -> None:
    data = Path(clips[0]["path"]).read_bytes()
    for cut in (len(data) // 2, 64):
        with pytest.raises(MediaError) as e:
            decoder.decode(data[:cut])
        assert e.value.reason == "truncated", cut


def test_bytes_errors_do_not_name_server_paths(decoder: Decoder, clips: list[dict[str, Any]]) -> None:
    """Uploaded bytes go through a temp file; its path must not reach the uploader in the error detail."""
    data = Path(clips[0]["path"]).read_bytes()
    for bad in (data[:64], b"\x00\x00\x00\x18ftypmp42" + b"\xff" * 4000, b"plain text, not a video\n" * 40):
        with pytest.raises(MediaError) as e:
            decoder.decode(bad)
        assert "reelvec-" not in e.value.detail and ".media" not in e.value.detail, e.value.detail


def test_no_video_stream(decoder: Decoder, fixtures_dir: Path) -> None:
    with pytest.raises(MediaError) as e:
        decoder.decode(str(fixtures_dir / "speech.wav"))
    assert e.value.reason == "no_video_stream"


def test_missing_file(decoder: Decoder, tmp_path: Path) -> None:
    with pytest.raises(MediaError) as e:
        decoder.decode(str(tmp_path / "nope.mp4"))
    assert e.value.reason == "not_found"


def test_over_limits(clips: list[dict[str, Any]], fixtures_dir: Path) -> None:
    path = clips[0]["path"]
    cases = [
        (LimitsConfig(max_bytes=1000), path, "too_large"),
        (LimitsConfig(max_duration_s=1.0), path, "too_long"),
        (LimitsConfig(max_pixels=640 * 480), str(fixtures_dir / "big_frame.mp4"), "too_many_pixels"),
    ]
    for limits, p, reason in cases:
        with Decoder(DecodeConfig(), limits) as d, pytest.raises(MediaError) as e:
            d.decode(p)
        assert e.value.reason == reason
        with Decoder(DecodeConfig(), limits) as d, pytest.raises(MediaError) as e:
            d.decode(Path(p).read_bytes())
        assert e.value.reason == reason


def test_timeout_kills_worker_and_recovers(clips: list[dict[str, Any]]) -> None:
    with Decoder(DecodeConfig(timeout_s=0.001), LimitsConfig()) as d:
        with pytest.raises(ModelUnavailableError) as e:  # the server's fault (503, retryable), not the input's
            d.decode(clips[0]["path"])
        assert e.value.reason == "decode_timeout"
        assert d.workers == 0  # the hung worker was killed
        d.cfg = DecodeConfig(timeout_s=30)
        assert len(d.decode(clips[0]["path"]).frames) == 8


def test_probe_reports_stream_facts(clips: list[dict[str, Any]], fixtures_dir: Path) -> None:
    p = probe_file(clips[0]["path"])
    assert p.has_audio and p.fps > 0 and p.width > 0 and 2.0 <= p.duration_s <= 6.0
    assert not probe_file(str(fixtures_dir / "silent.mp4")).has_audio


def test_ocr_frames_come_from_the_same_decode(fixtures_dir: Path, clips: list[dict[str, Any]]) -> None:
    ocr = OcrConfig(num_frames=4, short_side=360)
    with Decoder(DecodeConfig(), LimitsConfig(), ocr=ocr) as d:
        big = d.decode(str(fixtures_dir / "big_frame.mp4"))  # 1920x1080
        small = d.decode(clips[0]["path"])  # 320x240: never upscaled
    assert big.ocr_frames is not None and big.ocr_frames.shape == (4, 360, 640, 3) and big.ocr_frames.dtype == np.uint8
    assert min(big.frames.shape[1:3]) == 224  # the CLIP frames keep their own size
    for m in (big, small):
        ts = m.ocr_timestamps_s
        assert len(ts) == 4 and ts == sorted(set(ts)) and ts[0] >= 0 and ts[-1] <= m.probe.duration_s
    assert small.ocr_frames is not None and small.ocr_frames.shape[1:] == (240, 320, 3)
    # Spread over the clip: the first and last OCR frames are in its first and last quarters.
    assert small.ocr_timestamps_s[0] < small.probe.duration_s / 4
    assert small.ocr_timestamps_s[-1] > small.probe.duration_s * 3 / 4


def test_ocr_frames_decord_and_pyav_agree(clips: list[dict[str, Any]]) -> None:
    ocr = OcrConfig(num_frames=4, short_side=180)
    a = decode_file(clips[1]["path"], DecodeConfig(), LimitsConfig(), ocr)
    b = decode_file(clips[1]["path"], DecodeConfig(backend="pyav"), LimitsConfig(), ocr)
    assert (a.decoder, b.decoder) == ("decord", "pyav")
    assert a.ocr_frames is not None and b.ocr_frames is not None and a.ocr_frames.shape == b.ocr_frames.shape
    assert a.ocr_frames.shape[1:] == (180, 240, 3)
    assert np.allclose(a.ocr_timestamps_s, b.ocr_timestamps_s, atol=0.02)
    assert np.abs(a.ocr_frames.astype(int) - b.ocr_frames.astype(int)).mean() < 8
    # PyAV converts each frame at both sizes: its CLIP frames are exactly those of a decode without OCR.
    plain = decode_file(clips[1]["path"], DecodeConfig(backend="pyav"), LimitsConfig())
    assert np.array_equal(plain.frames, b.frames) and plain.timestamps_s == b.timestamps_s


def test_no_ocr_frames_unless_asked(decoder: Decoder, clips: list[dict[str, Any]]) -> None:
    m = decoder.decode(clips[0]["path"])
    assert m.ocr_frames is None and m.ocr_timestamps_s == []


def test_snap_to_keyframes_within_tolerance_and_without_merging() -> None:
    keys = [0, 30, 60, 90, 120]
    # Dense keyframes: every sample moves to its nearest one.
    assert snap_to_keyframes([28, 62, 95], keys, fps=30, tol_s=0.5) == [30, 60, 90]
    # Too far (> 0.5 s = 15 frames) stays exact; a keyframe already taken is not taken twice.
    assert snap_to_keyframes([5, 30, 58], [0, 60], fps=30, tol_s=0.5) == [0, 30, 60]
    assert snap_to_keyframes([58, 62], keys, fps=30, tol_s=0.5) == [60, 62]
    assert snap_to_keyframes([28, 62], keys, fps=30, tol_s=0) == [28, 62]
    assert snap_to_keyframes([28, 62], [], fps=30, tol_s=0.5) == [28, 62]
    # An exact sample that equals a keyframe an earlier sample took: no merge, the exact indices stand.
    assert snap_to_keyframes([25, 30], [30], fps=30, tol_s=0.5) == [25, 30]


def _gop_clip(path: Path, gop: int, n: int = 90, fps: int = 30) -> None:
    import av
    from PIL import Image, ImageDraw

    with av.open(str(path), "w") as out:
        opts = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        vs = out.add_stream("libx264", rate=fps, options=opts)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        for i in range(n):
            img = Image.new("RGB", (320, 240), (i * 2 % 250, 60, 90))
            ImageDraw.Draw(img).ellipse((i * 2, 80, i * 2 + 60, 140), fill=(230, 200, 40))
            for p in vs.encode(av.VideoFrame.from_image(img)):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)


def test_keyframe_snap_samples_keyframes_on_both_backends(tmp_path: Path) -> None:
    import av

    path = tmp_path / "gop15.mp4"
    _gop_clip(path, gop=15)
    with av.open(str(path)) as c:
        keyframes = {n for n, f in enumerate(c.decode(c.streams.video[0])) if f.key_frame}
    assert keyframes == {0, 15, 30, 45, 60, 75}
    exact = DecodeConfig(num_frames=4)
    snapped = exact.model_copy(update={"keyframe_snap_s": 0.3})
    a = decode_file(str(path), exact, LimitsConfig())
    assert a.frame_indices == sample_indices(90, 30.0, exact) == [11, 33, 56, 78]
    for backend in ("decord", "pyav"):
        b = decode_file(str(path), snapped.model_copy(update={"backend": backend}), LimitsConfig())
        assert b.decoder == backend
        assert b.frame_indices == [15, 30, 60, 75], backend  # each within 0.3 s (9 frames) of its exact index
        assert set(b.frame_indices) <= keyframes
        assert np.allclose(b.timestamps_s, [i / 30 for i in b.frame_indices], atol=1e-3)


def test_keyframe_snap_agrees_across_backends_with_bframes(fixtures_dir: Path) -> None:
    path = str(fixtures_dir / "bframes.mp4")
    cfg = DecodeConfig(num_frames=8, keyframe_snap_s=1.0)
    a = decode_file(path, cfg, LimitsConfig())
    b = decode_file(path, cfg.model_copy(update={"backend": "pyav"}), LimitsConfig())
    assert a.frame_indices == b.frame_indices
    assert np.allclose(a.timestamps_s, b.timestamps_s, atol=1e-3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0


# --- keyframe sampling, fingerprint frames, NVDEC, worker pool (issue 16) ------------------------------


def test_keyframe_sampling_decodes_keyframes_only(tmp_path: Path) -> None:
    import av

    path = tmp_path / "gop15.mp4"
    _gop_clip(path, gop=15)
    cfg = DecodeConfig(num_frames=4, sampling="keyframes")
    m = decode_file(str(path), cfg, LimitsConfig(), OcrConfig(num_frames=2), FingerprintConfig(fps=30))
    assert m.decoder == "pyav"
    # Exact samples [11, 33, 56, 78] each take their nearest keyframe.
    assert m.frame_indices == [15, 30, 60, 75]
    assert np.allclose(m.timestamps_s, [0.5, 1.0, 2.0, 2.5], atol=1e-3)
    assert m.frames.shape == (4, 224, 298, 3) and m.frames.dtype == np.uint8
    assert m.ocr_frames is not None and np.allclose(m.ocr_timestamps_s, [0.5, 2.0], atol=1e-3)  # samples 22, 67
    # Fingerprint frames: every keyframe (none else is decoded), as 64x64 grayscale.
    assert m.fp_frames is not None and m.fp_frames.shape == (6, 64, 64) and m.fp_frames.dtype == np.uint8
    assert np.allclose(m.fp_timestamps_s, [i / 30 for i in (0, 15, 30, 45, 60, 75)], atol=1e-3)
    assert m.decodable_frames == 90  # packets demuxed
    # The same pictures as an exact decode of those keyframes (only the resize filter differs).
    with av.open(str(path)) as c:
        full = [f.to_ndarray(format="rgb24", width=298, height=224) for f in c.decode(c.streams.video[0])]
    for frame, i in zip(m.frames, m.frame_indices, strict=True):
        assert np.abs(frame.astype(int) - full[i].astype(int)).mean() < 3


def test_keyframe_sampling_takes_each_keyframe_once(tmp_path: Path) -> None:
    path = tmp_path / "gop30.mp4"
    _gop_clip(path, gop=30)  # keyframes 0, 30, 60: fewer than the 8 samples asked
    m = decode_file(str(path), DecodeConfig(num_frames=8, sampling="keyframes"), LimitsConfig())
    assert m.frame_indices == [0, 30, 60] and len(m.frames) == 3
    assert m.fp_frames is None and m.ocr_frames is None


def test_keyframe_sampling_reads_the_same_audio_in_the_same_pass(clips: list[dict[str, Any]]) -> None:
    path = clips[0]["path"]
    exact = decode_file(path, DecodeConfig(), LimitsConfig())
    kf = decode_file(path, DecodeConfig(sampling="keyframes"), LimitsConfig())
    assert exact.audio is not None and kf.audio is not None and kf.audio.dtype == np.float32
    n = min(len(exact.audio), len(kf.audio))
    assert abs(len(exact.audio) - len(kf.audio)) < 1600
    assert np.corrcoef(exact.audio[:n], kf.audio[:n])[0, 1] > 0.95
    assert set(kf.frame_indices) < set(range(kf.probe.num_frames)) and len(kf.frames) >= 2


def test_fingerprint_frames_cover_the_clip_at_the_configured_rate(clips: list[dict[str, Any]]) -> None:
    fp = FingerprintConfig(size=32, fps=4.0)
    path = clips[1]["path"]
    a = decode_file(path, DecodeConfig(), LimitsConfig(), None, fp)
    b = decode_file(path, DecodeConfig(backend="pyav"), LimitsConfig(), None, fp)
    for m in (a, b):
        assert m.fp_frames is not None and m.fp_frames.dtype == np.uint8 and m.fp_frames.shape[1:] == (32, 32)
        ts = m.fp_timestamps_s
        assert len(ts) == len(m.fp_frames) and abs(len(ts) - m.probe.duration_s * 4) <= 1
        assert ts[0] == 0 and ts[-1] > m.probe.duration_s - 0.5
        assert np.allclose(np.diff(ts), 0.25, atol=0.05)
    assert np.allclose(a.fp_timestamps_s, b.fp_timestamps_s, atol=0.02)
    assert np.abs(a.fp_frames.astype(int) - b.fp_frames.astype(int)).mean() < 8  # type: ignore[union-attr]
    # The CLIP frames keep their meaning with fingerprint frames on.
    plain = decode_file(path, DecodeConfig(), LimitsConfig())
    assert np.array_equal(plain.frames, a.frames) and plain.fp_frames is None


def test_nvdec_is_refused_or_used_never_silently_missing(clips: list[dict[str, Any]]) -> None:
    path = clips[0]["path"]
    if nvdec_usable("h264"):
        with Decoder(DecodeConfig(device="cuda"), LimitsConfig()) as d:
            assert d.decode(path).decoder == "pyav-nvdec"
    else:  # this machine: a typed 503-class error naming the reason, from the worker process
        with Decoder(DecodeConfig(device="cuda"), LimitsConfig()) as d, pytest.raises(ModelUnavailableError) as e:
            d.decode(path)
        assert e.value.reason == "nvdec_unavailable" and "decode.device" in e.value.detail
    # auto keeps keyframe sampling on the CPU (NVDEC measured slower there) and falls back when NVDEC is absent.
    assert decode_file(path, DecodeConfig(device="auto", sampling="keyframes"), LimitsConfig()).decoder == "pyav"
    auto = decode_file(path, DecodeConfig(device="auto"), LimitsConfig()).decoder
    assert auto == "decord"  # auto is the CPU for both samplings (measured: NVDEC is slower on the H200)


def test_worker_pool_decodes_in_parallel_and_in_order(clips: list[dict[str, Any]]) -> None:
    paths = [clips[i]["path"] for i in range(4)]
    with Decoder(DecodeConfig(workers=2), LimitsConfig()) as d:
        out = d.decode_many([*paths, b"not a video at all\n" * 40])
        assert d.workers <= 2
    assert all(m.probe.size_bytes == Path(p).stat().st_size for m, p in zip(out[:4], paths, strict=False))  # type: ignore[union-attr]
    assert isinstance(out[4], MediaError) and out[4].reason == "not_a_video"


# --- decode worker faults are the server's (issue 18) ----------------------------------------------

_DIE_ON_FIRST_REQUEST = """
import os, signal, sys
from multiprocessing.connection import Connection
marker = sys.argv[1]
if os.path.exists(marker) and sys.argv[2] == "once":
    os.execv(sys.executable, [sys.executable, "-m", "embedder.decode", *sys.argv[-2:]])
open(marker, "w").close()
Connection(int(sys.argv[-1])).recv()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_worker_killed_mid_decode_is_retried_on_a_fresh_worker(
    clips: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedder.decode as dec

    cmd = [sys.executable, "-c", _DIE_ON_FIRST_REQUEST, str(tmp_path / "died"), "once"]
    monkeypatch.setattr(dec, "WORKER_COMMAND", cmd)
    with Decoder(DecodeConfig(), LimitsConfig()) as d:
        m = d.decode(Path(clips[0]["path"]).read_bytes())  # the first worker dies of SIGKILL on this request
        assert (tmp_path / "died").exists() and len(m.frames) == 8


def test_worker_that_keeps_dying_is_a_retryable_server_fault_not_truncated(
    clips: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedder.decode as dec

    monkeypatch.setattr(
        dec, "WORKER_COMMAND", [sys.executable, "-c", _DIE_ON_FIRST_REQUEST, str(tmp_path / "m"), "always"]
    )
    with Decoder(DecodeConfig(), LimitsConfig()) as d:
        for media in (clips[0]["path"], Path(clips[0]["path"]).read_bytes()):
            with pytest.raises(ModelUnavailableError) as e:  # HTTP 503 + Retry-After, CLI exit 3
                d.decode(media)
            assert e.value.reason == "decode_worker_died"
            assert "reelvec-" not in e.value.detail


def test_kill_9_of_the_real_worker_during_a_decode(clips: list[dict[str, Any]]) -> None:
    import signal
    import threading
    import time

    with Decoder(DecodeConfig(workers=1), LimitsConfig()) as d:
        d.decode(clips[0]["path"])
        pid = d._idle[0].proc.pid
        os.kill(pid, signal.SIGSTOP)  # the request waits in its socket until the kill below
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(d.decode(clips[1]["path"])))
        t.start()
        deadline = time.monotonic() + 10
        while not d._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        t.join(60)
        assert result and len(result[0].frames) == 8  # answered by a fresh worker, not `truncated`
        assert d._idle[0].proc.pid != pid


# --- one picture is not a video, on every path (issue 18) -------------------------------------------


def _gif(path: Path, n: int) -> Path:
    from PIL import Image

    imgs = [Image.new("RGB", (64, 48), (i * 60 % 255, 10, 10)) for i in range(n)]
    imgs[0].save(path, format="GIF", save_all=n > 1, append_images=imgs[1:], duration=100, loop=0)
    return path


def _one_frame_mp4(path: Path) -> Path:
    _gop_clip(path, gop=1, n=1)
    return path


def test_still_gif_and_one_frame_video_are_not_videos(decoder: Decoder, tmp_path: Path) -> None:
    for bad in (_gif(tmp_path / "still.gif", 1), _gif(tmp_path / "still.mp4", 1), _one_frame_mp4(tmp_path / "one.mp4")):
        for media in (str(bad), bad.read_bytes()):
            with pytest.raises(MediaError) as e:
                decoder.decode(media)
            assert e.value.reason == "not_a_video", bad
        with pytest.raises(MediaError) as e:
            probe_file(str(bad))  # the CLI's pre-check
        assert e.value.reason == "not_a_video"
        for sampling in ("exact", "keyframes"):
            with pytest.raises(MediaError) as e:
                decode_file(str(bad), DecodeConfig(sampling=sampling), LimitsConfig())
            assert e.value.reason == "not_a_video"
    # An animated GIF moves: it is decoded like any clip.
    m = decoder.decode(str(_gif(tmp_path / "anim.gif", 6)))
    assert m.probe.num_frames == 6 and m.probe.duration_s > 0 and len(m.frames) == 6
