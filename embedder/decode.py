"""Decode a clip: probe it, sample K frames (decord, PyAV fallback; or keyframes only), OCR and fingerprint frames
if asked, and 16 kHz mono audio, every frame resized in the worker to the size its consumer needs.

Only the sampled frames are decoded. Decodes run in a pool of killable worker processes (plain `python -m`
children, so CUDA/NVDEC is safe in them), each bounded in wall-clock time, because decord's `get_batch` can
deadlock holding the GIL when a header over-reports the frame count (dmlc/decord#373); readers are dropped right
after use (decord leaks on large frames).
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from embedder.config import DecodeConfig, FingerprintConfig, LimitsConfig, OcrConfig
from embedder.types import DecodedMedia, MediaError, ModelUnavailableError, Probe, ReelvecError

log = logging.getLogger(__name__)
_ROOT = str(Path(__file__).resolve().parent.parent)

# Container signatures: a file that starts like a video but will not open is "truncated", not "not_a_video".
_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x47"),  # MPEG-TS sync byte
)


def _looks_like_video(head: bytes) -> bool:
    return any(head[off : off + len(sig)] == sig for off, sig in _MAGIC)


def _open_container(path: str, hwaccel: Any = None):
    import av

    try:
        return av.open(path, metadata_errors="ignore", hwaccel=hwaccel)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        with open(path, "rb") as f:
            head = f.read(16)
        reason = "truncated" if _looks_like_video(head) else "not_a_video"
        raise MediaError(reason, f"cannot open as video: {e}") from e


def probe_file(path: str) -> Probe:
    """Read container headers with PyAV (no frame decoded): duration, fps, size, audio presence."""
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError("empty", "file is empty")
    with _open_container(path) as c:
        return _probe(c, size)[0]


def _probe(c: Any, size: int) -> tuple[Probe, bool]:
    """The probe of an open container, and whether its packets had to be read (headers without a frame count)."""
    # A still image (PNG, JPEG… even renamed .mp4) opens through an image demuxer; it is not a truncated video.
    fmt = c.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        raise MediaError("not_a_video", f"this is a still image ({fmt.removesuffix('_pipe')}), not a video")
    if not c.streams.video:
        raise MediaError("no_video_stream", "container has no video stream")
    vs = c.streams.video[0]
    fps = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
    if vs.duration is not None and vs.time_base is not None:
        duration = float(vs.duration * vs.time_base)
    elif c.duration is not None:
        duration = c.duration / 1_000_000
    else:
        duration = 0.0
    frames = int(vs.frames or 0) or round(duration * fps)
    demuxed = frames < 2 or duration <= 0
    if demuxed:  # no header figure (streamed WebM, GIF): count the packets instead
        counted, end = _count_packets(c, vs)
        frames, duration = (frames if frames >= 2 else counted), (duration if duration > 0 else end)
    # A still GIF (or any one-picture input) is not a video on any path (issue 18).
    if frames < 2 or duration <= 0:
        raise MediaError("not_a_video", f"a single picture ({frames} frame(s), {duration:.2f} s), not a video")
    probe = Probe(
        duration_s=duration,
        fps=fps,
        width=int(vs.codec_context.width or 0),
        height=int(vs.codec_context.height or 0),
        num_frames=frames,
        has_audio=bool(c.streams.audio),
        video_codec=str(vs.codec_context.name),
        size_bytes=size,
    )
    return probe, demuxed


def _count_packets(c: Any, vs: Any) -> tuple[int, float]:
    """Video packets and the end time of the last one, by demuxing alone (nothing is decoded)."""
    n, end = 0, 0.0
    for pkt in c.demux(vs):
        if pkt.size and pkt.pts is not None and pkt.time_base is not None:
            n += 1
            end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
    return n, end


def check_limits(p: Probe, limits: LimitsConfig) -> None:
    """Raise `MediaError` for a clip over the configured byte, duration or pixel limits."""
    if p.size_bytes > limits.max_bytes:
        raise MediaError("too_large", f"{p.size_bytes} bytes > limits.max_bytes={limits.max_bytes}")
    if p.duration_s > limits.max_duration_s:
        raise MediaError("too_long", f"{p.duration_s:.1f} s > limits.max_duration_s={limits.max_duration_s}")
    if p.width * p.height > limits.max_pixels:
        raise MediaError(
            "too_many_pixels", f"{p.width}x{p.height} > limits.max_pixels={limits.max_pixels} pixels per frame"
        )
    if p.width <= 0 or p.height <= 0:
        raise MediaError("no_video_stream", "video stream has no frame size")


def uniform_indices(num_frames: int, k: int) -> list[int]:
    """Centres of `k` equal segments of `num_frames` frames (all frames when there are fewer)."""
    k = min(k, num_frames)
    return sorted({min(int((i + 0.5) * num_frames / k), num_frames - 1) for i in range(k)}) if k > 0 else []


def sample_indices(num_frames: int, fps: float, cfg: DecodeConfig) -> list[int]:
    """Frame indices to decode: centers of K equal segments (uniform) or one every 1/fps s, at most K."""
    if num_frames <= 0:
        return []
    if cfg.mode == "fps":
        step = max(fps / cfg.fps, 1.0)
        idx = [int(step * (i + 0.5)) for i in range(int(num_frames / step))] or [num_frames // 2]
        if len(idx) > cfg.num_frames:
            idx = [idx[int((i + 0.5) * len(idx) / cfg.num_frames)] for i in range(cfg.num_frames)]
    else:
        idx = uniform_indices(num_frames, cfg.num_frames)
    return sorted({min(i, num_frames - 1) for i in idx})


def snap_to_keyframes(idx: list[int], keys: Sequence[int], fps: float, tol_s: float) -> list[int]:
    """Each sampled index moved to the nearest keyframe at most `tol_s` seconds away that no earlier sample took
    (a keyframe decodes alone; an exact frame costs every frame since the previous keyframe); else kept exact."""
    if tol_s <= 0 or not keys or not idx:
        return idx
    ks = sorted(keys)
    taken: set[int] = set()
    out = []
    for i in idx:
        j = bisect.bisect_left(ks, i)
        near = [k for k in ks[max(0, j - 1) : j + 1] if abs(k - i) <= tol_s * fps and k not in taken]
        pick = min(near, key=lambda k: abs(k - i)) if near else i
        taken.add(pick)
        out.append(pick)
    return sorted(out) if len(taken) == len(idx) else idx


def _target_size(p: Probe, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side`, aspect kept, even, never upscaled."""
    scale = min(1.0, short_side / min(p.width, p.height))
    return max(2, round(p.width * scale / 2) * 2), max(2, round(p.height * scale / 2) * 2)


def fp_indices(num_frames: int, fps: float, fp: FingerprintConfig) -> list[int]:
    """Fingerprint frame indices: one every 1/`fp.fps` s over the whole clip (every frame when the clip is slower)."""
    step = max(fps / fp.fps, 1.0)
    return sorted({min(round(i * step), num_frames - 1) for i in range(int(np.ceil(num_frames / step)))})


def _gray(rgb: np.ndarray, fp: FingerprintConfig) -> np.ndarray:
    """An RGB frame as an `fp.size`² grayscale thumbnail (area-averaged, aspect not kept)."""
    import cv2

    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (fp.size, fp.size), interpolation=cv2.INTER_AREA)


@dataclass
class _Sampled:
    """A frame decoder's output: the sampled frames, the OCR and fingerprint frames when asked, the frame count."""

    frames: np.ndarray
    ts: list[float]
    idx: list[int]
    decodable: int
    ocr_frames: np.ndarray | None = None
    ocr_ts: list[float] = field(default_factory=list)
    fp_frames: np.ndarray | None = None
    fp_ts: list[float] = field(default_factory=list)


def _resized(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames at (width, height); area-averaged when they are larger (decord gives one size per reader)."""
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    import cv2

    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _decord_frames(
    path: str, p: Probe, cfg: DecodeConfig, ocr: OcrConfig | None = None, fp: FingerprintConfig | None = None
) -> _Sampled:
    import decord

    size = _target_size(p, cfg.short_side)
    ocr_size = _target_size(p, ocr.short_side) if ocr else size
    # One reader (one open, one seek per frame) at the larger size; the other frame sets are downscaled from it.
    w, h = max(size, ocr_size)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    try:
        decodable = len(vr)
        header = p.num_frames
        if header and abs(decodable - header) > cfg.frame_count_tolerance * header + 1:
            log.warning("frame count mismatch: header %d, index %d; sampling within the index", header, decodable)
        idx = sample_indices(decodable, p.fps, cfg)
        if not idx:
            raise MediaError("truncated", "no decodable frames")
        ocr_idx = uniform_indices(decodable, ocr.num_frames) if ocr else []
        if cfg.keyframe_snap_s > 0:
            keys = [int(k) for k in vr.get_key_indices()]
            idx = snap_to_keyframes(idx, keys, p.fps, cfg.keyframe_snap_s)
            ocr_idx = snap_to_keyframes(ocr_idx, keys, p.fps, cfg.keyframe_snap_s)
        fp_idx = fp_indices(decodable, p.fps, fp) if fp else []
        union = sorted(set(idx) | set(ocr_idx) | set(fp_idx))
        batch = vr.get_batch(union).asnumpy()
        stamps = [float(t) for t in vr.get_frame_timestamp(union)[:, 0]]
    finally:
        del vr
    at = {i: k for k, i in enumerate(union)}
    out = _Sampled(_resized(batch[[at[i] for i in idx]], size), [stamps[at[i]] for i in idx], idx, decodable)
    if ocr:
        out.ocr_frames = _resized(batch[[at[i] for i in ocr_idx]], ocr_size)
        out.ocr_ts = [stamps[at[i]] for i in ocr_idx]
    if fp:
        out.fp_frames = np.stack([_gray(batch[at[i]], fp) for i in fp_idx])
        out.fp_ts = [stamps[at[i]] for i in fp_idx]
    return out


def _pyav_key_indices(path: str) -> list[int]:
    """Presentation-order indices of the keyframes, from the packets alone (nothing is decoded)."""
    pts: list[int] = []
    keys: list[int] = []
    with _open_container(path) as c:
        for pkt in c.demux(c.streams.video[0]):
            if pkt.pts is None:
                continue
            pts.append(pkt.pts)
            if pkt.is_keyframe:
                keys.append(pkt.pts)
    rank = {t: r for r, t in enumerate(sorted(pts))}
    return sorted(rank[k] for k in keys)


def _pyav_frames(
    path: str,
    p: Probe,
    cfg: DecodeConfig,
    ocr: OcrConfig | None = None,
    fp: FingerprintConfig | None = None,
    hwaccel: Any = None,
) -> _Sampled:
    """Sequential PyAV decode keeping only the sampled (and OCR, fingerprint) indices (fallback, reference, NVDEC)."""
    import av

    w, h = _target_size(p, cfg.short_side)
    ow, oh = _target_size(p, ocr.short_side) if ocr else (w, h)
    want_idx = sample_indices(p.num_frames, p.fps, cfg)
    ocr_idx = uniform_indices(p.num_frames, ocr.num_frames) if ocr else []
    if cfg.keyframe_snap_s > 0:
        keys = _pyav_key_indices(path)
        want_idx = snap_to_keyframes(want_idx, keys, p.fps, cfg.keyframe_snap_s)
        ocr_idx = snap_to_keyframes(ocr_idx, keys, p.fps, cfg.keyframe_snap_s)
    want, want_ocr, want_fp = set(want_idx), set(ocr_idx), set(fp_indices(p.num_frames, p.fps, fp) if fp else [])
    last = max(want | want_ocr | want_fp, default=None)
    s = fp.size if fp else 0
    got: dict[str, tuple[list[np.ndarray], list[float]]] = {"clip": ([], []), "ocr": ([], []), "fp": ([], [])}
    idx: list[int] = []
    n = 0
    with _open_container(path, hwaccel) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for n, frame in enumerate(c.decode(stream)):
                t = float(frame.time) if frame.time is not None else n / p.fps
                for key, wanted, conv in (
                    ("clip", want, {"format": "rgb24", "width": w, "height": h}),
                    ("ocr", want_ocr, {"format": "rgb24", "width": ow, "height": oh}),
                    ("fp", want_fp, {"format": "gray", "width": s, "height": s, "interpolation": "AREA"}),
                ):
                    if n in wanted:
                        got[key][0].append(frame.to_ndarray(**conv))
                        got[key][1].append(t)
                if n in want:
                    idx.append(n)
                if last is not None and n >= last:
                    break
            n += 1
        except av.error.FFmpegError as e:
            if not idx:
                raise MediaError("truncated", f"video stream ends before any sampled frame: {e}") from e
            log.warning("PyAV stopped at frame %d: %s", n, e)
    frames, ts = got["clip"]
    if not frames or len(frames) < len(want):
        raise MediaError("truncated", f"video stream ends at frame {n}; header says {p.num_frames}")
    out = _Sampled(np.stack(frames), ts, idx, max(n, len(frames)))
    if ocr and got["ocr"][0]:
        out.ocr_frames, out.ocr_ts = np.stack(got["ocr"][0]), got["ocr"][1]
    if fp and got["fp"][0]:
        out.fp_frames, out.fp_ts = np.stack(got["fp"][0]), got["fp"][1]
    return out


class _Picker:
    """Takes keyframes in time order and, for each target time, converts the nearest one as soon as the next keyframe
    shows it cannot be beaten. It holds at most one frame: frames kept back starve the decoder's buffer pool (a
    keyframe decode took 2x as long when every keyframe was kept)."""

    def __init__(self, targets: list[float], size: tuple[int, int]) -> None:
        from av.video.reformatter import VideoReformatter

        self.targets = sorted(targets)
        self.j = 0
        self.size = size
        self.ref = VideoReformatter()  # one scaler context reused across frames (0.6 ms a frame saved)
        self.prev: tuple[float, Any] | None = None
        self.frames: list[np.ndarray] = []
        self.ts: list[float] = []

    def _take(self, t: float, f: Any) -> None:
        if self.ts and self.ts[-1] == t:  # two targets nearest to one keyframe: it is taken once
            return
        w, h = self.size
        self.frames.append(self.ref.reformat(f, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray())
        self.ts.append(t)

    def offer(self, t: float, f: Any) -> None:
        while self.j < len(self.targets) and self.targets[self.j] <= t:
            tj = self.targets[self.j]
            if self.prev is not None and tj - self.prev[0] <= t - tj:
                self._take(*self.prev)
            else:
                self._take(t, f)
            self.j += 1
        self.prev = (t, f) if self.j < len(self.targets) else None

    def finish(self) -> None:
        """Targets after the last keyframe take it."""
        if self.prev is not None:
            self._take(*self.prev)
        self.prev = None


def _keyframe_pass(
    c: Any, p: Probe, cfg: DecodeConfig, ocr: OcrConfig | None, fp: FingerprintConfig | None
) -> tuple[_Sampled, np.ndarray | None]:
    """One demux pass of an open container that decodes keyframes only (skip_frame=NONKEY) and the audio track:
    each sampled (and OCR) time takes its nearest keyframe; fingerprint frames are keyframes at most `fp.fps` a
    second."""
    import av
    from av.video.reformatter import VideoReformatter

    clip = _Picker([i / p.fps for i in sample_indices(p.num_frames, p.fps, cfg)], _target_size(p, cfg.short_side))
    ocr_t = [i / p.fps for i in uniform_indices(p.num_frames, ocr.num_frames)] if ocr else []
    ocr_pick = _Picker(ocr_t, _target_size(p, ocr.short_side) if ocr else (0, 0))
    fp_frames: list[np.ndarray] = []
    fp_ts: list[float] = []
    fp_ref = VideoReformatter()
    vs = c.streams.video[0]
    vs.codec_context.skip_frame = "NONKEY"
    aus = c.streams.audio[0] if p.has_audio and c.streams.audio else None
    audio = _AudioSink(cfg.audio_sample_rate)
    packets = 0
    try:
        for pkt in c.demux(*([vs, aus] if aus else [vs])):
            if pkt.stream is not vs:
                audio.add(pkt)
                continue
            packets += 1 if pkt.size else 0
            for f in pkt.decode():
                t = float(f.time) if f.time is not None else 0.0
                clip.offer(t, f)
                ocr_pick.offer(t, f)
                if fp and (not fp_ts or t >= fp_ts[-1] + 1 / fp.fps - 1e-3):
                    gray = fp_ref.reformat(f, width=fp.size, height=fp.size, format="gray", interpolation="AREA")
                    fp_frames.append(gray.to_ndarray())
                    fp_ts.append(t)
    except av.error.FFmpegError as e:
        if clip.prev is None and not clip.frames:
            raise MediaError("truncated", f"video stream ends before any keyframe: {e}") from e
        log.warning("PyAV stopped after %d packets: %s", packets, e)
    clip.finish()
    ocr_pick.finish()
    if not clip.frames:
        raise MediaError("truncated", "no decodable keyframe")
    out = _Sampled(np.stack(clip.frames), clip.ts, [round(t * p.fps) for t in clip.ts], packets)
    if ocr and ocr_pick.frames:
        out.ocr_frames, out.ocr_ts = np.stack(ocr_pick.frames), ocr_pick.ts
    if fp and fp_frames:
        out.fp_frames, out.fp_ts = np.stack(fp_frames), fp_ts
    return out, audio.result()


class _AudioSink:
    """Audio packets decoded to mono float32 at `rate` as they are demuxed (best effort: a bad packet is dropped)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.chunks: list[np.ndarray] = []
        self.res: Any = None

    def add(self, pkt: Any) -> None:
        import av

        try:
            for frame in pkt.decode():
                if frame.sample_rate == self.rate and frame.layout.nb_channels == 1 and frame.format.name == "fltp":
                    self.chunks.append(frame.to_ndarray().reshape(-1))  # already what Whisper takes
                    continue
                if self.res is None:
                    self.res = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
                self.chunks += [a.to_ndarray().reshape(-1) for a in self.res.resample(frame)]
        except av.error.FFmpegError as e:
            log.info("audio packet dropped: %s", e)

    def result(self) -> np.ndarray | None:
        if self.res is not None:
            self.chunks += [a.to_ndarray().reshape(-1) for a in self.res.resample(None)]
        return np.concatenate(self.chunks).astype(np.float32, copy=False) if self.chunks else None


def _read_audio(path: str, rate: int) -> np.ndarray | None:
    """16 kHz mono float32 via PyAV; None when there is no usable audio.

    Not decord's AudioReader: the 0.6.0 wheel leaks ~30 MiB per 100 clips (dmlc/decord#189, fixed only in its
    unreleased master), which grew the decode worker +280 MiB over the 1,000-upload soak; PyAV gives the same samples
    (within 2e-7) in half the time (issue 18)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.audio:
                return None
            res = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1) for frame in c.decode(c.streams.audio[0]) for out in res.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1) for out in res.resample(None)]
        return np.concatenate(chunks).astype(np.float32) if chunks else None
    except av.error.FFmpegError as e:
        log.warning("audio track unreadable, continuing without audio: %s", e)
        return None


_NVDEC: dict[str, bool] = {}  # per worker process: codec -> whether NVDEC initialises for it


def nvdec_usable(codec: str) -> bool:
    """Whether PyAV's CUDA hwaccel can decode `codec` in this process (cached; False without a GPU or libnvcuvid)."""
    if codec not in _NVDEC:
        try:
            from av.codec import Codec
            from av.codec.hwaccel import HWAccel

            HWAccel(device_type="cuda", allow_software_fallback=False).create(Codec(codec, "r"))
            _NVDEC[codec] = True
        except Exception as e:  # no device, no driver, codec without a cuvid decoder: all mean "use the CPU"
            log.info("NVDEC not usable for %s: %s", codec, e)
            _NVDEC[codec] = False
    return _NVDEC[codec]


def _hwaccel(p: Probe, cfg: DecodeConfig) -> Any:
    """The CUDA hwaccel when `decode.device` asks for NVDEC and it works here; None for the CPU.

    auto is the CPU for both samplings, by measurement (bench/RESULTS.md gpu, H200, 16 decode processes): NVDEC
    copies every frame back to the host and ran 2.73 clips/s exact and 3.50 keyframes-only, against the CPU's
    11.97 and 114.11. Only an explicit `cuda` uses it."""
    if cfg.device in ("cpu", "auto"):
        return None
    if nvdec_usable(p.video_codec):
        from av.codec.hwaccel import HWAccel

        return HWAccel(device_type="cuda", allow_software_fallback=False)
    if cfg.device == "cuda":
        raise ModelUnavailableError(
            "nvdec_unavailable", f"decode.device is cuda but NVDEC cannot decode {p.video_codec} on this machine"
        )
    return None


def decode_file(
    path: str,
    cfg: DecodeConfig,
    limits: LimitsConfig,
    ocr: OcrConfig | None = None,
    fp: FingerprintConfig | None = None,
) -> DecodedMedia:
    """Probe, check limits, sample frames (plus OCR frames for `ocr` and fingerprint frames for `fp`), read audio."""
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError("empty", "file is empty")
    with _open_container(path) as c:  # probed and (keyframes on the CPU) decoded from one open
        p, demuxed = _probe(c, size)
        check_limits(p, limits)
        hw = _hwaccel(p, cfg)
        if cfg.sampling == "keyframes" and hw is None and not demuxed:
            got, audio = _keyframe_pass(c, p, cfg, ocr, fp)
            return _media(p, got, audio, "pyav")
    if cfg.sampling == "keyframes":
        with _open_container(path, hw) as c:
            got, audio = _keyframe_pass(c, p, cfg, ocr, fp)
        return _media(p, got, audio, "pyav-nvdec" if hw is not None else "pyav")
    decoder = "pyav-nvdec" if hw is not None else cfg.backend
    try:
        read = _decord_frames if decoder == "decord" else partial(_pyav_frames, hwaccel=hw)
        got = read(path, p, cfg, ocr, fp)
    except MediaError:
        raise
    except Exception as e:  # decord's errors are untyped; fall back to PyAV behind the same function
        if decoder != "decord":
            raise
        log.warning("decord failed on %s (%s); falling back to PyAV", path, e)
        decoder = "pyav"
        got = _pyav_frames(path, p, cfg, ocr, fp)
    return _media(p, got, _read_audio(path, cfg.audio_sample_rate) if p.has_audio else None, decoder)


def _media(p: Probe, got: _Sampled, audio: np.ndarray | None, decoder: str) -> DecodedMedia:
    return DecodedMedia(
        probe=p,
        frames=got.frames,
        timestamps_s=got.ts,
        frame_indices=got.idx,
        audio=audio,
        decoder=decoder,
        decodable_frames=got.decodable,
        ocr_frames=got.ocr_frames,
        ocr_timestamps_s=got.ocr_ts,
        fp_frames=got.fp_frames,
        fp_timestamps_s=got.fp_ts,
    )


_ARRAYS = ("frames", "ocr_frames", "fp_frames", "audio")


@dataclass(frozen=True)
class _Slot:
    """Where one array of a decoded result lies in the worker's shared memory file."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


def _arrays_out(m: DecodedMedia, fd: int) -> DecodedMedia:
    """`m` with its arrays written to the shared memory file `fd` and replaced by their slots: a few MB of frames
    then cross without a socket's many small copies and wake-ups (80 ms a clip on a loaded 2-core box)."""
    off, slots = 0, {}
    for name in _ARRAYS:
        a = getattr(m, name)
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        view = memoryview(a).cast("B") if a.size else memoryview(b"")
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], off + done)
        slots[name] = _Slot(off, a.shape, a.dtype.str)
        off += a.nbytes
    return replace(m, **slots)


def _arrays_in(m: DecodedMedia, fd: int) -> DecodedMedia:
    """The arrays of a result from `_arrays_out`, copied out of the shared memory file."""
    arrays = {}
    for name in _ARRAYS:
        slot = getattr(m, name)
        if not isinstance(slot, _Slot):
            continue
        a = np.empty(slot.shape, np.dtype(slot.dtype))
        view = memoryview(a).cast("B") if a.size else memoryview(b"")
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], slot.offset + done)
            if got <= 0:
                raise _WorkerDied("shared memory result is short")
            done += got
        arrays[name] = a
    return replace(m, **arrays)


def _worker_main(conn: Connection, fd: int) -> None:
    """Decode loop of a worker process: (path, cfg, limits, ocr, fp) in, DecodedMedia (arrays in the shared
    memory file `fd` when there is one) or an error out."""
    # Imported before the first request, so a worker spawned to replace a recycled one is ready when it is needed.
    import av  # noqa: F401
    import cv2  # noqa: F401
    import decord  # noqa: F401

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            m = decode_file(*msg)
            conn.send(("ok", _arrays_out(m, fd) if fd >= 0 else m))
        except ReelvecError as e:
            conn.send(("err", e))
        except MemoryError:
            os._exit(70)  # out of memory is the server's fault: die, and let the parent retry on a fresh worker
        except Exception as e:
            conn.send(("err", MediaError("truncated", f"undecodable media: {type(e).__name__}: {e}")))


# How a worker process starts: a plain `python -m` child (not multiprocessing's fork or spawn) so the caller's
# __main__ is never re-run and CUDA initialises cleanly in it. The memory file's and the socket's descriptors are
# appended.
WORKER_COMMAND = [sys.executable, "-m", "embedder.decode"]


class _WorkerDied(Exception):
    """The worker process ended (signal, OOM, exit) before answering."""


class _Worker:
    """One decode worker process, its socket and the shared memory file its results' arrays come back in."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        # An anonymous memory file (Linux), inherited by the child: nothing to name, nothing left behind.
        self.fd = os.memfd_create("reelvec-decode", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else -1
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        fds = (self.fd, child.fileno()) if self.fd >= 0 else (child.fileno(),)
        self.proc = subprocess.Popen(
            [*WORKER_COMMAND, str(self.fd), str(child.fileno())], pass_fds=fds, env=env, stdin=subprocess.DEVNULL
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.answered = 0  # requests answered (decoded or refused): what `decode.recycle_after` counts

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, msg: tuple, timeout_s: float) -> tuple[str, Any] | None:
        """Send one request; its answer, None past `timeout_s`, or `_WorkerDied`."""
        try:
            self.conn.send(msg)
            if not self.conn.poll(timeout_s):
                return None
            status, value = self.conn.recv()
        except (EOFError, OSError) as e:
            raise _WorkerDied(str(e)) from e
        self.answered += 1
        return status, (_arrays_in(value, self.fd) if status == "ok" and self.fd >= 0 else value)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.conn.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within 2 s."""
        if self.proc.poll() is None:
            try:
                self.conn.send(None)
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Decoder:
    """Decodes media in a pool of long-lived worker processes (`decode.workers`, 0 = one per core, started when
    concurrent calls need them); a decode past `timeout_s` kills its worker, a worker that dies is replaced, and a
    worker that has answered `decode.recycle_after` requests is retired for a fresh one.

    With `ocr`, each decode also returns `ocr.num_frames` frames at `ocr.short_side`; with `fingerprint`, grayscale
    fingerprint frames; both from the same decode pass. Thread-safe: call `decode` from as many threads as workers."""

    def __init__(
        self,
        cfg: DecodeConfig,
        limits: LimitsConfig,
        ocr: OcrConfig | None = None,
        fingerprint: FingerprintConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.limits = limits
        self.ocr = ocr
        self.fingerprint = fingerprint
        self.size = cfg.workers or os.cpu_count() or 1
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False

    @property
    def workers(self) -> int:
        """Worker processes alive now (idle or busy)."""
        return len(self.pids)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers alive now (idle or busy), to follow recycling."""
        with self._lock:
            return sorted(w.pid for w in [*self._idle, *self._busy] if w.alive())

    def decode(self, media: bytes | str | Path) -> DecodedMedia:
        """Decode a path or raw bytes; bytes are size-checked before they touch the disk."""
        if isinstance(media, bytes | bytearray | memoryview):
            data = bytes(media)
            if not data:
                raise MediaError("empty", "upload is empty")
            if len(data) > self.limits.max_bytes:
                raise MediaError("too_large", f"{len(data)} bytes > limits.max_bytes={self.limits.max_bytes}")
            fd, tmp = tempfile.mkstemp(prefix="reelvec-", suffix=".media")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return self._decode_path(tmp)
            except ReelvecError as e:
                # Decoder messages name the file; an uploader must not learn the server's temp paths.
                raise type(e)(e.reason, e.detail.replace(tmp, "<upload>")) from None
            finally:
                os.unlink(tmp)
        path = str(media)
        if not os.path.isfile(path):
            raise MediaError("not_found", f"no such file: {path}")
        size = os.path.getsize(path)
        if size == 0:
            raise MediaError("empty", f"file is empty: {path}")
        if size > self.limits.max_bytes:
            raise MediaError("too_large", f"{size} bytes > limits.max_bytes={self.limits.max_bytes}")
        return self._decode_path(path)

    def decode_many(self, media: Sequence[bytes | str | Path]) -> list[DecodedMedia | ReelvecError]:
        """Decode several inputs at once across the worker pool; a failure takes its input's slot."""
        from concurrent.futures import ThreadPoolExecutor

        def one(m: bytes | str | Path) -> DecodedMedia | ReelvecError:
            try:
                return self.decode(m)
            except ReelvecError as e:
                return e

        with ThreadPoolExecutor(max(1, min(self.size, len(media)))) as pool:
            return list(pool.map(one, media))

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:  # no worker is started that `close` would not stop
                raise ModelUnavailableError("decode_worker_died", "the decoder is closed")
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    break
                w.kill()
            else:
                w = _Worker()
            self._busy.add(w)
            return w

    def _checkin(self, w: _Worker, keep: bool) -> None:
        """Return a worker after its call: back to the idle pool, or killed (`keep` False, or the decoder closed),
        or retired after `decode.recycle_after` answers with a fresh worker spawned in its place."""
        recycle = keep and 0 < self.cfg.recycle_after <= w.answered
        fresh = self._spare() if recycle and not self._closed else None
        with self._lock:
            self._busy.discard(w)
            keep = keep and not recycle and not self._closed
            if keep:
                self._idle.append(w)
            if fresh is not None and not self._closed:
                self._idle.append(fresh)
                fresh = None
        if fresh is not None:  # closed while it started
            fresh.kill()
        if not keep:
            # An answered worker is idle: nothing is in flight on it, so killing it loses nothing; `kill` waits for
            # it, so no zombie is left (recycling, issue 18).
            w.kill()

    @staticmethod
    def _spare() -> _Worker | None:
        """A fresh worker for a recycled one; None when it cannot start now (the next checkout tries again, so the
        answer just received is never lost to it)."""
        try:
            return _Worker()
        except OSError as e:
            log.warning("decode worker replacement did not start: %s", e)
            return None

    def _decode_path(self, path: str) -> DecodedMedia:
        msg = (path, self.cfg, self.limits, self.ocr, self.fingerprint)
        with self._slots:
            # A worker that dies mid-decode (signal, OOM) is the server's fault, not the input's: one retry on a
            # fresh worker, then a retryable error; `truncated` stays for files that really are (issue 18).
            for attempt in (1, 2):
                w = self._checkout()
                try:
                    answer = w.call(msg, self.cfg.timeout_s)
                except _WorkerDied as e:
                    self._checkin(w, keep=False)
                    log.warning("decode worker died (attempt %d): %s", attempt, e)
                    continue
                self._checkin(w, keep=answer is not None)
                if answer is None:
                    raise ModelUnavailableError(
                        "decode_timeout", f"decode took longer than decode.timeout_s={self.cfg.timeout_s}"
                    )
                status, value = answer
                if status == "err":
                    raise value
                return value
        raise ModelUnavailableError("decode_worker_died", "the decode worker stopped twice on this input; retry later")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._idle = [*self._idle, *self._busy], []
            self._busy = set()
        for w in workers:
            w.stop()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        for w in [*getattr(self, "_idle", []), *getattr(self, "_busy", set())]:
            if w.proc.poll() is None:
                w.proc.kill()


if __name__ == "__main__":
    # Run from the imported module, so what the worker pickles (`_Slot`) names `embedder.decode`, not `__main__`.
    from embedder.decode import _worker_main as worker_main

    worker_main(Connection(int(sys.argv[-1])), int(sys.argv[-2]))
