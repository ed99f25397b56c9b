"""Audio as it arrives from browsers, files and tests, turned into mono float32 at 16 kHz.

Accepts int16/int32/uint8/float arrays, mono or interleaved/planar stereo, any sample rate in
[4 kHz, 384 kHz]. ``StreamResampler`` converts a stream chunk by chunk with left context, so chunk
borders do not click; ``AudioRing`` keeps the last N seconds at constant cost.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 4000, 384000


class AudioError(ValueError):
    """Audio that cannot be used, with a message fit for the user."""


def check_rate(sample_rate) -> int:
    try:
        sr = int(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(f"the sample rate {sample_rate!r} is not a number") from None
    if not MIN_RATE <= sr <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {sr} Hz (expected {MIN_RATE}..{MAX_RATE} Hz)")
    return sr


def to_mono_float(samples) -> np.ndarray:
    """Any PCM layout -> mono float32 in [-1, 1]. Non-finite samples become 0."""
    x = np.asarray(samples)
    dtype = x.dtype
    if x.size == 0:
        return np.zeros(0, np.float32)
    if x.ndim == 2:  # (N, C) or (C, N): channels are the short axis
        x = x.mean(axis=1 if x.shape[1] <= x.shape[0] else 0, dtype=np.float64)
    elif x.ndim != 1:
        raise AudioError(f"audio must be 1-D (mono) or 2-D (channels), got shape {x.shape}")
    if dtype == np.uint8:
        y = (x - 128.0) / 128.0
    elif np.issubdtype(dtype, np.integer):
        y = x / float(np.iinfo(dtype).max + 1)
    elif np.issubdtype(dtype, np.floating):
        y = x
    else:
        raise AudioError(f"unsupported audio sample type {dtype}")
    y = np.asarray(y, dtype=np.float32)
    y[~np.isfinite(y)] = 0.0
    return np.clip(y, -1.0, 1.0)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot polyphase resampling of a whole signal."""
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    g = math.gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


class StreamResampler:
    """Chunk-by-chunk resampling with left context (the filter sees the previous samples)."""

    def __init__(self, sr_in: int, sr_out: int = SAMPLE_RATE):
        self.sr_in, self.sr_out = check_rate(sr_in), sr_out
        g = math.gcd(self.sr_in, sr_out)
        self.up, self.down = sr_out // g, self.sr_in // g
        self.ctx_len = self.down * math.ceil(256 / self.down)  # a whole number of input periods
        self.prev = np.zeros(0, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.up == self.down or x.size == 0:
            return x.astype(np.float32, copy=False)
        buf = np.concatenate([self.prev, x])
        y = resample_poly(buf, self.up, self.down)
        skip = len(self.prev) * self.up // self.down  # len(prev) is a multiple of down: exact
        tail = buf[-self.ctx_len :]
        self.prev = tail[len(tail) % self.down :]
        return y[skip:].astype(np.float32)


class AudioRing:
    """The last ``seconds`` of a stream, in a fixed buffer (constant memory and cost)."""

    def __init__(self, seconds: float, sample_rate: int = SAMPLE_RATE):
        self.size = int(round(seconds * sample_rate))
        self.buf = np.zeros(self.size, np.float32)
        self.filled = 0
        self.total = 0  # samples ever pushed

    def push(self, x: np.ndarray) -> None:
        x = x[-self.size :]
        n = len(x)
        if n == 0:
            return
        self.buf = np.roll(self.buf, -n)
        self.buf[-n:] = x
        self.filled = min(self.size, self.filled + n)
        self.total += n

    def last(self, seconds: float | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        n = self.filled if seconds is None else min(self.filled, int(round(seconds * sample_rate)))
        return self.buf[self.size - n :].copy()


def level_dbfs(x: np.ndarray) -> float:
    """RMS level in dB full scale (-100 for digital silence)."""
    if x.size == 0:
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return max(-100.0, 20 * math.log10(rms)) if rms > 0 else -100.0


def clipped_share(x: np.ndarray, threshold: float = 0.99) -> float:
    return float(np.mean(np.abs(x) >= threshold)) if x.size else 0.0
