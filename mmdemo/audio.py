"""Audio as it arrives from browsers, files and tests, turned into mono float32 at 16 kHz.

Accepts int16/int32/uint8/float arrays, mono or interleaved/planar stereo, any sample rate in
[4 kHz, 384 kHz]. ``StreamResampler`` converts a stream chunk by chunk into exactly what a one-shot
resampling of the whole stream gives (no click at chunk borders, no drift); ``AudioRing`` keeps the
last N seconds at constant cost.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import firwin, resample_poly

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 4000, 384000


class AudioError(ValueError):
    """Audio that cannot be used, with a message fit for the user."""


def check_rate(sample_rate) -> int:
    try:
        sr = int(sample_rate)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite rate
        raise AudioError(f"the sample rate {sample_rate!r} is not a number") from None
    if not MIN_RATE <= sr <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {sr} Hz (expected {MIN_RATE}..{MAX_RATE} Hz)")
    return sr


def to_mono_float(samples) -> np.ndarray:
    """Any PCM layout -> mono float32 in [-1, 1]. Non-finite samples become 0. 64-bit integers (what
    Python ints become) are read as 16-bit samples when they fit, else as 32-bit ones."""
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
        scale = dtype
        if dtype == np.int64:  # no audio format stores 64-bit PCM: Python ints (np.asarray([...]) gives int64) of 16- or 32-bit samples
            peak = int(np.abs(np.asarray(samples)).max())
            scale = np.dtype(np.int16) if peak <= 32768 else np.dtype(np.int32) if peak <= 2**31 else dtype
        y = x / float(np.iinfo(scale).max + 1)
    elif np.issubdtype(dtype, np.floating):
        y = x
    else:
        raise AudioError(f"unsupported audio sample type {dtype}")
    y = np.asarray(y, dtype=np.float32)
    y[~np.isfinite(y)] = 0.0
    return np.clip(y, -1.0, 1.0)


MAX_FACTOR = 5600  # the largest up or down factor of a resampling filter (its taps: 20x this; 44,056 Hz needs 5,507)


def ratio(sr_in: int, sr_out: int = SAMPLE_RATE) -> tuple[int, int]:
    """(up, down) of the polyphase filter from ``sr_in`` to ``sr_out``. A rate that shares almost no
    factor with ``sr_out`` (383,993 Hz: a filter of millions of taps, seconds of CPU per chunk) is
    read as the nearest multiple of 100 Hz: a pitch error of at most 1.25% (at 4 kHz; 0.01% at 384
    kHz), which no feature here notices. Every common rate keeps its exact filter (8, 11.025, 16,
    22.05, 32, 44.1, 44.056, 48, 88.2, 96, 192 kHz ...); rare ones such as the old 11,127 and
    22,254 Hz are rounded (0.1-0.25%)."""
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    if max(up, down) > MAX_FACTOR:
        near = max(100, round(sr_in / 100) * 100)
        g = math.gcd(near, sr_out)
        up, down = sr_out // g, near // g
    return up, down


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot polyphase resampling of a whole signal."""
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    up, down = ratio(sr_in, sr_out)
    return x.astype(np.float32, copy=False) if up == down else resample_poly(x, up, down).astype(np.float32)


class StreamResampler:
    """Chunk-by-chunk polyphase resampling that gives, sample for sample, what
    :func:`resample` (``scipy.signal.resample_poly``) gives for the whole signal.

    The same anti-aliasing filter (a Kaiser-windowed sinc of 2*10*max(up, down)+1 taps, scaled by
    ``up``) is applied as a polyphase bank: output sample n is the dot product of the filter phase
    ``(n*down + half) mod up`` with the input samples around ``n*down/up``. An output is emitted only
    once every input it needs has arrived, so nothing is ever computed against padding inside the
    stream (no click at chunk borders) and the output count follows the input count exactly (no
    drift, whatever the chunk lengths). The price is a fixed delay of ``half/up`` input samples (0.6 ms
    at 48 kHz, 0.6 ms at 44.1 kHz); :meth:`flush` emits the tail at the end of a stream, after which
    the output equals the one-shot result in length too.
    """

    def __init__(self, sr_in: int, sr_out: int = SAMPLE_RATE):
        self.sr_in, self.sr_out = check_rate(sr_in), sr_out
        self.up, self.down = ratio(self.sr_in, sr_out)
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples emitted
        if self.up == self.down:
            return
        max_rate = max(self.up, self.down)
        self.half = 10 * max_rate
        h = firwin(2 * self.half + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self.taps = -(-(2 * self.half + 1) // self.up)  # ceil: inputs under the filter per output
        bank = np.zeros((self.up, self.taps))
        for r in range(self.up):  # phase r: tap i multiplies input j0 - i, with j0 the newest input needed
            k = r + self.up * np.arange(self.taps)
            ok = k <= 2 * self.half
            bank[r, ok] = h[k[ok]]
        self.bank = bank.astype(np.float32)
        self.base = -self.taps  # absolute index of hist[0]; the stream starts after zeros, as one-shot does
        self.hist = np.zeros(self.taps, np.float32)

    def _emit(self, n_end: int) -> np.ndarray:
        if n_end <= self.n_out:
            return np.zeros(0, np.float32)
        n = np.arange(self.n_out, n_end, dtype=np.int64)
        m = n * self.down + self.half
        j0, r = m // self.up, m % self.up  # newest input needed, filter phase
        idx = (j0 - self.base)[:, None] - np.arange(self.taps)[None, :]  # (K, taps) into hist
        buf = self.hist
        if idx.max() >= len(buf):  # past the end of the stream (flush): zeros, as one-shot pads
            buf = np.concatenate([buf, np.zeros(int(idx.max()) - len(buf) + 1, np.float32)])
        y = np.einsum("kt,kt->k", buf[idx], self.bank[r])
        self.n_out = n_end
        # keep only the inputs that later outputs can still reach
        first = int((self.n_out * self.down + self.half) // self.up) - self.taps + 1
        drop = min(max(0, first - self.base), len(self.hist))
        if drop:
            self.hist, self.base = self.hist[drop:], self.base + drop
        return y.astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self.up == self.down:
            self.n_in += x.size
            self.n_out += x.size
            return x
        if x.size == 0:
            return np.zeros(0, np.float32)
        self.hist = np.concatenate([self.hist, x])
        self.n_in += x.size
        # output n is ready when its newest input (n*down + half) // up has arrived
        ready = -(-(self.n_in * self.up - self.half) // self.down)
        return self._emit(max(ready, self.n_out))

    def flush(self) -> np.ndarray:
        """The outputs still waiting for future input, computed as if the stream ended here."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        return self._emit(-(-(self.n_in * self.up) // self.down))

    @property
    def delay(self) -> int:
        """Input samples an output waits for beyond its own instant."""
        return 0 if self.up == self.down else -(-self.half // self.up)


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
