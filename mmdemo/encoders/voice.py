"""Voice: eGeMAPSv02 functionals (openSMILE) over the speech in a window; Silero VAD decides speech.

Feature (88-d): the eGeMAPSv02 functionals (pitch, loudness, jitter, shimmer, spectral slope, ...)
of the speech part of a 16 kHz mono window: the window is trimmed to its first..last speech frame
(plus a short pad) so leading/trailing silence does not dilute the statistics. Speech activity
comes from the Silero VAD ONNX model that ships inside faster-whisper, evaluated per 32 ms frame;
:class:`StreamingVAD` evaluates a stream frame by frame with the model's 64-sample context, so a
live stream costs the same per chunk however long it runs. Silence or noise only -> absent.

Live sessions compute openSMILE's frame-level descriptors once per sample on a stream and the
functionals of each window from them (:mod:`mmdemo.encoders.egemaps`); files and training
extraction run openSMILE over the whole segment.

openSMILE is under audEERING's research licence (non-commercial use; public demos allowed).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..audio import SAMPLE_RATE, clipped_share, level_dbfs
from .base import Encoder, EncoderResult, Lazy
from .egemaps import FEATURE_NAMES, EgemapsStream, functionals

log = logging.getLogger(__name__)

FRAME = 512  # Silero VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame the model sees
DIGITAL_SILENCE_DBFS = -90.0  # below this nothing is worth asking the VAD about
QUIET_DBFS = -55.0  # with no speech found, a window this quiet is reported as silence


def _load_vad():
    from faster_whisper.vad import get_vad_model

    return get_vad_model()  # an onnxruntime session; run() is thread-safe


def _load_smile():
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)


_VAD = Lazy(_load_vad)
_SMILE = Lazy(_load_smile)
_SMILE_LOCK = threading.Lock()


def speech_probs(audio: np.ndarray) -> np.ndarray:
    """Speech probability of every 32 ms frame of a whole 16 kHz signal."""
    if audio.size == 0:
        return np.zeros(0, np.float32)
    padded = np.pad(audio.astype(np.float32), (0, (-len(audio)) % FRAME))
    return np.asarray(_VAD.get()(padded), dtype=np.float32).reshape(-1)


class StreamingVAD:
    """Frame-by-frame Silero VAD over a stream: the same probabilities as :func:`speech_probs` on
    the whole signal, at a constant cost per chunk. The model's recurrent state (h, c) and its
    64-sample context are carried from one chunk to the next."""

    def __init__(self):
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.h = np.zeros((1, 1, 128), np.float32)
        self.c = np.zeros((1, 1, 128), np.float32)

    def push(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (the samples of the frames completed by this chunk, their probabilities); the
        remainder waits for the next chunk."""
        buf = np.concatenate([self.pending, audio.astype(np.float32)])
        n = len(buf) // FRAME
        self.pending = buf[n * FRAME :]
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        frames = buf[: n * FRAME].reshape(n, FRAME)
        ctx = np.concatenate([self.context[None], frames[:-1, -CONTEXT:]], axis=0)
        self.context = frames[-1, -CONTEXT:].copy()
        batch = np.concatenate([ctx, frames], axis=1)  # (n, 576)
        out, self.h, self.c = _VAD.get().session.run(None, {"input": batch, "h": self.h, "c": self.c})
        return buf[: n * FRAME], np.asarray(out, dtype=np.float32).reshape(-1)


def speech_span(probs: np.ndarray, threshold: float = 0.5, pad_frames: int = 3) -> tuple[int, int] | None:
    """First..last speech frame (padded) as sample indices, or None."""
    on = np.flatnonzero(probs >= threshold)
    if on.size == 0:
        return None
    a = max(0, on[0] - pad_frames)
    b = min(len(probs), on[-1] + 1 + pad_frames)
    return a * FRAME, b * FRAME


class VoiceEncoder(Encoder):
    modality = "audio"
    dim = 88

    def __init__(self, *, threshold: float = 0.5, min_speech_s: float = 0.25):
        self.threshold = threshold
        self.min_speech_s = min_speech_s

    def warmup(self) -> None:
        _VAD.get()
        _SMILE.get()

    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    def check(self, audio: np.ndarray, probs: np.ndarray | None = None) -> tuple[str, dict, np.ndarray | None]:
        """The cheap part of :meth:`encode`: (why this audio has no usable voice or "", info, VAD
        probabilities). No openSMILE."""
        level = level_dbfs(audio)
        info = {"level_dbfs": level, "seconds": len(audio) / SAMPLE_RATE, "notes": []}
        if len(audio) < FRAME:
            return "no audio yet", info, probs
        clip = clipped_share(audio)
        info["clipped_share"] = clip
        if clip > 0.005:
            info["notes"].append(f"the microphone is clipping ({100 * clip:.1f}% of samples at full scale)")
        if level < DIGITAL_SILENCE_DBFS:
            return "silence (the microphone sends zeros)", info, probs
        probs = speech_probs(audio) if probs is None else probs
        speech_s = float((probs >= self.threshold).sum()) * FRAME / SAMPLE_RATE
        info["speech_s"] = speech_s
        if speech_s < self.min_speech_s:
            if level < QUIET_DBFS:
                return f"silence (level {level:.0f} dBFS)", info, probs
            return "no speech detected (sound, but not a voice)", info, probs
        return "", info, probs

    def encode(self, audio: np.ndarray, probs: np.ndarray | None = None) -> EncoderResult:
        """``audio``: mono float32 at 16 kHz (see :mod:`mmdemo.audio`); ``probs``: its VAD frame
        probabilities when the caller already has them (the streaming pipeline does)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        reason, info, probs = self.check(audio, probs)
        if reason:
            return EncoderResult.absent(self.modality, reason, **info)
        a, b = speech_span(probs, self.threshold)
        segment = audio[a:b]
        with _SMILE_LOCK:
            values = np.array(_SMILE.get().process_signal(segment, SAMPLE_RATE).to_numpy(dtype=np.float32).reshape(-1))
        return self._result(values, info)

    def encode_stream(self, audio: np.ndarray, probs: np.ndarray, stream: EgemapsStream, start: int) -> EncoderResult:
        """:meth:`encode` of the window ``audio`` whose first sample is sample ``start`` of
        ``stream``, from the descriptors the stream already computed (no openSMILE run here): the
        live path. Within a tolerance of :meth:`encode` (the window's edge frames saw the audio around it)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        reason, info, probs = self.check(audio, probs)
        if reason:
            return EncoderResult.absent(self.modality, reason, **info)
        a, b = speech_span(probs, self.threshold)
        frames = stream.window(start + a, start + min(b, len(audio)))
        values = functionals(frames)
        info["frames"] = len(frames)
        return self._result(values, info)

    def _result(self, values: np.ndarray, info: dict) -> EncoderResult:
        if values.shape != (self.dim,) or not np.all(np.isfinite(values)):
            return EncoderResult.absent(self.modality, "voice features could not be computed for this audio", **info)
        return EncoderResult(self.modality, values, "", info)
