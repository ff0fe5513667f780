"""Regenerate reelvec's sample media (topic clips, overlay-text clips, captions.jsonl, fixtures), deterministically.

Needs the espeak-ng CLI, except `--overlays-only` (overlay clips reuse the committed clips' speech); `--verify-only`
checks the existing files. Run `.venv/bin/python samples/make_samples.py [--overlays-only | --verify-only]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import tempfile
import wave
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.video.frame import PictureType
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("make_samples")

SEED = 20261101
ROOT = Path(__file__).resolve().parent
CLIPS_DIR = ROOT / "clips"
FIXTURES_DIR = ROOT / "fixtures"

FPS = 25
WIDTH, HEIGHT = 320, 240
AUDIO_RATE = 16_000
ESPEAK_VOICE = "en-us"
ESPEAK_RATE = 150  # words per minute
SPEECH_LEAD_S = 0.3  # silence before the sentence starts
SPEECH_TAIL_S = 0.4  # silence after it ends
MIN_CLIP_S, MAX_CLIP_S = 3.0, 5.0
MAX_CLIP_BYTES = 250_000
MAX_TOTAL_BYTES = 6_000_000

X264_OPTS = {"preset": "medium", "crf": "30", "bf": "3", "g": "50", "threads": "1"}
TOPICS = ("cooking", "soccer", "ocean", "space")

Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class ClipSpec:
    """One catalogue clip: what it shows, what is said in it and its creator-style metadata."""

    topic: str
    n: int
    speech: str
    caption: str
    hashtags: tuple[str, ...]
    creator_id: str
    day: int

    @property
    def item_id(self) -> str:
        return f"{self.topic}_{self.n:02d}"


# Captions deliberately use other words than the speech, so caption and transcript are separate
# signals. The 4th clip of every topic has no caption (missing-caption handling).
# fmt: off
CATALOGUE: tuple[ClipSpec, ...] = (
    ClipSpec(
        "cooking", 1, "Today we are cooking pasta with fresh tomato sauce and garlic.",
        "Weeknight dinner in twenty minutes, Italian style", ("cooking", "pasta", "dinner"), "creator_a", 1,
    ),
    ClipSpec(
        "cooking", 2, "Cut the onions and carrots and fry them in olive oil for dinner.",
        "Veggie prep for the whole week", ("cooking", "vegetables", "mealprep"), "creator_b", 3,
    ),
    ClipSpec(
        "cooking", 3, "Add salt and pepper to the chicken soup on the stove.",
        "Grandma's recipe for cold winter nights", ("cooking", "soup", "comfortfood"), "creator_c", 5,
    ),
    ClipSpec("cooking", 4, "Mix flour and eggs and milk to bake a chocolate cake.", "", (), "creator_d", 7),
    ClipSpec(
        "soccer", 1, "The player kicks the ball past the goalkeeper and scores a goal.",
        "Last minute winner, what a finish!", ("soccer", "football", "goal"), "creator_b", 2,
    ),
    ClipSpec(
        "soccer", 2, "Both soccer teams run across the green field chasing the ball.",
        "Sunday league training session highlights", ("soccer", "training"), "creator_a", 4,
    ),
    ClipSpec(
        "soccer", 3, "The referee blows the whistle and shows the player a yellow card.",
        "Was that really a foul? You decide", ("soccer", "referee", "matchday"), "creator_d", 6,
    ),
    ClipSpec("soccer", 4, "Fans in the stadium cheer loudly as the football match begins.", "", (), "creator_c", 8),
    ClipSpec(
        "ocean", 1, "Big blue waves crash on the sandy beach under the bright sun.",
        "Summer vibes at the coast, surf was perfect", ("ocean", "beach", "surf"), "creator_c", 1,
    ),
    ClipSpec(
        "ocean", 2, "Dolphins and whales swim together in the deep ocean water.",
        "Marine life spotted on our morning trip", ("ocean", "marinelife", "wildlife"), "creator_d", 3,
    ),
    ClipSpec(
        "ocean", 3, "A small boat sails across the quiet sea toward the island.",
        "Island hopping, day three of the trip", ("ocean", "sailing", "travel"), "creator_a", 5,
    ),
    ClipSpec("ocean", 4, "Seagulls fly over the water as the tide comes in at the beach.", "", (), "creator_b", 7),
    ClipSpec(
        "space", 1, "The rocket launches into space carrying astronauts to the moon.",
        "Liftoff! Countdown to the lunar mission", ("space", "rocket", "launch"), "creator_d", 2,
    ),
    ClipSpec(
        "space", 2, "At night the stars and planets shine brightly in the dark sky.",
        "Clear skies tonight, perfect for stargazing", ("space", "astronomy", "nightsky"), "creator_c", 4,
    ),
    ClipSpec(
        "space", 3, "The astronauts on the space station float around without any gravity.",
        "Life in orbit is weirder than you think", ("space", "orbit", "iss"), "creator_b", 6,
    ),
    ClipSpec("space", 4, "A telescope shows the rings of Saturn and the red planet Mars.", "", (), "creator_a", 8),
)
# fmt: on

FOX_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
WEBM_SENTENCE = "The waves are calm today."


# --------------------------------------------------------------------------------------------- speech


def require_espeak() -> str:
    """Path of the espeak-ng CLI, or exit with install instructions."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit(
            "espeak-ng not found: it is needed to synthesise the spoken sentences.\n"
            "Install it (dev-time only) with `sudo apt-get install -y espeak-ng`, then re-run."
        )
    return exe


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and sample rate of a PCM wav file."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0]
        return pcm.copy(), w.getframerate()


def write_wav_int16(path: Path, pcm: np.ndarray, rate: int) -> None:
    """Write mono int16 samples as a PCM wav file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample mono int16 audio with FFmpeg's resampler (via PyAV)."""
    if src_rate == dst_rate:
        return pcm
    frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="s16", layout="mono")
    frame.sample_rate = src_rate
    rs = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
    out = [f.to_ndarray()[0] for f in [*rs.resample(frame), *rs.resample(None)]]
    return np.concatenate(out).astype(np.int16)


def trim_silence(pcm: np.ndarray, rate: int, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing silence, keeping a short margin."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    if loud.size == 0:
        raise ValueError("espeak-ng produced silence")
    margin = int(margin_s * rate)
    return pcm[max(0, loud[0] - margin) : loud[-1] + margin]


def synthesise(text: str, rate: int) -> np.ndarray:
    """Speak `text` with espeak-ng; trimmed mono int16 audio at `rate` Hz."""
    exe = require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_RATE), "-w", str(wav), text]
        subprocess.run(cmd, check=True, capture_output=True)
        pcm, src_rate = read_wav_int16(wav)
    return trim_silence(resample(pcm, src_rate, rate), rate)


# --------------------------------------------------------------------------------------------- scenes


class Scene(Protocol):
    """Something that draws frame `i` (of a clip at FPS) as an RGB uint8 array."""

    def render(self, i: int) -> np.ndarray: ...


def seed_for(name: str) -> np.random.Generator:
    """A generator seeded from SEED and a name, stable across runs and Python versions."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def vertical_gradient(w: int, h: int, top: Rgb, bottom: Rgb) -> np.ndarray:
    """An h x w x 3 uint8 image fading from `top` to `bottom`."""
    a = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (1 - a) * np.array(top, np.float32) + a * np.array(bottom, np.float32)
    return np.broadcast_to(img, (h, w, 3)).round().astype(np.uint8)


def shade(c: Rgb, f: float) -> Rgb:
    """Colour `c` scaled by `f` and clipped to 0..255."""
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def disc(d: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: Rgb | tuple[int, ...], **kw: Any) -> None:
    """Filled circle centred at (x, y)."""
    d.ellipse((x - r, y - r, x + r, y + r), fill=fill, **kw)


def rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    """Points rotated by `angle` radians about the origin, then moved to (cx, cy)."""
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


class CookingScene:
    """A pan on a wooden table with vegetables stirring round in it and steam rising."""

    FOODS: tuple[tuple[Rgb, Rgb, Rgb], ...] = (
        ((200, 50, 30), (240, 210, 90), (70, 160, 60)),  # tomato sauce, pasta, basil
        ((225, 170, 70), (240, 130, 40), (245, 240, 225)),  # butter, carrots, onions
        ((225, 200, 140), (240, 130, 40), (90, 170, 70)),  # broth, carrots, peas
        ((235, 215, 170), (90, 55, 35), (250, 250, 245)),  # batter, chocolate, eggs
    )

    def __init__(self, variant: int, w: int, h: int, name: str) -> None:
        rng = seed_for(name)
        self.w, self.h, self.v = w, h, variant
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        grain = np.sin(y * 0.35 + 2.5 * np.sin(x * 0.02 + variant)) * 0.5 + 0.5
        base = np.array((150 + 10 * variant, 98, 58), np.float32)
        self.bg = np.clip(base * (0.8 + 0.25 * grain[..., None]), 0, 255).astype(np.uint8)
        self.sauce, *self.pieces_rgb = self.FOODS[variant]
        self.pieces = [
            (self.pieces_rgb[k % 2], rng.uniform(0.06, 0.1), rng.uniform(0.15, 0.7), rng.uniform(0, 2 * math.pi))
            for k in range(9)
        ]
        self.steam = [(rng.uniform(-0.6, 0.6), rng.uniform(0, 1)) for _ in range(6)]
        self.handle_dir = 1 if variant % 2 == 0 else -1

    def render(self, i: int) -> np.ndarray:
        t = i / FPS
        w, h = self.w, self.h
        img = Image.fromarray(self.bg.copy())
        d = ImageDraw.Draw(img, "RGBA")
        # cutting board with a tomato in the corner
        bx = w * (0.03 if self.handle_dir > 0 else 0.72)
        d.rounded_rectangle((bx, h * 0.05, bx + w * 0.25, h * 0.3), radius=6, fill=(215, 175, 120))
        disc(d, bx + w * 0.08, h * 0.17, h * 0.05, (210, 40, 30))
        disc(d, bx + w * 0.17, h * 0.19, h * 0.04, (80, 170, 60))
        r = h * 0.33
        cx = w * 0.5 + w * 0.02 * math.sin(2 * math.pi * 0.7 * t)
        cy = h * 0.6
        hx = cx + self.handle_dir * r
        hx2 = hx + self.handle_dir * w * 0.3
        d.rectangle((min(hx, hx2), cy - h * 0.03, max(hx, hx2), cy + h * 0.03), fill=(30, 30, 32))
        disc(d, cx, cy, r, (75, 75, 80))
        disc(d, cx, cy, r * 0.88, (40, 40, 44))
        disc(d, cx, cy, r * 0.8, (*self.sauce, 150))
        for k, (rgb, size, orbit, phase) in enumerate(self.pieces):
            a = phase + (1.2 + 0.15 * k) * t * (1 if k % 2 else -1)
            rr = r * 0.8 * orbit
            disc(d, cx + rr * math.cos(a), cy + rr * math.sin(a), h * size * 0.6, rgb, outline=shade(rgb, 0.7))
        # wooden spoon stirring
        a = 2.0 * t
        sx, sy = cx + r * 0.4 * math.cos(a), cy + r * 0.4 * math.sin(a)
        d.line((sx, sy, sx + w * 0.15, sy - h * 0.4), fill=(180, 130, 70), width=max(2, h // 40))
        d.ellipse((sx - h * 0.04, sy - h * 0.06, sx + h * 0.04, sy + h * 0.06), fill=(190, 140, 80))
        for dx, ph in self.steam:
            p = (t * 0.6 + ph) % 1.0
            disc(
                d,
                cx + dx * r + 6 * math.sin(6 * p),
                cy - r * 0.5 - p * h * 0.45,
                h * (0.03 + 0.05 * p),
                (255, 255, 255, int(140 * (1 - p))),
            )
        return np.asarray(img)


class SoccerScene:
    """Mowed grass scrolling past, a rolling black-and-white ball and two running players."""

    def __init__(self, variant: int, w: int, h: int, name: str) -> None:
        rng = seed_for(name)
        self.w, self.h, self.v = w, h, variant
        self.pan = (0.12 + 0.04 * variant) * (1 if variant % 2 == 0 else -1)  # camera pan, screen widths/s
        self.crowd = [
            (rng.uniform(0, 2 * w), rng.uniform(0, h * 0.14), tuple(int(c) for c in rng.integers(60, 255, 3)))
            for _ in range(int(0.25 * w))
        ]
        self.kit = ((200, 30, 30), (30, 70, 200)) if variant % 2 == 0 else ((240, 200, 20), (240, 240, 240))

    def render(self, i: int) -> np.ndarray:
        t = i / FPS
        w, h = self.w, self.h
        off = self.pan * t * w
        x = np.arange(w, dtype=np.float32)
        band = (np.floor((x + off) / (w / 8)) % 2).astype(bool)
        row = np.where(band[:, None], np.array((52, 150, 52)), np.array((40, 128, 42))).astype(np.uint8)
        arr = np.broadcast_to(row[None], (h, w, 3)).copy()
        arr[: int(h * 0.16)] = (35, 35, 45)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for cxw, cyw, rgb in self.crowd:
            disc(d, (cxw - off * 0.5) % (2 * w) - w * 0.25, cyw + 2, max(1.5, h / 120), rgb)
        lw = max(2, h // 80)
        d.line((0, h * 0.18, w, h * 0.18), fill=(240, 240, 240), width=lw)
        mid = (w * 0.5 - off) % (2 * w) - w * 0.5
        d.line((mid, h * 0.18, mid, h), fill=(240, 240, 240), width=lw)
        d.ellipse((mid - h * 0.25, h * 0.45, mid + h * 0.25, h * 0.95), outline=(240, 240, 240), width=lw)
        if self.v == 0:  # goal on the right
            gx = w * 0.88
            d.rectangle((gx, h * 0.3, gx + w * 0.1, h * 0.75), outline=(250, 250, 250), width=lw + 1)
            for k in range(1, 6):
                d.line((gx, h * (0.3 + 0.075 * k), gx + w * 0.1, h * (0.3 + 0.075 * k)), fill=(200, 200, 200))
        # players run after the ball
        bx = w * (0.1 + 0.75 * ((0.22 * t + 0.1 * self.v) % 1.0))
        ground = h * 0.82
        br = h * 0.05
        by = ground - abs(math.sin(math.pi * 1.3 * t)) * h * 0.15
        for k, kit in enumerate(self.kit):
            px = bx - w * (0.12 + 0.1 * k) + w * 0.02 * math.sin(3 * t + k)
            py = ground - h * (0.05 + 0.08 * k)
            step = math.sin(12 * t + k * 1.5) * h * 0.04
            d.line((px, py, px - step, py + h * 0.1), fill=(20, 20, 20), width=lw + 1)
            d.line((px, py, px + step, py + h * 0.1), fill=(20, 20, 20), width=lw + 1)
            d.rectangle((px - h * 0.035, py - h * 0.14, px + h * 0.035, py), fill=kit)
            disc(d, px, py - h * 0.18, h * 0.035, (230, 185, 150))
        # ball, rotating as it rolls
        disc(d, bx, by, br, (250, 250, 250), outline=(30, 30, 30))
        spin = bx / br
        for k in range(3):
            a = spin + k * 2 * math.pi / 3
            disc(d, bx + 0.55 * br * math.cos(a), by + 0.55 * br * math.sin(a), br * 0.3, (20, 20, 20))
        return np.asarray(img)


class OceanScene:
    """Sky, sun and layered waves rolling in; per variant a beach, dolphins, a boat or gulls."""

    def __init__(self, variant: int, w: int, h: int, name: str, sunset: bool = False) -> None:
        rng = seed_for(name)
        self.w, self.h, self.v, self.sunset = w, h, variant, sunset
        top, horizon = ((70, 40, 110), (250, 150, 70)) if sunset else ((80, 150, 225), (205, 230, 250))
        self.horizon = int(h * 0.42)
        self.bg = vertical_gradient(w, h, top, horizon)
        self.sun = (w * (0.2 + 0.2 * variant), h * (0.36 if sunset else 0.12 + 0.03 * variant))
        self.clouds = [(rng.uniform(0, w), rng.uniform(0.05, 0.25) * h, rng.uniform(0.08, 0.16) * w) for _ in range(3)]
        self.layers = [
            (
                self.horizon + k * h * 0.13,
                h * (0.012 + 0.008 * k),
                w * (0.25 + 0.1 * k),
                1.5 + 0.5 * k,
                rng.uniform(0, 2 * math.pi),
            )
            for k in range(5)
        ]
        deep = (40, 40, 120) if sunset else (15, 70, 150)
        self.water = [shade(deep, 1.0 - 0.12 * k) for k in range(5)]

    def render(self, i: int) -> np.ndarray:
        t = i / FPS
        w, h = self.w, self.h
        arr = self.bg.copy()
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        crest_lines: list[np.ndarray] = []
        for (base, amp, lam, omega, ph), rgb in zip(self.layers, self.water, strict=True):
            crest = base + amp * np.sin(2 * math.pi * xs / lam - omega * t + ph)
            arr[ys >= crest] = rgb
            crest_lines.append(crest[0])
        if self.v == 0:  # sandy beach with the swash moving up and down
            shore = h * 0.86 + h * 0.04 * math.sin(1.6 * t) + h * 0.015 * np.sin(xs[0] / w * 7 + t)
            sand = ys >= shore[None, :]
            arr[sand] = (230, 210, 150)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img, "RGBA")
        sx, sy = self.sun
        disc(d, sx, sy, h * 0.07, (255, 200, 80) if self.sunset else (255, 240, 150))
        for cxw, cy, cw in self.clouds:
            cx = (cxw + 8 * t) % (w + cw) - cw / 2
            d.ellipse((cx - cw / 2, cy - cw / 6, cx + cw / 2, cy + cw / 6), fill=(255, 255, 255, 200))
        for crest in crest_lines:
            pts = [(float(x), float(crest[x])) for x in range(0, w, max(1, w // 64))]
            d.line(pts, fill=(230, 245, 255, 180), width=max(1, h // 120))
        if self.v == 1:  # dolphins leaping in turn
            for k in range(2):
                p = (t / 1.6 + k * 0.5) % 1.0
                x0 = w * (0.15 + 0.4 * k) + p * w * 0.3
                y0 = h * 0.62 - math.sin(math.pi * p) * h * 0.18
                body = rotated([(-14, -4), (10, -5), (16, 0), (10, 4), (-14, 3)], (p - 0.5) * 1.6, x0, y0)
                d.polygon(body, fill=(110, 120, 135))
        if self.v == 2:  # small sailing boat, bobbing
            bx = w * (0.2 + 0.08 * t)
            by = self.horizon + h * 0.15 + h * 0.02 * math.sin(2.2 * t)
            tilt = 0.08 * math.sin(2.2 * t + 0.5)
            hull = rotated([(-30, 0), (30, 0), (20, 12), (-20, 12)], tilt, bx, by)
            sail = rotated([(0, -4), (0, -50), (26, -6)], tilt, bx, by)
            d.polygon(hull, fill=(120, 70, 40))
            d.polygon(sail, fill=(250, 250, 245))
        if self.v == 3:  # gulls crossing the sky
            for k in range(3):
                gx = (w * (0.1 + 0.25 * k) + 30 * t) % w
                gy = h * (0.15 + 0.05 * k)
                flap = 5 * math.sin(8 * t + k)
                d.line((gx - 9, gy - flap, gx, gy, gx + 9, gy - flap), fill=(40, 40, 40), width=2)
        return np.asarray(img)


class SpaceScene:
    """Twinkling drifting stars, a planet and a flying rocket (or a turning space station)."""

    PLANETS: tuple[Rgb, ...] = ((190, 190, 195), (90, 130, 220), (200, 110, 60), (215, 185, 120))

    def __init__(self, variant: int, w: int, h: int, name: str) -> None:
        rng = seed_for(name)
        self.w, self.h, self.v = w, h, variant
        self.bg = vertical_gradient(w, h, (4, 4, 18), (18, 12, 45))
        n = int(w * h / 500)
        self.stars = np.stack(
            [rng.uniform(0, w, n), rng.uniform(0, h, n), rng.uniform(0.4, 1.0, n), rng.uniform(0, 2 * math.pi, n)], 1
        )
        self.planet = (w * (0.75 - 0.5 * (variant % 2)), h * (0.7 - 0.1 * variant), h * (0.16 + 0.03 * variant))
        self.craters = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.2)) for _ in range(5)]

    def render(self, i: int) -> np.ndarray:
        t = i / FPS
        w, h = self.w, self.h
        arr = self.bg.copy()
        sx = ((self.stars[:, 0] - 6 * t) % w).astype(int)
        sy = self.stars[:, 1].astype(int)
        b = self.stars[:, 2] * (0.6 + 0.4 * np.sin(5 * t + self.stars[:, 3]))
        arr[sy, sx] = (np.clip(b, 0, 1)[:, None] * np.array((255, 255, 235))).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img, "RGBA")
        px, py, pr = self.planet
        px -= 3 * t
        rgb = self.PLANETS[self.v]
        if self.v == 3:  # Saturn: ring behind and in front
            d.ellipse((px - pr * 1.9, py - pr * 0.45, px + pr * 1.9, py + pr * 0.45), outline=(230, 210, 160), width=3)
        disc(d, px, py, pr, rgb)
        disc(d, px + pr * 0.3, py - pr * 0.3, pr * 0.55, (*shade(rgb, 1.15), 90))
        if self.v == 0:
            for cx, cy, cr in self.craters:
                disc(d, px + cx * pr, py + cy * pr, cr * pr, shade(rgb, 0.75))
        if self.v == 3:
            d.arc((px - pr * 1.9, py - pr * 0.45, px + pr * 1.9, py + pr * 0.45), 0, 180, fill=(230, 210, 160), width=3)
        if self.v == 2:  # space station turning slowly
            a = 0.4 * t
            cx, cy = w * 0.45, h * 0.35
            d.polygon(rotated([(-8, -30), (8, -30), (8, 30), (-8, 30)], a, cx, cy), fill=(200, 200, 205))
            for side in (-1, 1):
                panel = [(side * 12, -12), (side * 55, -12), (side * 55, 12), (side * 12, 12)]
                d.polygon(rotated(panel, a, cx, cy), fill=(40, 70, 170), outline=(150, 160, 200))
        # rocket climbing up-right, tilted, with a flickering flame
        s = h / 240
        p = (0.18 * t + 0.15 * self.v) % 1.0
        rx, ry = w * (0.15 + 0.6 * p), h * (0.95 - 0.8 * p)
        tilt = 0.5 + 0.1 * self.v
        flame = 18 + 8 * math.sin(31 * t) + 4 * math.sin(17 * t)
        pts = {
            "flame": [(-6, 22), (6, 22), (0, 22 + flame)],
            "body": [(-8, -22), (8, -22), (8, 22), (-8, 22)],
            "nose": [(-8, -22), (8, -22), (0, -40)],
            "fin_l": [(-8, 8), (-18, 26), (-8, 22)],
            "fin_r": [(8, 8), (18, 26), (8, 22)],
        }
        colours = {
            "flame": (255, 160, 30),
            "body": (235, 235, 240),
            "nose": (220, 40, 40),
            "fin_l": (220, 40, 40),
            "fin_r": (220, 40, 40),
        }
        for part, poly in pts.items():
            d.polygon(rotated([(x * s, y * s) for x, y in poly], tilt, rx, ry), fill=colours[part])
        disc(d, *rotated([(0, -8 * s)], tilt, rx, ry)[0], 4 * s, (70, 150, 230))
        return np.asarray(img)


SEGMENTS = {  # seven-segment digits: a b c d e f g
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg",
    "5": "acdfg", "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}  # fmt: skip


class FrameNumberScene:
    """The frame number in big seven-segment digits over a gradient shifted every frame."""

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h

    def _digit(self, d: ImageDraw.ImageDraw, ch: str, x: float, y: float, dw: float, dh: float) -> None:
        th = dw * 0.18
        segs = {
            "a": (x, y, x + dw, y + th),
            "b": (x + dw - th, y, x + dw, y + dh / 2),
            "c": (x + dw - th, y + dh / 2, x + dw, y + dh),
            "d": (x, y + dh - th, x + dw, y + dh),
            "e": (x, y + dh / 2, x + th, y + dh),
            "f": (x, y, x + th, y + dh / 2),
            "g": (x, y + dh / 2 - th / 2, x + dw, y + dh / 2 + th / 2),
        }
        for s in SEGMENTS[ch]:
            d.rectangle(segs[s], fill=(255, 255, 255), outline=(0, 0, 0), width=2)

    def render(self, i: int) -> np.ndarray:
        w, h = self.w, self.h
        x = (np.arange(w, dtype=np.float32) + 7 * i) % w / w
        y = np.arange(h, dtype=np.float32)[:, None] / h
        arr = np.stack(
            [np.broadcast_to(x * 200, (h, w)), np.broadcast_to(y * 200, (h, w)), np.full((h, w), (i * 9) % 200)], -1
        )
        img = Image.fromarray(arr.astype(np.uint8))
        d = ImageDraw.Draw(img)
        dw, dh = w * 0.22, h * 0.6
        for k, ch in enumerate(f"{i:02d}"):
            self._digit(d, ch, w * 0.2 + k * dw * 1.35, h * 0.2, dw, dh)
        bx = (i * 4) % (w - 20)
        d.rectangle((bx, h - 20, bx + 16, h - 4), fill=(255, 0, 0))
        return np.asarray(img)


SCENES: dict[str, Callable[[int, int, int, str], Scene]] = {
    "cooking": CookingScene,
    "soccer": SoccerScene,
    "ocean": OceanScene,
    "space": SpaceScene,
}


# --------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Codecs:
    """Container format plus video/audio encoder names and their options."""

    video: str = "libx264"
    video_opts: tuple[tuple[str, str], ...] = tuple(X264_OPTS.items())
    audio: str = "aac"
    audio_rate: int = AUDIO_RATE
    audio_bit_rate: int = 32_000
    fmt: str = "mp4"


MP4 = Codecs()


def audio_chunks(pcm: np.ndarray, n_frames: int, per_frame: int) -> Iterator[np.ndarray]:
    """`pcm` padded/cut to `n_frames` video frames, as one chunk of samples per video frame."""
    pcm = np.pad(pcm, (0, max(0, n_frames * per_frame - len(pcm))))[: n_frames * per_frame]
    for i in range(n_frames):
        yield pcm[i * per_frame : (i + 1) * per_frame]


def encode(path: Path, scene: Scene, n_frames: int, w: int, h: int, audio: np.ndarray | None, codecs: Codecs) -> None:
    """Encode `n_frames` of `scene` (and int16 `audio`, if given) into `path`, interleaved per frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # bitexact: no random Matroska UIDs, so reruns give identical bytes
    with av.open(str(path), "w", format=codecs.fmt, options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream(codecs.video, rate=FPS, options=dict(codecs.video_opts))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        chunks: Iterator[np.ndarray] | None = None
        if audio is not None:
            aus = out.add_stream(codecs.audio, rate=codecs.audio_rate, layout="mono")
            aus.bit_rate = codecs.audio_bit_rate
            per_frame = codecs.audio_rate // FPS
            chunks = audio_chunks(audio, n_frames, per_frame)
        for i in range(n_frames):
            vf = av.VideoFrame.from_ndarray(scene.render(i), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            out.mux(vs.encode(vf))
            if chunks is not None:
                af = av.AudioFrame.from_ndarray(next(chunks)[np.newaxis, :], format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = codecs.audio_rate, i * per_frame, Fraction(1, codecs.audio_rate)
                out.mux(aus.encode(af))
        out.mux(vs.encode(None))
        if chunks is not None:
            out.mux(aus.encode(None))


def place_speech(speech: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Speech with lead-in silence, and the clip length in frames that fits it (MIN..MAX_CLIP_S)."""
    lead = np.zeros(int(SPEECH_LEAD_S * rate), np.int16)
    need_s = SPEECH_LEAD_S + len(speech) / rate + SPEECH_TAIL_S
    if need_s > MAX_CLIP_S:
        raise ValueError(f"speech needs {need_s:.2f} s > {MAX_CLIP_S} s; shorten the sentence")
    n_frames = math.ceil(max(MIN_CLIP_S, need_s) * FPS)
    return np.concatenate([lead, speech]), n_frames


def encoder_available(name: str) -> bool:
    """Whether this PyAV build has an encoder called `name`."""
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------- overlay clips

OVERLAY_W, OVERLAY_H = 640, 360  # 360-px short side: the size PP-OCR sees after decode's resize
TEXT_CLIP_S = 4.0
FONT_SIZE = 40
# Aileron's space is narrow: at 40 px PP-OCR read "in ten minutes" as "intenminutes", so words get wider gaps
WORD_GAP = 0.45  # of FONT_SIZE
TOPIC_COLOURS: dict[str, tuple[Rgb, Rgb]] = {
    "cooking": ((205, 95, 40), (110, 35, 20)),
    "soccer": ((40, 135, 60), (10, 60, 30)),
    "ocean": ((25, 120, 185), (10, 40, 95)),
    "space": ((45, 25, 95), (8, 8, 30)),
}


@dataclass(frozen=True)
class OverlaySpec:
    """A 640x360 clip whose burned-in text states its topic; the text changes once, at mid-clip.

    `speech_from` names a catalogue clip whose speech track (and scene) is reused; without it the clip shows an
    abstract topic-coloured backdrop and has a synthetic music track (`music`) or no audio stream at all.
    """

    item_id: str
    topic: str
    cards: tuple[str, str]
    creator_id: str
    day: int
    music: bool = False
    speech_from: str | None = None
    caption: str = ""
    hashtags: tuple[str, ...] = ()

    @property
    def audio_kind(self) -> str:
        return "speech" if self.speech_from else "music" if self.music else "none"


# Text-only clips: the topic is only on screen (no caption, no speech). Each card uses words of its topic that a
# paraphrased query can match, and the two cards of a clip say different things (OCR must read both).
# fmt: off
OVERLAYS: tuple[OverlaySpec, ...] = (
    OverlaySpec("cooking_text_01", "cooking", ("Homemade pasta in ten minutes", "Fresh basil and tomato"),
                "creator_e", 9, music=True),
    OverlaySpec("cooking_text_02", "cooking", ("Sourdough bread step by step", "Knead the dough and let it rise"),
                "creator_f", 10),
    OverlaySpec("soccer_text_01", "soccer", ("Top five free kick goals", "Curled into the top corner"),
                "creator_f", 11, music=True),
    OverlaySpec("soccer_text_02", "soccer", ("Penalty shootout practice", "Goalkeeper diving saves"),
                "creator_e", 12),
    OverlaySpec("ocean_text_01", "ocean", ("Snorkeling over the coral reef", "Sea turtles and tropical fish"),
                "creator_e", 13, music=True),
    OverlaySpec("ocean_text_02", "ocean", ("Surfing big waves at sunrise", "Paddle out past the breakers"),
                "creator_f", 14),
    OverlaySpec("space_text_01", "space", ("Total solar eclipse tonight", "The moon hides the sun"),
                "creator_f", 15, music=True),
    OverlaySpec("space_text_02", "space", ("Mars rover on the red planet", "Searching for ancient water"),
                "creator_e", 16),
    # Agreeing clips: on-screen text, speech (reused from the named clip) and caption all say the same thing.
    OverlaySpec("cooking_agree_01", "cooking", ("Frying onions and carrots", "in olive oil for dinner"),
                "creator_a", 17, speech_from="cooking_02",
                caption="Onions and carrots fried in olive oil for an easy dinner",
                hashtags=("cooking", "vegetables", "dinner")),
    OverlaySpec("soccer_agree_01", "soccer", ("Two soccer teams", "chasing the ball across the field"),
                "creator_b", 18, speech_from="soccer_02",
                caption="Both teams chase the ball across the soccer field",
                hashtags=("soccer", "match")),
    OverlaySpec("ocean_agree_01", "ocean", ("Dolphins and whales", "swimming in the deep ocean"),
                "creator_c", 19, speech_from="ocean_02",
                caption="Dolphins and whales swimming together in the deep ocean",
                hashtags=("ocean", "dolphins", "whales")),
    OverlaySpec("space_agree_01", "space", ("Stars and planets", "shining in the night sky"),
                "creator_d", 20, speech_from="space_02",
                caption="Stars and planets shining bright in the dark night sky",
                hashtags=("space", "stars", "astronomy")),
    # Off-topic caption: a real-looking social caption that says nothing; speech and on-screen text are on topic.
    OverlaySpec("soccer_noisycap_01", "soccer", ("Striker scores the winning goal", "The keeper had no chance"),
                "creator_e", 21, speech_from="soccer_01",
                caption="omg best day ever 😍 #fyp #viral", hashtags=("fyp", "viral")),
)
# fmt: on


class TopicBackdrop:
    """An abstract topic-coloured background: a drifting two-colour gradient with soft floating circles."""

    def __init__(self, topic: str, w: int, h: int, name: str) -> None:
        rng = seed_for(name)
        self.w, self.h = w, h
        self.top, self.bottom = TOPIC_COLOURS[topic]
        self.blobs = [
            (*rng.uniform((0, 0, 0.08 * h, -25, -12), (w, h, 0.2 * h, 25, 12)),)  # x, y, radius, vx, vy
            for _ in range(7)
        ]

    def render(self, i: int) -> np.ndarray:
        t = i / FPS
        w, h = self.w, self.h
        y = np.arange(h, dtype=np.float32)[:, None, None] / h
        x = np.arange(w, dtype=np.float32)[None, :, None] / w
        a = np.clip(0.65 * y + 0.35 * (0.5 + 0.5 * np.sin(2 * math.pi * (x + 0.12 * t))), 0, 1)
        arr = (1 - a) * np.array(self.top, np.float32) + a * np.array(self.bottom, np.float32)
        img = Image.fromarray(np.broadcast_to(arr, (h, w, 3)).round().astype(np.uint8))
        d = ImageDraw.Draw(img, "RGBA")
        for bx, by, r, vx, vy in self.blobs:
            disc(d, (bx + vx * t) % (w + 2 * r) - r, (by + vy * t) % (h + 2 * r) - r, r, (255, 255, 255, 40))
        return np.asarray(img)


def line_width(words: list[str], font: ImageFont.FreeTypeFont) -> float:
    """Pixel width of `words` drawn with WORD_GAP spacing."""
    return sum(font.getlength(x) for x in words) + WORD_GAP * FONT_SIZE * (len(words) - 1)


def wrap(text: str, font: ImageFont.FreeTypeFont, max_w: float) -> list[list[str]]:
    """The words of `text` as one line, or two balanced lines, no wider than `max_w` px (else ValueError)."""
    words = text.split()
    if line_width(words, font) <= max_w:
        return [words]
    splits = [[words[:k], words[k:]] for k in range(1, len(words))]
    best = min(splits, key=lambda lines: max(line_width(x, font) for x in lines), default=[words])
    if max(line_width(x, font) for x in best) > max_w:
        raise ValueError(f"{text!r} does not fit two lines of {max_w:.0f} px")
    return best


def text_layer(text: str, w: int, h: int, lower_third: bool) -> Image.Image:
    """A transparent w x h layer with `text` in white, outlined, on a dark rounded box (centred or lower third)."""
    # Pillow's bundled font (Aileron), so the frames do not depend on the fonts installed on the machine.
    font = ImageFont.load_default(size=FONT_SIZE)
    lines = wrap(text, font, w * 0.86)
    gap, pad, stroke = FONT_SIZE // 4, FONT_SIZE // 2, 3
    line_h = FONT_SIZE + gap
    block_w = max(line_width(x, font) for x in lines)
    block_h = len(lines) * line_h - gap
    cy = h * 0.76 if lower_third else h * 0.5
    x0, y0 = (w - block_w) / 2, cy - block_h / 2
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.rounded_rectangle((x0 - pad, y0 - pad, x0 + block_w + pad, y0 + block_h + pad), radius=12, fill=(0, 0, 0, 190))
    for k, line in enumerate(lines):
        x = (w - line_width(line, font)) / 2
        for word in line:
            d.text((x, y0 + k * line_h), word, font=font, fill=(255, 255, 255), stroke_width=stroke, stroke_fill=0)
            x += font.getlength(word) + WORD_GAP * FONT_SIZE
    return layer


class TextOverlay:
    """`scene` with the first card burned in for the first half of the clip and the second card after."""

    def __init__(self, scene: Scene, cards: tuple[str, str], n_frames: int, w: int, h: int, lower_third: bool) -> None:
        self.scene, self.switch = scene, n_frames // 2
        self.layers = [text_layer(c, w, h, lower_third) for c in cards]

    def render(self, i: int) -> np.ndarray:
        base = Image.fromarray(self.scene.render(i)).convert("RGBA")
        return np.asarray(Image.alpha_composite(base, self.layers[i >= self.switch]).convert("RGB"))


def music(name: str, n_samples: int, rate: int) -> np.ndarray:
    """A soft synth loop (plucked arpeggio, bass, quiet noise and hi-hats) as int16; tones only, no voice."""
    rng = seed_for(name)
    t = np.arange(n_samples) / rate
    beat = 60.0 / float(rng.choice([92, 104, 116]))
    root = 196.0 * 2 ** (int(rng.integers(0, 6)) / 12)
    progression = (0, 5, 7, 3)  # I - IV - V - bIII, one chord per bar of 4 beats
    out = np.zeros(n_samples)
    for k in range(int(t[-1] / beat) + 1):
        start = k * beat
        seg = (t >= start) & (t < start + 2 * beat)
        dt = t[seg] - start
        chord = progression[(k // 4) % len(progression)]
        f = root * 2 ** ((chord + (0, 4, 7, 12)[k % 4]) / 12)
        harmonics = sum(a * np.sin(2 * math.pi * m * f * dt) for m, a in ((1, 0.5), (2, 0.15), (3, 0.05)))
        out[seg] += np.exp(-4 * dt) * harmonics
        if k % 4 == 0:
            out[seg] += 0.35 * np.exp(-1.5 * dt) * np.sin(2 * math.pi * root * 2 ** (chord / 12) / 2 * dt)
    noise = rng.normal(0.0, 1.0, n_samples)
    hat = np.diff(noise, prepend=0.0) * np.exp(-60 * ((t % (beat / 2)) / (beat / 2)))
    out += 0.03 * np.convolve(noise, np.ones(8) / 8, mode="same") + 0.04 * hat
    out *= np.clip(np.minimum(t, t[-1] - t) / 0.05, 0, 1)  # 50 ms fades, no clicks at the ends
    return np.round(out / np.abs(out).max() * 0.3 * 32767).astype(np.int16)


def clip_audio(path: Path, rate: int) -> np.ndarray:
    """The audio track of a committed clip as mono int16 at `rate` (reuses its speech; no espeak-ng needed)."""
    rs = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(path)) as c:
        parts = [f.to_ndarray().reshape(-1) for frame in c.decode(audio=0) for f in rs.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    return np.concatenate(parts).astype(np.int16)


def clip_frames(path: Path) -> int:
    """Number of video frames a committed clip has."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --------------------------------------------------------------------------------------------- outputs


def catalogue_row(spec: ClipSpec) -> dict[str, Any]:
    """The captions.jsonl row of a catalogue clip."""
    return {
        "file": f"{spec.item_id}.mp4",
        "item_id": spec.item_id,
        "caption": spec.caption,
        "hashtags": list(spec.hashtags),
        "creator_id": spec.creator_id,
        "created_at": f"2026-11-{spec.day:02d}T12:00:00Z",
        "topic": spec.topic,
        "speech": spec.speech,
        "language": "en",
        "audio": "speech",
        "overlay": [],
    }


def overlay_row(spec: OverlaySpec) -> dict[str, Any]:
    """The captions.jsonl row of an overlay clip (same keys as a catalogue row)."""
    speech = next(c.speech for c in CATALOGUE if c.item_id == spec.speech_from) if spec.speech_from else ""
    return {
        "file": f"{spec.item_id}.mp4",
        "item_id": spec.item_id,
        "caption": spec.caption,
        "hashtags": list(spec.hashtags),
        "creator_id": spec.creator_id,
        "created_at": f"2026-11-{spec.day:02d}T12:00:00Z",
        "topic": spec.topic,
        "speech": speech,
        "language": "en",
        "audio": spec.audio_kind,
        "overlay": list(spec.cards),
    }


def make_clips() -> None:
    """Encode the 16 catalogue clips (espeak-ng speech over drawn scenes)."""
    for spec in CATALOGUE:
        words = len(spec.speech.split())
        if not 10 <= words <= 20:
            raise ValueError(f"{spec.item_id}: speech has {words} words, want 10-20")
        audio, n_frames = place_speech(synthesise(spec.speech, AUDIO_RATE), AUDIO_RATE)
        scene = SCENES[spec.topic](spec.n - 1, WIDTH, HEIGHT, spec.item_id)
        path = CLIPS_DIR / f"{spec.item_id}.mp4"
        encode(path, scene, n_frames, WIDTH, HEIGHT, audio, MP4)
        log.info("%s: %.2f s, %d bytes", path.name, n_frames / FPS, path.stat().st_size)


def make_overlay_clips() -> None:
    """Encode the overlay clips; speech is decoded from the committed catalogue clips, so no espeak-ng is needed."""
    for spec in OVERLAYS:
        w, h = OVERLAY_W, OVERLAY_H
        audio: np.ndarray | None = None
        if spec.speech_from:
            src = next(c for c in CATALOGUE if c.item_id == spec.speech_from)
            n_frames = clip_frames(CLIPS_DIR / f"{src.item_id}.mp4")
            audio = clip_audio(CLIPS_DIR / f"{src.item_id}.mp4", AUDIO_RATE)
            scene: Scene = SCENES[spec.topic](src.n - 1, w, h, spec.item_id)
        else:
            n_frames = round(TEXT_CLIP_S * FPS)
            scene = TopicBackdrop(spec.topic, w, h, spec.item_id)
            if spec.music:
                audio = music(spec.item_id, n_frames * AUDIO_RATE // FPS, AUDIO_RATE)
        overlay = TextOverlay(scene, spec.cards, n_frames, w, h, lower_third=spec.speech_from is not None)
        path = CLIPS_DIR / f"{spec.item_id}.mp4"
        encode(path, overlay, n_frames, w, h, audio, MP4)
        log.info("%s: %.2f s, %s audio, %d bytes", path.name, n_frames / FPS, spec.audio_kind, path.stat().st_size)


def write_captions() -> list[dict[str, Any]]:
    """Write clips/captions.jsonl (catalogue rows, then overlay rows); returns the rows."""
    rows = [catalogue_row(s) for s in CATALOGUE] + [overlay_row(s) for s in OVERLAYS]
    # ASCII JSON (emoji as \u escapes): readers that open it with the locale's encoding still parse it
    (CLIPS_DIR / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def make_fixtures() -> None:
    """Write the special-case fixtures used by the decode and ASR tests."""
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    sunset = OceanScene(2, WIDTH, HEIGHT, "silent", sunset=True)
    encode(FIXTURES_DIR / "silent.mp4", sunset, 2 * FPS, WIDTH, HEIGHT, None, MP4)

    noise = seed_for("quiet_audio").normal(0.0, 0.002 * 32768, 2 * AUDIO_RATE)  # ~ -54 dBFS white noise
    quiet = SpaceScene(1, WIDTH, HEIGHT, "quiet_audio")
    encode(FIXTURES_DIR / "quiet_audio.mp4", quiet, 2 * FPS, WIDTH, HEIGHT, noise.round().astype(np.int16), MP4)

    bframes = Codecs(video_opts=(*X264_OPTS.items(), ("bf", "3"), ("x264-params", "b-adapt=0")))  # B every GOP
    encode(FIXTURES_DIR / "bframes.mp4", FrameNumberScene(WIDTH, HEIGHT), 3 * FPS, WIDTH, HEIGHT, None, bframes)

    big = SoccerScene(0, 1920, 1080, "big_frame")
    big_codecs = Codecs(video_opts=(*X264_OPTS.items(), ("crf", "40")))
    encode(FIXTURES_DIR / "big_frame.mp4", big, FPS, 1920, 1080, None, big_codecs)

    write_wav_int16(FIXTURES_DIR / "speech.wav", synthesise(FOX_SENTENCE, AUDIO_RATE), AUDIO_RATE)

    webm = FIXTURES_DIR / "clip.webm"
    video = next((c for c in ("libvpx-vp9", "libvpx") if encoder_available(c)), None)
    audio = next((c for c in ("libopus", "libvorbis", "vorbis") if encoder_available(c)), None)
    if video is None or audio is None:
        log.warning("no VP8/VP9 or Opus/Vorbis encoder in this PyAV build: clip.webm skipped")
        webm.unlink(missing_ok=True)
        return
    rate = 48_000
    opts = (("crf", "40"), ("b", "0"), ("deadline", "good"), ("cpu-used", "4"), ("threads", "1"))
    codecs = Codecs(video=video, video_opts=opts, audio=audio, audio_rate=rate, audio_bit_rate=32_000, fmt="webm")
    speech, _ = place_speech(synthesise(WEBM_SENTENCE, rate), rate)
    encode(webm, OceanScene(0, WIDTH, HEIGHT, "webm"), 2 * FPS, WIDTH, HEIGHT, speech, codecs)
    log.info("clip.webm: %s + %s", video, audio)


README = """\
# reelvec sample media

Generated by `make_samples.py` (drawn frames, espeak-ng speech, synthetic music); licence: CC0 1.0 (public
domain). The output is deterministic and committed. `.venv/bin/python samples/make_samples.py` regenerates
everything (needs `apt-get install espeak-ng` at dev time only); `--overlays-only` regenerates just the overlay
clips, captions.jsonl and this file without espeak-ng (their speech is decoded from the committed clips);
`--verify-only` checks the committed files.

## clips/ catalogue: {n_clips} speech clips, 4 topics x 4

{size_fps} H.264 ({video_opts}) + AAC mono {rate} Hz, 3-5 s each. Topics: {topics}.
`speech` is the exact sentence spoken; captions use other words. Every `*_04` clip has an empty caption and no
hashtags. No on-screen text.

## clips/ overlay clips: {n_overlays} clips, on-screen text at {overlay_size}

Burned-in white text with a dark outline on a dark box, 1-2 lines of {font_px} px (Pillow's bundled Aileron),
sized for PP-OCR at a 360-px short side. Each clip shows two different cards: the first `overlay` line for the
first half of the clip, the second after. Same codecs as the catalogue.

- `*_text_0N` (topic only on screen): {text_s:g} s, no caption, no speech, an abstract topic-coloured backdrop (no
  topic imagery). `_01` has a synthetic music track (plucked tones, bass, soft noise; no voice), `_02` has no
  audio stream at all. Only OCR can place these in their topic (retrieval over on-screen text, issue 2/4; music
  that must not become a transcript, 3/4).
- `*_agree_01` (everything agrees): the topic scene with the text in the lower third, speech reused from the
  named catalogue clip, and a caption saying the same thing.
- `soccer_noisycap_01` (off-topic caption): speech and text on topic, caption is social noise with no topic.

| clip | topic | audio | caption | on-screen text (card 1 / card 2) |
|---|---|---|---|---|
{overlay_table}

## captions.jsonl

One row per clip (catalogue, then overlay clips): `file, item_id, caption, hashtags, creator_id, created_at,
topic, speech, language, audio, overlay`. `audio` is `speech`, `music` or `none` (no audio stream); `speech` is
`""` when nothing is said; `overlay` lists the on-screen cards in order (`[]` for the catalogue). `reelvec
ingest` reads `file, item_id, caption, hashtags, creator_id, created_at`; the other keys are ground truth for
tests and benchmarks.

## eval_queries.jsonl

Paraphrased text queries for retrieval evaluation: `query`, `topic`, `expected` (every clip of that topic) and
`source`: `topic` (a paraphrase of the topic) or `overlay` (words only the on-screen text of `primary` carries,
so only OCR can answer it).

## variants.py

`make_variants(src, out_dir)` / `python samples/variants.py SRC OUT_DIR` writes re-upload variants of a clip
(near-duplicate detection): `reencode` (half size, CRF 38), `crop` (central 90 %, rescaled to 3/4 of the
source size), `trim` (first second cut), `mirror` (horizontal flip); audio kept. Generated at test or bench
time, never committed.

## fixtures/

| file | what |
|---|---|
| `silent.mp4` | 2 s sunset, no audio stream at all |
| `quiet_audio.mp4` | 2 s, audio is only ~-54 dBFS white noise (VAD must give an empty transcript) |
| `bframes.mp4` | 3 s H.264 with B-frames (`bf=3`); each frame shows its index in big digits |
| `clip.webm` | 2 s VP9 + Opus (absent if PyAV had no VP8/VP9 encoder) |
| `speech.wav` | 16 kHz mono 16-bit: "{fox}" |
| `big_frame.mp4` | 1 s 1920x1080, no audio (pixel-limit tests) |
"""


def write_readme() -> None:
    """Write samples/README.md."""
    opts = ", ".join(f"{k}={v}" for k, v in X264_OPTS.items() if k in ("preset", "crf", "bf"))
    table = "\n".join(
        f"| `{o.item_id}` | {o.topic} | {o.audio_kind}{f' (from `{o.speech_from}`)' if o.speech_from else ''} "
        f"| {o.caption or '(none)'} | {o.cards[0]} / {o.cards[1]} |"
        for o in OVERLAYS
    )
    text = README.format(
        n_clips=len(CATALOGUE),
        size_fps=f"{WIDTH}x{HEIGHT} @ {FPS} fps,",
        video_opts=opts,
        rate=AUDIO_RATE,
        topics=", ".join(TOPICS),
        n_overlays=len(OVERLAYS),
        overlay_size=f"{OVERLAY_W}x{OVERLAY_H}",
        font_px=FONT_SIZE,
        text_s=TEXT_CLIP_S,
        overlay_table=table,
        fox=FOX_SENTENCE,
    )
    (ROOT / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------- verify


def probe(path: Path) -> dict[str, Any]:
    """Decode a file fully with PyAV: duration, fps, size, codecs, frame count and picture types."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        types = "".join(PictureType(f.pict_type).name for f in c.decode(vs))
        ac = c.streams.audio[0].codec_context if c.streams.audio else None
        return {
            "duration_s": float(c.duration / 1_000_000) if c.duration else 0.0,
            "fps": float(vs.average_rate or 0),
            "size": (vs.codec_context.width, vs.codec_context.height),
            "video": vs.codec_context.name,
            "audio": f"{ac.name}/{ac.sample_rate}/{ac.layout.name}" if ac else None,
            "frames": len(types),
            "pict_types": types,
        }


def check_decord(path: Path, expect_audio: bool) -> str:
    """Open a file with decord's VideoReader and AudioReader; a short result string."""
    try:
        import decord
    except ImportError:
        return "decord n/a"
    vr = decord.VideoReader(str(path))
    n = len(vr)
    vr.get_batch([0, n - 1])
    del vr
    try:
        ar = decord.AudioReader(str(path), sample_rate=AUDIO_RATE, mono=True)
        audio = f"audio {ar.shape[1] / AUDIO_RATE:.2f} s"
    except Exception as e:
        if expect_audio:
            raise
        audio = f"AudioReader raised {type(e).__name__} (expected)"
    else:
        if not expect_audio:
            raise AssertionError(f"{path.name}: decord read audio from a file without any")
    return f"decord {n} frames, {audio}"


def verify_queries(rows: list[dict[str, Any]]) -> None:
    """eval_queries.jsonl: every query expects exactly the clips of its topic; overlay queries name overlay clips."""
    queries = [json.loads(x) for x in (ROOT / "eval_queries.jsonl").read_text().splitlines() if x.strip()]
    by_topic = {t: sorted(r["item_id"] for r in rows if r["topic"] == t) for t in TOPICS}
    on_screen = {r["item_id"] for r in rows if r["overlay"]}
    assert 16 <= len(queries) <= 24 and len({q["query"] for q in queries}) == len(queries)
    for q in queries:
        assert sorted(q["expected"]) == by_topic[q["topic"]], q
        assert q["source"] in ("topic", "overlay"), q
        assert q["source"] == "topic" or set(q["primary"]) <= on_screen & set(q["expected"]), q
    assert {q["topic"] for q in queries if q["source"] == "overlay"} == set(TOPICS)


def verify() -> list[tuple[str, int]]:
    """Check every generated file; returns (relative path, bytes) for all of samples/."""
    rows = [json.loads(x) for x in (CLIPS_DIR / "captions.jsonl").read_text().splitlines() if x.strip()]
    assert rows == [catalogue_row(s) for s in CATALOGUE] + [overlay_row(s) for s in OVERLAYS], "captions.jsonl stale"
    assert len({r["item_id"] for r in rows}) == len(rows) and len({r["creator_id"] for r in rows}) >= 3
    verify_queries(rows)
    videos = [(CLIPS_DIR / r["file"], r["audio"] != "none") for r in rows]
    videos += [(FIXTURES_DIR / n, n == "quiet_audio.mp4") for n in ("silent.mp4", "quiet_audio.mp4", "bframes.mp4")]
    videos += [(FIXTURES_DIR / "big_frame.mp4", False)]
    if (FIXTURES_DIR / "clip.webm").exists():
        videos.append((FIXTURES_DIR / "clip.webm", True))
    overlay_files = {f"{o.item_id}.mp4" for o in OVERLAYS}
    for path, has_audio in videos:
        info = probe(path)
        assert (info["audio"] is not None) == has_audio, (path, info)
        assert info["fps"] == FPS and info["frames"] > 0, (path, info)
        n_b = info["pict_types"].count("B")
        log.info(
            "verify %-22s %5.2f s %s %s+%s %3d frames (%d B) | %s",
            path.name,
            info["duration_s"],
            info["size"],
            info["video"],
            info["audio"],
            info["frames"],
            n_b,
            check_decord(path, has_audio),
        )
        if path.parent == CLIPS_DIR:
            assert MIN_CLIP_S <= info["duration_s"] <= MAX_CLIP_S + 0.2 and path.stat().st_size < MAX_CLIP_BYTES
            size = (OVERLAY_W, OVERLAY_H) if path.name in overlay_files else (WIDTH, HEIGHT)
            assert info["size"] == size, (path, info)
    assert "B" in probe(FIXTURES_DIR / "bframes.mp4")["pict_types"], "bframes.mp4 has no B-frames"
    with wave.open(str(FIXTURES_DIR / "speech.wav")) as w:
        assert w.getframerate() == AUDIO_RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
    files = sorted(p for p in ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    sizes = [(str(p.relative_to(ROOT)), p.stat().st_size) for p in files]
    total = sum(s for _, s in sizes)
    assert total < MAX_TOTAL_BYTES, f"samples/ is {total} bytes"
    return sizes


def main() -> None:
    """Generate the sample media (all, or only the overlay clips), verify it and print a size summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify-only", action="store_true", help="only check the existing files")
    mode.add_argument(
        "--overlays-only",
        action="store_true",
        help="regenerate only the overlay clips, captions.jsonl and README.md (no espeak-ng needed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.verify_only:
        if not args.overlays_only:
            require_espeak()
            make_clips()
            make_fixtures()
        make_overlay_clips()  # after make_clips: it reuses the catalogue clips' speech tracks
        write_captions()
        write_readme()
    sizes = verify()
    width = max(len(n) for n, _ in sizes)
    lines = [f"{n:<{width}}  {s:>9,d}" for n, s in sizes]
    print("\n".join([*lines, f"{'total':<{width}}  {sum(s for _, s in sizes):>9,d}"]))


if __name__ == "__main__":
    main()
