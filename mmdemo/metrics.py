"""Metrics as the CMU-MOSI / MOSEI literature reports them (MulT, MMSA conventions).

- MAE and Pearson correlation on the continuous -3..+3 score.
- Acc-2 / F1 in two conventions: "has-0" (negative < 0 vs non-negative >= 0, all samples) and
  "non-0" (negative < 0 vs positive > 0, samples with label 0 excluded). F1 is weighted by support.
- A third convention, only to compare with the rows that used it (CM-BERT's T-BERT and CM-BERT,
  thuiar/Cross-Modal-BERT run_classifier.py): "zero = negative" (positive > 0 vs the rest, all
  samples) with the weighted F1 computed with its arguments swapped (``f1_score(pred, truth)``,
  so weighted by the predicted classes' support).
- Acc-7: round(clip(y, -3, 3)) compared as 7 classes; Acc-5 likewise on -2..+2.
Classification corpora (polarity labels) get accuracy and macro-F1.
"""

from __future__ import annotations

import math

import numpy as np


def _per_class_f1(truth: np.ndarray, pred: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """F1 and support of each class."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    classes = np.unique(truth) if classes is None else np.asarray(classes)
    f1, support = [], []
    for c in classes:
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        support.append(np.sum(truth == c))
    return np.asarray(f1, dtype=np.float64), np.asarray(support, dtype=np.float64)


def _f1_weighted(truth: np.ndarray, pred: np.ndarray) -> float:
    f1, support = _per_class_f1(truth, pred)
    return float((f1 * support).sum() / support.sum()) if support.sum() else float("nan")


def macro_f1(truth, pred, classes=None) -> float:
    f1, _ = _per_class_f1(truth, pred, classes)
    return float(f1.mean()) if len(f1) else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")  # undefined for a constant predictor (e.g. predict-the-mean)
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(pred, truth) -> dict[str, float]:
    """All CMU-MOSI metrics for predictions and labels on the -3..+3 scale."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(truth, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"pred {p.shape} and truth {y.shape} differ")
    if len(y) == 0:
        raise ValueError("no samples to score")
    nz = y != 0
    return {
        "mae": float(np.mean(np.abs(p - y))),
        "corr": pearson(p, y),
        "acc2_has0": float(np.mean((p >= 0) == (y >= 0))),
        "f1_has0": _f1_weighted(y >= 0, p >= 0),
        "acc2_non0": float(np.mean((p[nz] > 0) == (y[nz] > 0))) if nz.any() else float("nan"),
        "f1_non0": _f1_weighted(y[nz] > 0, p[nz] > 0) if nz.any() else float("nan"),
        "acc2_zero_neg": float(np.mean((p > 0) == (y > 0))),
        "f1_zero_neg_swapped": _f1_weighted(p > 0, y > 0),
        "acc7": float(np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3)))),
        "acc5": float(np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2)))),
        "n": int(len(y)),
    }


def classification_metrics(pred, truth) -> dict[str, float]:
    p, y = np.asarray(pred).reshape(-1), np.asarray(truth).reshape(-1)
    return {"accuracy": float(np.mean(p == y)), "macro_f1": macro_f1(y, p), "n": int(len(y))}


def polarity(score, threshold: float = 0.5) -> np.ndarray:
    """-1 / 0 / +1 from a -3..+3 score (|score| < threshold is neutral)."""
    s = np.asarray(score, dtype=np.float64)
    return np.where(s >= threshold, 1, np.where(s <= -threshold, -1, 0))


def jsonable(obj):
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


HEADLINE = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_non0", "acc7")
