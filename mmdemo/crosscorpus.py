"""Cross-corpus evaluation of the voice and face heads: does a sense hold on people, microphones and
rooms it never met?

Voice corpora (../shared/data): RAVDESS (24 actors, studio, English), ASED (65 self-recorded
speakers, Amharic), EmoSpeech (106 phone users in noisy places, Indian English/Hindi keywords). Every
clip becomes one of three classes: positive (happy), neutral (neutral; RAVDESS's and EmoSpeech's
"calm" too: calm speech is low arousal, not positive valence) and negative (sad, angry, fearful,
disgust); surprised has no clear valence and is left out. Targets on the sentiment scale: negative
-1.5, neutral 0, positive +1.5 (RAVDESS's strong intensity x 4/3, its normal x 2/3, mean 1.5).

Leave-one-corpus-out (LOCO): for each corpus, a head is trained on the other corpora (their train
speakers; early stopping on their valid speakers) and read on the held-out corpus. Configurations
are chosen on the held-out corpora's train + valid speakers (averaged over the held-out corpora);
their test speakers are read once, for the report. The shipped head learns from every corpus's
train speakers with the chosen configuration.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .metrics import macro_f1

CLASSES = (-1, 0, 1)
CLASS_NAMES = {-1: "negative", 0: "neutral", 1: "positive"}
TARGET = 1.5

VOICE_CORPORA = {
    "ravdess": {"folder": "ravdess-speech-audio", "title": "RAVDESS (24 actors, studio, English)"},
    "ased": {"folder": "ased-amharic-speech", "title": "ASED (65 self-recorded speakers, Amharic)"},
    "emospeech": {"folder": "emospeech-in-the-wild", "title": "EmoSpeech (106 phone users, noisy places)"},
}
EMOTION_CLASS = {"happy": 1, "neutral": 0, "calm": 0, "sad": -1, "angry": -1, "fearful": -1, "fear": -1, "disgust": -1}


@dataclass(frozen=True)
class ClipLabel:
    cls: int  # -1 / 0 / +1
    target: float  # on the sentiment scale
    speaker: str
    split: str


def voice_labels(folder: Path) -> dict[str, ClipLabel]:
    """clip_id -> class, target, speaker and split, from a voice corpus's labels.csv."""
    out = {}
    with open(Path(folder) / "labels.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cls = EMOTION_CLASS.get(row.get("emotion", "").strip().lower())
            if cls is None:
                continue
            scale = {"strong": 4 / 3, "normal": 2 / 3}.get(row.get("intensity", ""), 1.0) if cls else 1.0
            out[row["clip_id"]] = ClipLabel(cls, cls * TARGET * scale, row.get("speaker") or row["clip_id"], row.get("split", ""))
    return out


# ----------------------------------------------------------------------------- metrics


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count half): how often a positive item scores above a negative one."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def class_report(pred: np.ndarray, cls: np.ndarray) -> dict:
    """What a held-out corpus says about a head: mean prediction per class, positive-vs-negative
    AUC and macro-F1 (sign of the prediction), and the share of negative predictions (< 0) on a
    class-balanced set (each class weighted equally: 1/2 means no lean either way)."""
    pred, cls = np.asarray(pred, np.float64), np.asarray(cls)
    out: dict = {"n": {CLASS_NAMES[c]: int((cls == c).sum()) for c in CLASSES}}
    out["mean"] = {CLASS_NAMES[c]: float(pred[cls == c].mean()) if (cls == c).any() else None for c in CLASSES}
    pn = cls != 0
    out["auc_pos_neg"] = auc(pred[pn], cls[pn] > 0)
    out["macro_f1_pos_neg"] = macro_f1(cls[pn], np.where(pred[pn] >= 0, 1, -1)) if pn.any() else float("nan")
    shares = [float((pred[cls == c] < 0).mean()) for c in CLASSES if (cls == c).any()]
    out["negative_share_balanced"] = float(np.mean(shares)) if shares else float("nan")
    m = out["mean"]
    out["order_ok"] = bool(None not in m.values() and m["positive"] > m["neutral"] > m["negative"])
    return out


def targets_met(rep: dict) -> dict[str, bool]:
    """The issue's targets for one held-out corpus."""
    neu = rep["mean"]["neutral"]
    return {"order": rep["order_ok"], "neutral_near_0": neu is not None and abs(neu) < 0.5,
            "auc_0.70": bool(rep["auc_pos_neg"] >= 0.70), "negative_share_30_70": bool(0.30 <= rep["negative_share_balanced"] <= 0.70)}


def balanced_index(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices that repeat rows so that every group (e.g. corpus x class) has as many rows as the
    largest one (training sees each group equally often)."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    keys = np.unique(groups)
    largest = max(int((groups == k).sum()) for k in keys)
    out = []
    for k in keys:
        rows = np.flatnonzero(groups == k)
        extra = rng.choice(rows, largest - len(rows), replace=True) if largest > len(rows) else np.zeros(0, int)
        out.append(np.concatenate([rows, extra]))
    return np.sort(np.concatenate(out))


# ----------------------------------------------------------------------------- leave-one-corpus-out


@dataclass
class Corpus:
    """One corpus's clips with the modality found: raw features and labels."""

    name: str
    x: np.ndarray  # (N, D) raw features
    cls: np.ndarray  # (N,) -1/0/+1
    target: np.ndarray  # (N,) sentiment scale
    speaker: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) train/valid/test
    ids: np.ndarray  # (N,) str

    def subset(self, keep) -> Corpus:
        keep = np.asarray(keep)
        return Corpus(self.name, self.x[keep], self.cls[keep], self.target[keep], self.speaker[keep], self.split[keep], self.ids[keep])


def corpus_from_split_features(name: str, ds, labels: dict[str, ClipLabel], modality: str) -> Corpus:
    """A :class:`Corpus` from an extracted FeatureDataset (all splits, rows with the modality found
    and a class label)."""
    xs, ids, splits = [], [], []
    for s, sp in ds.splits.items():
        keep = sp.present[modality] & np.array([i in labels for i in sp.ids], bool)
        xs.append(sp.feats[modality][keep])
        ids.append(sp.ids[keep])
        splits.append(np.array([labels[i].split or s for i in sp.ids[keep]]))
    ids_all = np.concatenate(ids)
    lab = [labels[i] for i in ids_all]
    return Corpus(name, np.concatenate(xs).astype(np.float32), np.array([c.cls for c in lab]), np.array([c.target for c in lab], np.float32),
                  np.array([c.speaker for c in lab]), np.concatenate(splits), ids_all)


@dataclass(frozen=True)
class VoiceConfig:
    """How voice features reach the head: ``norm`` "speaker" (per-speaker z-scores, see
    :mod:`mmdemo.speaker`) or "none" (raw features; the head standardises them with the training
    set's statistics); ``head`` "mlp" (the concat method on one modality) or "linear" (one linear
    layer, :mod:`mmdemo.fusion.linear`), its width (MLP), dropout and weight decay."""

    norm: str = "speaker"
    hidden: int = 64
    dropout: float = 0.3
    head: str = "mlp"
    weight_decay: float = 1e-4

    @property
    def label(self) -> str:
        feats = "per-speaker z" if self.norm == "speaker" else "raw"
        head = f"MLP {self.hidden}" if self.head == "mlp" else "linear"
        return f"{feats} eGeMAPS, {head}, dropout {self.dropout:g}, weight decay {self.weight_decay:g}"

    @property
    def method(self) -> str:
        return {"mlp": "concat", "linear": "linear"}[self.head]


def features_for(c: Corpus, cfg: VoiceConfig, prior, *, others="all", seed: int = 0, pool=None) -> np.ndarray:
    if cfg.norm == "none":
        return c.x.astype(np.float32)
    from .speaker import normalise_by_speaker

    return normalise_by_speaker(c.x, c.speaker, prior, others=others, seed=seed, pool=pool)


def _dataset(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], modality: str):
    from .data import FeatureDataset, Split

    splits = {}
    for s, (x, y, ids) in parts.items():
        splits[s] = Split(feats={modality: x.astype(np.float32)}, present={modality: np.ones(len(x), bool)},
                          labels=y.astype(np.float32), ids=np.asarray(ids).astype(str))
    return FeatureDataset(splits, {})


def train_head(train: list[Corpus], cfg: VoiceConfig, tcfg, *, modality: str = "audio", seed: int = 0):
    """A head on the train speakers of ``train`` (classes and corpora balanced), early stopping on
    their valid speakers. Returns (model, prior)."""
    from .fusion import FusionConfig
    from .speaker import Prior
    from .train import train_method

    tr = [c.subset(c.split == "train") for c in train]
    va = [c.subset(c.split == "valid") for c in train]
    prior = Prior.fit(np.concatenate([c.x for c in tr]))
    xtr = np.concatenate([features_for(c, cfg, prior, others="random", seed=seed + k) for k, c in enumerate(tr)])
    ytr = np.concatenate([c.target for c in tr])
    groups = np.concatenate([np.char.add(f"{c.name}:", c.cls.astype(str)) for c in tr])
    idx = balanced_index(groups, seed=seed)
    xva = np.concatenate([features_for(c, cfg, prior) for c in va])
    yva = np.concatenate([c.target for c in va])
    ids_tr = np.concatenate([c.ids for c in tr])[idx]
    ids_va = np.concatenate([c.ids for c in va])
    ds = _dataset({"train": (xtr[idx], ytr[idx], ids_tr), "valid": (xva, yva, ids_va), "test": (xva[:1], yva[:1], ids_va[:1])}, modality)
    tcfg = dataclasses.replace(tcfg, weight_decay=cfg.weight_decay)
    model, _, _ = train_method(cfg.method, ds, FusionConfig(hidden=cfg.hidden, dropout=cfg.dropout), tcfg, progress=False)
    return model, prior


def read_head(model, c: Corpus, cfg: VoiceConfig, prior, *, others="all", pool=None, modality: str = "audio") -> np.ndarray:
    from .train import Batches, predict

    from .data import Split

    x = features_for(c, cfg, prior, others=others, pool=pool)
    split = Split(feats={modality: x}, present={modality: np.ones(len(x), bool)}, labels=c.target.astype(np.float32), ids=c.ids.astype(str))
    return predict(model, Batches(split, model.modalities, model.device))


def leave_one_corpus_out(corpora: list[Corpus], cfg: VoiceConfig, tcfg, *, seed: int = 0) -> dict:
    """Per held-out corpus: the report on its train + valid speakers (for choosing), on its test
    speakers (reported once), on its test speakers at a session's first window (no speaker
    statistics yet), and with each speaker's statistics taken from clips of one class only (a
    session in one mood: the favourable mix of every emotion is not what a user gives)."""
    out = {}
    for held in corpora:
        model, prior = train_head([c for c in corpora if c is not held], cfg, tcfg, seed=seed)
        sel = held.subset(held.split != "test")
        test = held.subset(held.split == "test")
        out[held.name] = {"select": class_report(read_head(model, sel, cfg, prior), sel.cls),
                          "test": class_report(read_head(model, test, cfg, prior), test.cls),
                          "test_first_window": class_report(read_head(model, test, cfg, prior, others=0), test.cls)}
        if cfg.norm == "speaker":
            out[held.name]["test_one_class"] = {CLASS_NAMES[k]: class_report(read_head(model, test, cfg, prior, pool=test.cls == k), test.cls)
                                                for k in CLASSES if (test.cls == k).any()}
    return out


def selection_score(loco: dict) -> float:
    """Mean over held-out corpora of (AUC - |neutral mean| / 3 - |negative share - 1/2|), on the
    speakers used for choosing: rewards separating positive from negative, neutral near 0 and no
    lean either way."""
    vals = []
    for r in loco.values():
        s = r["select"]
        auc_ = s["auc_pos_neg"] if np.isfinite(s["auc_pos_neg"]) else 0.5  # no positive or no negative clip: chance
        neu = s["mean"]["neutral"]
        share = s["negative_share_balanced"]
        vals.append(auc_ - (abs(neu) / 3 if neu is not None else 0.0)  # a corpus without neutral clips says nothing about it
                    - (abs(share - 0.5) if np.isfinite(share) else 0.5))
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- the benchmark's voice stage

VOICE_GRID = [VoiceConfig("speaker", dropout=0.1, head="linear"), VoiceConfig("speaker", dropout=0.1, head="linear", weight_decay=0.1),
              VoiceConfig("speaker", dropout=0.5, head="linear", weight_decay=0.01), VoiceConfig("none", dropout=0.1, head="linear"),
              VoiceConfig("speaker", 64, 0.3), VoiceConfig("none", 64, 0.3)]
PRIOR_FILE = "speaker_prior.json"


def voice_dataset(corpora: list[Corpus], cfg: VoiceConfig, prior, *, modality: str = "audio", seed: int = 0):
    """Every corpus's clips as one FeatureDataset (each corpus's own speaker split) with the features
    the chosen head reads: train clips normalised with a random number of the speaker's other clips
    (every stage of a session), valid/test clips with all of them."""
    parts = {}
    for s in ("train", "valid", "test"):
        xs, ys, ids = [], [], []
        for k, c in enumerate(corpora):
            sub = c.subset(c.split == s)
            if len(sub.x) == 0:
                continue
            xs.append(features_for(sub, cfg, prior, others="random" if s == "train" else "all", seed=seed + k))
            ys.append(sub.target)
            ids.append(np.char.add(f"{c.name}/", sub.ids.astype(str)))
        parts[s] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(ids))
    return _dataset(parts, modality)


def voice_stage(corpora: list[Corpus], tcfg, *, grid: list[VoiceConfig] | None = None, seed: int = 0, before=None) -> dict:
    """Leave-one-corpus-out for every configuration of ``grid``, the choice (on the held-out
    corpora's non-test speakers), the shipped head trained on every corpus, and, when ``before``
    = (model, VoiceConfig, prior) is given, that earlier head read on each corpus's test speakers."""
    grid = grid or VOICE_GRID
    loco = {}
    for cfg in grid:
        loco[cfg.label] = {"config": cfg, "corpora": leave_one_corpus_out(corpora, cfg, tcfg, seed=seed)}
        loco[cfg.label]["selection"] = selection_score(loco[cfg.label]["corpora"])
    chosen = max(loco, key=lambda k: loco[k]["selection"])
    cfg = loco[chosen]["config"]
    model, prior = train_head(corpora, cfg, tcfg, seed=seed)
    own = {c.name: class_report(read_head(model, c.subset(c.split == "test"), cfg, prior), c.cls[c.split == "test"]) for c in corpora}
    out = {"loco": {k: {"config": asdict(v["config"]), "selection": v["selection"], "corpora": v["corpora"]} for k, v in loco.items()},
           "chosen": chosen, "config": cfg, "model": model, "prior": prior, "test_in_corpus": own}
    # what the features carry at best: the chosen configuration trained on the corpus's own train
    # speakers, read on its test speakers (the same speaker-independent split, no other corpus)
    out["in_corpus"] = {}
    for c in corpora:
        m_c, p_c = train_head([c], cfg, tcfg, seed=seed)
        out["in_corpus"][c.name] = class_report(read_head(m_c, c.subset(c.split == "test"), cfg, p_c), c.cls[c.split == "test"])
    out["espeak"] = espeak_readings(model, cfg, prior)
    if before is not None:
        b_model, b_cfg, b_prior = before
        out["before"] = {c.name: class_report(read_head(b_model, c.subset(c.split == "test"), b_cfg, b_prior), c.cls[c.split == "test"])
                         for c in corpora}
        out["espeak_before"] = espeak_readings(b_model, b_cfg, b_prior)
    return out


def voice_markdown(res: dict, corpora: list[Corpus], titles: dict[str, str]) -> list[str]:
    def f(v, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)

    def row(name: str, r: dict) -> str:
        m, t = r["mean"], targets_met(r)
        ok = "".join("✓" if v else "✗" for v in t.values())
        return (f"| {name} | {f(m['negative'], '+.2f')} / {f(m['neutral'], '+.2f')} / {f(m['positive'], '+.2f')} | {f(r['auc_pos_neg'], '.3f')} | "
                f"{f(r['macro_f1_pos_neg'], '.3f')} | {f(100 * r['negative_share_balanced'], '.0f')}% | {ok} |")

    head = ["| held-out corpus (test speakers) | mean prediction negative / neutral / positive | AUC pos-vs-neg | macro-F1 pos-vs-neg | "
            "negative predictions (class-balanced) | targets: order, neutral, AUC, share |", "|---|---|---|---|---|---|"]
    md = ["### Voice across corpora (leave one corpus out)", "",
          "Each corpus's test speakers read by a head that learned from the *other* corpora only "
          f"(chosen configuration: {res['chosen']}; chosen on the held-out corpora's train + valid speakers):", ""] + head
    ch = res["loco"][res["chosen"]]["corpora"]
    for c in corpora:
        md.append(row(titles.get(c.name, c.name), ch[c.name]["test"]))
        md.append(row(titles.get(c.name, c.name) + ", first window of a session (no speaker statistics yet)", ch[c.name]["test_first_window"]))
    one = [(c, ch[c.name].get("test_one_class")) for c in corpora if ch[c.name].get("test_one_class")]
    if one:
        md += ["", "The same test speakers when each speaker's statistics come from clips of *one* class only (a session in one mood; "
               "the rows above use every emotion the speaker recorded, which a user does not give):", "",
               "| held-out corpus | statistics from | mean prediction negative / neutral / positive | AUC pos-vs-neg | macro-F1 pos-vs-neg | "
               "negative predictions (class-balanced) | targets: order, neutral, AUC, share |", "|---|---|---|---|---|---|---|"]
        for c, reps in one:
            md += [row(titles.get(c.name, c.name) + f" | {k} clips only", r) for k, r in reps.items()]
    md += ["", "The chosen configuration trained on each corpus's own train speakers and read on its test speakers (no other corpus: "
           "what the features carry at best within one corpus, for comparison):", ""] + head
    md += [row(titles.get(n, n), r) for n, r in res.get("in_corpus", {}).items()]
    md += ["", "Every configuration tried (selection score: mean over held-out corpora of AUC − |neutral mean|/3 − |negative share − ½|, "
           "on their non-test speakers):", "", "| configuration | selection score |", "|---|---|"]
    md += [f"| {k}{' (chosen)' if k == res['chosen'] else ''} | {v['selection']:.3f} |" for k, v in res["loco"].items()]
    md += ["", "The shipped head (all corpora's train speakers) on each corpus's test speakers:", ""] + head
    md += [row(titles.get(n, n), r) for n, r in res["test_in_corpus"].items()]
    if "before" in res:
        where = f" (read from {res['before_from']})" if res.get("before_from") else ""
        md += ["", f"The voice head shipped before this run{where}, on the same test speakers:", ""] + head
        md += [row(titles.get(n, n), r) for n, r in res["before"].items()]
    if res.get("espeak"):
        before = {r["text"]: r["prediction"] for r in res.get("espeak_before") or []}
        md += ["", "Synthetic speech (espeak-ng: one flat voice whatever the words say; a session's first window):", "",
               "| sentence | this head | " + ("head before |" if before else ""), "|---|---|" + ("---|" if before else "")]
        for r in res["espeak"]:
            p = "no speech found" if r["prediction"] is None else f"{r['prediction']:+.2f}"
            b = before.get(r["text"])
            md.append(f"| {r['text']} | {p} | " + (f"{b:+.2f} |" if b is not None else ("- |" if before else "")))
    return md + [""]


def previous_voice_head(ckpt) -> tuple | None:
    """The voice head in a checkpoints folder (before a run replaces it), with what it reads:
    (model, VoiceConfig, prior), or None when there is none."""
    from pathlib import Path

    from .checkpoint import load_fusion
    from .speaker import read_voice_features

    folder = Path(ckpt) / "unimodal" / "audio"
    if not (folder / "config.json").exists():
        return None
    try:
        prior, _ = read_voice_features(ckpt)
        model = load_fusion(folder, device="cpu")
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return model, VoiceConfig("speaker" if prior is not None else "none"), prior


NEUTRAL_SENTENCES = (
    "I had a wonderful day, everything went great and I am so happy.",
    "The meeting is at three o'clock in the second room on the left.",
    "Please put the books back on the shelf when you are done.",
    "The train to the city leaves every twenty minutes.",
    "I did not like the film at all, it was boring and far too long.",
)


def espeak_readings(model, cfg: VoiceConfig, prior, sentences=NEUTRAL_SENTENCES) -> list[dict] | None:
    """What the voice head reads in synthetic speech (espeak-ng, one flat voice for every sentence,
    whatever the words say): the first window of a session (population prior only), as live. None
    when espeak-ng is not installed."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from .encoders import VoiceEncoder
    from .media import read_audio
    from .speaker import SpeakerNorm

    if shutil.which("espeak-ng") is None:
        return None
    enc, out = VoiceEncoder(), []
    with tempfile.TemporaryDirectory() as d:
        for k, text in enumerate(sentences):
            wav = Path(d) / f"s{k}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
            res = enc.encode(read_audio(wav))
            if not res.present:
                out.append({"text": text, "prediction": None, "reason": res.reason})
                continue
            x = res.feature[None]
            if cfg.norm == "speaker":
                x = SpeakerNorm(prior).transform(x)
            c = Corpus("espeak", x.astype(np.float32), np.zeros(1, int), np.zeros(1, np.float32), np.array(["espeak"]), np.array(["test"]), np.array([f"s{k}"]))
            pred = read_head(model, c, VoiceConfig("none", cfg.hidden, cfg.dropout), None)  # x is already what the head reads
            out.append({"text": text, "prediction": float(pred[0])})
    return out
