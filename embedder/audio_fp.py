"""Audio fingerprint for reused sounds and re-uploads: spectral-peak landmarks (Wang 2003, as Shazam), numpy only.

Peaks of the 16 kHz log spectrogram are paired (anchor, target within ~1.3 s); each pair hashes to an integer
(anchor bin, bin difference, frame difference). Stored items keep their peaks (to re-derive hashes under any
speed hypothesis) and a sparse vector of their hashes, so the index can pre-filter candidates by shared hashes;
`align_audio` then checks that the shared hashes agree on one time offset (and speed), exactly.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.signal import stft

from embedder.config import DedupConfig
from embedder.types import MediaError

AUDIO_PRINT_VERSION = "afp1"  # bump when any constant below changes, so stored prints are rebuilt
RATE = 16_000
N_FFT, HOP = 1024, 256  # 64 ms windows, 16 ms hop (a 32 ms hop lost half the peaks to an off-grid trim)
HOP_S = HOP / RATE
BIN_LO, BIN_HI = 6, 320  # ~94 Hz to 5 kHz: what survives low-bitrate AAC
PEAK_AREA = (13, 17)  # a peak is the maximum of this (frames, bins) neighbourhood
MAX_DT, MAX_DF = 63, 63  # target zone: up to 1 s later, within ±63 bins (dt is the low 6 bits of a hash)
SILENCE_RMS = 1e-3  # below this (-60 dBFS) a track counts as no audio
TEMPO_STEP = 0.02  # speed grid for a tempo change: keeps pair spans (<= 40 frames) within half a frame
RESAMPLE_STEP = 0.004  # a resampled speed-up also moves pitch: keeps a 5 kHz peak within half a bin


@dataclass(frozen=True, eq=False)  # identity hash: landmark sets are cached per print
class AudioPrint:
    """Spectral peaks, P×2 int32 (frame at HOP_S, frequency bin), time-sorted, and the track length."""

    peaks: np.ndarray
    duration_s: float
    version: str = AUDIO_PRINT_VERSION


@dataclass(frozen=True)
class AudioAlignment:
    """The best alignment stored_t = speed * new_t + offset_s; `matches` are the (new_s, stored_s) of the landmarks
    that agree on it; `score` is their share of the landmarks the overlap holds."""

    score: float
    speed: float
    offset_s: float
    matches: tuple[tuple[float, float], ...]


def audio_fingerprint(audio: np.ndarray | None, cfg: DedupConfig) -> AudioPrint | None:
    """Peaks of 16 kHz mono float32 audio (`DecodedMedia.audio`); None when there is no track or it is silent."""
    if audio is None:
        return None
    if audio.ndim != 1:
        raise MediaError("bad_audio", "an audio fingerprint needs mono samples")
    x = audio.astype(np.float32)
    if len(x) < N_FFT or float(np.sqrt(np.mean(x**2))) < SILENCE_RMS:
        return None
    _, _, z = stft(x, fs=RATE, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=None, padded=False)
    spec = 20 * np.log10(np.abs(z[BIN_LO:BIN_HI]).T + 1e-9)  # frames × bins
    is_peak = (spec == maximum_filter(spec, size=PEAK_AREA)) & (spec > spec.max() - 60)
    t, f = np.nonzero(is_peak)
    keep = _strongest_per_second(t, spec[t, f], cfg.audio_peaks_per_s)
    peaks = np.stack([t[keep], f[keep] + BIN_LO], axis=1).astype(np.int32)
    return AudioPrint(peaks[np.argsort(peaks[:, 0], kind="stable")], len(x) / RATE)


def audio_print_payload(p: AudioPrint) -> dict[str, object]:
    """The JSON-able form stored in an item's payload (not indexed): peaks as base64 little-endian uint16 pairs
    (frame, bin); uint16 frames cover 17 minutes, far above `limits.max_duration_s`."""
    peaks = np.clip(p.peaks, 0, 65535).astype("<u2")
    return {"version": p.version, "duration_s": p.duration_s, "peaks": base64.b64encode(peaks.tobytes()).decode()}


def audio_print_from_payload(d: dict) -> AudioPrint:
    """Inverse of `audio_print_payload`."""
    peaks = np.frombuffer(base64.b64decode(d["peaks"]), "<u2").reshape(-1, 2).astype(np.int32)
    return AudioPrint(peaks, float(d["duration_s"]), str(d["version"]))


def _strongest_per_second(t: np.ndarray, level: np.ndarray, per_s: int) -> np.ndarray:
    """Indices of peaks with fewer than `per_s` louder peaks within ±0.5 s: an even density that a trim leaves
    unchanged (fixed one-second windows would move with the clip's start)."""
    half = round(0.5 / HOP_S)
    order = np.argsort(t, kind="stable")
    t, level = t[order], level[order]
    louder = np.zeros(len(t), np.int64)
    for k in range(1, len(t)):  # the k-th neighbour in time order, until none is within the window
        near = t[k:] - t[:-k] <= half
        if not near.any():
            break
        louder[:-k] += near & (level[k:] > level[:-k])
        louder[k:] += near & (level[:-k] > level[k:])
    return np.sort(order[louder < per_s])


def landmarks(
    p: AudioPrint, fan_out: int, time_scale: float = 1.0, freq_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint32, anchor times in stored frames) of peak pairs, after scaling time and frequency (a speed
    hypothesis: time only for a tempo change, both for a resampled one)."""
    t = p.peaks[:, 0] * time_scale
    f = np.rint(p.peaks[:, 1] * freq_scale).astype(np.int64)
    hashes, anchors = [], []
    for k in range(1, fan_out * 4 + 1):  # look ahead in time order; keep the first fan_out targets in the zone
        if k >= len(t):
            break
        dt = np.rint(t[k:] - t[:-k]).astype(np.int64)
        df = f[k:] - f[:-k]
        ok = (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
        hashes.append((np.clip(f[:-k], 0, 511) << 13 | (df + 64) << 6 | np.clip(dt, 0, 63))[ok])
        anchors.append(np.nonzero(ok)[0])
    if not hashes:
        return np.zeros(0, np.uint32), np.zeros(0)
    h, a = np.concatenate(hashes), np.concatenate(anchors)
    order = np.argsort(a, kind="stable")  # per anchor, nearest targets first
    h, a = h[order], a[order]
    keep = np.arange(len(a)) - np.searchsorted(a, a, side="left") < fan_out
    return h[keep].astype(np.uint32), t[a[keep]]


def sparse_hashes(p: AudioPrint, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the sparse candidate vector: distinct landmark hashes and their counts
    (`fan_out`: `dedup.audio_fan_out`)."""
    h, _ = landmarks(p, fan_out)
    idx, counts = np.unique(h, return_counts=True)
    return idx.astype(np.uint32), counts.astype(np.float32)


def _offset_votes(hq: np.ndarray, tq: np.ndarray, hs: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, stored) pair of equal hashes, as index arrays (hs must be sorted)."""
    lo, hi = np.searchsorted(hs, hq, "left"), np.searchsorted(hs, hq, "right")
    cnt = hi - lo
    qi = np.repeat(np.arange(len(hq)), cnt)
    si = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
    return qi, si


_CACHE: WeakKeyDictionary[AudioPrint, dict[tuple, object]] = WeakKeyDictionary()


def _cached(p: AudioPrint, key: tuple, make: object) -> object:
    """Per-print memo: a new item is compared with many candidates, a stored one with many new items."""
    slot = _CACHE.setdefault(p, {})
    if key not in slot:
        slot[key] = make()  # type: ignore[operator]
    return slot[key]


def _stored_index(p: AudioPrint, fan_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks sorted by hash (hashes, times) and the times sorted, for offset votes and overlap counts."""
    hs, ts = landmarks(p, fan_out)
    order = np.argsort(hs, kind="stable")
    return hs[order], ts[order], np.sort(ts)


def align_audio(new: AudioPrint, stored: AudioPrint, cfg: DedupConfig) -> AudioAlignment:
    """The offset (and speed) on which most shared landmarks agree, over tempo and resampling speed hypotheses."""
    hs, ts, ts_sorted = _cached(stored, ("index", cfg.audio_fan_out), lambda: _stored_index(stored, cfg.audio_fan_out))  # type: ignore[misc]
    hyps = _cached(
        new,
        ("query", cfg.audio_fan_out, cfg.max_speed_change),
        lambda: [(s, *landmarks(new, cfg.audio_fan_out, s, fs)) for s, fs in _hypotheses(cfg.max_speed_change)],
    )
    best = AudioAlignment(0.0, 1.0, 0.0, ())
    for s, h1, t1 in hyps:  # type: ignore[attr-defined]
        # Query-side fuzz: each landmark also looks up dt ± 1 (peak times jitter by a frame); counted once.
        hq, tq, ids = np.concatenate([h1, h1 - 1, h1 + 1]), np.tile(t1, 3), np.tile(np.arange(len(h1)), 3)
        qi, si = _offset_votes(hq, tq, hs, ts)
        if len(qi) == 0:
            continue
        d = np.rint(ts[si] - tq[qi]).astype(np.int64)
        votes = np.bincount(d - d.min())
        smooth = votes + np.r_[votes[1:], 0] + np.r_[0, votes[:-1]]  # ±1 frame of rounding
        off = int(np.argmax(smooth)) + int(d.min())
        hit = np.abs(d - off) <= 1
        # The landmarks either side could have shared inside the overlap of the two tracks.
        lo, hi = max(0.0, -off), min(tq.max(initial=0) + 1, stored.duration_s / HOP_S - off)
        n_new = int(((t1 >= lo) & (t1 <= hi)).sum())
        n_stored = int(np.searchsorted(ts_sorted, hi + off, "right") - np.searchsorted(ts_sorted, lo + off))
        if (hi - lo) * HOP_S < _min_overlap_s(cfg, new, stored):
            continue
        score = int(np.unique(ids[qi[hit]]).size) / max(1, min(n_new, n_stored))
        if score > best.score:
            pairs = sorted(
                {(float(tq[q] * HOP_S / s), float(ts[k] * HOP_S)) for q, k in zip(qi[hit], si[hit], strict=True)}
            )
            best = AudioAlignment(min(1.0, score), float(s), off * HOP_S, tuple(pairs))
    return best


def _hypotheses(m: float) -> list[tuple[float, float]]:
    """(time scale, frequency scale) pairs: tempo changes (pitch kept) and resampled ones (pitch moves along)."""
    tempo = [(float(s), 1.0) for s in np.arange(1 - m, 1 + m + 1e-9, TEMPO_STEP)]
    res = [(float(s), 1 / float(s)) for s in np.arange(1 - m, 1 + m + 1e-9, RESAMPLE_STEP) if abs(s - 1) > 1e-9]
    return [(1.0, 1.0), *tempo, *res]


def _min_overlap_s(cfg: DedupConfig, new: AudioPrint, stored: AudioPrint) -> float:
    return min(cfg.min_overlap_s, 0.5 * min(new.duration_s, stored.duration_s))
