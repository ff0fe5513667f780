"""Re-upload variants of a clip (re-encoded, cropped, trimmed, mirrored) for near-duplicate tests and benches.

`VARIANTS`/`make_variants` are the fixed set the CLI and serve tests use; `FAMILIES` are the parameterised edits of
issue 17 (trims, speed, re-encode, crop, mirror, 9:16 pad, overlay, brightness/contrast, frame rate, new audio),
each drawing its strength from a random generator. `decode_for_fingerprint` reads a file the way the fingerprints
expect it (dense grey frames, 16 kHz mono audio). Generated at test or bench time, never committed.
Usage: `python samples/variants.py SRC OUT_DIR`.
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


def write_clip(path: Path, clip: Clip, crf: str = X264["crf"], preset: str = X264["preset"]) -> None:
    """Encode `clip` as H.264 + AAC MP4, interleaved per frame; bitexact muxing and one thread keep it reproducible."""
    h, w = clip.frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream("libx264", rate=clip.fps, options={**X264, "crf": crf, "preset": preset})
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


def _speed_audio(c: Clip, factor: float, keep_pitch: bool) -> np.ndarray | None:
    """Audio played `factor` times faster: atempo (same pitch) or resampled (pitch moves with the speed)."""
    if c.audio is None:
        return None
    if not keep_pitch:
        x = c.audio.reshape(-1, c.channels).astype(np.float32)
        pos = np.arange(0, len(x) - 1, factor)
        cols = [np.interp(pos, np.arange(len(x)), x[:, k]) for k in range(c.channels)]
        return np.rint(np.stack(cols, 1)).astype(np.int16).reshape(-1)
    g = av.filter.Graph()
    src = g.add_abuffer(format="s16", sample_rate=c.rate, layout=c.layout, time_base=Fraction(1, c.rate))
    tempo, sink = g.add("atempo", f"{factor:.6f}"), g.add("abuffersink")
    src.link_to(tempo)
    tempo.link_to(sink)
    g.configure()
    f = av.AudioFrame.from_ndarray(c.audio[np.newaxis, :], format="s16", layout=c.layout)
    f.sample_rate, f.pts, f.time_base = c.rate, 0, Fraction(1, c.rate)
    g.push(f)
    g.push(None)
    out = []
    while True:
        try:
            out.append(g.pull().to_ndarray().reshape(-1))
        except (av.error.EOFError, av.error.BlockingIOError):
            break
    return np.concatenate(out).astype(np.int16)


def speed(c: Clip, factor: float, keep_pitch: bool = True) -> Clip:
    """Played `factor` times faster (same frame rate: frames dropped or repeated)."""
    n = int(len(c.frames) / factor)
    frames = [c.frames[min(len(c.frames) - 1, round(i * factor))] for i in range(n)]
    return replace(c, frames=frames, audio=_speed_audio(c, factor, keep_pitch))


def cut(c: Clip, start_s: float, end_s: float) -> Clip:
    """Without its first `start_s` and last `end_s` seconds, video and audio alike."""
    a, b = round(start_s * c.fps), len(c.frames) - round(end_s * c.fps)
    if b - a < 2:
        raise MediaError("too_short", "nothing left after the cut")
    audio = None
    if c.audio is not None:
        sa, sb = round(start_s * c.rate), round(b / c.fps * c.rate)
        audio = c.audio[sa * c.channels : sb * c.channels]
    return replace(c, frames=c.frames[a:b], audio=audio)


def crop_by(c: Clip, frac: float, shift: float = 0.0) -> Clip:
    """`frac` of each side's length cut away (split by `shift` in -1..1 between the two edges), rescaled back."""
    h, w = c.frames[0].shape[:2]
    dy, dx = round(h * frac), round(w * frac)
    y0, x0 = round(dy * (1 + shift) / 2), round(dx * (1 - shift) / 2)
    return replace(c, frames=resized([f[y0 : y0 + h - dy, x0 : x0 + w - dx] for f in c.frames], w, h))


def pad(c: Clip, aspect: float) -> Clip:
    """Padded with black bars to width/height `aspect` (9/16: letterbox a landscape clip; 16/9: pillarbox)."""
    h, w = c.frames[0].shape[:2]
    ph, pw = (round(w / aspect), w) if w / h > aspect else (h, round(h * aspect))
    ph, pw = ph + ph % 2, pw + pw % 2
    y, x = (ph - h) // 2, (pw - w) // 2
    out = []
    for f in c.frames:
        canvas = np.zeros((ph, pw, 3), np.uint8)
        canvas[y : y + h, x : x + w] = f
        out.append(canvas)
    return replace(c, frames=out)


def overlay(c: Clip, rng: np.random.Generator) -> Clip:
    """A sticker (filled disc) or a caption bar with text burned in at a random place."""
    from PIL import ImageDraw

    h, w = c.frames[0].shape[:2]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if rng.random() < 0.5:
        r = int(min(w, h) * rng.uniform(0.12, 0.2))
        x, y = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
        d.ellipse((x - r, y - r, x + r, y + r), fill=(255, 220, 0, 255), outline=(0, 0, 0, 255), width=3)
    else:
        y = int(h * rng.uniform(0.05, 0.8))
        d.rectangle((0, y, w, y + h // 8), fill=(0, 0, 0, 170))
        d.text((w // 20, y + 2), "wait for it... #fyp", fill=(255, 255, 255, 255), font_size=max(10, h // 12))
    out = [
        np.asarray(Image.alpha_composite(Image.fromarray(f).convert("RGBA"), layer).convert("RGB")) for f in c.frames
    ]
    return replace(c, frames=out)


def tone(c: Clip, brightness: float, contrast: float) -> Clip:
    """Pixel values scaled by `contrast` about mid-grey and shifted by `brightness` (in 0..255 units)."""
    out = [
        np.clip((f.astype(np.float32) - 128) * contrast + 128 + brightness, 0, 255).astype(np.uint8) for f in c.frames
    ]
    return replace(c, frames=out)


def frame_rate(c: Clip, fps: int) -> Clip:
    """Resampled to `fps` frames per second (frames dropped or repeated), same duration."""
    n = int(len(c.frames) * fps / c.fps)
    return replace(
        c, frames=[c.frames[min(len(c.frames) - 1, int(i * c.fps / fps))] for i in range(n)], fps=Fraction(fps)
    )


def with_audio(c: Clip, audio: np.ndarray | None, rate: int, layout: str = "mono") -> Clip:
    """The same frames with another audio track (None: no audio stream)."""
    return replace(c, audio=audio, rate=rate, layout=layout)


Family = Callable[[Clip, np.random.Generator], tuple[Clip, str, str]]


def _family_table() -> dict[str, Family]:
    """Family name → (clip, rng) → (edited clip, CRF to write it at, the parameters drawn, in words)."""
    crf = X264["crf"]

    def sign(rng: np.random.Generator) -> float:
        return 1.0 if rng.random() < 0.5 else -1.0

    def trim_start(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        s = float(rng.uniform(0.2, 2.0))
        return cut(c, s, 0.0), crf, f"{s:.2f} s"

    def trim_end(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        s = float(rng.uniform(0.2, 2.0))
        return cut(c, 0.0, s), crf, f"{s:.2f} s"

    def speed_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        f, keep = 1 + sign(rng) * float(rng.uniform(0.05, 0.10)), bool(rng.random() < 0.5)
        return speed(c, f, keep), crf, f"x{f:.3f} {'atempo' if keep else 'resampled'}"

    def reencode_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        q = str(int(rng.integers(30, 41)))
        return reencode(c), q, f"half size, crf {q}"

    def crop_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        frac, shift = float(rng.uniform(0.05, 0.20)), float(rng.uniform(-0.5, 0.5))
        return crop_by(c, frac, shift), crf, f"{frac:.0%} off, shift {shift:+.2f}"

    def pad_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        letter = bool(rng.random() < 0.5)
        return pad(c, 9 / 16 if letter else 21 / 9), crf, "letterbox 9:16" if letter else "pillarbox 21:9"

    def tone_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        b, k = float(rng.uniform(-40, 40)), float(rng.uniform(0.7, 1.3))
        return tone(c, b, k), crf, f"brightness {b:+.0f}, contrast x{k:.2f}"

    def fps_f(c: Clip, rng: np.random.Generator) -> tuple[Clip, str, str]:
        fps = int(rng.choice([12, 15, 30]))
        return frame_rate(c, fps), crf, f"{fps} fps"

    return {
        "trim_start": trim_start,
        "trim_end": trim_end,
        "speed": speed_f,
        "reencode": reencode_f,
        "crop": crop_f,
        "mirror": lambda c, rng: (mirror(c), crf, "left-right"),
        "pad": pad_f,
        "overlay": lambda c, rng: (overlay(c, rng), crf, "sticker or caption bar"),
        "tone": tone_f,
        "frame_rate": fps_f,
    }


FAMILIES: dict[str, Family] = _family_table()


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


def make_relations(src: Path, other: Path, out_dir: Path) -> dict[str, Path]:
    """`remix`: `src`'s frames with `other`'s sound (a new voice-over); `sound`: `other`'s frames with `src`'s
    sound (a reused sound). Name → path of the written clip."""
    a, b = read_clip(Path(src)), read_clip(Path(other))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {"remix": with_audio(a, b.audio, b.rate, b.layout), "sound": with_audio(b, a.audio, a.rate, a.layout)}
    paths = {}
    for name, clip in made.items():
        paths[name] = out_dir / f"{Path(src).stem}_{name}.mp4"
        write_clip(paths[name], clip)
    return paths


@dataclass(frozen=True)
class FpMedia:
    """A file read for fingerprinting: T×size×size grey frames at `fps`, their times, 16 kHz mono float32 audio."""

    frames: np.ndarray
    timestamps_s: list[float]
    audio: np.ndarray | None


def decode_for_fingerprint(path: Path, size: int = 64, fps: float = 4.0) -> FpMedia:
    """Every frame decoded; the one on screen at each 1/fps tick kept, grey, squashed to size × size (area)."""
    frames, times, parts = [], [], []
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=16_000) if c.streams.audio else None
        streams = [c.streams.video[0], *c.streams.audio[:1]]
        tick, prev = 0, None
        for frame in c.decode(*streams):
            if isinstance(frame, av.VideoFrame):
                t = float(frame.time or 0.0)
                while tick / fps <= t + 1e-6:
                    # the frame on screen at a tick: this one if it starts then, else the one before it
                    shown = prev if tick / fps < t - 1e-6 and prev is not None else frame
                    frames.append(
                        shown.reformat(width=size, height=size, format="gray", interpolation="AREA").to_ndarray()
                    )
                    times.append(tick / fps)
                    tick += 1
                prev = frame
            elif rs is not None:
                parts += [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
        if rs is not None:
            parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    audio = np.concatenate(parts).astype(np.float32) if parts else None
    return FpMedia(np.stack(frames), times, audio)


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
