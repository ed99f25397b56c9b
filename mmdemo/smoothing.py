"""Temporal smoothing of the live face signal.

The face encoder reads each webcam frame on its own: a blink, a half-open mouth while speaking, a
shift of the light or of the head changes the blendshapes and the expression CNN's probabilities
from one frame to the next, so the face-alone prediction swings and the drawn expression label
flickers (4.4 label changes a second on a smiling speaker before this). Two small pieces of state
per session fix that, at the cost of about ``tau_s`` of lag:

- :class:`FeatureSmoother`: an exponential moving average of the face feature over time (time
  constant ``tau_s``, so irregular frame rates are handled); it starts again when frames have shown
  no face for more than ``gap_s`` (a new face, or the same one after a while, is not averaged with
  the past), or when no face was read at all for more than ``stall_s`` (the camera stopped sending).
  Reads that are merely far apart (a loaded CPU reads a face every 0.6 s) keep the average: the face
  was never seen gone;
- :class:`LabelHysteresis`: the drawn expression label changes only when another expression's
  (smoothed) probability beats the shown one's by ``margin``, or is more than 1/0.7 times it (so a
  label whose probability has sunk among spread-out others is let go).
"""

from __future__ import annotations

import math

import numpy as np


class FeatureSmoother:
    def __init__(self, tau_s: float = 0.5, gap_s: float = 0.5, stall_s: float = 2.0):
        if tau_s < 0 or gap_s <= 0 or stall_s < gap_s:
            raise ValueError("tau_s must be >= 0, gap_s > 0 and stall_s >= gap_s")
        self.tau_s = tau_s
        self.gap_s = gap_s
        self.stall_s = stall_s
        self.reset()

    def reset(self) -> None:
        self.value: np.ndarray | None = None
        self.t: float | None = None
        self.restarted = True  # the last push started a new average (nothing carried over)
        self.missing_since: float | None = None  # the first frame without a face since the last with one

    def push(self, x: np.ndarray, t: float) -> np.ndarray:
        """The smoothed feature after a frame at time ``t`` (seconds) with feature ``x``. The average
        carries on across reads up to ``stall_s`` apart: a face lost in between was reported by
        :meth:`lost`, which starts afresh after ``gap_s``."""
        x = np.asarray(x, np.float32)
        self.restarted = self.value is None or self.t is None or t - self.t > self.stall_s or x.shape != self.value.shape or t < self.t
        self.missing_since = None
        if self.restarted:
            self.value, self.t = x.copy(), t
            return self.value.copy()
        dt = t - self.t
        a = 1.0 if self.tau_s == 0 else 1.0 - math.exp(-dt / self.tau_s)
        self.value = ((1 - a) * self.value + a * x).astype(np.float32)
        self.t = t
        return self.value.copy()

    def lost(self, t: float) -> None:
        """No face in the frame at ``t``: once frames have shown none for more than ``gap_s``, start
        again. Counted from the first such frame, so one missed detection after a slow read (the last
        face 0.7 s ago) does not throw the average away."""
        if self.t is None:
            return
        if self.missing_since is None:
            self.missing_since = t
        if t - self.missing_since > self.gap_s or t - self.t > self.stall_s:
            self.reset()


# the shown expression is also let go once it is less than this share as likely as the best one: with
# the probabilities spread over many classes an absolute margin alone would hold a label that has
# become one of the least likely (0.10 shown against 0.15 for each of six others)
HOLD_SHARE = 0.7


class LabelHysteresis:
    def __init__(self, labels: list[str] | tuple[str, ...], margin: float = 0.15):
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.labels = list(labels)
        self.margin = margin
        self.current: int | None = None

    def reset(self) -> None:
        self.current = None

    def push(self, probs: np.ndarray) -> str:
        probs = np.asarray(probs, np.float64).reshape(-1)
        if probs.shape != (len(self.labels),) or not np.all(np.isfinite(probs)):
            raise ValueError(f"expected {len(self.labels)} finite probabilities")
        best = int(np.argmax(probs))
        # (a baseline offset can take probabilities below 0: the share rule then does not apply)
        if (self.current is None or probs[best] > probs[self.current] + self.margin
                or (probs[best] > 0 and probs[self.current] < HOLD_SHARE * probs[best])):
            self.current = best
        return self.labels[self.current]


def changes_per_second(labels: list, seconds: float) -> float:
    """How often a sequence of labels (one per frame) changes, per second."""
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    return sum(a != b for a, b in zip(labels, labels[1:])) / seconds


def jittered_frames(image: np.ndarray, *, seconds: float = 5.0, fps: float = 10.0, seed: int = 0, shift_px: float = 3.0,
                    scale: float = 0.03, noise: float = 4.0, light: float = 0.08) -> list[np.ndarray]:
    """A steady-expression test video made from one still face (RGB uint8): every frame shifted,
    scaled and lit a little differently, with sensor noise, as a webcam sees a person holding still."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    frames = []
    for _ in range(int(round(seconds * fps))):
        s = 1.0 + rng.uniform(-scale, scale)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s)
        m[:, 2] += rng.uniform(-shift_px, shift_px, 2)
        f = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        f = f.astype(np.float32) * (1.0 + rng.uniform(-light, light)) + rng.normal(0, noise, f.shape)
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return frames


def face_stability(engine, frames: list[np.ndarray], fps: float, *, fusion: str | None = None, config=None) -> dict:
    """Run ``frames`` through a fresh session and measure how steady the face signal is: expression
    label changes per second, sign changes of the face-alone prediction per second, and the largest
    distance of the face-alone prediction from its mean (frames with a face only)."""
    session = engine.session(fusion)
    if config is not None:
        session.cfg = config
        session.face_smoother = FeatureSmoother(config.face_smooth_s, gap_s=config.face_ttl_s, stall_s=max(config.camera_timeout_s, config.face_ttl_s))
        session.face_label = LabelHysteresis(session.face_label.labels, config.face_label_margin)
    labels, preds = [], []
    for k, frame in enumerate(frames):
        up = session.push_frame(frame, t=k / fps)
        if up.present.get("vision") and up.face_expression is not None:  # a face in this frame
            labels.append(up.face_expression)
            alone = up.unimodal.get("vision")
            if alone is not None:
                preds.append(alone)
    seconds = len(frames) / fps
    p = np.asarray(preds, np.float64)
    signs = np.sign(p[np.abs(p) > 1e-9]) if len(p) else p
    return {"frames": len(frames), "with_face": len(labels), "seconds": seconds,
            "label_changes_per_s": changes_per_second(labels, seconds) if labels else float("nan"),
            "sign_changes_per_s": float(np.sum(signs[1:] != signs[:-1]) / seconds) if len(signs) > 1 else 0.0,
            "max_from_mean": float(np.max(np.abs(p - p.mean()))) if len(p) else float("nan"),
            "mean": float(p.mean()) if len(p) else float("nan"), "labels": sorted(set(labels))}


def steady_faces(folder, n: int, seed: int, split: str = "test", exclude=frozenset()) -> list:
    """``n`` images of ``split`` from a face corpus folder (``labels.csv`` with ``path``, ``split``,
    ``polarity``), as many of each polarity as there are (seeded), none whose ``path`` is in
    ``exclude`` (copies of training images, :func:`mmdemo.data.copies_of_train`): the stills of
    steady-expression test videos."""
    import csv
    from pathlib import Path

    folder = Path(folder)
    with open(folder / "labels.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r.get("polarity", "") != "" and r["path"] not in exclude]
    rng = np.random.default_rng(seed)
    by = {p: [r for r in rows if r["polarity"] == p] for p in ("-1", "0", "1")}
    out = []
    for p, rs in by.items():
        k = min(len(rs), n // 3 + (1 if p == "1" and n % 3 else 0))
        out += [folder / rs[i]["path"] for i in rng.choice(len(rs), k, replace=False)]
    return out


# the smallest side a steady-expression video's frames get (FER-2013's 48x48 crops are enlarged: a
# webcam frame shows a face bigger than that)
STEADY_MIN_SIDE = {"facial-expressions-muxspace": 256, "fer2013-faces": 192}


def steady_video(path, *, seconds: float = 5.0, fps: float = 10.0, seed: int = 0, min_side: int = 0) -> list[np.ndarray]:
    """A steady-expression test video made from the still at ``path`` (:func:`jittered_frames`),
    enlarged first to ``min_side`` if it is smaller."""
    from .media import read_image

    img = read_image(path)
    if img.shape[0] < min_side:
        import cv2

        img = cv2.resize(img, (min_side, min_side), interpolation=cv2.INTER_CUBIC)
    return jittered_frames(img, seconds=seconds, fps=fps, seed=seed)


def replay_face(features: list, fps: float, *, tau_s: float, interval_s: float, gap_s: float, stall_s: float = 2.0) -> list[np.ndarray]:
    """The live face path (:class:`mmdemo.pipeline.Session`) replayed on a video's per-frame face
    features (None: no face in that frame), without the face models: a frame is read when no face
    was read less than ``interval_s`` ago, a read feature enters the moving average
    (:class:`FeatureSmoother`), and every frame after a read with a face carries that average for
    up to ``gap_s`` (the session's face time-to-live: its updates do the same between reads).
    Returns the face feature the head reads at each such frame; used to score a face head's
    steadiness without reading the frames again."""
    smoother = FeatureSmoother(tau_s, gap_s=gap_s, stall_s=max(stall_s, gap_s))
    out, last_read, current = [], None, None
    for k, x in enumerate(features):
        t = k / fps
        if interval_s > 0 and current is not None and last_read is not None and 0 <= t - last_read < interval_s:
            if t - last_read <= gap_s:  # not read: the last average holds while the face counts as present
                out.append(current)
            continue
        if x is None:
            smoother.lost(t)
            last_read = current = None
            continue
        last_read, current = t, smoother.push(x, t)
        out.append(current)
    return out


def steady_share(predict, videos: list[list], fps: float, *, tau_s: float, interval_s: float, gap_s: float, within: float = 0.3) -> float:
    """The share of steady-expression videos (per-frame face features, as :func:`replay_face`
    takes) whose face-alone prediction stays within ``within`` of its mean over the video, read by
    ``predict`` (an (N, D) array of features -> N predictions) through the live smoothing; videos
    with a face in under 80% of the frames are left out (as ``bench/face_stability.py`` does)."""
    kept = []
    for feats in videos:
        seen = replay_face(feats, fps, tau_s=tau_s, interval_s=interval_s, gap_s=gap_s)
        if len(seen) < 0.8 * len(feats):
            continue
        p = np.asarray(predict(np.stack(seen)), np.float64)
        kept.append(float(np.max(np.abs(p - p.mean()))) <= within)
    if not kept:
        raise ValueError("no video with a face in 80% of its frames")
    return float(np.mean(kept))
