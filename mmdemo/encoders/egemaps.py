"""eGeMAPSv02 on a live stream: openSMILE's frame-level descriptors computed once per sample, the
88 functionals of any window computed from them in numpy.

openSMILE's one-shot API re-runs the whole pipeline for every window (about 20 ms of setup plus
25 ms per second of audio): at a 2.4 s window every 0.5 s each sample is analysed five times.
:class:`EgemapsStream` keeps ONE openSMILE instance per live session, fed chunk by chunk through its
external audio source (``opensmile/egemaps_frames.conf``: openSMILE's own eGeMAPSv02/GeMAPSv01b
frame-level includes, ring buffers everywhere so memory stays flat), and receives the 36
frame-level inputs of eGeMAPS's functionals every 10 ms: the smoothed F0 and loudness contours, the
voiced/unvoiced spectral sets, the voice-quality set and the frame energy.

:func:`functionals` turns frames into the 88 eGeMAPSv02 functionals with openSMILE's definitions
(cFunctionals with nonZeroFuncts, cFunctionalMoments stddevNorm=2, cFunctionalPercentiles interp=1,
cFunctionalPeaks2 rising/falling slopes and peaks per second, cFunctionalSegments nonX/eqX, Leq in
dBp), in float32 as openSMILE computes. On the frames of one segment it reproduces openSMILE's
one-shot functionals (tests/test_egemaps.py); on a stream the frames at a window's edges differ
slightly (they saw audio before the window, and the newest audio is still in openSMILE's
look-ahead: a window reads frames up to LAG_FRAMES = 140 ms before the newest audio), which the
tests bound on the voice model's output.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SR = 16000
HOP = 160  # 10 ms frames
T = np.float32(0.01)
CONFIG = Path(__file__).with_name("opensmile") / "egemaps_frames.conf"
RING = Path(__file__).with_name("opensmile") / "ring_buffers.conf.inc"
F32 = np.float32

# the 36 values of every frame, in the order of the config's sink
FRAME_NAMES = (
    "F0semitoneFrom27.5Hz_sma3nz", "loudness_sma3", "spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3",
    "mfcc4_sma3", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz", "logRelF0-H1-H2_sma3nz",
    "logRelF0-H1-A3_sma3nz", "F1frequency_sma3nz", "F1bandwidth_sma3nz", "F1amplitudeLogRelF0_sma3nz",
    "F2frequency_sma3nz", "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz", "F3frequency_sma3nz",
    "F3bandwidth_sma3nz", "F3amplitudeLogRelF0_sma3nz", "alphaRatioV_sma3nz", "hammarbergIndexV_sma3nz",
    "slopeV0-500_sma3nz", "slopeV500-1500_sma3nz", "spectralFluxV_sma3nz", "mfcc1V_sma3nz", "mfcc2V_sma3nz",
    "mfcc3V_sma3nz", "mfcc4V_sma3nz", "alphaRatioUV_sma3nz", "hammarbergIndexUV_sma3nz", "slopeUV0-500_sma3nz",
    "slopeUV500-1500_sma3nz", "spectralFluxUV_sma3nz", "pcm_SQUAREDenergy",
)
COL = {n: i for i, n in enumerate(FRAME_NAMES)}
F0, LOUDNESS, ENERGY = COL["F0semitoneFrom27.5Hz_sma3nz"], COL["loudness_sma3"], COL["pcm_SQUAREDenergy"]
CONTOUR = ("amean", "stddevNorm", "percentile20.0", "percentile50.0", "percentile80.0", "pctlrange0-2",
           "meanRisingSlope", "stddevRisingSlope", "meanFallingSlope", "stddevFallingSlope")
TEMPORAL = ("loudnessPeaksPerSec", "VoicedSegmentsPerSec", "MeanVoicedSegmentLengthSec", "StddevVoicedSegmentLengthSec",
            "MeanUnvoicedSegmentLength", "StddevUnvoicedSegmentLength")
_MEAN_SD = ("spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3", "jitterLocal_sma3nz",
            "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz", "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz",
            "F1frequency_sma3nz", "F1bandwidth_sma3nz", "F1amplitudeLogRelF0_sma3nz", "F2frequency_sma3nz",
            "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz", "F3frequency_sma3nz", "F3bandwidth_sma3nz",
            "F3amplitudeLogRelF0_sma3nz", "alphaRatioV_sma3nz", "hammarbergIndexV_sma3nz", "slopeV0-500_sma3nz",
            "slopeV500-1500_sma3nz", "spectralFluxV_sma3nz", "mfcc1V_sma3nz", "mfcc2V_sma3nz", "mfcc3V_sma3nz", "mfcc4V_sma3nz")
_MEAN = ("alphaRatioUV_sma3nz", "hammarbergIndexUV_sma3nz", "slopeUV0-500_sma3nz", "slopeUV500-1500_sma3nz", "spectralFluxUV_sma3nz")
# eGeMAPSv02's 88 names, in openSMILE's order
FEATURE_NAMES = tuple(
    [f"{c}_{f}" for c in FRAME_NAMES[:2] for f in CONTOUR]
    + [f"{c}_{f}" for c in _MEAN_SD for f in ("amean", "stddevNorm")]
    + [f"{c}_amean" for c in _MEAN]
    + list(TEMPORAL) + ["equivalentSoundLevel_dBp"]
)


# ------------------------------------------------------------------ openSMILE's functionals, in numpy
def _kept(x: np.ndarray, nonzero: bool) -> np.ndarray:
    """cFunctionals: with nonZeroFuncts the values exactly 0 are left out (per column)."""
    x = np.asarray(x, F32)
    return x[x != 0] if nonzero else x


def _mean(x: np.ndarray) -> np.float32:
    return F32(x.astype(np.float64).sum() / len(x)) if len(x) else F32(0)


def _mean_sd(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """cFunctionalMoments amean and stddevNorm=2: population stddev / signed mean (stddev itself
    when the mean is 0, 0 when there is no spread)."""
    if len(x) == 0:
        return F32(0), F32(0)
    mean = _mean(x)
    d = x.astype(np.float64) - float(mean)
    m2 = float((d * d).sum()) / len(x)
    if m2 <= 0:
        return mean, F32(0)
    return mean, F32(np.sqrt(m2) / (float(mean) or 1.0))


def _percentiles(x: np.ndarray, ps=(0.2, 0.5, 0.8)) -> list[np.float32]:
    """cFunctionalPercentiles interp=1 (linear between the two nearest sorted values), then
    pctlrange0-2 = |p80 - p20|."""
    if len(x) == 0:
        return [F32(0)] * (len(ps) + 1)
    s = np.sort(x)
    n = len(s)
    out = []
    for p in ps:
        idx = p * (n - 1)
        i1, i2 = min(max(int(np.floor(idx)), 0), n - 1), min(max(int(np.ceil(idx)), 0), n - 1)
        out.append(F32(s[i1] * F32(i2 - idx) + s[i2] * F32(idx - i1)) if i1 != i2 else F32(s[i1]))
    out.append(F32(abs(out[2] - out[0])))
    return out


def _extrema(x: np.ndarray) -> list[list]:
    """cFunctionalPeaks2's peaks and valleys ([is_max, value, index]) after its three clean-up passes."""
    n = len(x)
    thr = F32(F32(0.1) * F32(x.max() - x.min()))
    cand = []
    for i in range(2, n - 2):
        if x[i] > x[i - 1] and x[i] > x[i + 1]:
            cand.append([True, x[i], i, True])
        elif x[i] < x[i - 1] and x[i] < x[i + 1]:
            cand.append([False, x[i], i, True])
    # 1: drop maxima that rise less than the threshold (a much higher one replaces the last kept one)
    last_val = last_min = last_max = x[0]
    min_flag, last_max_e = False, None
    for e in cand:
        y = e[1]
        if e[0]:
            if F32(abs(F32(y - last_val))) < thr:
                if F32(y - last_min) < thr:
                    e[3] = False
                else:
                    if float(y) > float(last_max) * 1.05:
                        if last_max_e is not None:
                            last_max_e[3] = False
                        last_max, last_max_e = y, e
                    elif min_flag:
                        last_max, last_max_e = y, e
                    else:
                        e[3] = False
                    min_flag = False
            else:
                min_flag, last_max, last_max_e = False, y, e
        elif not F32(abs(F32(y - last_val))) < thr:
            min_flag, last_min = True, y
        last_val = y
    # 2: drop minima less than the threshold below the last maximum
    kept, last_max = [], x[0]
    for e in (e for e in cand if e[3]):
        if not e[0]:
            if F32(last_max - e[1]) < thr:
                continue
        else:
            last_max = e[1]
        kept.append(e)
    # 3: alternate: of consecutive maxima keep the highest, of consecutive minima the lowest
    out: list[list] = []
    for e in kept:
        if out and out[-1][0] == e[0]:
            if (e[0] and e[1] > out[-1][1]) or (not e[0] and e[1] < out[-1][1]):
                out[-1] = e
        else:
            out.append(e)
    return out


def _slope_stats(v: list, v_sd: list) -> tuple[np.float32, np.float32]:
    if not v:
        return F32(0), F32(0)
    m = F32(0)
    for a in v:
        m = F32(m + a)
    if len(v) > 1:
        m = F32(m / F32(len(v)))
    sd = F32(0)
    for a in v_sd:  # openSMILE's second pass leaves the tail slope out of the sum, not the count
        sd = F32(sd + F32((a - m) * (a - m)))
    if len(v) > 1:
        sd = F32(sd / F32(len(v)))
    return m, (F32(np.sqrt(sd)) if sd > 0 else F32(0))


def _peaks(x: np.ndarray) -> tuple[np.float32, list[np.float32]]:
    """cFunctionalPeaks2 (relThresh 0.1, norm seconds): peaks per second and the mean/stddev of
    the rising and falling slopes (value per second)."""
    n = len(x)
    if n == 0:
        return F32(0), [F32(0)] * 4
    ext = _extrema(x)
    rise, fall = [], []
    last_max = last_min = x[0]
    max_pos = min_pos = 0
    last_is_max = None
    for is_max, y, i, _ in ext:
        if is_max:
            last_max, max_pos = y, i
            rise.append(F32((last_max - last_min) / F32(F32(max_pos - min_pos) * T)))
        else:
            last_min, min_pos = y, i
            fall.append(F32((last_max - last_min) / F32(F32(min_pos - max_pos) * T)))
        last_is_max = is_max
    rise_sd, fall_sd = list(rise), list(fall)
    if last_is_max is True:
        fall.append(F32((x[n - 1] - last_max) / F32(F32(n - 1 - max_pos) * T)))
    elif last_is_max is False:
        rise.append(F32((x[n - 1] - last_min) / F32(F32(n - 1 - min_pos) * T)))
    else:  # no extremum: one slope over the whole contour, per frame count
        s = F32((x[n - 1] - x[0]) / F32(n))
        rise, fall = ([s] if s > 0 else []), ([s] if s < 0 else [])
        rise_sd, fall_sd = [], []
    peaks = F32(F32(sum(1 for e in ext if e[0])) / F32(F32(n) * T))
    return peaks, [*_slope_stats(rise, rise_sd), *_slope_stats(fall, fall_sd)]


def _segments(x: np.ndarray, voiced: bool) -> tuple[np.float32, np.float32, np.float32]:
    """cFunctionalSegments nonX (voiced: runs of non-zero F0) or eqX (unvoiced: runs of zeros),
    X = 0, at least 3 frames, gaps of one frame bridged, norm seconds: (segments per second, mean
    and stddev of their length in seconds; openSMILE counts a run of n frames as n - 1)."""
    n = len(x)
    lens, state, start, end, start_i = [], 0, 0, 0, 0
    for i in range(n):
        hit = (x[i] != 0) if voiced else (x[i] == 0)
        if hit:
            if state == 1:
                end, start = 0, start + 1
                if start >= 3:
                    start, state = 0, 2
            elif state == 0:
                start, start_i, state = start + 1, i, 1
            else:
                end = 0
        elif state == 2:
            start, end = 0, end + 1
            if end >= 2:
                lens.append(i - end - start_i)
                state, end = 0, 0
        elif state == 1:
            end += 1
            if end >= 2:
                state, end, start = 0, 0, 0
    if state == 2:
        lens.append(n - (end + 1) - start_i)
    k = len(lens)
    mean = F32(F32(sum(lens)) / F32(k)) if k > 1 else F32(sum(lens))
    dev = F32(0)
    for ln in lens:
        dev = F32(dev + F32((F32(ln) - mean) * (F32(ln) - mean)))
    dev = F32(np.sqrt(F32(dev / F32(k)))) if k > 1 else F32(0)
    per_s = F32(F32(k) / F32(T * F32(n))) if n else F32(0)
    return per_s, F32(mean * T), F32(dev * T)


def functionals(frames) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals (:data:`FEATURE_NAMES` order) of frames ``(N, 36)`` in
    :data:`FRAME_NAMES` order, or of a mapping name -> contour (openSMILE's levels may differ in
    length by a few frames at the end of a signal). NaN everywhere for fewer than 5 frames."""
    if isinstance(frames, dict):
        cols = {n: np.asarray(frames[n], F32).reshape(-1) for n in FRAME_NAMES}
    else:
        x = np.asarray(frames, F32)
        if x.ndim != 2 or x.shape[1] != len(FRAME_NAMES):
            raise ValueError(f"frames must be (N, {len(FRAME_NAMES)}), got {x.shape}")
        cols = {n: x[:, i] for i, n in enumerate(FRAME_NAMES)}
    if min(len(c) for c in cols.values()) < 5:
        return np.full(len(FEATURE_NAMES), np.nan, F32)
    f0, loud = cols[FRAME_NAMES[F0]], cols[FRAME_NAMES[LOUDNESS]]
    out: list = []
    for v in (_kept(f0, True), loud):
        out += [*_mean_sd(v), *_percentiles(v), *(_peaks(v)[1] if len(v) else [F32(0)] * 4)]
    for name in _MEAN_SD:
        out += list(_mean_sd(_kept(cols[name], name.endswith("nz"))))
    for name in _MEAN:
        out.append(_mean(_kept(cols[name], True)))
    out.append(_peaks(loud)[0])
    out += list(_segments(f0, voiced=True))
    out += list(_segments(f0, voiced=False))[1:]
    leq = _mean(cols[FRAME_NAMES[ENERGY]])
    out.append(F32(F32(10.0 / np.log(10.0)) * np.log(max(float(leq), 1e-12), dtype=np.float32)))
    return np.asarray(out, F32)


# ------------------------------------------------------------------ the stream
def _opensmile_options() -> dict:
    import opensmile

    root = Path(opensmile.__file__).parent / "core" / "config"
    return {
        "gemapsLld": str(root / "gemaps" / "v01b" / "GeMAPSv01b_core.lld.conf.inc"),
        "egemapsLld": str(root / "egemaps" / "v02" / "eGeMAPSv02_core.lld.conf.inc"),
        "bufferModeRbConf": str(root / "shared" / "BufferModeRb.conf.inc"),
        "bufferModeRbLagConf": str(root / "shared" / "BufferModeRbLag.conf.inc"),
        "bufferModeConf": str(RING),
    }


def to_int16(audio: np.ndarray) -> bytes:
    """openSMILE's input: 16-bit PCM (as the opensmile package converts float audio)."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 32767 / 32768) * 32768).astype(np.int16).tobytes()


class _Frames:
    """What openSMILE's thread writes into: the last ``keep`` frames (the thread holds only this,
    never the stream object, so a dropped stream is collected and closes its thread)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.buf = np.zeros((keep, len(FRAME_NAMES)), F32)
        self.done = 0  # frames received (frame k starts at sample k * HOP)
        self.closed = False
        self.cond = threading.Condition()

    def on_frame(self, data: np.ndarray, meta) -> None:
        with self.cond:
            self.buf[self.done % self.keep] = data
            self.done += 1
            self.cond.notify_all()

    def run(self, smile) -> None:
        try:
            smile.run()
        except Exception as err:  # noqa: BLE001 - the stream then gives no new frames; the voice says so
            log.warning("openSMILE stream stopped: %s", err)
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            _THREADS.discard(threading.current_thread())


# At interpreter exit a daemon thread that wants the GIL back is ended with pthread_exit. Inside
# openSMILE's C++ (a frame callback through ctypes) that unwinding meets a catch-all and the
# process aborts ("FATAL: exception not rethrown"). So no openSMILE thread may be running when
# Python finalizes: every stream still open is closed at exit, and the exit waits for the threads.
_STREAMS: "weakref.WeakSet[EgemapsStream]" = weakref.WeakSet()
_THREADS: set[threading.Thread] = set()  # openSMILE threads and the helpers that free an instance


EXIT_WAIT_S = 10.0  # at most this long in all for openSMILE's threads at exit (a stuck one is left)


def _start(thread: threading.Thread) -> None:
    _THREADS.add(thread)
    try:
        thread.start()
    except BaseException:
        _THREADS.discard(thread)
        raise


@atexit.register
def _close_at_exit() -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    for stream in list(_STREAMS):
        try:
            stream.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as err:  # noqa: BLE001 - the others are still closed
            log.warning("closing an openSMILE stream at exit: %s", err)
    for thread in list(_THREADS):
        if thread.ident is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _shutdown(smile, thread: threading.Thread, wait: bool = False, timeout: float = 10.0) -> None:
    """End of input, then (once openSMILE's thread has finished) free the instance. ``wait``: here
    (close()); else in a helper thread, as garbage collection may run this on any thread (from
    openSMILE's own thread it can only end the input)."""
    if thread.is_alive():
        try:
            smile.external_audio_source_set_eoi("extsource")
        except Exception:  # noqa: BLE001
            pass
    if threading.current_thread() is thread:
        return  # its run() returns after the end of input; the instance is left to process exit

    def free() -> None:
        thread.join(timeout=timeout)
        if not thread.is_alive():
            smile.free()

    def helper() -> None:
        try:
            free()
        finally:
            _THREADS.discard(threading.current_thread())

    if wait or not thread.is_alive():
        free()
    else:
        _start(threading.Thread(target=helper, name="mmdemo-egemaps-free", daemon=True))


class EgemapsStream:
    """One openSMILE instance fed a 16 kHz stream; keeps the last ``keep_s`` seconds of frames.
    ``push`` audio, then ``window(a, b)`` gives the frames of samples ``[a, b)`` (absolute sample
    positions since the stream began) that openSMILE has finished. ``close`` ends it (as does
    garbage collection of a stream nobody closed)."""

    LAG_FRAMES = 14  # frames inside openSMILE's look-ahead after a push (60 ms frames, smoothing, F0 Viterbi): 7-12 measured

    def __init__(self, keep_s: float = 6.0):
        from opensmile.core.lib import OpenSMILE

        self.frames = _Frames(int(keep_s * SR / HOP))
        self.written = 0  # samples pushed
        smile = OpenSMILE()
        smile.initialize(config_file=str(CONFIG), options=_opensmile_options(), loglevel=1, log_file=os.devnull, debug=False)
        n = smile.external_sink_get_num_elements("extsink")
        names = tuple(smile.external_sink_get_element_name("extsink", i) for i in range(n))
        if names != FRAME_NAMES:
            smile.free()
            raise RuntimeError(f"openSMILE's frame-level descriptors are not the expected ones: {names}")
        smile.external_sink_set_callback_ex("extsink", self.frames.on_frame)
        self._smile = smile
        self._thread = threading.Thread(target=self.frames.run, args=(smile,), name="mmdemo-egemaps", daemon=True)
        _start(self._thread)
        self._finalizer = weakref.finalize(self, _shutdown, smile, self._thread)
        self._finalizer.atexit = False  # _close_at_exit closes it and waits
        _STREAMS.add(self)

    @property
    def done(self) -> int:
        return self.frames.done

    @property
    def broken(self) -> bool:
        """openSMILE's thread ended while the stream is open (it failed)."""
        return self.frames.closed and self._finalizer.alive

    def push(self, audio: np.ndarray, timeout: float = 10.0) -> None:
        """Hands samples to openSMILE. Its input is a ring buffer: a long signal goes in pieces,
        each once openSMILE has made room (an error if it makes none for ``timeout`` seconds)."""
        if not self._finalizer.alive or self.frames.closed:
            return  # closed (or failed: see broken): nothing listens any more
        audio = np.asarray(audio, np.float32).reshape(-1)
        step = SR  # at most 1 s at a time (the ring holds 6 s)
        for i in range(0, len(audio), step):
            piece = to_int16(audio[i : i + step])
            deadline = time.monotonic() + timeout
            while not self._smile.external_audio_source_write_data("extsource", piece):
                if self.frames.closed or time.monotonic() > deadline:
                    raise RuntimeError("openSMILE stopped taking audio")
                time.sleep(0.002)
            self.written += len(piece) // 2

    def ready(self) -> int:
        """Frames that openSMILE can have finished for what was pushed: all but its look-ahead."""
        return max(0, self.written // HOP - self.LAG_FRAMES)

    def settle(self, timeout: float = 2.0) -> bool:
        """Waits until openSMILE has finished :meth:`ready` frames (at most ``timeout`` s: it takes
        a few ms per 0.5 s of audio; a stall is logged). What a window then reads depends only on
        what was pushed, never on timing."""
        f, want = self.frames, self.ready()
        with f.cond:
            ok = f.cond.wait_for(lambda: f.done >= want or f.closed, timeout)
        if not ok:
            log.warning("openSMILE is %d frames behind the audio", want - f.done)
        return ok

    def window(self, a: int, b: int) -> np.ndarray:
        """The frames inside samples ``[a, b)`` (a 20 ms frame from ``k * 160``), up to :meth:`ready`."""
        self.settle()
        f = self.frames
        with f.cond:
            first = max(-(-a // HOP), f.done - f.keep, 0)
            last = min((b - 2 * HOP) // HOP, self.ready() - 1, f.done - 1)
            if last < first:
                return np.zeros((0, len(FRAME_NAMES)), F32)
            return f.buf[np.arange(first, last + 1) % f.keep].copy()

    def close(self, timeout: float = 10.0) -> None:
        """Ends the stream: openSMILE finishes what it was given (every frame is in ``frames`` when
        this returns), its thread stops, the instance is freed (left to process exit if the thread
        has not stopped within ``timeout`` seconds)."""
        if self._finalizer.detach():  # else closed before
            _shutdown(self._smile, self._thread, wait=True, timeout=timeout)


def frames_once(audio: np.ndarray) -> np.ndarray:
    """All frames of one signal through the same openSMILE pipeline (for tests and files)."""
    s = EgemapsStream(keep_s=len(audio) / SR + 1)
    try:
        s.push(audio)
    finally:
        s.close()
    return s.frames.buf[: s.done].copy()
