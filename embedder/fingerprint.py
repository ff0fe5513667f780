"""Visual fingerprints for re-upload detection (no learned weights).

`video_fingerprint` (issue 17) hashes dense low-resolution grey frames (`DecodedMedia.fp_frames`, 2-4 per second):
per frame, the signs of a hash_size × hash_size block of low DCT frequencies (DC dropped) of the content box
(letterbox/pillarbox bars removed) at a few centred crops. `align_video` scores two prints by their best temporal
alignment (offset, speed within ±max_speed_change, mirror, crop pair), so trims, small speed changes, crops and
mirrors keep the frames in step. A mirror only flips the bits of odd horizontal frequencies, so it costs no hashing.

The legacy `fingerprint`/`similarity` pair (fp1: 8 uniform frames, MaxSim over a bag of frames) is no longer stored;
it stays as bench/dedup.py's baseline.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from scipy.fft import dctn

from embedder.config import DedupConfig
from embedder.types import Fingerprint, MediaError

VIDEO_PRINT_VERSION = "vfp2"  # bump when any hashing step below changes, so stored prints are rebuilt
_VTHUMB = 32  # content box resized to this square before the DCT
_BORDER_STD = 6.0  # a row/column whose grey level varies less than this in every frame is a bar
_MAX_BORDER = 0.4  # bars may take at most this share of each side


@dataclass(frozen=True)
class VideoPrint:
    """Per-frame DCT sign hashes: `bits` is T×K×B/8 packed uint8 (K crops of `crops`, B = hash_size² bits),
    `timestamps_s` the frame times; the last bit of each hash is a constant 0 pad."""

    bits: np.ndarray
    timestamps_s: tuple[float, ...]
    hash_size: int
    crops: tuple[float, ...]
    version: str = VIDEO_PRINT_VERSION

    @property
    def duration_s(self) -> float:
        return self.timestamps_s[-1] + self.step_s if self.timestamps_s else 0.0

    @cached_property
    def step_s(self) -> float:
        ts = self.timestamps_s
        return float(np.median(np.diff(ts))) if len(ts) > 1 else 0.25


@dataclass(frozen=True)
class VideoAlignment:
    """The best alignment stored_t = speed * new_t + offset_s; `pairs` are (new_s, stored_s, agreement) per
    aligned new frame."""

    score: float
    speed: float
    offset_s: float
    mirrored: bool
    pairs: tuple[tuple[float, float, float], ...]


def video_print_payload(p: VideoPrint) -> dict[str, object]:
    """The JSON-able form stored in an item's payload (not indexed): bits as base64, frame times as start + step."""
    return {
        "version": p.version,
        "hash_size": p.hash_size,
        "crops": list(p.crops),
        "start_s": p.timestamps_s[0],
        "step_s": p.step_s,
        "frames": len(p.bits),
        "bits": base64.b64encode(np.ascontiguousarray(p.bits).tobytes()).decode("ascii"),
    }


def video_print_from_payload(d: dict) -> VideoPrint:
    """Inverse of `video_print_payload` (frame times rebuilt on the steady sampling grid)."""
    n, k, t = int(d["hash_size"]), len(d["crops"]), int(d["frames"])
    bits = np.frombuffer(base64.b64decode(d["bits"]), np.uint8).reshape(t, k, -1)
    times = tuple(float(d["start_s"]) + i * float(d["step_s"]) for i in range(t))
    return VideoPrint(bits, times, n, tuple(float(c) for c in d["crops"]), str(d["version"]))


def content_box(frames: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside uniform bars that stay in every frame (letterbox, pillarbox)."""
    f = frames.astype(np.float32)
    flat_rows = (f.std(axis=2) < _BORDER_STD).all(axis=0)  # per row: flat in every frame
    flat_cols = (f.std(axis=1) < _BORDER_STD).all(axis=0)

    def run(flat: np.ndarray) -> tuple[int, int]:
        n, limit = len(flat), int(len(flat) * _MAX_BORDER)
        a = next((k for k in range(n) if not flat[k]), n)
        b = next((k for k in range(n) if not flat[n - 1 - k]), n)
        return (a, n - b) if a <= limit and b <= limit else (0, n)

    (top, bottom), (left, right) = run(flat_rows), run(flat_cols)
    return top, bottom, left, right


def _projection(length: int, start: int, size: int, n: int) -> np.ndarray:
    """n×length matrix: area-resize `size` samples from `start` to _VTHUMB, then the n lowest DCT-II (ortho) rows.
    Applied on both axes it gives the hashed coefficients in two small matrix products, no image resizing."""
    edges = np.linspace(start, start + size, _VTHUMB + 1)
    x = np.arange(length)
    overlap = np.clip(np.minimum(edges[1:, None], x[None, :] + 1) - np.maximum(edges[:-1, None], x[None, :]), 0, None)
    area = overlap / overlap.sum(axis=1, keepdims=True)  # _VTHUMB × length
    k, m = np.arange(n)[:, None], np.arange(_VTHUMB)[None, :]
    dct = np.cos(np.pi * (2 * m + 1) * k / (2 * _VTHUMB)) * np.sqrt(2 / _VTHUMB)
    dct[0] /= np.sqrt(2)
    return (dct @ area).astype(np.float32)


def _signs_of(box: np.ndarray, crop: float, n: int) -> np.ndarray:
    """T×(n²) bools: signs of the n×n lowest DCT frequencies of each frame's centred `crop`, DC replaced by a 0 pad."""
    t, h, w = box.shape
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    rows, cols = _projection(h, (h - ch) // 2, ch, n), _projection(w, (w - cw) // 2, cw, n)
    c = rows @ (box.astype(np.float32) @ cols.T)  # T×n×n (plain matmuls: einsum took 6 ms a call)
    bits = (c > 1e-3).reshape(t, n * n)  # a tiny margin: flat content gives exact zeros on every frame alike
    return np.concatenate([bits[:, 1:], np.zeros((t, 1), bool)], axis=1)  # DC only says brightness


def mirror_mask(n: int) -> np.ndarray:
    """Packed bits a horizontal flip inverts: the odd horizontal frequencies (same layout as `_dct_signs`)."""
    u = np.tile(np.arange(n), n)
    odd = (u % 2 == 1)[1:]
    return np.packbits(np.concatenate([odd, [False]]))


def video_fingerprint(fp_frames: np.ndarray, fp_timestamps_s: list[float], cfg: DedupConfig) -> VideoPrint:
    """Hash T×S×S uint8 grey frames sampled at a steady rate over the whole clip (`DecodedMedia.fp_frames`)."""
    if fp_frames.ndim != 3 or fp_frames.dtype != np.uint8 or len(fp_frames) == 0:
        raise MediaError("bad_frames", "a video fingerprint needs one or more grey uint8 frames")
    if len(fp_timestamps_s) != len(fp_frames):
        raise MediaError("bad_frames", "frames and timestamps differ in count")
    top, bottom, left, right = content_box(fp_frames)
    box = fp_frames[:, top:bottom, left:right]
    per_crop = [np.packbits(_signs_of(box, c, cfg.hash_size), axis=1) for c in cfg.crops]
    bits = np.stack(per_crop, axis=1)
    return VideoPrint(bits, tuple(float(t) for t in fp_timestamps_s), cfg.hash_size, tuple(cfg.crops))


POOLED_BLOCK = 8  # the pooled vector keeps the lowest 8×8 frequencies whatever `dedup.hash_size` is
POOLED_DIM = POOLED_BLOCK**2 - 1  # the `fp_visual` named vector's size (DC dropped)


def pooled_vector(p: VideoPrint) -> np.ndarray:
    """Unit float32 vector (POOLED_DIM) for the index's dense candidate pre-filter: each of the lowest 8×8 DCT
    signs' mean over the frames of the full crop, odd horizontal frequencies folded to magnitudes so a mirror maps
    to the same vector. A bag of frames on purpose: trims and speed changes leave it nearly unchanged."""
    n = p.hash_size
    if n < POOLED_BLOCK:
        raise MediaError("bad_frames", f"a pooled vector needs hash_size >= {POOLED_BLOCK}")
    signs = _signs(p.bits[:, 0], n * n - 1)
    v, u = np.divmod(np.arange(1, n * n), n)  # frequency of each kept bit (DC dropped)
    low = (v < POOLED_BLOCK) & (u < POOLED_BLOCK)
    mean = signs[:, low].mean(axis=0)
    odd = u[low] % 2 == 1
    mean[odd] = np.abs(mean[odd])
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else np.full(POOLED_DIM, POOLED_DIM**-0.5)).astype(np.float32)


def _signs(packed: np.ndarray, nbits: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1)[..., :nbits].astype(np.float32) * 2.0 - 1.0


def _agreement(new: VideoPrint, stored: VideoPrint) -> list[tuple[bool, np.ndarray]]:
    """Ta×Tb bit-agreement matrices in [0, 1] for every (mirror, new crop k vs stored crop 0, or new crop 0 vs stored
    crop k) hypothesis: a crop in either direction is met by a tighter crop of the other side."""
    n = new.hash_size**2
    mask = np.unpackbits(mirror_mask(new.hash_size))[:n].astype(bool)
    out = []
    for mirrored in (False, True):
        a = _signs(new.bits, n)
        if mirrored:
            a[..., mask] *= -1
        b = _signs(stored.bits, n)
        pairs = [(k, 0) for k in range(a.shape[1])] + [(0, k) for k in range(1, b.shape[1])]
        for i, j in pairs:
            out.append((mirrored, (1.0 + a[:, i] @ b[:, j].T / n) / 2.0))
    return out


def best_path(sim: np.ndarray, speeds: np.ndarray, min_len: int) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """Best straight path j = speed*i + offset through a Ta×Tb score matrix (offsets in half steps): the mean score
    along it over at least `min_len` rows; returns (score, speed, offset, rows, cols)."""
    ta, tb = sim.shape
    i = np.arange(ta)
    best = (-1.0, 1.0, 0.0, i[:0], i[:0])
    for s in speeds:
        offsets = np.arange(-2 * int(np.ceil(s * ta)), 2 * tb + 1) / 2.0
        j = np.rint(s * i[None, :] + offsets[:, None]).astype(np.int64)
        valid = (j >= 0) & (j < tb)
        vals = np.where(valid, sim[i[None, :], np.clip(j, 0, tb - 1)], 0.0)
        n = valid.sum(axis=1)
        mean = np.where(n >= min_len, vals.sum(axis=1) / np.maximum(n, 1), -1.0)
        k = int(np.argmax(mean))
        if mean[k] > best[0]:
            best = (float(mean[k]), float(s), float(offsets[k]), i[valid[k]], j[k][valid[k]])
    return best


def min_overlap(cfg: DedupConfig, step_s: float, ta: int, tb: int) -> int:
    """Aligned frames a match needs: min_overlap_s, or half the shorter clip when that is shorter (at least 2)."""
    return max(2, min(round(cfg.min_overlap_s / step_s), (min(ta, tb) + 1) // 2))


def align_video(new: VideoPrint, stored: VideoPrint, cfg: DedupConfig) -> VideoAlignment:
    """The best time alignment of two prints: coarse speeds on every hypothesis, then finer speeds on the best."""
    if new.hash_size != stored.hash_size:
        raise MediaError("bad_frames", "fingerprints of different hash sizes cannot be compared")
    step = stored.step_s
    ta, tb = len(new.bits), len(stored.bits)
    m = min_overlap(cfg, step, ta, tb)
    ratio = new.step_s / step  # new frames to stored frames at speed 1
    grid = np.linspace(1 - cfg.max_speed_change, 1 + cfg.max_speed_change, 13)
    coarse = ratio * grid[np.argsort(np.abs(grid - 1), kind="stable")]  # on ties the speed nearest 1 wins
    hyps = _agreement(new, stored)
    # Rank hypotheses by their mean row maximum (cheap), align the two best.
    ranked = sorted(hyps, key=lambda h: -float(h[1].max(axis=1).mean()))[:2]
    best, best_mirror, best_sim = (-1.0, 1.0, 0.0, None, None), False, ranked[0][1]
    for mirrored, sim in ranked:
        got = best_path(sim, coarse, m)
        if got[0] > best[0]:
            best, best_mirror, best_sim = got, mirrored, sim
    d = ratio * (grid[1] - grid[0])
    fine = best[1] + np.linspace(-d, d, 9)
    fine = fine[np.argsort(np.abs(fine - best[1]), kind="stable")]
    refined = best_path(best_sim, fine, m)
    best = refined if refined[0] > best[0] else best
    score, speed, _, rows, cols = best
    offset = float(np.mean(cols - speed * rows)) if len(rows) else 0.0  # many offsets round to one path
    pairs = tuple(
        (new.timestamps_s[r], stored.timestamps_s[c], float(best_sim[r, c])) for r, c in zip(rows, cols, strict=True)
    )
    # A clip too short for any alignment (fewer than two frames) scores 0: nothing to compare.
    return VideoAlignment(max(0.0, score), speed / ratio, offset * step, best_mirror, pairs)


# ----------------------------------------------------------------------------------------- legacy fp1 (8 frames)

# Changing any constant below changes every hash: bump FINGERPRINT_VERSION so stored fingerprints are rebuilt.
FINGERPRINT_VERSION = "fp1"
_BLOCK = 8  # DCT block per channel: 8 rows × (4 even + 4 odd horizontal frequencies) = 64 bits
_THUMB = 32
_CHANNELS = 3  # luma, red-green, yellow-blue
FINGERPRINT_DIM = _BLOCK * _BLOCK * _CHANNELS
# The query is hashed at the 90 % centre crop; the stored side also at 100 % and 81 %, so a 10 % crop-and-rescale
# re-upload (a 1.11× zoom) meets its original at some scale in either direction. Without the extra scales the
# cropped variants scored 0.77 against a same-topic maximum of 0.81 on the samples (bench/dedup.py).
QUERY_CROP = 0.9
INDEX_CROPS = (1.0, 0.9, 0.81)


def _channels(frame: np.ndarray, crop: float) -> np.ndarray:
    """3×32×32 float32 luma and opponent-colour planes of the centred `crop` fraction of an RGB frame."""
    h, w = frame.shape[:2]
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    y, x = (h - ch) // 2, (w - cw) // 2
    thumb = Image.fromarray(frame[y : y + ch, x : x + cw]).resize((_THUMB, _THUMB), Image.Resampling.BOX)
    rgb = np.asarray(thumb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([0.299 * r + 0.587 * g + 0.114 * b, r - g, (r + g) / 2 - b])


def _plane_bits(plane: np.ndarray) -> np.ndarray:
    """64 mirror-invariant bits of one plane: a horizontal flip negates odd-u DCT coefficients and keeps even-u ones."""
    c = dctn(plane, norm="ortho")[: _BLOCK + 1, : _BLOCK + 1]  # rows: vertical frequency v, columns: horizontal u
    even = c[:_BLOCK, 0:_BLOCK:2].ravel()
    even = np.append(even[1:], c[_BLOCK, 0])  # DC only says brightness; swap it for the next vertical frequency
    odd = np.abs(c[:_BLOCK, 1:_BLOCK:2]).ravel()
    # Median thresholds (as in pHash) give balanced bits whatever the contrast or overall brightness.
    return np.concatenate([even > np.median(even), odd > np.median(odd)])


def _frame_bits(frames: np.ndarray, crop: float) -> np.ndarray:
    bits = [np.concatenate([_plane_bits(p) for p in _channels(f, crop)]) for f in frames]
    return np.stack(bits).astype(np.float32) * 2.0 - 1.0


def fingerprint(frames: np.ndarray, timestamps_s: list[float] | tuple[float, ...]) -> Fingerprint:
    """Fingerprint the sampled frames (T×H×W×3 uint8 RGB, as `DecodedMedia.frames`) taken at `timestamps_s`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise MediaError("bad_frames", "a fingerprint needs one or more RGB uint8 frames")
    if len(timestamps_s) != len(frames):
        raise MediaError("bad_frames", "frames and timestamps differ in count")
    query = _frame_bits(frames, QUERY_CROP)
    index = np.concatenate([query if s == QUERY_CROP else _frame_bits(frames, s) for s in INDEX_CROPS])
    pooled = query.mean(axis=0)
    norm = float(np.linalg.norm(pooled))
    # Every frame's bits cancelling out exactly is possible in principle; keep a valid unit vector then.
    vector = pooled / norm if norm > 0 else np.full(FINGERPRINT_DIM, FINGERPRINT_DIM**-0.5, np.float32)
    return Fingerprint(query, index, vector.astype(np.float32), tuple(float(t) for t in timestamps_s))


def similarity_from_maxsim(score: float, query_frames: int) -> float:
    """Map Qdrant's MaxSim score (cosine; sum over query vectors of the best match) to `similarity`'s [0, 1] scale."""
    return float(np.clip((score / query_frames + 1.0) / 2.0, 0.0, 1.0))


def similarity(query: Fingerprint, stored: Fingerprint) -> float:
    """How much `query` looks like a re-upload of `stored`, in [0, 1]: mean over the query's frames of the best
    cosine to any stored frame, mapped from [-1, 1]. Directional: a trimmed query still finds its full original."""
    cos = query.frame_bits @ stored.index_bits.T / FINGERPRINT_DIM
    return similarity_from_maxsim(float(cos.max(axis=1).sum()), len(query.frame_bits))
