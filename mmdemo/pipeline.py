"""The streaming pipeline: webcam frames, microphone chunks and typed text -> fused sentiment updates.

``Engine`` holds what every session shares, read-only: the encoders (loaded once, lazily), the
fusion models (one per method, from ``checkpoints/fusion/NAME``), and one background worker for
speech recognition. ``Session`` is one person's state: feed it frames (RGB uint8, any size), audio
chunks (any rate, int or float, mono or stereo) and text; each call returns an :class:`Update` with
the modalities' presence (and why one is absent), the fused prediction of the selected method,
its contributions (exact Shapley values + the method's own weights), the face box, the
transcript, and the time every stage took.

Constant cost per update, however long the session: audio lives in fixed ring buffers, the VAD
runs frame by frame with carried state, utterances are capped in length, transcription runs in the
background (a closed utterance is transcribed while updates go on), text embeddings are cached, and
the history is a bounded deque. Switching the fusion method keeps the history and the features.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import DISPLAY_NAMES, MODALITIES
from .audio import SAMPLE_RATE, AudioError, AudioRing, StreamResampler, check_rate, clipped_share, level_dbfs, to_mono_float
from .calibration import Baseline, CalibrationError, Calibrator, NeutralReference
from .checkpoint import load_fusion
from .contributions import explain
from .device import resolve_device
from .encoders import DIMS, FaceEncoder, StreamingVAD, Transcriber, VoiceEncoder, WordsEncoder
from .encoders.face import FER_CLASSES
from .encoders.egemaps import EgemapsStream
from .encoders.voice import FRAME
from .expression import shipped_expression
from .fusion import Fusion, list_fusions
from .profile import Moment
from .settings import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, SHARE, check_ranges
from .smoothing import FeatureSmoother, LabelHysteresis
from .speaker import SpeakerNorm, read_voice_features

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@dataclass(frozen=True)
class PipelineConfig:
    voice_window_s: float = 2.4  # eGeMAPS window: the length of the clips the voice model learned from (none shorter is read)
    voice_hop_s: float = 0.5  # recompute the voice features at most this often
    voice_stream: bool = True  # eGeMAPS descriptors computed once per sample (one openSMILE stream per session), functionals per window; False = openSMILE over the whole window at every hop
    voice_ttl_s: float = 1.0  # voice features count this long after they were computed
    face_ttl_s: float = 0.5  # a face not seen for this long is absent
    face_interval_s: float = 0.2  # read the face at most this often (5/s at 10 frames/s: frames in between only update, half the face CPU); 0 = every frame
    face_apart: bool = True  # WebRTC: a frame's update does not wait for a face read; the read runs beside the frames (its own threads) and its update follows (mmdemo.webrtc)
    face_smooth_s: float = 0.7  # time constant of the face feature's moving average (0 = raw frames); 0.7 s read 5 times a second: half the face CPU, about as steady as 0.5 s read every frame (bench/face_stability.py: 93-97% of steady videos against 97-100%)
    face_label_margin: float = 0.15  # the drawn expression changes only when another one leads by this much
    camera_timeout_s: float = 2.0  # no frame for this long: the camera is off
    torch_threads: int | None = 1  # on the CPU: torch's threads (process-wide). Live models run one sample at a time, where a second thread spins and buys no time; None keeps torch's default
    speech_threshold: float = 0.5  # VAD probability that starts an utterance
    silence_threshold: float = 0.35  # ... and under which a frame counts as silence
    utterance_silence_s: float = 0.6  # silence that closes an utterance
    utterance_max_s: float = 15.0  # a longer utterance is cut and transcribed
    utterance_min_s: float = 0.3  # shorter ones are not worth transcribing
    preroll_s: float = 0.3  # audio kept before the VAD's onset (it triggers late; Whisper must hear the first phoneme)
    asr_note_s: float = 10.0  # a note about speech recognition (behind, failed) is shown this long
    words_ttl_s: float = 30.0  # spoken words count this long
    spoken_keep: int = 3  # at most this many recent utterances feed the words modality
    transcript_chars: int = 4000  # transcript kept for display
    history: int = 600  # updates kept (a minute at 10 updates/s; the browser keeps the plots)
    max_pending_asr: int = 2  # utterances waiting for speech recognition (per session); older ones are dropped
    max_text_chars: int = 10000  # longer typed text is cut (and the update says so)
    moment_s: float = 5.0  # "label this moment" takes the features (and, if kept, the audio) of the last this many seconds

    def __post_init__(self):
        """Settings that would break or silently disable a session (``app.py --set``) are refused, named."""
        rules = [(("voice_window_s", "voice_hop_s", "voice_ttl_s", "face_ttl_s", "camera_timeout_s", "utterance_silence_s",
                   "utterance_max_s", "asr_note_s", "words_ttl_s", "moment_s"), POSITIVE),
                 (("face_interval_s", "face_smooth_s", "utterance_min_s", "preroll_s"), NON_NEGATIVE),
                 (("face_label_margin",), SHARE), (("speech_threshold", "silence_threshold"), PROBABILITY),
                 (("spoken_keep", "transcript_chars", "history", "max_pending_asr", "max_text_chars"), COUNT)]
        if self.torch_threads is not None:  # None: torch's default
            rules.append((("torch_threads",), COUNT))
        try:
            order = [f"silence_threshold={self.silence_threshold} is above speech_threshold={self.speech_threshold}"] \
                if self.silence_threshold > self.speech_threshold else []
        except TypeError:  # not numbers: the rules above name them
            order = []
        check_ranges(self, rules, order)


def config_with(settings: list[str] | tuple[str, ...], base: PipelineConfig = PipelineConfig()) -> PipelineConfig:
    """``base`` with ``KEY=VALUE`` settings (``face_interval_s=0``, ``voice_stream=false``,
    ``torch_threads=none``), each parsed as its field's type; a ValueError names a bad one."""
    from dataclasses import fields, replace

    kinds = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    changes: dict = {}
    for item in settings:
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in kinds:
            raise ValueError(f"{str(item)[:80]!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(kinds))}")
        kind = kinds[key]
        try:
            if raw.lower() in ("none", "null") and key == "torch_threads":
                changes[key] = None
            elif kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                changes[key] = raw.lower() in ("true", "1", "yes")
            elif kind in (int, type(None)):
                changes[key] = int(raw)
            else:
                changes[key] = kind(raw)
        except ValueError:
            raise ValueError(f"{key}={raw[:40]!r}: not a valid {kind.__name__ if kind is not type(None) else 'int'}") from None
    return replace(base, **changes)


@dataclass
class Update:
    t: float
    fusion: str
    present: dict[str, bool]
    reasons: dict[str, str]  # why a modality is absent ("" when present)
    prediction: float  # fused sentiment, -3..+3 (the model's baseline when nothing is present)
    baseline: float  # what the model says with no modality
    shapley: dict[str, float]  # signed contributions, sum to prediction - baseline
    weights: dict[str, float] | None  # the method's own weights, if it has them
    unimodal: dict[str, float | None] = field(default_factory=dict)  # each present modality's own model alone
    face_box: tuple[int, int, int, int] | None = None
    face_expression: str | None = None
    transcript: str = ""
    typed_text: str = ""
    words_text: str = ""  # what the words modality read
    audio_level_dbfs: float = -100.0
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # process CPU time per stage (all threads; "asr" only when transcribing in line)
    personal: bool = False  # the prediction is the person's own model's

    @property
    def any_present(self) -> bool:
        return any(self.present.values())

    def row(self) -> dict:
        """A flat record for timelines, CSV and JSON."""
        r = {"t": round(self.t, 3), "fusion": self.fusion, "prediction": self.prediction, "baseline": self.baseline}
        for m in self.present:
            r[f"present_{m}"] = self.present[m]
            r[f"shapley_{m}"] = self.shapley.get(m, 0.0)
            r[f"weight_{m}"] = None if self.weights is None else self.weights.get(m)
            r[f"alone_{m}"] = self.unimodal.get(m)
        return r


class Engine:
    """Models shared by all sessions. Thread-safe; everything loads lazily on first use."""

    def __init__(
        self,
        checkpoints: str | Path | None = None,
        *,
        device: str | None = None,
        fusions: dict[str, Fusion] | None = None,
        config: PipelineConfig = PipelineConfig(),
    ):
        self.checkpoints = Path(checkpoints) if checkpoints else DEFAULT_CHECKPOINTS
        self.device = resolve_device(device)
        self.config = config
        if self.device.type == "cpu" and config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        overlay = self.checkpoints / "words" / "encoder.safetensors"
        self.face = FaceEncoder(expression=shipped_expression(self.checkpoints))
        self.voice = VoiceEncoder(threshold=config.speech_threshold)
        self.words = WordsEncoder(device=str(self.device), overlay=overlay if overlay.exists() else None)
        # on the CPU, speech recognition gets half the cores: the live updates keep the rest
        self.transcriber = Transcriber(device=str(self.device), cpu_threads=max(1, (os.cpu_count() or 2) // 2))
        self.asr_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmdemo-asr")
        self._fusions: dict[str, Fusion] = {n: m.to(self.device).eval() for n, m in (fusions or {}).items()}
        self._lock = threading.Lock()
        self._unimodal: dict[str, Fusion] | None = None
        # what the voice models here read: per-speaker z-scores with this population prior, or raw
        self.voice_prior, self.voice_norm = read_voice_features(self.checkpoints)
        if self.voice_prior is not None and len(self.voice_prior.mean) != VoiceEncoder.dim:
            raise ValueError(f"{self.checkpoints}: the voice prior has {len(self.voice_prior.mean)} values, the voice feature {VoiceEncoder.dim}")
        # the population's neutral face and voice: what a calibration measures a person against
        self.neutral = NeutralReference.load(self.checkpoints, dims=DIMS)

    def unimodal(self) -> dict[str, Fusion]:
        """Each modality's own model (checkpoints/unimodal/<modality>), where shipped."""
        with self._lock:
            if self._unimodal is None:
                root = self.checkpoints / "unimodal"
                self._unimodal = {m: load_fusion(root / m, device=self.device) for m in MODALITIES if (root / m / "config.json").exists()}
            return self._unimodal

    def available_fusions(self) -> list[str]:
        """Registered methods that have a model here (registry order)."""
        return [n for n in list_fusions() if n in self._fusions or (self.checkpoints / "fusion" / n / "config.json").exists()]

    def fusion(self, name: str) -> Fusion:
        """The model of a registered method that has a trained checkpoint here. Any other name (an
        unregistered one, a path, ``..``) raises a KeyError listing the choices: names may come from
        the network, and each loaded model stays in memory."""
        with self._lock:
            if name not in self._fusions:
                available = self.available_fusions()
                if not isinstance(name, str) or name not in available:
                    raise KeyError(f"no trained model for fusion {str(name)[:60]!r}; available: {', '.join(available) or 'none'}")
                self._fusions[name] = load_fusion(self.checkpoints / "fusion" / name, device=self.device)
            return self._fusions[name]

    def warmup(self, fusion: str | None = None) -> None:
        for enc in (self.face, self.voice, self.words, self.transcriber):
            enc.warmup()
        if fusion:
            self.fusion(fusion)

    def default_fusion(self) -> str:
        names = self.available_fusions()
        if not names:
            raise RuntimeError(f"no fusion models found in {self.checkpoints / 'fusion'}")
        return "weighted" if "weighted" in names else names[0]

    def session(self, fusion: str | None = None, *, blocking_asr: bool = False) -> Session:
        """A new session. ``blocking_asr``: transcribe an utterance as soon as it closes (files,
        where the next update should already see the words) instead of in the background."""
        return Session(self, fusion or self.default_fusion(), blocking_asr=blocking_asr)


class Session:
    """One person's live state. Methods are safe to call from several threads (webcam and
    microphone streams arrive on different workers)."""

    def __init__(self, engine: Engine, fusion: str, *, blocking_asr: bool = False):
        self.engine = engine
        self.blocking_asr = blocking_asr
        self.cfg = engine.config
        self._lock = threading.RLock()
        self.fusion_name = ""
        self.set_fusion(fusion, recompute=False)
        self.t0 = time.monotonic()
        self.history: deque[Update] = deque(maxlen=self.cfg.history)
        # per-modality latest feature and when it was computed
        self.features: dict[str, tuple[np.ndarray, float] | None] = {m: None for m in MODALITIES}
        self.reasons: dict[str, str] = {"vision": "camera not started", "audio": "microphone not started", "text": "no text (type or speak)"}
        self.face_box: tuple | None = None
        self.face_expression: str | None = None
        # the face signal over time: a moving average of the feature, a label that does not flicker
        # the average carries over reads far apart (a loaded CPU) and starts afresh when frames show no
        # face for face_ttl_s, or when none came for camera_timeout_s
        self.face_smoother = FeatureSmoother(self.cfg.face_smooth_s, gap_s=self.cfg.face_ttl_s,
                                             stall_s=max(self.cfg.camera_timeout_s, self.cfg.face_ttl_s))
        self.face_label = LabelHysteresis(FER_CLASSES, self.cfg.face_label_margin)
        self.last_frame_t: float | None = None
        self.last_face_t: float | None = None  # when the face models last found a face
        self.last_frame: np.ndarray | None = None  # the newest frame (kept only to store a moment's clip)
        self.camera_runs = 0  # how many times the camera stopped (a face read across a stop is dropped)
        self.last_t = -float("inf")  # time of the newest update
        # calibration and personal models (see mmdemo.calibration, mmdemo.personal)
        self.baseline: Baseline | None = None
        self.calibrator: Calibrator | None = None
        self.calibration_started = False  # a calibration ran in this session (finished, failed or running)
        self.personal: dict[str, Fusion] = {}  # fusion name -> this person's model
        self.use_personal = False
        # what the models read over the last seconds, for "label this moment"
        self.recent: dict[str, deque[tuple[float, np.ndarray]]] = {m: deque(maxlen=256) for m in ("vision", "audio")}
        self.moment_audio = AudioRing(self.cfg.moment_s)
        self.last_audio_t: float | None = None
        self.notes: dict[str, list[str]] = {m: [] for m in MODALITIES}  # face and voice: from the latest encoding
        self.typed_notes: list[str] = []  # about the typed text (cut, ...): until the text changes
        self.words_notes: list[str] = []  # from embedding the current words (long text, ...): replaced on each recompute
        self.asr_note: tuple[float, str] | None = None  # (when, what) about speech recognition
        # audio
        self.resampler: StreamResampler | None = None
        self.vad = StreamingVAD()
        self.ring = AudioRing(self.cfg.voice_window_s)
        self.samples_in = 0  # 16 kHz samples heard in this session
        self.egemaps: EgemapsStream | None = None  # the voice descriptors' stream (cfg.voice_stream), from sample egemaps_start
        self.egemaps_start = 0
        self.egemaps_failed = False  # the stream broke once: this session reads windows one by one
        # per-speaker statistics of this session's voice (None: the models read raw features)
        self.speaker_norm = SpeakerNorm(engine.voice_prior, **engine.voice_norm) if engine.voice_prior is not None else None
        self.norm_updated_at = -10**12
        self.probs = deque(maxlen=int(np.ceil(self.cfg.voice_window_s * SAMPLE_RATE / FRAME)))
        self.last_voice_t = -1e9
        self.level = -100.0
        self.clip_note: list[str] = []
        self.input_note: list[str] = []  # an unusable chunk (wrong rate, layout): until the next good one
        self.in_speech = False
        self.utterance: list[np.ndarray] = []
        self.utt_frames = 0
        self.silent_frames = 0
        self.asr_running: tuple[float, Future] | None = None
        self.asr_cpu_ms = 0.0  # CPU of in-line transcriptions (blocking_asr) not yet reported in an update
        self.asr_wall_ms = 0.0  # ... and their time
        self.asr_waiting: deque[tuple[float, np.ndarray]] = deque(maxlen=self.cfg.max_pending_asr)
        # words
        self.typed = ""
        self.spoken: deque[tuple[float, str]] = deque(maxlen=self.cfg.spoken_keep)
        self.said: list[tuple[float, str]] | None = None  # a list: every transcribed utterance, uncapped (clip analysis)
        self.transcript = ""
        self._words_key: str | None = None
        self.words_text = ""
        # the last answer of the models and what it was computed from
        self._answer_key: tuple | None = None
        self._answer: tuple[dict, dict] | None = None
        self._alone: dict[str, tuple] = {}  # modality -> (its model, the feature it read, its answer)

    # ---------------------------------------------------------------- inputs
    def now(self) -> float:
        return time.monotonic() - self.t0

    def set_fusion(self, name: str, *, recompute: bool = True) -> Update | None:
        model = self.engine.fusion(name)  # raises KeyError listing the choices
        with self._lock:
            self.fusion_name, self.model = name, model
            return self.update(stage_ms={}) if recompute else None

    def face_due(self, t: float | None = None) -> bool:
        """Whether :meth:`push_frame` would read the face of a frame arriving at ``t``: the face
        was not read less than ``face_interval_s`` ago (a frame without a face does not count)."""
        t = self.now() if t is None else t
        with self._lock:
            return not (self.cfg.face_interval_s > 0 and self.features["vision"] is not None and self.last_face_t is not None
                        and 0 <= t - self.last_face_t < self.cfg.face_interval_s)

    def push_frame(self, frame, t: float | None = None, *, read_face: bool | None = None, camera: int | None = None) -> Update | None:
        """A camera frame. The face models read it when :meth:`face_due` (``read_face`` None), always
        (True) or never (False: the frame keeps the camera alive and gives an update at once; a
        transport that reads faces apart, see mmdemo.webrtc, then asks for the read itself).

        Read apart (``read_face`` True or False), the update comes at ``t`` or at the newest
        update's time if that is later, so the history never runs backwards (the read finishes,
        and a frame's update may be run, after later updates); a face read apart counts as seen
        at that time too, not at its frame's (a slow read would make it look older than it is).
        A read apart of a frame that came before :meth:`stop_camera` (``camera``:
        :attr:`camera_runs` when the frame came; by default when the read starts) is dropped:
        None is returned."""
        t = self.now() if t is None else t
        with self._lock:
            if read_face is False or (read_face is None and not self.face_due(t)):
                # the face was read less than face_interval_s ago: this frame keeps the camera alive
                # and gives an update, the face models skip it (the face feature is a moving average
                # over about a second: a few frames a second carry it)
                if self.last_frame_t is None or t >= self.last_frame_t:
                    self.last_frame_t = t
                    self.last_frame = np.asarray(frame)
                return self.update(max(t, self.last_t) if read_face is False else t, stage_ms={})
            camera = self.camera_runs if camera is None else camera
        t0, c0 = time.perf_counter(), time.process_time()
        res = self.engine.face.encode(frame)
        ms, cpu = 1000 * (time.perf_counter() - t0), 1000 * (time.process_time() - c0)
        with self._lock:
            t_up = max(t, self.last_t) if read_face else t
            if camera != self.camera_runs:  # the camera stopped since this frame came
                return None if read_face else self.update(t_up, stage_ms={"face": ms}, cpu_ms={"face": cpu})
            if self.last_frame_t is None or t >= self.last_frame_t:
                self.last_frame_t = t
                self.last_frame = np.asarray(frame)
            self.last_face_t = t if res.present else None  # a frame without a face: the next one is read
            if res.present:
                raw = res.feature
                if self.calibrator is not None:
                    self.calibrator.add("vision", raw)
                smooth = self.face_smoother.push(self.baseline.apply("vision", raw) if self.baseline else raw, t)
                self.recent["vision"].append((t, smooth))
                if self.face_smoother.restarted:
                    self.face_label.reset()  # a face after a gap: neither average nor label carry over
                self.features["vision"] = (smooth, t_up)  # seen when read: a read apart took its time
                self.face_box = res.info["box"]
                self.face_expression = self.face_label.push(smooth[-len(FER_CLASSES) :])
            else:
                self.face_smoother.lost(t)
                if self.face_smoother.value is None:
                    self.face_label.reset()
                self.face_box = self.face_expression = None
            self.reasons["vision"] = res.reason
            self.notes["vision"] = res.info.get("notes", [])
            return self.update(t_up, stage_ms={"face": ms}, cpu_ms={"face": cpu})

    def push_audio(self, chunk, sample_rate: int, t: float | None = None) -> Update:
        t0, c0 = time.perf_counter(), time.process_time()
        with self._lock:
            t = self.now() if t is None else t
            try:
                sr = check_rate(sample_rate)
                x = to_mono_float(chunk)
            except AudioError as err:
                self.input_note = [str(err)]  # about this chunk: gone with the next good one
                return self.update(t, stage_ms={})
            self.input_note = []
            if self.resampler is not None and self.resampler.sr_in != sr:
                # another rate is another microphone (or another browser's): its audio and its speaker
                # statistics start afresh, as after a stop; nothing of the two is mixed in one window
                self._reset_audio(t)
            if self.resampler is None:
                self.resampler = StreamResampler(sr)
            x16 = self.resampler(x)
            clip = clipped_share(x16)
            self.clip_note = [f"the microphone is clipping ({100 * clip:.1f}% of samples at full scale)"] if clip > 0.005 else []
            frames, probs = self.vad.push(x16)
            vad_ms, vad_cpu = 1000 * (time.perf_counter() - t0), 1000 * (time.process_time() - c0)
            self._track_utterances(frames, probs, t)  # before the ring takes the chunk: it holds the pre-roll
            if self.cfg.voice_stream and not self.egemaps_failed and len(frames):
                self._stream_audio(frames)
            self.ring.push(frames)
            self.moment_audio.push(frames)
            self.last_audio_t = t
            self.samples_in += len(frames)
            self.probs.extend(probs.tolist())
            if len(x16):
                self.level = level_dbfs(x16)
            stage, cpu = {"vad": vad_ms}, {"vad": vad_cpu}
            if self.ring.filled < self.ring.size:
                # the voice model learned from 2.4 s windows: a shorter one is not what it knows
                window = self.ring.last()
                reason, _, _ = self.engine.voice.check(window, np.asarray(self.probs, dtype=np.float32)[-(len(window) // FRAME) :])
                self.reasons["audio"] = reason or (f"voice warming up ({self.ring.filled / SAMPLE_RATE:.1f} of "
                                                   f"{self.cfg.voice_window_s:.1f} s of audio heard)")
            elif t - self.last_voice_t >= self.cfg.voice_hop_s or t < self.last_voice_t:  # (a clock that went back: read now, not hours later)
                t1, c1 = time.perf_counter(), time.process_time()
                window = self.ring.last()
                win_probs = np.asarray(self.probs, dtype=np.float32)[-(len(window) // FRAME) :]
                start = self.samples_in - len(window) - self.egemaps_start
                if self.egemaps is not None and start >= 0:
                    res = self.engine.voice.encode_stream(window, win_probs, self.egemaps, start)
                else:  # no stream (turned off, or openSMILE failed) or it began inside this window
                    res = self.engine.voice.encode(window, probs=win_probs)
                self.last_voice_t = t
                if res.present:
                    # the neutral sample takes what the speaker statistics would: a second of speech or more, unclipped
                    if self.calibrator is not None and not SpeakerNorm.accept(res.info.get("speech_s", 0.0), clipped_share=res.info.get("clipped_share", 1.0)):
                        self.calibrator.add("audio", res.feature)
                    z = self._voice_feature(res)
                    self.features["audio"] = (z, t)
                    self.recent["audio"].append((t, z))
                self.reasons["audio"] = res.reason
                self.notes["audio"] = [n for n in res.info.get("notes", []) if "clipping" not in n]
                if res.present and self.speaker_norm is not None and self.speaker_norm.speaker_share < 0.5:
                    self.notes["audio"].append(f"still learning this speaker ({100 * self.speaker_norm.speaker_share:.0f}% of "
                                               "the voice statistics are theirs; the rest is the population's)")
                stage["voice"], cpu["voice"] = 1000 * (time.perf_counter() - t1), 1000 * (time.process_time() - c1)
            return self.update(t, stage_ms=stage, cpu_ms=cpu)

    def _voice_feature(self, res) -> np.ndarray:
        """What the voice models read: raw eGeMAPS, or (when the shipped models learned so) z-scores
        against this session's speaker statistics, which this window then updates if it is clean
        speech that no earlier update counted (see :mod:`mmdemo.speaker`). A calibrated offset is
        removed first (:mod:`mmdemo.calibration`)."""
        x = self.baseline.apply("audio", res.feature) if self.baseline else res.feature
        if self.speaker_norm is None:
            return x
        z = self.speaker_norm.transform(x)
        why = SpeakerNorm.accept(res.info.get("speech_s", 0.0), clipped_share=res.info.get("clipped_share", 1.0),
                                 new_audio_s=(self.samples_in - self.norm_updated_at) / SAMPLE_RATE, window_s=self.cfg.voice_window_s)
        if not why:
            self.speaker_norm.update(x)
            self.norm_updated_at = self.samples_in
        return z

    def set_text(self, text: str | None, t: float | None = None) -> Update:
        with self._lock:
            t = self.now() if t is None else t
            text = text or ""
            if not isinstance(text, str):
                raise TypeError(f"text must be a string, got {type(text).__name__}")
            notes = []
            clean = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate (from JSON "\ud800") cannot be tokenised
            if clean != text:
                notes.append("characters that are not valid Unicode were replaced by '?'")
                text = clean
            if len(text) > self.cfg.max_text_chars:
                notes.append(f"text cut to its first {self.cfg.max_text_chars:,} characters")
                text = text[: self.cfg.max_text_chars]
            self.typed_notes = notes
            self.typed = text
            self._words_key = None
            return self.update(t, stage_ms={})

    def flush(self, t: float | None = None) -> Update:
        """Close the utterance in progress (it gets transcribed) and update."""
        with self._lock:
            t = self.now() if t is None else t
            self._close_utterance(t)
            return self.update(t, stage_ms={})

    def stop_audio(self, t: float | None = None) -> Update:
        """The microphone stopped: transcribe what is pending, forget the audio state."""
        with self._lock:
            t = self.now() if t is None else t
            self._reset_audio(t)
            self.reasons["audio"] = "microphone stopped"
            return self.update(t, stage_ms={})

    def _reset_audio(self, t: float) -> None:
        """What a stopped microphone, or another one (a new sample rate), leaves behind: the pending
        utterance is transcribed, the audio state and the speaker statistics start again."""
        with self._lock:
            self._close_utterance(t)
            self.resampler, self.vad = None, StreamingVAD()
            self.ring = AudioRing(self.cfg.voice_window_s)
            self.close_audio_stream()
            if self.speaker_norm is not None:  # a new stream may be another microphone or another person
                self.speaker_norm.reset()
                self.norm_updated_at = -10**12
            self.probs.clear()
            self.in_speech = False
            self.level = -100.0  # no microphone: the level bar empties
            self.last_voice_t = -1e9
            self.features["audio"] = None
            self.recent["audio"].clear()
            self.moment_audio = AudioRing(self.cfg.moment_s)
            self.notes["audio"], self.clip_note, self.input_note = [], [], []  # about the stopped stream: not shown under "microphone stopped"

    def _stream_audio(self, frames: np.ndarray) -> None:
        """Hands the chunk to this session's openSMILE stream, starting one when there is none (it
        begins with the audio the ring already holds, so windows and stream stay aligned). If
        openSMILE fails, the session says so once and reads each window with openSMILE instead."""
        try:
            if self.egemaps is None:
                held = self.ring.last(self.ring.filled / SAMPLE_RATE) if self.ring.filled else np.zeros(0, np.float32)
                self.egemaps, self.egemaps_start = EgemapsStream(keep_s=self.cfg.voice_window_s + 2.0), self.samples_in - len(held)
                self.egemaps.push(held)
            if self.egemaps.broken:
                raise RuntimeError("its thread stopped")
            self.egemaps.push(frames)
        except Exception as err:  # noqa: BLE001 - the voice goes on the slower way
            log.warning("the openSMILE stream failed (%s): reading each voice window on its own from now on", err)
            self.close_audio_stream()
            self.egemaps_failed = True

    def close_audio_stream(self) -> None:
        """Ends this session's openSMILE stream (a new one starts with the next audio)."""
        if self.egemaps is not None:
            self.egemaps.close()
            self.egemaps = None

    def close(self) -> None:
        """The session is over: frees what runs beside it (its openSMILE stream). It is also
        freed when the session is garbage-collected."""
        with self._lock:
            self.close_audio_stream()

    def stop_camera(self, t: float | None = None) -> Update:
        with self._lock:
            t = self.now() if t is None else t
            self.features["vision"] = None
            self.face_box = self.face_expression = None
            self.face_smoother.reset()
            self.face_label.reset()
            self.last_frame_t = self.last_face_t = None
            self.last_frame = None
            self.camera_runs += 1  # a face being read now belongs to the stopped camera
            self.recent["vision"].clear()
            self.notes["vision"] = []  # "2 faces in view" was about the stopped camera
            self.reasons["vision"] = "camera stopped"
            return self.update(t, stage_ms={})

    def wait_for_transcripts(self, timeout: float = 60.0) -> None:
        """Block until every closed utterance is transcribed (files, tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self.asr_running is not None or self.asr_waiting) and time.monotonic() < deadline:
                if self.asr_running is not None:
                    try:
                        self.asr_running[1].result(timeout=max(0.0, deadline - time.monotonic()))
                    except Exception:  # noqa: BLE001 - reported when collected
                        pass
                self._pump_asr()

    # ---------------------------------------------------------------- calibration
    def start_calibration(self, t: float | None = None) -> None:
        """Start measuring this person's neutral face and voice (stop with :meth:`finish_calibration`)."""
        if self.engine.neutral is None:
            raise CalibrationError(f"no neutral reference in {self.engine.checkpoints} "
                                   "(python -m mmdemo.personal reference writes it): calibration is not available")
        with self._lock:
            self.calibrator = Calibrator(self.engine.neutral, self.now() if t is None else t)
            self.calibration_started = True

    def calibration_progress(self, t: float | None = None) -> tuple[dict[str, int], float] | None:
        """(samples collected so far per calibrated modality, seconds since the start); None when
        no calibration is running."""
        with self._lock:
            if self.calibrator is None:
                return None
            return self.calibrator.counts(), (self.now() if t is None else t) - self.calibrator.t0

    def finish_calibration(self, t: float | None = None) -> Baseline:
        """The baseline from what was seen and heard since :meth:`start_calibration`; it replaces
        the previous one. Raises :class:`CalibrationError` (the previous baseline stays) when no
        modality had enough samples."""
        with self._lock:
            if self.calibrator is None:
                raise CalibrationError("no calibration is running: start one first")
            cal, self.calibrator = self.calibrator, None
            baseline = cal.finish(self.now() if t is None else t)
            self.set_baseline(baseline)  # first: the speaker statistics restart, and the readings use them as the session will
            baseline.readings = self._readings(cal, baseline)
            return baseline

    def cancel_calibration(self) -> None:
        with self._lock:
            self.calibrator = None

    def set_baseline(self, baseline: Baseline | None) -> None:
        """Use ``baseline`` from now on (None: no offsets). The face average and the speaker's voice
        statistics restart, so nothing read with the old offsets lingers in them."""
        with self._lock:
            self.baseline = baseline
            self.face_smoother.reset()
            self.face_label.reset()
            self.features["vision"] = None
            for buf in self.recent.values():  # a moment never mixes readings with and without these offsets
                buf.clear()
            if self.speaker_norm is not None:
                self.speaker_norm.reset()
                self.norm_updated_at = -10**12

    def _readings(self, cal: Calibrator, baseline: Baseline) -> dict[str, dict[str, float]]:
        """What each modality's own model says of the neutral sample, without and with the offset."""
        out = {}
        uni = self.engine.unimodal()
        for m, off in baseline.offsets.items():
            x = cal.neutral_sample(m)
            if m not in uni or x is None:
                continue
            read = (lambda v: self.speaker_norm.transform(v)) if m == "audio" and self.speaker_norm is not None else (lambda v: v)
            with torch.inference_mode():
                before, after = (float(uni[m]({m: torch.as_tensor(read(v), device=self.engine.device).reshape(1, -1)}).prediction)
                                 for v in (x, x - off))
            out[m] = {"before": before, "after": after}
        return out

    # ---------------------------------------------------------------- moments and personal models
    def moment(self, seconds: float | None = None, t: float | None = None, *, keep_clip: bool = False) -> Moment:
        """The last ``seconds`` as one example: the mean of what the models read of face and voice in
        that time, the current words; with ``keep_clip`` also that audio and the last frame."""
        with self._lock:
            t = self.now() if t is None else t
            seconds = self.cfg.moment_s if seconds is None else float(seconds)
            self.update(t, stage_ms={})  # collect finished transcriptions: the words are current
            present = self._present(t)
            feats, pres = {}, {}
            for m in MODALITIES:
                if m == "text":
                    f = self.features["text"]
                    pres[m] = bool(present["text"] and f is not None)
                    feats[m] = f[0] if pres[m] else np.zeros(DIMS[m], np.float32)
                    continue
                xs = [x for ts, x in self.recent[m] if t - seconds <= ts <= t]
                pres[m] = bool(xs)
                feats[m] = np.mean(xs, axis=0).astype(np.float32) if xs else np.zeros(DIMS[m], np.float32)
            audio = frame = None
            if keep_clip:
                fresh = self.last_audio_t is not None and t - self.last_audio_t <= seconds
                audio = self.moment_audio.last(seconds) if self.moment_audio.filled and fresh else None
                frame = self.last_frame if self.last_frame_t is not None and t - self.last_frame_t <= seconds else None
            offsets = {m: off.copy() for m, off in self.baseline.offsets.items()} if self.baseline else {}
            return Moment(feats, pres, text=self.words_text if pres["text"] else "", seconds=seconds, audio=audio, frame=frame, offsets=offsets)

    def set_personal(self, fusion: str, model: Fusion | None) -> None:
        """This person's model for ``fusion`` (None: forget it)."""
        with self._lock:
            if model is None:
                self.personal.pop(fusion, None)
            else:
                self.personal[fusion] = model.to(self.engine.device).eval()

    def set_use_personal(self, on: bool) -> Update:
        with self._lock:
            self.use_personal = bool(on)
            return self.update(stage_ms={})

    def generic_model(self) -> Fusion:
        return self.engine.fusion(self.fusion_name)

    # ---------------------------------------------------------------- speech -> words
    def _track_utterances(self, frames: np.ndarray, probs: np.ndarray, t: float) -> None:
        cfg = self.cfg
        per_s = SAMPLE_RATE / FRAME
        for i, p in enumerate(probs):
            frame = frames[i * FRAME : (i + 1) * FRAME]
            if not self.in_speech:
                if p >= cfg.speech_threshold:
                    self.in_speech = True
                    # pre-roll: the audio just before the onset frame (the ring holds what came
                    # before this chunk, frames[:i * FRAME] what came before in it)
                    n = int(round(cfg.preroll_s * SAMPLE_RATE))
                    before = frames[max(0, i * FRAME - n) : i * FRAME]
                    pre = np.concatenate([self.ring.last(max(0, n - len(before)) / SAMPLE_RATE), before])
                    self.utterance = [pre, frame]
                    self.utt_frames, self.silent_frames = 1, 0
                continue
            self.utterance.append(frame)
            self.utt_frames += 1
            self.silent_frames = self.silent_frames + 1 if p < cfg.silence_threshold else 0
            if self.silent_frames >= cfg.utterance_silence_s * per_s or self.utt_frames >= cfg.utterance_max_s * per_s:
                self._close_utterance(t)

    def _close_utterance(self, t: float) -> None:
        if not self.in_speech:
            return
        self.in_speech = False
        speech_frames = self.utt_frames - self.silent_frames
        audio = np.concatenate(self.utterance) if self.utterance else np.zeros(0, np.float32)
        self.utterance, self.utt_frames, self.silent_frames = [], 0, 0
        if speech_frames * FRAME / SAMPLE_RATE < self.cfg.utterance_min_s:
            return
        if len(self.asr_waiting) == self.asr_waiting.maxlen:
            # speech recognition is behind (a slow machine, many sessions): the oldest waiting
            # utterance is dropped rather than audio queued without bound
            self.asr_note = (t, "speech recognition is behind: an utterance was skipped")
        self.asr_waiting.append((t, audio))
        self._pump_asr()

    def _pump_asr(self) -> None:
        """Collect a finished transcription and start the next waiting one: at most one job of
        this session is in the shared speech-recognition worker at a time."""
        if self.asr_running is not None and self.asr_running[1].done():
            t, fut = self.asr_running
            self.asr_running = None
            try:
                text = fut.result()
            except Exception as err:  # noqa: BLE001 - one failed utterance must not end the session
                log.warning("transcription failed: %s", err)
                self.asr_note = (t, "speech recognition failed for one utterance")
                text = ""
            if text:
                if self.said is not None:
                    self.said.append((t, text))
                self.spoken.append((t, text))
                self.transcript = (self.transcript + " " + text).strip()[-self.cfg.transcript_chars :]
                self._words_key = None
        if self.asr_running is None and self.asr_waiting:
            t, audio = self.asr_waiting.popleft()
            c0, t0 = time.process_time(), time.perf_counter()
            self.asr_running = (t, self.engine.asr_pool.submit(self.engine.transcriber.transcribe, audio))
            if self.blocking_asr:
                wait([self.asr_running[1]])  # a failure is collected below as one failed utterance, as live
                self.asr_cpu_ms += 1000 * (time.process_time() - c0)  # in line: nothing else ran meanwhile
                self.asr_wall_ms += 1000 * (time.perf_counter() - t0)
                self._pump_asr()

    def _words(self, t: float) -> float:
        """Refresh the words feature from typed text + recent speech; returns ms spent."""
        spoken = " ".join(s for ts, s in self.spoken if t - ts <= self.cfg.words_ttl_s)
        text = " ".join(p for p in (self.typed.strip(), spoken) if p)
        if text == self._words_key:
            return 0.0
        t0 = time.perf_counter()
        res = self.engine.words.encode(text)
        self._words_key = text
        self.words_text = text
        self.features["text"] = (res.feature, t) if res.present else None
        self.reasons["text"] = res.reason if text else "no text (type or speak)"
        self.words_notes = list(res.info.get("notes", []))  # about these words only: replaced, never appended
        return 1000 * (time.perf_counter() - t0)

    # ---------------------------------------------------------------- fusion
    def _present(self, t: float) -> dict[str, bool]:
        cfg = self.cfg
        ttl = {"vision": cfg.face_ttl_s, "audio": cfg.voice_ttl_s, "text": float("inf")}
        present = {}
        for m in MODALITIES:
            f = self.features[m]
            # a face or voice reading stamped far later than now (a caller's clock that jumped) is not a fresh one;
            # a little later is normal (a frame's update is stamped before its face is read, the voice meanwhile)
            present[m] = f is not None and t - f[1] <= ttl[m] and (m == "text" or f[1] - t <= ttl[m])
            if not present[m] and not self.reasons[m]:
                self.reasons[m] = {"vision": "no face seen for a moment", "audio": "no speech for a moment", "text": "no text"}[m]
        if self.last_frame_t is not None and t - self.last_frame_t > cfg.camera_timeout_s:
            present["vision"] = False
            self.reasons["vision"] = "no camera frames arriving"
            self.notes["vision"] = []  # the last frame's notes are stale with it
        return present

    def _answer_for(self, model: Fusion, present: dict[str, bool]) -> tuple[dict, dict[str, float | None]]:
        """The fused prediction with its contributions, and each present modality's own model."""
        device = next(model.parameters()).device
        feats = {m: torch.as_tensor(self.features[m][0], device=device).unsqueeze(0) for m in MODALITIES if present[m] and m in model.dims}
        mask = {m: torch.ones(1, dtype=torch.bool, device=device) for m in feats}
        if not feats:  # nothing to show the model: ask it with every modality absent
            m0 = model.modalities[0]
            feats = {m0: torch.zeros(1, model.dims[m0], device=device)}
            mask = {m0: torch.zeros(1, dtype=torch.bool, device=device)}
        e = explain(model, feats, mask).row(0)
        alone = {}
        with torch.inference_mode():
            for m, uni in self.engine.unimodal().items():
                if not (present[m] and m in feats):
                    alone[m] = None
                    continue
                # a modality's own model changes its answer only with that modality's feature
                # (the same object: identity, as in update())
                hit = self._alone.get(m)
                if hit is None or hit[0] is not uni or hit[1] is not self.features[m][0]:
                    hit = (uni, self.features[m][0], float(uni({m: feats[m]}).prediction))
                    self._alone[m] = hit
                alone[m] = hit[2]
        return e, alone

    def update(self, t: float | None = None, *, stage_ms: dict[str, float] | None = None, cpu_ms: dict[str, float] | None = None) -> Update:
        with self._lock:
            t_start = time.perf_counter()
            t = self.now() if t is None else t
            timings, cpu = dict(stage_ms or {}), dict(cpu_ms or {})
            self._pump_asr()
            if self.asr_cpu_ms:
                cpu["asr"], self.asr_cpu_ms = self.asr_cpu_ms, 0.0
                timings["asr"], self.asr_wall_ms = self.asr_wall_ms, 0.0
            c_words = time.process_time()
            words_ms = self._words(t)
            if words_ms:
                timings["words"] = words_ms
                cpu["words"] = 1000 * (time.process_time() - c_words)
            present = self._present(t)
            t1, c1 = time.perf_counter(), time.process_time()
            personal = self.personal.get(self.fusion_name) if self.use_personal else None
            model = personal or self.model
            # the models' answer depends only on the model and the present features: an update that
            # changed neither (an audio chunk between voice hops, a frame without a face) reuses it
            # (the key holds the objects themselves, compared by identity: a freed array's id can be reused)
            key = (model, *(self.features[m][0] if present[m] else None for m in MODALITIES))
            if self._answer is not None and all(a is b for a, b in zip(key, self._answer_key)):
                e, alone = self._answer
            else:
                e, alone = self._answer_for(model, present)
                self._answer_key, self._answer = key, (e, alone)
            timings["fusion"], cpu["fusion"] = 1000 * (time.perf_counter() - t1), 1000 * (time.process_time() - c1)
            timings["total"] = sum(v for k, v in timings.items() if k not in ("total", "asr")) + 1000 * (t1 - t_start)
            cpu["total"] = sum(v for k, v in cpu.items() if k not in ("total", "asr"))
            self.notes["text"] = self.typed_notes + self.words_notes
            if self.asr_note is not None and t - self.asr_note[0] <= self.cfg.asr_note_s:
                self.notes["text"] = self.notes["text"] + [self.asr_note[1]]
            notes = [f"{DISPLAY_NAMES[m]}: {n}" for m in MODALITIES
                     for n in self.notes[m] + (self.input_note + self.clip_note if m == "audio" else [])]
            if self.use_personal and personal is None:
                notes.append(f"no personal model for {self.fusion_name} yet: the generic model answers")
            if self.calibrator is not None:
                c = self.calibrator.counts()
                notes.insert(0, f"calibrating: {c['vision']} face frames, {c['audio']} voice windows so far")
            up = Update(
                t=t, fusion=self.fusion_name, present=present,
                reasons={m: "" if present[m] else self.reasons[m] for m in MODALITIES},
                prediction=e["prediction"], baseline=e["baseline"],
                shapley={m: e["shapley"].get(m, 0.0) for m in MODALITIES},
                weights=None if e["weights"] is None else {m: e["weights"].get(m, 0.0) for m in MODALITIES},
                unimodal=alone,
                face_box=self.face_box if present["vision"] else None,
                face_expression=self.face_expression if present["vision"] else None,
                transcript=self.transcript, typed_text=self.typed, words_text=self.words_text,
                audio_level_dbfs=self.level, notes=notes, timings_ms=timings, cpu_ms=cpu, personal=personal is not None,
            )
            self.history.append(up)
            self.last_t = max(self.last_t, t)
            return up
