"""Simulated users for the calibration and personal-model tests and benchmark.

A simulated user is a face (photos of one person with several expressions), a voice (espeak-ng
with its own pitch, speed and voice variant) and a script of sentences with known sentiment labels.
Each labelled moment shows a photo whose expression matches the label's sign (a neutral one near
zero), says the sentence in that voice, and types the same words; the live encoders turn them into
features exactly as in a session: the face feature of the photo (slightly jittered, as frames of a
clip differ), the voice feature of the 2.4 s windows as per-speaker z-scores against statistics that
learn this speaker as the moments go by, the words feature of the sentence. A *biased* user adds a
constant vector to the raw features of one modality (a resting face that reads negative, a
microphone or voice that reads low), before anything else sees them, like a real person's offset.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import MODALITIES
from .audio import SAMPLE_RATE, resample
from .data import Split

SCRIPT = [  # (sentence, label on the -3..+3 scale), written for these tests
    ("This is the best day I have had in years, everything worked out perfectly.", 3.0),
    ("I really loved the film, the actors were wonderful.", 2.0),
    ("The food was pretty good and the service was friendly.", 1.0),
    ("The meeting is at ten and it should take about an hour.", 0.0),
    ("The bus was a bit late and the seats were uncomfortable.", -1.0),
    ("I am quite disappointed, the product broke after two days.", -2.0),
    ("This was a terrible experience, I hated every minute of it.", -3.0),
    ("What a lovely surprise, thank you so much.", 2.0),
    ("The report has twelve pages and three tables.", 0.0),
    ("I am annoyed that nobody answered my emails.", -1.5),
    ("Great job everyone, I am proud of this team.", 2.5),
    ("It rained all day and I felt miserable and lonely.", -2.5),
]


@dataclass(frozen=True)
class Voice:
    pitch: int = 50  # espeak-ng -p, 0..99
    speed: int = 160  # words per minute
    variant: str = "en"  # espeak-ng voice, e.g. en+m3, en+f2


def espeak(text: str, voice: Voice = Voice()) -> np.ndarray:
    """16 kHz mono float32 speech of ``text``."""
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (see the README's apt-get line)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice.variant, "-p", str(voice.pitch), "-s", str(voice.speed), "-w", str(wav), text],
                       check=True, capture_output=True)
        x, sr = sf.read(str(wav), dtype="float32")
    return resample(x, sr)


@dataclass
class SimulatedUser:
    name: str
    photos: dict[int, list[np.ndarray]]  # polarity -1/0/+1 -> RGB photos of this person
    voice: Voice = Voice()
    bias: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> raw-feature offset

    def photo_for(self, label: float, rng: np.random.Generator) -> np.ndarray:
        pol = 1 if label >= 0.5 else -1 if label <= -0.5 else 0
        options = self.photos.get(pol) or self.photos.get(0) or next(v for v in self.photos.values() if v)
        return options[int(rng.integers(len(options)))]


class Encoders:
    """The live encoders (the words one with the shipped fine-tuned overlay) and the voice
    normalisation the shipped models read; loaded once."""

    def __init__(self, checkpoints: Path | None = None):
        from .encoders import FaceEncoder, VoiceEncoder, WordsEncoder
        from .expression import shipped_expression
        from .pipeline import DEFAULT_CHECKPOINTS
        from .speaker import read_voice_features

        ckpt = Path(checkpoints or DEFAULT_CHECKPOINTS)
        overlay = ckpt / "words" / "encoder.safetensors"
        self.face, self.voice = FaceEncoder(expression=shipped_expression(ckpt)), VoiceEncoder()
        self.words = WordsEncoder(overlay=overlay if overlay.exists() else None)
        self.prior, self.norm_kw = read_voice_features(ckpt)
        self._speech: dict[tuple, np.ndarray | None] = {}
        self._text: dict[str, np.ndarray | None] = {}

    def face_raw(self, frame: np.ndarray) -> np.ndarray | None:
        res = self.face.encode(frame)
        return res.feature if res.present else None

    def voice_raw(self, text: str, voice: Voice) -> np.ndarray | None:
        """Raw voice feature of the sentence's first 2.4 s window of speech (cached)."""
        key = (text, voice)
        if key not in self._speech:
            from .encoders.voice import speech_probs, speech_span

            x = espeak(text, voice)
            probs = speech_probs(x)
            span = speech_span(probs)
            start = 0 if span is None else span[0]
            win = x[start : start + int(2.4 * SAMPLE_RATE)]
            if len(win) < int(2.4 * SAMPLE_RATE):
                win = np.pad(win, (0, int(2.4 * SAMPLE_RATE) - len(win)))
            res = self.voice.encode(win)
            self._speech[key] = res.feature if res.present else None
        return self._speech[key]

    def text(self, sentence: str) -> np.ndarray | None:
        if sentence not in self._text:
            res = self.words.encode(sentence)
            self._text[sentence] = res.feature if res.present else None
        return self._text[sentence]


@dataclass
class Recording:
    """What the encoders made of a user's moments, before any bias, baseline or normalisation."""

    raw: dict[str, np.ndarray]  # modality -> (N, D) raw features (zeros when absent)
    present: dict[str, np.ndarray]  # modality -> (N,) bool
    labels: np.ndarray
    ids: np.ndarray
    text: np.ndarray


def record(enc: Encoders, user: SimulatedUser, script: list[tuple[str, float]], *, seed: int = 0, frames: int = 3) -> Recording:
    """One moment per script line: ``frames`` jittered frames of a matching photo, the sentence
    spoken in the user's voice, the sentence typed."""
    from .smoothing import jittered_frames

    rng = np.random.default_rng(seed)
    dims = {"text": enc.words.dim, "audio": enc.voice.dim, "vision": enc.face.dim}
    raw = {m: np.zeros((len(script), dims[m]), np.float32) for m in MODALITIES}
    present = {m: np.zeros(len(script), bool) for m in MODALITIES}
    for i, (sentence, label) in enumerate(script):
        clip = jittered_frames(user.photo_for(label, rng), seconds=frames / 10, fps=10, seed=int(rng.integers(2**31)))
        faces = [f for f in (enc.face_raw(c) for c in clip) if f is not None]
        for m, x in (("vision", np.mean(faces, axis=0) if faces else None), ("audio", enc.voice_raw(sentence, user.voice)),
                     ("text", enc.text(sentence))):
            if x is not None:
                raw[m][i], present[m][i] = x, True
    return Recording(raw, present, np.array([lab for _, lab in script], np.float32),
                     np.array([f"{user.name}-{i}" for i in range(len(script))]), np.array([s for s, _ in script]))


def as_read(rec: Recording, enc: Encoders, *, bias: dict[str, np.ndarray] | None = None, baseline=None) -> Split:
    """The recording as the models read it: ``bias`` added to the raw features (a biased user), the
    calibrated ``baseline`` removed, then the voice as per-speaker z-scores against statistics that
    learn this speaker moment by moment, as a live session does."""
    from .speaker import SpeakerNorm

    bias = bias or {}
    norm = SpeakerNorm(enc.prior, **enc.norm_kw) if enc.prior is not None else None
    feats = {}
    for m in MODALITIES:
        x = rec.raw[m] + np.asarray(bias.get(m, 0.0), np.float32)
        if baseline is not None:
            x = np.stack([baseline.apply(m, v) for v in x]) if len(x) else x
        feats[m] = np.where(rec.present[m][:, None], x, 0.0).astype(np.float32)
    if norm is not None:
        z = np.zeros_like(feats["audio"])
        for i in range(len(z)):
            if rec.present["audio"][i]:
                z[i] = norm.transform(feats["audio"][i])
                norm.update(feats["audio"][i])
        feats["audio"] = z
    return Split(feats=feats, present={m: p.copy() for m, p in rec.present.items()}, labels=rec.labels, ids=rec.ids, text=rec.text)


def calibrate(enc: Encoders, user: SimulatedUser, reference, *, bias: dict[str, np.ndarray] | None = None, seed: int = 0):
    """The user's neutral-baseline calibration: 10 frames of a neutral photo and the calibration
    sentence read aloud (every 2.4 s window of it), with the user's bias."""
    from .calibration import NEUTRAL_SENTENCE, Calibrator
    from .smoothing import jittered_frames

    bias = bias or {}
    rng = np.random.default_rng(seed)
    cal = Calibrator(reference)
    for f in jittered_frames(user.photo_for(0.0, rng), seconds=1.0, fps=10, seed=seed):
        x = enc.face_raw(f)
        if x is not None:
            cal.add("vision", x + bias.get("vision", 0.0))
    speech = espeak(NEUTRAL_SENTENCE, user.voice)
    n = int(2.4 * SAMPLE_RATE)
    for start in range(0, max(1, len(speech) - n + 1), SAMPLE_RATE // 2):
        res = enc.voice.encode(speech[start : start + n])
        if res.present:
            cal.add("audio", res.feature + bias.get("audio", 0.0))
    return cal.finish(10.0)
