"""Multimodal training examples from unpaired unimodal corpora.

No corpus available here pairs face, voice and words of the same moment, so the fusion models
learn from examples assembled across corpora. For each example:

1. draw a words sample (CMU-MOSI / MOSEI transcript); its label y (-3..+3) is the target and its
   polarity class c (negative y <= -0.5, neutral, positive y >= 0.5) the "moment's" polarity;
2. for every modality independently: with probability ``absent[m]`` leave it out; with
   probability ``disagree[m]`` take a sample of another polarity class (a face that does not match
   the words, say); otherwise take a sample of class c (for words: the drawn sample itself).

The target stays y. Agreeing modalities carry the polarity, disagreeing ones teach the fusion how
far to trust each modality, absent ones make it robust to missing input. A row's ``text`` is the
transcript its words feature was computed from ("" when words are absent): the anchor's own, or
the swapped-in sample's when the words disagree. Train, valid and test
examples are built only from the corpora's own train, valid and test splits.

What this cannot teach: real cross-modal interactions (sarcasm, a smile that qualifies words).
Any interaction term a fusion method learns here comes from this sampling, not from real
co-occurrence. Each modality's evidence is class-level (voice: acted emotion; face: posed photo).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .data import SPLITS, FeatureDataset, Split


@dataclass(frozen=True)
class PairingConfig:
    absent: dict[str, float] = field(default_factory=lambda: {"text": 0.15, "audio": 0.3, "vision": 0.3})
    disagree: dict[str, float] = field(default_factory=lambda: {"text": 0.1, "audio": 0.15, "vision": 0.15})
    neutral_band: float = 0.5  # |y| below this is the neutral class
    per_text: int = 1  # examples built per words sample
    seed: int = 0


def polarity_class(y: np.ndarray, band: float) -> np.ndarray:
    return np.where(y >= band, 1, np.where(y <= -band, -1, 0))


def _vector(split: Split, m: str, j: int) -> np.ndarray:
    """Sample j's feature as a vector: a sequence is averaged over its real steps (never its padding)."""
    x = split.feats[m][j]
    if x.ndim == 1:
        return x
    real = split.steps[m][j] if m in split.steps else np.ones(len(x), bool)
    return x[real].mean(axis=0) if real.any() else np.zeros(x.shape[-1], x.dtype)


def _pools(split: Split, modality: str, band: float) -> dict[int, np.ndarray]:
    ok = split.present[modality]
    cls = polarity_class(split.labels, band)
    return {c: np.flatnonzero(ok & (cls == c)) for c in (-1, 0, 1)}


def build_paired(corpora: dict[str, FeatureDataset], cfg: PairingConfig = PairingConfig()) -> FeatureDataset:
    """``corpora``: {modality: a dataset holding that modality} with labels on the sentiment scale
    (classes are taken from the sign with the neutral band). ``text`` drives the targets."""
    if "text" not in corpora:
        raise ValueError("pairing needs a words corpus (it provides the targets)")
    rng = np.random.default_rng(cfg.seed)
    modalities = tuple(corpora)
    dims = {m: corpora[m].dims[m] for m in modalities}
    splits, stats = {}, {}
    for s in SPLITS:
        text = corpora["text"].splits[s]
        anchors = np.repeat(np.flatnonzero(text.present["text"]), cfg.per_text)
        rng.shuffle(anchors)
        n = len(anchors)
        y = text.labels[anchors]
        cls = polarity_class(y, cfg.neutral_band)
        feats = {m: np.zeros((n, dims[m]), np.float32) for m in modalities}
        present = {m: np.zeros(n, bool) for m in modalities}
        ids = [[] for _ in range(n)]
        shown_text = np.full(n, "", dtype=object)  # the transcript the words feature of each row comes from
        stats[s] = {}
        for m in modalities:
            src = corpora[m].splits[s]
            pools = _pools(src, m, cfg.neutral_band)
            fate = rng.random(n)
            absent = fate < cfg.absent.get(m, 0.0)
            disagree = (~absent) & (fate < cfg.absent.get(m, 0.0) + cfg.disagree.get(m, 0.0))
            counts = {"agree": 0, "disagree": 0, "absent": int(absent.sum())}
            for i in range(n):
                if absent[i]:
                    continue
                if m == "text" and not disagree[i]:
                    j = anchors[i]
                else:
                    want = [c for c in (-1, 0, 1) if (c != cls[i]) == bool(disagree[i]) and len(pools[c])]
                    if not want:  # this corpus has no sample of the needed class in this split
                        counts["absent"] += 1
                        continue
                    j = rng.choice(pools[want[rng.integers(len(want))]])
                feats[m][i] = _vector(src, m, j)
                present[m][i] = True
                if m == "text" and src.text is not None:
                    shown_text[i] = src.text[j]
                ids[i].append(f"{m}:{src.ids[j]}")
                counts["disagree" if disagree[i] else "agree"] += 1
            stats[s][m] = counts
        splits[s] = Split(feats=feats, present=present, labels=y, ids=["|".join(p) for p in ids],
                          text=None if text.text is None else shown_text.astype(str))
    meta = {"source": "paired from unpaired corpora", "pairing": asdict(cfg), "counts": stats,
            "corpora": {m: corpora[m].meta.get("source", "") for m in modalities}}
    return FeatureDataset(splits, meta)
