"""Decode a clip: probe it, sample K frames (decord, PyAV fallback), OCR frames if asked, and 16 kHz mono audio.

Only the sampled frames are decoded. Every decode runs in a killable worker process bounded in
wall-clock time, because decord's `get_batch` can deadlock holding the GIL when a header over-reports
the frame count (dmlc/decord#373); readers are dropped right after use (decord leaks on large frames).
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from embedder.config import DecodeConfig, LimitsConfig, OcrConfig
from embedder.types import DecodedMedia, MediaError, Probe, ReelvecError

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


def _open_container(path: str):
    import av

    try:
        return av.open(path, metadata_errors="ignore")
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
        return Probe(
            duration_s=duration,
            fps=fps,
            width=int(vs.codec_context.width or 0),
            height=int(vs.codec_context.height or 0),
            num_frames=frames,
            has_audio=bool(c.streams.audio),
            video_codec=str(vs.codec_context.name),
            size_bytes=size,
        )


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


@dataclass
class _Sampled:
    """A frame decoder's output: the sampled frames, the OCR frames when asked, and the decodable frame count."""

    frames: np.ndarray
    ts: list[float]
    idx: list[int]
    decodable: int
    ocr_frames: np.ndarray | None = None
    ocr_ts: list[float] = field(default_factory=list)


def _resized(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames at (width, height); area-averaged when they are larger (decord gives one size per reader)."""
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    import cv2

    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _decord_frames(path: str, p: Probe, cfg: DecodeConfig, ocr: OcrConfig | None = None) -> _Sampled:
    import decord

    size = _target_size(p, cfg.short_side)
    ocr_size = _target_size(p, ocr.short_side) if ocr else size
    # One reader (one open, one seek per frame) at the larger size; the other frame set is downscaled from it.
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
        union = sorted(set(idx) | set(ocr_idx))
        batch = vr.get_batch(union).asnumpy()
        stamps = [float(t) for t in vr.get_frame_timestamp(union)[:, 0]]
    finally:
        del vr
    at = {i: k for k, i in enumerate(union)}
    out = _Sampled(_resized(batch[[at[i] for i in idx]], size), [stamps[at[i]] for i in idx], idx, decodable)
    if ocr:
        out.ocr_frames = _resized(batch[[at[i] for i in ocr_idx]], ocr_size)
        out.ocr_ts = [stamps[at[i]] for i in ocr_idx]
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


def _pyav_frames(path: str, p: Probe, cfg: DecodeConfig, ocr: OcrConfig | None = None) -> _Sampled:
    """Sequential PyAV decode keeping only the sampled (and OCR) indices (fallback and reference decoder)."""
    import av

    w, h = _target_size(p, cfg.short_side)
    ow, oh = _target_size(p, ocr.short_side) if ocr else (w, h)
    want_idx = sample_indices(p.num_frames, p.fps, cfg) if p.num_frames else []
    ocr_idx = uniform_indices(p.num_frames, ocr.num_frames) if ocr and p.num_frames else []
    if cfg.keyframe_snap_s > 0 and p.num_frames:
        keys = _pyav_key_indices(path)
        want_idx = snap_to_keyframes(want_idx, keys, p.fps, cfg.keyframe_snap_s)
        ocr_idx = snap_to_keyframes(ocr_idx, keys, p.fps, cfg.keyframe_snap_s)
    want, want_ocr = set(want_idx), set(ocr_idx)
    last = max(want | want_ocr, default=None)
    frames: list[np.ndarray] = []
    ts: list[float] = []
    idx: list[int] = []
    ocr_frames: list[np.ndarray] = []
    ocr_ts: list[float] = []
    n = 0
    with _open_container(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for n, frame in enumerate(c.decode(stream)):
                t = float(frame.time) if frame.time is not None else n / p.fps
                if n in want:
                    frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                    ts.append(t)
                    idx.append(n)
                if n in want_ocr:
                    ocr_frames.append(frame.to_ndarray(format="rgb24", width=ow, height=oh))
                    ocr_ts.append(t)
                if last is not None and n >= last:
                    break
            n += 1
        except av.error.FFmpegError as e:
            if not frames:
                raise MediaError("truncated", f"video stream ends before any sampled frame: {e}") from e
            log.warning("PyAV stopped at frame %d: %s", n, e)
    if not frames or len(frames) < len(want):
        raise MediaError("truncated", f"video stream ends at frame {n}; header says {p.num_frames}")
    out = _Sampled(np.stack(frames), ts, idx, max(n, len(frames)))
    if ocr and ocr_frames:
        out.ocr_frames, out.ocr_ts = np.stack(ocr_frames), ocr_ts
    return out


def _read_audio(path: str, rate: int) -> np.ndarray | None:
    """16 kHz mono float32 via decord, PyAV when decord fails; None when there is no usable audio."""
    import decord

    try:
        ar = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=rate, mono=True)
        try:
            audio = ar[:].asnumpy()
        finally:
            del ar
        return np.ascontiguousarray(audio.reshape(-1), dtype=np.float32)
    except Exception as e:  # decord raises DECORDError and bare RuntimeErrors
        log.info("decord audio failed (%s); trying PyAV", e)
    import av

    try:
        with av.open(path) as c:
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


def decode_file(path: str, cfg: DecodeConfig, limits: LimitsConfig, ocr: OcrConfig | None = None) -> DecodedMedia:
    """Probe, check limits, sample frames (and `ocr.num_frames` OCR frames when `ocr` is given) and read audio."""
    p = probe_file(path)
    check_limits(p, limits)
    decoder = cfg.backend
    try:
        got = (_decord_frames if decoder == "decord" else _pyav_frames)(path, p, cfg, ocr)
    except MediaError:
        raise
    except Exception as e:  # decord's errors are untyped; fall back to PyAV behind the same function
        log.warning("decord failed on %s (%s); falling back to PyAV", path, e)
        decoder = "pyav"
        got = _pyav_frames(path, p, cfg, ocr)
    audio = _read_audio(path, cfg.audio_sample_rate) if p.has_audio else None
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
    )


def _worker_main(conn: Connection) -> None:
    """Decode loop of the worker process: (path, cfg, limits, ocr) in, DecodedMedia or an error out."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        path, cfg, limits, ocr = msg
        try:
            conn.send(("ok", decode_file(path, cfg, limits, ocr)))
        except ReelvecError as e:
            conn.send(("err", e))
        except Exception as e:
            conn.send(("err", MediaError("truncated", f"undecodable media: {type(e).__name__}: {e}")))


class Decoder:
    """Decodes media in a long-lived worker process; a decode past `timeout_s` kills and replaces it.

    With `ocr`, each decode also returns `ocr.num_frames` frames at `ocr.short_side` from the same pass."""

    def __init__(self, cfg: DecodeConfig, limits: LimitsConfig, ocr: OcrConfig | None = None) -> None:
        self.cfg = cfg
        self.limits = limits
        self.ocr = ocr
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _ensure_worker(self) -> Connection:
        if self._proc is None or self._proc.poll() is not None or self._conn is None:
            # A plain `python -m` child (not multiprocessing's spawn) so the caller's __main__ is never re-run.
            parent, child = socket.socketpair()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "embedder.decode", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
            child.close()
            self._conn = Connection(parent.detach())
        return self._conn

    def _kill_worker(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

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
            except MediaError as e:
                # Decoder messages name the file; an uploader must not learn the server's temp paths.
                raise MediaError(e.reason, e.detail.replace(tmp, "<upload>")) from None
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

    def _decode_path(self, path: str) -> DecodedMedia:
        with self._lock:
            conn = self._ensure_worker()
            conn.send((path, self.cfg, self.limits, self.ocr))
            if not conn.poll(self.cfg.timeout_s):
                self._kill_worker()
                raise MediaError("decode_timeout", f"decode took longer than decode.timeout_s={self.cfg.timeout_s}")
            try:
                status, value = conn.recv()
            except (EOFError, OSError) as e:
                self._kill_worker()
                raise MediaError("truncated", f"decoder crashed on this input: {e}") from e
        if status == "err":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._proc is not None and self._proc.poll() is None:
                try:
                    self._conn.send(None)
                    self._proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill_worker()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])))
