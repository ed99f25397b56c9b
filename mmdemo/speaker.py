"""Per-speaker normalisation of voice features: the same rule in training and live.

A voice feature (eGeMAPS functionals) carries the speaker's and the microphone's baseline: pitch,
loudness and spectral slope differ more between two people than between one person's happy and sad
speech. A model that reads raw features learns "who is speaking, on what microphone" as much as
"how they feel", and reads a new person through that baseline (the voice head before this read
nearly every new speaker as negative). :class:`SpeakerNorm` re-expresses each feature as a z-score
against the current speaker's own running statistics:

- it starts from a population prior (mean and standard deviation over the training speakers), worth
  ``prior_weight`` windows of speech, so the first seconds of a session are read against the
  population and the speaker's own statistics take over as their speech arrives;
- each accepted window moves the statistics by a bounded amount: its values are first clipped to
  ``clip_z`` standard deviations of the current estimate, so a cough, a laugh, a burst of music or a
  second speaker that got past the speech detector cannot drag them far;
- after ``max_windows`` windows it forgets geometrically (an exponential average over about that
  many windows), so a 10-minute session neither freezes nor drifts without bound;
- the caller decides what is a usable window (enough speech, not clipping, not overlapping the
  previous update): :meth:`accept` says why a window is refused.

Training uses the same class: each clip is normalised with a ``SpeakerNorm`` fed with a random number
of the speaker's *other* clips (from none, like a session's first window, to many), so the model
learns from what it will be shown live. Evaluation feeds all the others (a session that has heard
enough) and, separately, none (the first window of a session).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD_SHARE = 0.05  # a speaker's std of a feature is never taken below 5% of the population's


@dataclass(frozen=True)
class Prior:
    """Population statistics of the raw features (from the training speakers)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Prior:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"a prior needs at least two feature vectors (N, D), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("a prior needs finite feature values")
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_json(cls, d: dict) -> Prior:
        mean, std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        if mean.shape != std.shape or mean.ndim != 1 or not (np.all(np.isfinite(mean)) and np.all(std > 0)):
            raise ValueError("a speaker prior needs finite means and positive standard deviations of one length")
        return cls(mean, std)


class SpeakerNorm:
    """Running per-speaker statistics with a population prior (see the module's docstring)."""

    def __init__(self, prior: Prior, *, prior_weight: float = 4.0, max_windows: int = 60, clip_z: float = 3.0):
        if prior_weight <= 0 or max_windows < 1 or clip_z <= 0 or prior_weight >= max_windows:
            raise ValueError("prior_weight and clip_z must be > 0, max_windows >= 1 and above prior_weight")
        self.prior = prior
        self.prior_weight = float(prior_weight)
        self.max_windows = int(max_windows)
        self.clip_z = float(clip_z)
        self.reset()

    def reset(self) -> None:
        """Back to the population prior (a new session)."""
        self.n = 0  # windows seen
        self.weight = self.prior_weight  # weight of the current estimate
        self._mean = self.prior.mean.copy()
        self._m2 = self.prior.std**2 + self.prior.mean**2  # running second moment
        self._prior_share = 1.0

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        var = np.maximum(self._m2 - self._mean**2, 0.0)
        return np.maximum(np.sqrt(var), MIN_STD_SHARE * self.prior.std)

    @property
    def speaker_share(self) -> float:
        """How much of the estimate comes from this speaker's own speech (0 at the start)."""
        return 1.0 - self._prior_share

    def transform(self, x: np.ndarray) -> np.ndarray:
        """z-scores of one (D,) or several (N, D) raw feature vectors against the current statistics."""
        x = np.asarray(x, np.float64)
        if x.shape[-1:] != self._mean.shape:
            raise ValueError(f"expected feature vectors of length {len(self._mean)}, got shape {x.shape}")
        return ((x - self._mean) / self.std).astype(np.float32)

    def update(self, x: np.ndarray) -> None:
        """Add one accepted window's raw feature (D,)."""
        x = np.asarray(x, np.float64).reshape(-1)
        if x.shape != self._mean.shape or not np.all(np.isfinite(x)):
            return  # a malformed vector never enters the statistics
        sd = self.std
        x = np.clip(x, self._mean - self.clip_z * sd, self._mean + self.clip_z * sd)
        self.n += 1
        # weight of the new window: 1/(w+1) while the estimate is young, then a fixed 1/max_windows
        self.weight = min(self.weight + 1.0, float(self.max_windows))
        a = 1.0 / self.weight
        self._mean = (1 - a) * self._mean + a * x
        self._m2 = (1 - a) * self._m2 + a * x**2
        self._prior_share *= 1 - a

    @staticmethod
    def accept(speech_s: float, *, clipped_share: float = 0.0, new_audio_s: float = np.inf, min_speech_s: float = 1.0,
               window_s: float = 2.4, max_clipped: float = 0.005) -> str:
        """Why a window must not update the statistics ("" = it may): too little speech (silence,
        a cough, a click), a clipping microphone, or audio already counted by the previous update."""
        if speech_s < min_speech_s:
            return f"less than {min_speech_s:g} s of speech"
        if clipped_share > max_clipped:
            return "the microphone is clipping"
        if new_audio_s < window_s:
            return "overlaps the previous update"
        return ""


def normalise_by_speaker(x: np.ndarray, speakers, prior: Prior, *, others: str | int = "all", seed: int = 0,
                         max_others: int = 30, pool: np.ndarray | None = None, **norm_kw) -> np.ndarray:
    """Each row of ``x`` (N, D) as z-scores against its speaker's statistics from the speaker's
    *other* rows fed through a :class:`SpeakerNorm`: ``others="all"`` (up to ``max_others``, a
    session that has heard enough), an int (that many), or ``"random"`` (0..max_others, uniformly:
    training, so the model meets every stage of a session). ``pool`` (N,) bool, when given, limits
    the statistics to those rows (e.g. one emotion only: a session in one mood)."""
    x = np.asarray(x, np.float64)
    speakers = np.asarray(speakers)
    if len(x) != len(speakers):
        raise ValueError("one speaker per row")
    usable = np.ones(len(x), bool) if pool is None else np.asarray(pool, bool)
    if usable.shape != (len(x),):
        raise ValueError("pool needs one bool per row")
    rng = np.random.default_rng(seed)
    out = np.empty(x.shape, np.float32)
    norm = SpeakerNorm(prior, **norm_kw)
    for spk in np.unique(speakers):
        rows = np.flatnonzero(speakers == spk)
        for i in rows:
            pool = rows[(rows != i) & usable[rows]]
            if others == "all":
                k = min(len(pool), max_others)
            elif others == "random":
                k = int(rng.integers(0, min(len(pool), max_others) + 1))
            else:
                k = min(len(pool), int(others))
            norm.reset()
            for j in rng.permutation(pool)[:k]:
                norm.update(x[j])
            out[i] = norm.transform(x[i])
    return out


VOICE_FEATURES_FILE = "voice_features.json"  # in a checkpoints folder: what the voice models there read
DEFAULTS = {"prior_weight": 4.0, "max_windows": 60, "clip_z": 3.0}


def write_voice_features(ckpt, prior: Prior | None, **norm_kw) -> None:
    """Record in ``ckpt`` whether its voice models read per-speaker z-scores (with ``prior`` and the
    normaliser's settings) or raw features (``prior`` None)."""
    import json
    from pathlib import Path

    d = {"features": "raw"} if prior is None else {"features": "speaker_z", "prior": prior.to_json(), "norm": DEFAULTS | norm_kw}
    Path(ckpt).mkdir(parents=True, exist_ok=True)
    (Path(ckpt) / VOICE_FEATURES_FILE).write_text(json.dumps(d, indent=1) + "\n")


def read_voice_features(ckpt) -> tuple[Prior | None, dict]:
    """(prior, normaliser settings) when the voice models in ``ckpt`` read per-speaker z-scores;
    (None, {}) when they read raw features (also when the file is absent: older checkpoints)."""
    import json
    from pathlib import Path

    path = Path(ckpt) / VOICE_FEATURES_FILE
    if not path.exists():
        return None, {}
    try:
        d = json.loads(path.read_text())
        if d.get("features") == "raw":
            return None, {}
        if d.get("features") != "speaker_z":
            raise ValueError(f"unknown voice features {d.get('features')!r}")
        return Prior.from_json(d["prior"]), {k: float(v) if k != "max_windows" else int(v) for k, v in d.get("norm", {}).items() if k in DEFAULTS}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
