"""Re-upload variants of a clip (re-encoded, cropped, trimmed, mirrored) for near-duplicate tests and benches.

Generated at test or bench time, never committed. Usage: `python samples/variants.py SRC OUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from embedder.types import MediaError

X264 = {"preset": "medium", "crf": "30", "g": "50", "threads": "1"}
REENCODE_CRF = "38"  # the 'lower bitrate' re-upload: half size and a coarser quantizer
CROP_KEEP = 0.9  # crop keeps the central 90 % of each side...
CROP_SCALE = 0.75  # ...and the platform rescales it to 3/4 of the source size
TRIM_S = 1.0
AUDIO_BIT_RATE = 32_000


@dataclass(frozen=True)
class Clip:
    """A decoded clip: RGB frames, constant frame rate, and interleaved s16 audio (None without an audio track)."""

    frames: list[np.ndarray]
    fps: Fraction
    audio: np.ndarray | None
    rate: int
    layout: str

    @property
    def channels(self) -> int:
        return av.AudioLayout(self.layout).nb_channels


def read_clip(src: Path) -> Clip:
    """Decode every frame and the whole audio track of `src` in one pass."""
    try:
        container = av.open(str(src))
    except FileNotFoundError as e:
        raise MediaError("not_found", f"no such file: {src.name}") from e
    except av.error.FFmpegError as e:
        raise MediaError("not_a_video", f"{src.name} is not a readable video") from e
    with container:
        if not container.streams.video:
            raise MediaError("no_video_stream", f"{src.name} has no video stream")
        vs = container.streams.video[0]
        aus = container.streams.audio[0] if container.streams.audio else None
        rate, layout = (aus.codec_context.sample_rate, aus.codec_context.layout.name) if aus else (0, "mono")
        rs = av.AudioResampler(format="s16", layout=layout, rate=rate) if aus else None
        frames: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        for packet in container.demux(*[s for s in (vs, aus) if s is not None]):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    frames.append(frame.to_ndarray(format="rgb24"))
                elif rs is not None:
                    parts += [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
        if rs is not None:
            parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
        fps = Fraction(vs.average_rate or 25)
    if not frames:
        raise MediaError("no_frames", f"{src.name} has no decodable frames")
    audio = np.concatenate(parts).astype(np.int16) if parts else None
    return Clip(frames, fps, audio, rate, layout)


def write_clip(path: Path, clip: Clip, crf: str = X264["crf"]) -> None:
    """Encode `clip` as H.264 + AAC MP4, interleaved per frame; bitexact muxing and one thread keep it reproducible."""
    h, w = clip.frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream("libx264", rate=clip.fps, options={**X264, "crf": crf})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = None
        if clip.audio is not None:
            aus = out.add_stream("aac", rate=clip.rate, layout=clip.layout)
            aus.bit_rate = AUDIO_BIT_RATE
            # samples per video frame, so audio and video leave the muxer interleaved
            per_frame = clip.rate / clip.fps
        for i, rgb in enumerate(clip.frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts, vf.time_base = i, 1 / clip.fps
            out.mux(vs.encode(vf))
            if aus is not None and clip.audio is not None:
                last = i == len(clip.frames) - 1
                a, b = round(i * per_frame), len(clip.audio) // clip.channels if last else round((i + 1) * per_frame)
                chunk = clip.audio[a * clip.channels : b * clip.channels]
                if chunk.size:
                    af = av.AudioFrame.from_ndarray(chunk[np.newaxis, :], format="s16", layout=clip.layout)
                    af.sample_rate, af.pts, af.time_base = clip.rate, a, Fraction(1, clip.rate)
                    out.mux(aus.encode(af))
        out.mux(vs.encode(None))
        if aus is not None:
            out.mux(aus.encode(None))


def resized(frames: list[np.ndarray], w: int, h: int) -> list[np.ndarray]:
    """Frames resized to w x h (Lanczos), dimensions rounded down to even for yuv420p."""
    w, h = max(2, w - w % 2), max(2, h - h % 2)
    return [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.LANCZOS)) for f in frames]


def reencode(c: Clip) -> Clip:
    """Half the resolution (written at a higher CRF, so a lower bitrate)."""
    h, w = c.frames[0].shape[:2]
    return replace(c, frames=resized(c.frames, w // 2, h // 2))


def crop(c: Clip) -> Clip:
    """The central CROP_KEEP of each side, rescaled to CROP_SCALE of the source size."""
    h, w = c.frames[0].shape[:2]
    dy, dx = round(h * (1 - CROP_KEEP) / 2), round(w * (1 - CROP_KEEP) / 2)
    cut = [f[dy : h - dy, dx : w - dx] for f in c.frames]
    return replace(c, frames=resized(cut, round(w * CROP_SCALE), round(h * CROP_SCALE)))


def trim(c: Clip) -> Clip:
    """The clip without its first TRIM_S seconds, video and audio alike."""
    skip = round(TRIM_S * c.fps)
    if skip >= len(c.frames):
        raise MediaError("too_short", f"clip is not longer than {TRIM_S:g} s")
    audio = None if c.audio is None else c.audio[round(TRIM_S * c.rate) * c.channels :]
    return replace(c, frames=c.frames[skip:], audio=audio)


def mirror(c: Clip) -> Clip:
    """Flipped left to right."""
    return replace(c, frames=[np.ascontiguousarray(f[:, ::-1]) for f in c.frames])


VARIANTS: dict[str, tuple[Callable[[Clip], Clip], str]] = {
    "reencode": (reencode, REENCODE_CRF),
    "crop": (crop, X264["crf"]),
    "trim": (trim, X264["crf"]),
    "mirror": (mirror, X264["crf"]),
}


def make_variants(src: Path, out_dir: Path) -> dict[str, Path]:
    """Write `<stem>_<variant>.mp4` for every variant of `src` into `out_dir`; variant name → path."""
    clip = read_clip(Path(src))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (transform, crf) in VARIANTS.items():
        paths[name] = out_dir / f"{Path(src).stem}_{name}.mp4"
        write_clip(paths[name], transform(clip), crf)
    return paths


def main() -> None:
    """CLI: write the variants and print one JSON object {variant: path}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="source video")
    ap.add_argument("out_dir", type=Path, help="folder for the variants (created if missing)")
    args = ap.parse_args()
    try:
        paths = make_variants(args.src, args.out_dir)
    except MediaError as e:
        print(f"error ({e.reason}): {e.detail}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
