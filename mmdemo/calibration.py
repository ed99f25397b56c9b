"""Neutral-baseline calibration: per-session offsets for face and voice.

A resting face that the expression model reads as sad, a voice or a microphone whose pitch and
loudness read as low mood: each shifts every reading of that person by about the same amount. The
calibration asks for about ten seconds of a neutral face and a neutral sentence read aloud, and
estimates, per modality, how far this person's neutral features sit from the population's neutral
features (:class:`NeutralReference`, measured on the neutral clips of the training corpora and
shipped in ``checkpoints/neutral_reference.json``). That offset is then removed from every later
raw feature of the session, before anything else reads it:

- face: the offset is taken from the raw per-frame feature (blendshapes, head pose, expression
  probabilities), before the moving average;
- voice: from the raw eGeMAPS functionals, before the per-speaker z-scores. Per-speaker
  normalisation is itself a running baseline that learns the speaker over about a minute of speech;
  a new baseline restarts those statistics (from the population prior), the calibrated offset
  corrects the first minute (while the statistics are still mostly the population's) and then
  cancels out as the statistics learn the corrected features: the two never correct twice.

The per-modality estimate is a median over the calibration's samples (a blink, a cough or a
mis-detected frame does not move it). A modality without enough samples is left uncalibrated and
the result says so; a calibration in which no modality had enough is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import DISPLAY_NAMES

REFERENCE_FILE = "neutral_reference.json"
CALIBRATED = ("vision", "audio")  # words have no per-person baseline to remove
MIN_SAMPLES = {"vision": 5, "audio": 2}  # face frames, voice windows (each 2.4 s) needed for an offset
MAX_FACE_OFFSET = 1e3  # the face feature is blendshapes, head pose and probabilities: an offset beyond this is damage


def plausible_face_offset(off: np.ndarray) -> np.ndarray:
    """Per face offset (the last axis): finite and within ±MAX_FACE_OFFSET. One rule for baselines,
    stored moments and imported files."""
    off = np.asarray(off)
    return np.all(np.isfinite(off) & (np.abs(off) <= MAX_FACE_OFFSET), axis=-1)
MAX_SAMPLES = 600
CALIBRATION_S = 10.0
NEUTRAL_SENTENCE = ("The train to the city leaves at nine in the morning. The station has two platforms, "
                    "a ticket office and a small waiting room with benches.")


class CalibrationError(ValueError):
    """A calibration that cannot give a baseline (nothing seen or heard)."""


@dataclass(frozen=True)
class NeutralReference:
    """The population's neutral feature per calibrated modality (raw encoder space)."""

    vectors: dict[str, np.ndarray]
    source: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REFERENCE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": "mmdemo-neutral/1", "source": self.source,
                   "vectors": {m: [float(v) for v in x] for m, x in self.vectors.items()}}
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, dims: dict[str, int] | None = None) -> NeutralReference | None:
        """The reference shipped in ``folder`` (None when there is none); a malformed one is an error."""
        path = Path(folder) / REFERENCE_FILE
        if not path.exists():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("format") != "mmdemo-neutral/1":
                raise ValueError(f"format {d.get('format')!r}")
            vectors = {m: np.asarray(v, np.float32) for m, v in d["vectors"].items()}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: unreadable ({err})") from None
        for m, x in vectors.items():
            if m not in CALIBRATED or x.ndim != 1 or not np.all(np.isfinite(x)):
                raise ValueError(f"{path}: bad vector for {m!r}")
            if dims is not None and m in dims and len(x) != dims[m]:
                raise ValueError(f"{path}: {m} has {len(x)} values, the encoder gives {dims[m]}")
        return cls(vectors, d.get("source", {}))


@dataclass
class Baseline:
    """Per-modality offsets (raw encoder space) of one person, and what was measured."""

    offsets: dict[str, np.ndarray]
    samples: dict[str, int]  # samples behind each offset
    seconds: float = 0.0
    readings: dict[str, dict[str, float]] = field(default_factory=dict)  # modality -> {"before", "after"}: the model alone on the neutral sample
    skipped: dict[str, str] = field(default_factory=dict)  # modality -> why it has no offset

    def apply(self, modality: str, x: np.ndarray) -> np.ndarray:
        off = self.offsets.get(modality)
        return x if off is None else (np.asarray(x, np.float32) - off).astype(np.float32)

    def describe(self) -> list[str]:
        lines = []
        for m in CALIBRATED:
            name = DISPLAY_NAMES[m]
            if m in self.offsets:
                unit = "frames" if m == "vision" else "voice windows"
                r = self.readings.get(m)
                read = "" if not r else f"; read alone: {r['before']:+.2f} before, {r['after']:+.2f} after"
                lines.append(f"{name}: offset from {self.samples[m]} {unit}{read}")
            else:
                lines.append(f"{name}: not calibrated ({self.skipped.get(m, 'not measured')})")
        return lines

    def to_json(self) -> dict:
        return {"samples": self.samples, "seconds": self.seconds, "readings": self.readings, "skipped": self.skipped}

    @staticmethod
    def fingerprint(baseline: Baseline | None) -> str:
        """A short name of these offsets ("none" without a baseline): a personal model records the
        baseline it learned under, so a model learned under another one can be told."""
        if baseline is None:
            return "none"
        import hashlib

        h = hashlib.sha256()
        for m in sorted(baseline.offsets):
            h.update(m.encode() + np.ascontiguousarray(baseline.offsets[m], np.float32).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_parts(cls, offsets: dict[str, np.ndarray], info: dict, dims: dict[str, int]) -> Baseline:
        """Rebuild from stored offsets + :meth:`to_json` (checked: known modalities, sizes, finite)."""
        clean = {}
        for m, x in offsets.items():
            x = np.asarray(x, np.float32)
            if m not in CALIBRATED or x.shape != (dims[m],) or not np.all(np.isfinite(x)):
                raise ValueError(f"baseline offset for {m!r} has shape {x.shape}; expected ({dims.get(m)},) finite values")
            if m == "vision" and not plausible_face_offset(x):
                raise ValueError(f"baseline offset for the face holds values beyond ±{MAX_FACE_OFFSET:g}, which no face feature gives")
            clean[m] = x
        samples = {str(k): int(v) for k, v in dict(info.get("samples", {})).items()}
        readings = {str(k): {kk: float(vv) for kk, vv in dict(v).items()} for k, v in dict(info.get("readings", {})).items()}
        skipped = {str(k): str(v)[:200] for k, v in dict(info.get("skipped", {})).items()}
        for m in clean:  # what describe() shows of each offset (a file of another version may lack it)
            if samples.get(m, 0) < 1:
                raise ValueError(f"baseline offset for {m!r} without the number of samples it came from")
            if m in readings and not {"before", "after"} <= set(readings[m]):
                raise ValueError(f"baseline reading for {m!r} without its values before and after")
        return cls(clean, samples, float(info.get("seconds", 0.0)), readings, skipped)


class Calibrator:
    """Collects raw features during a calibration, then :meth:`finish` gives a :class:`Baseline`."""

    def __init__(self, reference: NeutralReference, t0: float = 0.0):
        self.reference = reference
        self.t0 = t0
        self.samples: dict[str, list[np.ndarray]] = {m: [] for m in CALIBRATED}

    def add(self, modality: str, x: np.ndarray) -> None:
        if modality in self.samples and len(self.samples[modality]) < MAX_SAMPLES:
            x = np.asarray(x, np.float32).reshape(-1)
            if np.all(np.isfinite(x)):
                self.samples[modality].append(x)

    def counts(self) -> dict[str, int]:
        return {m: len(v) for m, v in self.samples.items()}

    def finish(self, t: float) -> Baseline:
        offsets, counts, skipped = {}, {}, {}
        for m in CALIBRATED:
            xs = self.samples[m]
            counts[m] = len(xs)
            if m not in self.reference.vectors:
                skipped[m] = "no neutral reference shipped for it"
            elif len(xs) < MIN_SAMPLES[m]:
                what = "a face" if m == "vision" else "speech"
                skipped[m] = (f"{what} was found in only {len(xs)} sample(s); at least {MIN_SAMPLES[m]} are needed"
                              if xs else f"no {what} during the calibration")
            else:
                offsets[m] = (np.median(np.stack(xs), axis=0) - self.reference.vectors[m]).astype(np.float32)
        if not offsets:
            raise CalibrationError("nothing to calibrate: " + "; ".join(f"{DISPLAY_NAMES[m]}: {skipped[m]}" for m in CALIBRATED)
                                   + ". Look at the camera and read the sentence aloud, then stop the calibration.")
        return Baseline(offsets, counts, max(0.0, t - self.t0), skipped=skipped)

    def neutral_sample(self, modality: str) -> np.ndarray | None:
        xs = self.samples.get(modality) or []
        return np.median(np.stack(xs), axis=0).astype(np.float32) if xs else None
