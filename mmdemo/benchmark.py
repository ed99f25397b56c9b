"""Regenerate everything learned from real data: features, unimodal models, fusion models, tables.

    python -m mmdemo.benchmark --data ../shared/data --out results/ --checkpoints checkpoints/

1. Features with the live encoders (``mmdemo.extract``, cached and resumable): words for CMU-MOSI
   and CMU-MOSEI transcripts, voice for RAVDESS, ASED and EmoSpeech, face for the expression photos
   and FER-2013.
2. Words: frozen MiniLM + a trained head, and MiniLM with its top layers fine-tuned; the
   validation folds choose. Scored on the CMU-MOSI test fold (686) and the CMU-MOSEI test fold
   beside trivial baselines (mean, VADER) and published results.
3. Voice: leave-one-corpus-out over the three voice corpora (:mod:`mmdemo.crosscorpus`), per-speaker
   z-scores or raw features chosen there, the shipped head on all of them. Face: heads on the photos
   and on photos + FER-2013 (equal weights; FER-2013 without fer's in-sample probabilities), the
   shipped one a single head or the mean of a few heads (seeds) of the chosen configuration, as the
   validation people choose; scored as polarity (accuracy, macro-F1) on both test sets beside
   majority and smile baselines. With ``--expression-cnn own``, mmdemo's expression CNN is first
   trained on FER-2013 train (:mod:`mmdemo.expression`), the face feature reads with it, FER-2013
   keeps its probabilities (out of sample on valid and test), and it ships beside the face head.
4. Fusion: multimodal examples paired across the corpora (:mod:`mmdemo.pairing`), every
   registered fusion method trained with the one training loop, scored on pairs built from test
   splits only.
5. Checkpoints (safetensors + JSON config + provenance/metrics) and the model card, and the tables
   as Markdown + JSON under ``--out``.

``--quick`` runs a small subset end to end (CI); it never writes into the shipped checkpoints
unless ``--checkpoints`` says so.

``--only face`` runs the face stage alone again on an earlier full run's tables (``--out``) with the
expression CNN it shipped (``--checkpoints``): the face head, its tables, the encoders' table and
the model card change, nothing else (the fusion models read the face features, not the head). Where
the face features are extracted again rather than read from the cache (another machine), they may
differ slightly from those the fusion models and the neutral reference learned from.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import DISPLAY_NAMES
from .checkpoint import replace_problem, replacing_folder, save_fusion
from .contributions import explain
from .crosscorpus import VOICE_CORPORA, VOICE_GRID, corpus_from_split_features, previous_voice_head, voice_dataset, voice_labels, voice_markdown, voice_stage
from .data import SPLITS, FeatureDataset, Split
from .encoders import WordsEncoder
from .encoders.face import BLENDSHAPES, FER_CLASSES
from .extract import run_extraction
from .fusion import FusionConfig, list_fusions
from .fusion.base import LOSSES, num_params
from .metrics import classification_metrics, jsonable, polarity, regression_metrics
from .pairing import PairingConfig, build_paired
from .speaker import write_voice_features
from .settings import as_flags, output_problem
from .text_model import FinetuneConfig, finetune, save_overlay
from .train import Batches, TrainConfig, evaluate, predict, train_method

log = logging.getLogger(__name__)

CORPORA = {
    "mosi": {"folder": "cmu-mosi", "modality": "text", "label": "label"},
    "mosei": {"folder": "cmu-mosei-text", "modality": "text", "label": "label"},
    "ravdess": {"folder": "ravdess-speech-audio", "modality": "audio", "label": "polarity"},
    "ased": {"folder": "ased-amharic-speech", "modality": "audio", "label": "polarity"},
    "emospeech": {"folder": "emospeech-in-the-wild", "modality": "audio", "label": "polarity"},
    "faces": {"folder": "facial-expressions-muxspace", "modality": "vision", "label": "polarity"},
    "fer2013": {"folder": "fer2013-faces", "modality": "vision", "label": "polarity"},
}

# Published results (test folds), as reported by the sources named; not re-run here. Each row says
# which Acc-2 convention its number follows ("has-0": label >= 0 vs < 0 on all samples; "non-0":
# zero labels left out; "zero = negative": label > 0 vs the rest on all samples) and what it was
# trained on; every mmdemo row is computed in all three.
NON0, BOTH, ZNEG, UNSTATED = "non-0", "has-0 / non-0", "zero = negative (all samples)", "not stated by the source"
PUBLISHED = {
    "mosi": [
        ("BERT-base fine-tuned, text only", "T", None, None, "83.4", None, UNSTATED, "MOSI train; M-BERT, Rahman et al. 2019 (arXiv:1908.05787): M-BERT 84.38%, 1.02 points above text-only BERT"),
        ("T-BERT, text only", "T", 0.784, 0.774, "83.2", 41.5, ZNEG + "; F1 82.3 with swapped arguments; mean of 5 seeds", "MOSI train; CM-BERT authors' table and code (thuiar/Cross-Modal-BERT)"),
        ("TFN", "TAV", 0.970, 0.633, "73.9", 32.1, UNSTATED, "MOSI train; CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("LMF", "TAV", 0.912, 0.668, "76.4", 32.8, UNSTATED, "MOSI train; CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MulT (aligned)", "TAV", 0.871, 0.698, "83.0", 40.0, NON0, "MOSI train; CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MISA", "TAV", 0.783, 0.761, "81.8 / 83.4", 42.3, BOTH, "MOSI train; CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MAG-BERT (aligned)", "TAV", 0.712, 0.796, "84.2 / 86.1", None, BOTH, "MOSI train; CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("Self-MM", "TAV", 0.713, 0.798, "84.00 / 85.98", None, BOTH, "MOSI train; as quoted in Semi-IIN, Table 1"),
        ("MMIM", "TAV", 0.700, 0.800, "84.14 / 86.06", 46.65, BOTH, "MOSI train; as quoted in ALMT (EMNLP 2023), Table 1"),
    ],
    "mosei": [
        ("TFN (BERT features)", "TAV", 0.593, 0.700, "82.5", 50.2, NON0, "MOSEI train; as quoted in ALMT (EMNLP 2023), Table 1"),
        ("LMF (BERT features)", "TAV", 0.623, 0.677, "82.0", 48.0, NON0, "MOSEI train; as quoted in ALMT (EMNLP 2023), Table 1"),
        ("MulT", "TAV", 0.580, 0.703, "82.5", 51.8, NON0, "MOSEI train; as quoted in ALMT (EMNLP 2023), Table 1"),
        ("MISA", "TAV", 0.555, 0.756, "83.6 / 85.5", 52.2, BOTH, "MOSEI train; as quoted in ALMT (EMNLP 2023), Table 1"),
        ("Self-MM", "TAV", 0.530, 0.765, "82.81 / 85.17", None, BOTH, "MOSEI train; as quoted in Semi-IIN, Table 1"),
        ("MMIM", "TAV", 0.526, 0.772, "82.24 / 85.97", 54.24, BOTH, "MOSEI train; as quoted in ALMT (EMNLP 2023), Table 1"),
    ],
}
REFERENCE = {  # ../shared/data/README.md, "Reference baselines" (frozen features, linear models)
    "mosi": "MiniLM -> ridge (MOSI+MOSEI train): MAE 0.986, r 0.715, Acc-2 79.7 / 81.1, Acc-7 27.6",
    "mosei": "MiniLM -> ridge: MAE 0.653, r 0.655, Acc-2 77.4 / 80.9, Acc-7 45.0",
    "ravdess": "eGeMAPS -> logistic regression, positive vs negative: accuracy 0.740, macro-F1 0.682 (majority 0.667 / 0.400)",
    "faces": "blendshapes + FER -> logistic regression, polarity -1/0/+1: accuracy 0.712, macro-F1 0.706 (smile alone 0.565)",
}


# ----------------------------------------------------------------------------- data helpers


def concat(*datasets: FeatureDataset) -> FeatureDataset:
    """The datasets' rows one after the other, split by split (sequences need the same length; their
    step masks are kept, all-real where a part has none)."""
    splits = {}
    for s in SPLITS:
        parts = [d.splits[s] for d in datasets]
        mods = parts[0].feats
        steps = {m: np.concatenate([p.steps.get(m, np.ones(p.feats[m].shape[:2], bool)) for p in parts])
                 for m in mods if any(m in p.steps for p in parts)}
        splits[s] = Split(
            feats={m: np.concatenate([p.feats[m] for p in parts]) for m in mods},
            present={m: np.concatenate([p.present[m] for p in parts]) for m in mods},
            labels=np.concatenate([p.labels for p in parts]),
            ids=np.concatenate([p.ids for p in parts]),
            text=np.concatenate([p.text if p.text is not None else np.array([""] * len(p)) for p in parts]),
            steps=steps,
        )
    return FeatureDataset(splits, {"source": " + ".join(d.meta.get("source", "?") for d in datasets)})


def blind_to_fer(x: np.ndarray) -> np.ndarray:
    """A copy of face features (..., D) with fer's 7 expression probabilities (the last 7 values) set to 0."""
    x = np.array(x, copy=True)
    x[..., -len(FER_CLASSES):] = 0.0
    return x


def without_fer_probabilities(ds: FeatureDataset) -> FeatureDataset:
    """The face features with fer's 7 expression probabilities set to 0 (:func:`blind_to_fer`)."""
    splits = {s: dataclasses.replace(sp, feats=dict(sp.feats, vision=blind_to_fer(sp.feats["vision"])), present=dict(sp.present), steps=dict(sp.steps))
              for s, sp in ds.splits.items()}
    return FeatureDataset(splits, dict(ds.meta))


def only_present(ds: FeatureDataset, m: str) -> FeatureDataset:
    return FeatureDataset({s: sp.subset(sp.present[m]) for s, sp in ds.splits.items()}, dict(ds.meta))


def face_choice(rep: dict) -> str:
    """How the shipped face head was chosen, with its validation numbers."""
    h, f1, held = rep["head"], rep["valid_macro_f1"], rep.get("valid_steady")
    if not held:
        return "its configuration chosen by the mean of the two validation folds' polarity macro-F1." + members_choice(rep)
    copies = rep.get("fer_valid_copies_left_out")
    return ("its configuration (width, dropout, loss) chosen on the validation people"
            + (f" (FER-2013's valid images less the {copies} with a face found that copy a training image)" if copies else "")
            + ": the best mean polarity macro-F1 of "
            f"the two corpora among the configurations steady on at least {100 * STEADY_FLOOR:.0f}% of each corpus's "
            "steady-expression videos (one still each, shifted, scaled, relit and noised frame by frame, read through the live "
            "face smoothing), steady meaning that the face-alone reading holds within ±0.3 of its mean over the video: "
            f"hidden {h['hidden']}, dropout {h['dropout']}, loss {h.get('loss', 'l1')}; valid macro-F1 "
            + ", ".join(f"{k} {100 * v:.1f}" for k, v in f1.items()) + "; steady videos "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in held.items()) + "." + members_choice(rep))


def members_choice(rep: dict) -> str:
    """How many heads (seeds) the shipped face head averages, and what each count scored on valid."""
    mem = rep.get("members")
    if not mem:
        return ""
    rows = "; ".join(f"{t['members']}: macro-F1 " + ", ".join(f"{k} {100 * v:.1f}" for k, v in t["valid_macro_f1"].items())
                     + ("" if not t.get("valid_steady") else ", steady " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in t["valid_steady"].items()))
                     for t in mem["tried"])
    k, seeds = mem["chosen"], ", ".join(map(str, mem["seeds"]))
    what = f"one head of that configuration (seed {seeds})" if k == 1 else f"the mean of {k} heads of that configuration (seeds {seeds})"
    return (f" The shipped head is {what}: one head or the mean of several (other seeds; one head's reading of a slightly moved "
            f"face depends on its seed), chosen the same way on the same validation numbers among "
            f"{' / '.join(str(t['members']) for t in mem['tried'])} heads (fewer on a tie); by number of heads: {rows}."
            + ("" if k == 1 else " The numbers above are the chosen mean's."))


def shipped_rows(rep: dict, r: dict, feature: str) -> list[str]:
    """The shipped face head's row (and, when it is a mean of several heads, one of them alone) in a polarity table."""
    k = (rep.get("members") or {}).get("chosen", 1)
    what = "head" if k == 1 else f"mean of {k} heads"
    rows = [cls_row(f"mmdemo: {feature} -> {what} on photos + FER-2013 (shipped)", r["model"])]
    if "one_head" in r:
        rows.insert(0, cls_row(f"one of those heads alone (seed {rep['members']['seeds'][0]})", r["one_head"]))
    return rows


def face_tried(rep: dict) -> list[str]:
    """Every face-head configuration tried, with the validation numbers it was chosen on."""
    tried = rep.get("tried") or []
    if not tried or not tried[0].get("valid_steady"):
        return []
    names = list(tried[0]["valid_macro_f1"])
    rows = [f"| width | dropout | loss | valid macro-F1 ({' / '.join(names)}) | valid steady videos ({' / '.join(names)}) | |", "|---|---|---|---|---|---|"]
    for t in tried:
        c, held = t["config"], t["valid_steady"] or {}
        chosen = "chosen" if all(c[k] == rep["head"][k] for k in ("hidden", "dropout", "loss")) else ""
        f1 = " / ".join(f"{100 * t['valid_macro_f1'][n]:.1f}" for n in names)
        steady = " / ".join(f"{100 * held[n]:.0f}%" if n in held else "-" for n in names)
        rows.append(f"| {c['hidden']} | {c['dropout']} | {c['loss']} | {f1} | {steady} | {chosen} |")
    return ["", *rows, ""]


def face_fer_markdown(rep: dict) -> list[str]:
    """The face tables when the face feature reads expressions with fer's CNN (in-sample on FER-2013)."""
    return [f"### Face: expression photos, test people ({rep['n_test']} photos with a face found)", "",
           "The shipped head learned from the photos and FER-2013 weighted equally (FER-2013 rows without fer's in-sample "
           f"probabilities), {face_choice(rep)}", *face_tried(rep), "", CLS_HEAD,
           cls_row("majority class (train)", rep["majority"]),
           cls_row(f"smile blendshape alone (thresholds {rep['smile']['thresholds'][0]:.2f}/{rep['smile']['thresholds'][1]:.2f} on valid)", rep["smile"]),
           cls_row("head on the photos alone (as before)", rep["photos_only_head"]),
           cls_row("head on photos + FER-2013 with fer's in-sample probabilities", rep["insample_head"]),
           *shipped_rows(rep, rep, "blendshapes + pose + FER"), "",
           f"Reference baseline of ../shared/data: {REFERENCE['faces']}.", "",
           f"### Face: FER-2013 test images ({rep['fer_test']['n_test']} with a face found)", "",
           "fer's expression CNN (part of the face feature) was trained on FER-2013, so its probabilities are in-sample here. The",
           "shipped head's first row reads these images without them (as it learned from FER-2013: out of sample); rows that use them",
           "are marked *in-sample* and overstate what a new face gets.", "", CLS_HEAD,
           cls_row("majority class (train)", rep["fer_test"]["majority"]),
           cls_row("head on the photos alone (*in-sample* CNN probabilities)", rep["fer_test"]["photos_only_head"]),
           cls_row("head on photos + FER-2013 with fer's probabilities (*in-sample*)", rep["fer_test"]["insample_head"]),
           *([cls_row(f"one of those heads alone (seed {rep['members']['seeds'][0]}), CNN probabilities left out", rep["fer_test"]["one_head"])]
             if "one_head" in rep["fer_test"] else []),
           cls_row("shipped head, CNN probabilities left out", rep["fer_test"]["model"]),
           cls_row("shipped head, CNN probabilities given (*in-sample*)", rep["fer_test"]["model_with_fer_probabilities"]), ""]


def face_own_markdown(rep: dict, e: dict) -> list[str]:
    """The face tables when the face feature reads expressions with mmdemo's CNN (learned from FER-2013 train only)."""
    def cnn_row(name: str, r: dict) -> str:
        p = r.get("polarity3") or {}
        return f"| {name} | {fmt(p.get('accuracy'), pct=True)} | {fmt(p.get('macro_f1'), pct=True)} | {fmt(r.get('accuracy7'), pct=True)} |"

    rows = ["| expression CNN alone (its largest of negative / neutral / happy) | polarity accuracy | polarity macro-F1 | 7-class accuracy |",
            "|---|---|---|---|", cnn_row(f"FER-2013 test ({e['fer2013_test']['n_polarity']} images with a polarity)", e["fer2013_test"])]
    if "photos_test" in e:
        rows.append(cnn_row(f"photos, test people ({e['photos_test']['n_polarity']}; the encoder's crop)", e["photos_test"]))
    return [f"### Face: the expression CNN (mmdemo's, learned from FER-2013 train, epoch {e['chosen_epoch']} chosen on valid: "
            f"{100 * e['valid_accuracy7']:.1f}%)", "", "Read once on images it never saw.", "", *rows, "",
            f"### Face: expression photos, test people ({rep['n_test']} photos with a face found)", "",
            f"The shipped head learned from the photos and FER-2013 weighted equally, {face_choice(rep)}", *face_tried(rep), "", CLS_HEAD,
            cls_row("majority class (train)", rep["majority"]),
            cls_row(f"smile blendshape alone (thresholds {rep['smile']['thresholds'][0]:.2f}/{rep['smile']['thresholds'][1]:.2f} on valid)", rep["smile"]),
            cls_row("head on the photos alone", rep["photos_only_head"]),
            *shipped_rows(rep, rep, "blendshapes + pose + expression CNN"), "",
            f"Reference baseline of ../shared/data: {REFERENCE['faces']}.", "",
            f"### Face: FER-2013 test images ({rep['fer_test']['n_test']} with a face found)", "",
            "Out of sample for the expression CNN (it learned from FER-2013 train) and for the heads.", "", CLS_HEAD,
            cls_row("majority class (train)", rep["fer_test"]["majority"]),
            cls_row("head on the photos alone", rep["fer_test"]["photos_only_head"]),
            *shipped_rows(rep, rep["fer_test"], "blendshapes + pose + expression CNN"),
            *([cls_row(f"the same, less the {d['copies_left_out']} test images that are copies of training images ({d['n_test']} left)", d["model"])]
              if (d := rep.get("fer_test_distinct")) else []), ""]


# ----------------------------------------------------------------------------- models


STEADY_FPS = 10.0  # frames a second of the steady-expression videos (as bench/face_stability.py)
FACE_MEMBERS = (1, 3, 5)  # how many heads (seeds) the shipped face head may average; the validation people choose
QUICK_FACE_MEMBERS = (1, 2)  # the same with --quick
STEADY_FLOOR = 0.95  # a face head is steady enough when this share of every corpus's valid videos holds within ±0.3 (one in 30 may not)


def fit_unimodal(ds: FeatureDataset, grid: list[FusionConfig], tcfg: TrainConfig) -> tuple:
    """A head on one modality's features (the concat method with one modality = an MLP), the
    configuration chosen on the validation fold."""
    best = None
    for fcfg in grid:
        model, res, _ = train_method("concat", ds, fcfg, tcfg, progress=False)
        valid = evaluate(model, ds.splits["valid"])
        log.info("  hidden %d dropout %.1f: valid MAE %.3f (%d epochs)", fcfg.hidden, fcfg.dropout, valid["mae"], res.epochs_run)
        if best is None or valid["mae"] < best[2]["mae"]:
            best = (model, fcfg, valid, res)
    return best


def repeated(ds: FeatureDataset, k: int, splits=("train", "valid")) -> FeatureDataset:
    """``ds`` with the rows of ``splits`` repeated ``k`` times (a small corpus weighted as much as a
    big one beside it; the test split is never repeated)."""
    return FeatureDataset({s: sp.subset(np.tile(np.arange(len(sp)), k if s in splits else 1)) for s, sp in ds.splits.items()}, dict(ds.meta))


def balanced_concat(parts: dict[str, FeatureDataset]) -> FeatureDataset:
    """The corpora as one dataset, each weighted equally (the smaller ones' train and valid rows repeated)."""
    largest = max(len(d.splits["train"]) for d in parts.values())
    return concat(*[repeated(d, max(1, round(largest / len(d.splits["train"])))) for d in parts.values()])


def fit_balanced(parts: dict[str, FeatureDataset], grid: list[FusionConfig], tcfg: TrainConfig, steady: dict[str, list] | None = None,
                 record: list | None = None) -> tuple:
    """A head on several corpora of one modality, each weighted equally (the smaller ones' train and
    valid rows repeated), the configuration chosen by the mean over the corpora of the polarity
    macro-F1 on their validation folds; with ``steady`` (per corpus, the per-frame face features of
    steady-expression videos of its validation people: :func:`steady_features`), among the
    configurations whose reading holds within ±0.3 through the live smoothing on at least
    ``STEADY_FLOOR`` of those videos in every corpus (the steadiest, when none does). Returns
    (model, config, per-corpus valid macro-F1, the combined training dataset, per-corpus valid
    steady share or None); ``record`` gets each configuration's validation numbers."""
    ds = balanced_concat(parts)
    best = None
    for fcfg in grid:
        model, res, _ = train_method("concat", ds, fcfg, tcfg, progress=False)
        valid, held, score = face_validation(model, parts, steady)
        log.info("  hidden %d dropout %.1f loss %s: valid polarity macro-F1 %s%s (%d epochs)", fcfg.hidden, fcfg.dropout, fcfg.loss,
                 ", ".join(f"{k} {100 * v:.1f}" for k, v in valid.items()),
                 "" if held is None else "; steady videos " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in held.items()), res.epochs_run)
        if record is not None:
            record.append({"config": asdict(fcfg), "valid_macro_f1": valid, "valid_steady": held, "epochs": res.epochs_run})
        if best is None or score > best[0]:
            best = (score, model, fcfg, valid, held)
    return best[1], best[2], best[3], ds, best[4]


def face_validation(model, parts: dict[str, FeatureDataset], steady: dict[str, list] | None) -> tuple[dict, dict | None, tuple]:
    """A face head's validation numbers: per corpus the polarity macro-F1 of its valid fold, per
    corpus the share of its steady-expression valid videos the head holds within ±0.3 (None without
    ``steady``), and the score a choice maximises: steady enough on every corpus first (the best mean
    macro-F1 among those), else the steadiest."""
    valid = {}
    for name, d in parts.items():
        va = d.splits["valid"]
        valid[name] = polarity_report(predict(model, Batches(va, model.modalities, model.device)), va.labels)["polarity3"]["macro_f1"]
    held = {name: steady_reading(model, videos) for name, videos in steady.items()} if steady else None
    f1 = float(np.mean(list(valid.values())))
    steady_enough = held is None or min(held.values()) >= STEADY_FLOOR
    return valid, held, (steady_enough, f1 if steady_enough else min(held.values()), f1)


def fit_members(first, ds: FeatureDataset, fcfg: FusionConfig, tcfg: TrainConfig, parts: dict[str, FeatureDataset],
                steady: dict[str, list] | None, counts: tuple[int, ...]) -> tuple:
    """The chosen face head ``first`` (seed ``tcfg.seed``) and more heads of its configuration trained
    on ``ds`` with the next seeds; the mean of the first k heads for each k of ``counts`` is scored on
    the validation people like a configuration (:func:`face_validation`) and the best is returned
    (fewer heads on a tie), with what each count scored. A single head's reading of a slightly moved
    face depends on its seed; the mean of a few depends on it less."""
    from .checkpoint import MeanOfModels

    if not counts or min(counts) < 1:
        raise ValueError(f"numbers of heads must be positive whole numbers, got {counts!r}")
    heads, tried, best = [first], [], None
    for k in sorted(set(counts)):
        while len(heads) < k:
            heads.append(train_method("concat", ds, fcfg, dataclasses.replace(tcfg, seed=tcfg.seed + len(heads)), progress=False)[0])
        model = heads[0] if k == 1 else MeanOfModels(heads[:k])
        valid, held, score = face_validation(model, parts, steady)
        log.info("  mean of %d head(s): valid polarity macro-F1 %s%s", k, ", ".join(f"{n} {100 * v:.1f}" for n, v in valid.items()),
                 "" if held is None else "; steady videos " + ", ".join(f"{n} {100 * v:.0f}%" for n, v in held.items()))
        tried.append({"members": k, "seeds": [tcfg.seed + i for i in range(k)], "valid_macro_f1": valid, "valid_steady": held})
        if best is None or score > best[0]:
            best = (score, model, tried[-1])
    return best[1], best[2], tried


def steady_features(data: Path, expression: Path | None, *, per_set: int, seconds: float, fps: float, seed: int,
                    exclude: dict[str, set] | None = None) -> dict[str, list]:
    """Per face corpus ("photos", "fer2013"), the per-frame face features (None: no face found) of
    steady-expression videos (:func:`mmdemo.smoothing.steady_video`: a still of a validation person,
    never one whose path is in ``exclude[corpus]``, shifted, scaled, relit and noised frame by frame)
    read by the live face encoder with this run's expression CNN: what a face head's steadiness is
    chosen on."""
    from .encoders import FaceEncoder
    from .smoothing import STEADY_MIN_SIDE, steady_faces, steady_video

    enc = FaceEncoder(expression=expression)
    out = {}
    for name, corpus in (("photos", "faces"), ("fer2013", "fer2013")):
        folder = CORPORA[corpus]["folder"]
        videos = []
        for k, path in enumerate(steady_faces(data / folder, per_set, seed, "valid", exclude=(exclude or {}).get(name, frozenset()))):
            frames = steady_video(path, seconds=seconds, fps=fps, seed=seed + k, min_side=STEADY_MIN_SIDE[folder])
            feats = [r.feature if r.present else None for r in map(enc.encode, frames)]
            if sum(f is not None for f in feats) >= 0.8 * len(feats):  # as steady_share and bench/face_stability.py count
                videos.append(feats)
        if videos:
            out[name] = videos
        else:
            log.warning("face: no steady-expression video of %s with a face in 80%% of its frames; its steadiness is not weighed", name)
    return out


def steady_reading(model, videos: list, fps: float = STEADY_FPS) -> float:
    """The share of ``videos`` (per-frame face features) whose face-alone reading by ``model`` holds
    within ±0.3 of its mean through the live pipeline's face smoothing (its default settings)."""
    from .pipeline import PipelineConfig
    from .smoothing import steady_share

    live = PipelineConfig()

    def read(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model({"vision": torch.as_tensor(x, dtype=torch.float32, device=model.device)}).prediction.cpu().numpy()

    return steady_share(read, videos, fps, tau_s=live.face_smooth_s, interval_s=live.face_interval_s, gap_s=live.face_ttl_s)


def fer_copies(data: Path) -> tuple[set[str], set[str]]:
    """FER-2013's valid and test images whose pixels equal a training image's
    (:func:`mmdemo.data.copies_of_train`: 280 valid and 288 test images of the challenge's split),
    as (paths, clip ids); empty without the corpus's labels (a made-up folder)."""
    import csv

    from .data import copies_of_train

    folder = data / CORPORA["fer2013"]["folder"]
    if not (folder / "labels.csv").is_file():
        return set(), set()
    copies = copies_of_train(folder)
    with open(folder / "labels.csv", encoding="utf-8") as f:
        return copies, {r["clip_id"] for r in csv.DictReader(f) if r["path"] in copies}


def without_ids(ds: FeatureDataset, split: str, ids: set[str]) -> FeatureDataset:
    """``ds`` with the rows of ``split`` whose id is in ``ids`` left out."""
    sp = ds.splits[split]
    return FeatureDataset(ds.splits | {split: sp.subset(np.flatnonzero(~np.isin(sp.ids, list(ids))))}, dict(ds.meta))


def fer_distinct_report(data: Path, fer: FeatureDataset, model, copy_ids: set[str] | None = None) -> dict | None:
    """``model`` read on FER-2013's test images less those whose pixels equal a training image's
    (:func:`fer_copies`, or their ids ``copy_ids`` when the caller has them): the copies were
    learned from by the expression CNN and the head. None without the corpus's labels (a made-up folder)."""
    if not (data / CORPORA["fer2013"]["folder"] / "labels.csv").is_file():
        return None
    if copy_ids is None:
        _, copy_ids = fer_copies(data)
    keep = without_ids(fer, "test", copy_ids).splits["test"]
    return {"model": polarity_report(predict(model, Batches(keep, model.modalities, model.device)), keep.labels),
            "n_test": len(keep), "copies_left_out": len(fer.splits["test"]) - len(keep)}


def face_stage(data: Path, faces: FeatureDataset, fer: FeatureDataset, expression: Path | None, grid: list[FusionConfig],
               tcfg_uni: TrainConfig, *, quick: bool, seed: int) -> tuple[dict, object, FeatureDataset]:
    """The face head (:func:`fit_balanced`, then :func:`fit_members`) and its test scores. Returns
    (the report, the shipped head, the photos + FER-2013 set the fusion learns from: every valid
    image, FER-2013's copies of training images too, as the fusion always did)."""
    # face: the head learns from the photos and FER-2013 (each by its own split, weighted equally).
    # fer's CNN (part of the face feature) was trained on FER-2013, so its probabilities there are
    # in-sample: FER-2013 rows teach the head (and the fusion) with those 7 values set to 0, so
    # nothing learned or chosen leans on them; the photos keep them (out of sample for the CNN).
    # With mmdemo's own CNN (--expression-cnn own), FER-2013's valid and test images are out of sample
    # for it and the rows keep their probabilities; its train images are the CNN's own (their
    # probabilities are a little more confident than on new faces: see the CNN's train/test scores).
    insample = expression is None
    photos = only_present(faces, "vision")
    # FER-2013's valid images that copy a training image were learned from by the expression CNN
    # (and would be by the head): the choices on the validation people leave them out
    copy_paths, copy_ids = fer_copies(data)
    fer_all = only_present(fer, "vision")
    fer_p = without_ids(fer_all, "valid", copy_ids)
    valid_copies_left_out = len(fer_all.splits["valid"]) - len(fer_p.splits["valid"])
    fer_blind = without_fer_probabilities(fer_p) if insample else fer_p
    log.info("face: steady-expression videos of the validation people")
    steady = steady_features(data, expression, per_set=3 if quick else 30, seconds=2.0 if quick else 5.0, fps=STEADY_FPS, seed=seed,
                             exclude={"fer2013": copy_paths})
    if insample and "fer2013" in steady:  # read as its head learned FER-2013: without fer's in-sample probabilities
        steady["fer2013"] = [[None if f is None else blind_to_fer(f) for f in v] for v in steady["fer2013"]]
    log.info("face: heads on the photos alone and on photos + FER-2013")
    photo_model = fit_unimodal(photos, grid, tcfg_uni)[0]
    # the face head's loss is chosen too: "l1" snaps an ambiguous face to -1, 0 or +1 frame by frame,
    # "huber" reads it as a graded value in between (see FusionConfig.loss)
    face_grid = [dataclasses.replace(c, loss=loss) for loss in LOSSES for c in grid]
    face_tried: list[dict] = []
    parts = {"photos": photos, "fer2013": fer_blind}
    one_head, fcfg_face, _, face_train, _ = fit_balanced(parts, face_grid, tcfg_uni, steady, face_tried)
    log.info("face: the mean of several heads of that configuration (other seeds)")
    face_model, chosen, members = fit_members(one_head, face_train, fcfg_face, tcfg_uni, parts, steady, QUICK_FACE_MEMBERS if quick else FACE_MEMBERS)
    insample_model = fit_balanced({"photos": photos, "fer2013": fer_p}, [fcfg_face], tcfg_uni)[0] if insample else None

    def read(model, ds):
        test = ds.splits["test"]
        return polarity_report(predict(model, Batches(test, model.modalities, model.device)), test.labels)

    test = photos.splits["test"]
    rep = {"model": read(face_model, photos), "photos_only_head": read(photo_model, photos),
           "majority": majority_report(photos.splits["train"].labels, test.labels), "smile": smile_baseline(photos),
           "head": asdict(fcfg_face), "valid_macro_f1": chosen["valid_macro_f1"], "valid_steady": chosen["valid_steady"], "tried": face_tried,
           "members": {"chosen": chosen["members"], "seeds": chosen["seeds"], "tried": members}, "n_test": len(test),
           "absent_test": int((~faces.splits["test"].present["vision"]).sum()),
           "expression_cnn": "fer" if insample else "mmdemo (FER-2013 train)",
           "fer_test": {"model": read(face_model, fer_blind), "photos_only_head": read(photo_model, fer_p),
                        "majority": majority_report(fer_p.splits["train"].labels, fer_p.splits["test"].labels),
                        "n_test": len(fer_p.splits["test"])},
           "fer_test_distinct": fer_distinct_report(data, fer_blind, face_model, copy_ids), "fer_valid_copies_left_out": valid_copies_left_out,
           "train_items": {"photos": len(photos.splits["train"]), "fer2013": len(fer_p.splits["train"])}}
    if chosen["members"] > 1:  # what one head of the mean scores alone (the seed the configuration was chosen with)
        rep["one_head"], rep["fer_test"]["one_head"] = read(one_head, photos), read(one_head, fer_blind)
    if insample:
        rep["insample_head"] = read(insample_model, photos)
        rep["fer_test"] |= {"model_with_fer_probabilities": read(face_model, fer_p), "insample_head": read(insample_model, fer_p)}
    # the fusion learns from the face rows as before this rule: its pairing draws from every valid
    # face (copies too), so the fusion models a full run makes do not change with the head's choices
    fer_all_blind = without_fer_probabilities(fer_all) if insample else fer_all
    return rep, face_model, balanced_concat({"photos": photos, "fer2013": fer_all_blind})


def face_markdown(rep: dict, expression: dict | None) -> list[str]:
    """The face section of benchmark.md: with mmdemo's expression CNN (``expression``: what it
    measured) or with fer's (None)."""
    return face_fer_markdown(rep) if expression is None else face_own_markdown(rep, expression)


def polarity_report(pred: np.ndarray, truth: np.ndarray) -> dict:
    """3-class polarity (thresholds +-0.5) and positive-vs-negative on the non-neutral items."""
    p3, t3 = polarity(pred), polarity(truth)
    out = {"polarity3": classification_metrics(p3, t3)}
    nz = t3 != 0
    out["pos_vs_neg"] = classification_metrics(np.where(pred[nz] >= 0, 1, -1), t3[nz])
    return out


def majority_report(train_labels: np.ndarray, truth: np.ndarray) -> dict:
    t3 = polarity(truth)
    maj3 = np.bincount(polarity(train_labels) + 1).argmax() - 1
    nz = t3 != 0
    tr = polarity(train_labels)
    maj2 = 1 if (tr > 0).sum() >= (tr < 0).sum() else -1
    return {"polarity3": classification_metrics(np.full(len(t3), maj3), t3), "pos_vs_neg": classification_metrics(np.full(nz.sum(), maj2), t3[nz])}


def smile_baseline(ds: FeatureDataset) -> dict:
    """Polarity from the smile blendshape alone, two thresholds chosen on the validation fold."""
    idx = [BLENDSHAPES.index("mouthSmileLeft"), BLENDSHAPES.index("mouthSmileRight")]
    smile = {s: sp.feats["vision"][:, idx].mean(axis=1) for s, sp in ds.splits.items()}
    grid = np.linspace(0, 1, 41)
    best, va = None, polarity(ds.splits["valid"].labels)
    for a in grid:
        for b in grid[grid >= a]:
            pred = np.where(smile["valid"] >= b, 1, np.where(smile["valid"] < a, -1, 0))
            acc = float(np.mean(pred == va))
            if best is None or acc > best[0]:
                best = (acc, a, b)
    _, a, b = best
    te = polarity(ds.splits["test"].labels)
    pred = np.where(smile["test"] >= b, 1, np.where(smile["test"] < a, -1, 0))
    nz = te != 0
    return {"polarity3": classification_metrics(pred, te), "pos_vs_neg": classification_metrics(np.where(pred[nz] > 0, 1, -1), te[nz]),
            "thresholds": [float(a), float(b)]}


def vader_scores(texts) -> np.ndarray:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    return np.array([3.0 * sia.polarity_scores(t or "")["compound"] for t in texts])


def update_latency(model, dims: dict[str, int], repeats: int = 300) -> dict:
    """One live update on CPU: a single-sample forward, and the full explanation (2^M rows). Timed
    on a CPU copy: the trained model stays on its device."""
    model = copy.deepcopy(model).cpu().eval()
    feats = {m: torch.randn(1, d) for m, d in dims.items()}
    with torch.inference_mode():
        for _ in range(20):
            model(feats)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(feats)
        fwd = (time.perf_counter() - t0) / repeats
    for _ in range(10):
        explain(model, feats)
    t0 = time.perf_counter()
    for _ in range(repeats):
        explain(model, feats)
    return {"forward_ms": 1000 * fwd, "explain_ms": 1000 * (time.perf_counter() - t0) / repeats}


# ----------------------------------------------------------------------------- tables


def fmt(v, pct=False):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def regression_row(name: str, m: dict, note: str = "") -> str:
    return (f"| {name} | {fmt(m['mae'])} | {fmt(m['corr'])} | {fmt(m['acc2_has0'], True)} / {fmt(m['acc2_non0'], True)} | "
            f"{fmt(m.get('acc2_zero_neg'), True)} | {fmt(m['f1_has0'], True)} / {fmt(m['f1_non0'], True)} | {fmt(m['acc7'], True)} | {note} |")


REG_HEAD = ("| model | MAE | Corr | Acc-2 (has-0 / non-0) | Acc-2 (zero = negative) | F1 (has-0 / non-0) | Acc-7 | notes |\n"
            "|---|---|---|---|---|---|---|---|")
CLS_HEAD = "| model | polarity accuracy | polarity macro-F1 | pos-vs-neg accuracy | pos-vs-neg macro-F1 |\n|---|---|---|---|---|"


def cls_row(name: str, r: dict) -> str:
    return (f"| {name} | {fmt(r['polarity3']['accuracy'], True)} | {fmt(r['polarity3']['macro_f1'], True)} | "
            f"{fmt(r['pos_vs_neg']['accuracy'], True)} | {fmt(r['pos_vs_neg']['macro_f1'], True)} |")


def published_table(corpus: str) -> str:
    lines = ["| published (not re-run here) | modalities | MAE | Corr | Acc-2 | Acc-2 convention | Acc-7 | trained on; source |",
             "|---|---|---|---|---|---|---|---|"]
    for name, mods, mae, corr, acc2, acc7, conv, src in PUBLISHED[corpus]:
        lines.append(f"| {name} | {mods} | {mae if mae is not None else '-'} | {corr if corr is not None else '-'} | {acc2} | {conv} | "
                     f"{acc7 if acc7 is not None else '-'} | {src} |")
    return "\n".join(lines)


def mean_std(runs: list[dict]) -> dict:
    """{metric: (mean, std)} over runs (seeds); std is the sample std (ddof 1)."""
    keys = [k for k in runs[0] if k != "n"]
    out = {}
    for k in keys:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = (float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0)
    return out


def pm(m: dict, key: str, pct: bool = False) -> str:
    mu, sd = m[key]
    return f"{100 * mu:.1f} ± {100 * sd:.1f}" if pct else f"{mu:.3f} ± {sd:.3f}"


def video_ids(folder: Path) -> dict[str, str]:
    """clip id -> the video it was cut from (folds of the fine-tuning are by video: the segments of
    one speaker's video are never split across folds)."""
    with open(folder / "labels.csv", encoding="utf-8") as fh:
        return {r["clip_id"]: r.get("video_id") or r.get("speaker") or r["clip_id"] for r in csv.DictReader(fh)}


def fold_of(groups, k: int, salt: str = "mmdemo-oof") -> np.ndarray:
    """A deterministic fold in 0..k-1 per group (a hash of the group id)."""
    return np.array([int(hashlib.md5(f"{salt}:{g}".encode()).hexdigest()[:8], 16) % k for g in groups])


def out_of_fold_features(words: FeatureDataset, videos: dict[str, str], k: int, ftcfg: FinetuneConfig, out: Path,
                         device: str, progress: bool, reuse: dict | None = None, on_fold=None) -> tuple[np.ndarray, dict]:
    """Words features of every train text from a fine-tuned encoder that never saw it.

    The train texts are cut into k folds by video; for each fold, MiniLM is fine-tuned on the other
    k-1 (same settings, same early stopping on the valid fold) and embeds the held-out fold. The
    downstream heads (the words head, every fusion model) learn from these features, so they see
    words exactly as reliable as they are on texts the encoder never saw, which is what the shipped
    encoder (fine-tuned on all train texts) gives at test time and live."""
    tr, va = words.splits["train"], words.splits["valid"]
    keep_tr, keep_va = tr.present["text"], va.present["text"]
    folds = fold_of([videos.get(i, i) for i in tr.ids], k)
    feats = np.zeros_like(tr.feats["text"])
    info = {"folds": k, "by": "video", "valid_mae": [], "train_texts": [], "seconds": 0.0}
    reused = [] if reuse is None else reuse.get("oof_folds", list(range(k)))
    if reuse is not None:  # the fold encoders of an earlier run (see --reuse-words): only the embedding is redone
        prev = reuse["info"] or {}
        info = dict(prev, reused_from=shown_path(reuse["dir"]), reused_folds=reused)  # seconds: the earlier run's
        info.pop("seconds_this_run", None)  # what that run re-did is not this run's
        info["seconds"] = float(prev.get("seconds") or 0.0)
        info["valid_mae"], info["train_texts"] = ([(list(prev.get(key) or []) + [None] * k)[i] for i in range(k)] for key in ("valid_mae", "train_texts"))
    for f in range(k):
        fit, held = keep_tr & (folds != f), keep_tr & (folds == f)
        if not fit.any() or not held.any():
            raise ValueError(f"out-of-fold words features: fold {f + 1} of {k} has {int(fit.sum())} texts to fine-tune on and "
                             f"{int(held.sum())} to embed; use fewer folds (--oof-folds) than there are videos")
        if f in reused and info["train_texts"][f] not in (None, int(fit.sum())):
            raise SystemExit(f"--reuse-words {reuse['dir']}: its out-of-fold encoder {f} learned from {info['train_texts'][f]} texts, "
                             f"this run's fold {f} has {int(fit.sum())}: other data (or --quick)")
        if f in reused:  # copied, so that this run's folder can be reused in turn
            overlay = out / "words_oof" / f"fold{f}" / "encoder.safetensors"
            source = Path(reuse["dir"]) / "words_oof" / f"fold{f}" / "encoder.safetensors"
            if overlay.resolve() != source.resolve():
                overlay.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, overlay)
        else:
            log.info("words: out-of-fold fine-tuning %d/%d (%d texts, %d held out)", f + 1, k, int(fit.sum()), int(held.sum()))
            ft = finetune(tr.text[fit], tr.labels[fit], va.text[keep_va], va.labels[keep_va], ftcfg, progress=progress)
            overlay = save_overlay(ft["overlay"], out / "words_oof" / f"fold{f}", {"fold": f, "folds": k})
            if reuse is not None:  # the others came from the earlier run
                info["valid_mae"][f], info["train_texts"][f] = ft["valid_mae"], int(fit.sum())
                info["seconds_this_run"] = info.get("seconds_this_run", 0.0) + ft["seconds"]
            else:
                info["valid_mae"].append(ft["valid_mae"])
                info["train_texts"].append(int(fit.sum()))
                info["seconds"] += ft["seconds"]
            if on_fold is not None:
                on_fold(info)
        x, reasons = WordsEncoder(device=device, overlay=overlay).encode_batch(list(tr.text[held]))
        feats[held] = x
    return feats, info


WORDS_DONE = "words.json"  # the words results of a run, written before the rest of it


def reused_words(folder: Path, ftcfg: FinetuneConfig, folds: int) -> dict:
    """The fine-tuned text encoders and MOSI-only results of an earlier benchmark run in ``folder``
    (``--reuse-words``): refused unless that run used the same fine-tuning settings and folds."""
    folder = Path(folder)
    prev, why = None, []
    # words.json is written as the words stage goes (after the main encoder, after each out-of-fold
    # fold, after the MOSI-only runs), so the fine-tuning of a run stopped later is not lost; a run
    # starting in a folder removes the words.json there first. benchmark.json is the older layout.
    for name in (WORDS_DONE, "benchmark.json"):
        try:
            prev = json.loads((folder / name).read_text())["words"]
            if not isinstance(prev, dict) or "finetune" not in prev:
                raise ValueError("no fine-tuning recorded")
            break
        except (OSError, KeyError, TypeError, ValueError) as err:
            prev = None
            why.append(f"{name}: {err}")
    if prev is None:
        raise SystemExit(f"--reuse-words {folder}: no words results of an earlier run there ({'; '.join(why)})") from None
    want, had = jsonable(asdict(ftcfg)), dict(prev.get("finetune", {}).get("config") or {})
    want.pop("device", None), had.pop("device", None)  # where it ran does not change what was learned
    if had != want:
        raise SystemExit(f"--reuse-words {folder}: that run fine-tuned with {had}, this one would use {want}")
    if prev.get("out_of_fold", {}).get("folds") != folds:
        raise SystemExit(f"--reuse-words {folder}: that run used {prev.get('out_of_fold', {}).get('folds')} out-of-fold folds, not {folds}")
    main = folder / "words_finetuned" / "encoder.safetensors"
    if not main.exists():
        raise SystemExit(f"--reuse-words {folder}: missing {main}")
    # an out-of-fold encoder that is not there (deleted to save space, or a run stopped before it) is fine-tuned again
    # (out_of_fold_features: only if the folds hold the same texts as then)
    kept = [f for f in range(folds) if (folder / "words_oof" / f"fold{f}" / "encoder.safetensors").exists()]
    return {"dir": folder, "finetune": prev["finetune"], "info": prev["out_of_fold"], "mosi_only": prev.get("mosi_only"), "oof_folds": kept}


def reused_expression(folder: Path, ecfg, limit: int | None = None) -> dict:
    """The expression CNN an earlier benchmark run trained (``--reuse-expression``: ``folder/expression/``)
    and what it measured; refused unless it was trained with the same settings. The face features it
    gives are then found in the extraction cache (their key includes the weights' hash)."""
    from .expression import CONFIG, WEIGHTS, load_expression

    src = Path(folder) / "expression"
    try:
        meta = json.loads((src / CONFIG).read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"{CONFIG} is not an object")
        load_expression(src / WEIGHTS)  # strict: a damaged or foreign file is refused here, not after an hour
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise SystemExit(f"--reuse-expression {folder}: no expression CNN of an earlier run there ({err})") from None
    want, had = jsonable(asdict(ecfg)), dict(meta.get("config") or {})
    want.pop("device", None), had.pop("device", None)
    if had != want:
        raise SystemExit(f"--reuse-expression {folder}: that CNN was trained with {had}, this run would use {want}")
    if meta.get("limit") != limit:  # --quick (or --limit of python -m mmdemo.expression) reads a few images per split
        raise SystemExit(f"--reuse-expression {folder}: that CNN read at most {meta.get('limit') or 'all'} images per split, this run reads {limit or 'all'}")
    return {"dir": src, "result": {k: v for k, v in meta.items() if k not in ("format", "classes", "config")}}


def with_train_features(ds: FeatureDataset, m: str, ids: np.ndarray, feats: np.ndarray) -> FeatureDataset:
    """A copy of ``ds`` whose train features of modality ``m`` are replaced (matched by id)."""
    row = {i: j for j, i in enumerate(ids)}
    tr = ds.splits["train"]
    x = tr.feats[m].copy()
    for j, i in enumerate(tr.ids):
        if i in row:
            x[j] = feats[row[i]]
    splits = dict(ds.splits)
    splits["train"] = dataclasses.replace(tr, feats=dict(tr.feats, **{m: x}), present=dict(tr.present), steps=dict(tr.steps))
    return FeatureDataset(splits, dict(ds.meta))


# ----------------------------------------------------------------------------- the run


def unimodal_settings(args) -> tuple[TrainConfig, list[FusionConfig], int | None]:
    """The unimodal heads' training settings, the widths and dropouts their validation folds choose
    from, and the items read per split (None: all)."""
    quick = args.quick
    tcfg_uni = TrainConfig(epochs=8 if quick else 80, patience=3 if quick else 10, batch_size=128, lr=1e-3,
                           modality_dropout=0.0, seed=args.seed, device=args.device)
    grid = [FusionConfig(hidden=64, dropout=0.2)] if quick else [FusionConfig(hidden=h, dropout=d) for h in (64, 256) for d in (0.1, 0.3)]
    return tcfg_uni, grid, 40 if quick else None


def extract_corpus(args, name: str, limit: int | None, overlay: Path | None = None, **kw):
    """One corpus's features with the live encoders (cached and resumable) and the extraction's summary."""
    c = CORPORA[name]
    folder = Path(args.data) / c["folder"]
    log.info("features: %s (%s)%s", name, c["modality"], " with the fine-tuned text encoder" if overlay else "")
    ds, summary, errors = run_extraction(folder, folder / "labels.csv", modalities=(c["modality"],), label_col=c["label"],
                                         limit_per_split=limit, device=args.device, words_overlay=overlay,
                                         progress=not args.quiet, **kw)
    ds.meta = {"source": c["folder"]}  # no machine paths in what is written
    return ds, summary | {"broken": len(errors)}


def shown_path(path) -> str:
    """A folder as the tables name it: relative to the working directory when it lies inside it,
    else its name alone (no machine paths in what is written)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return p.name


FACE_SECTION, AFTER_FACE = "### Face:", "### Fusion on paired examples"
ENCODERS_SECTION = "### What the encoders returned"


def run_face_only(args) -> dict:
    """``--only face``: the face stage again (features, heads, the mean of several, test scores) with
    the expression CNN an earlier full run shipped in ``--checkpoints``; that run's ``benchmark.json``
    and ``benchmark.md`` under ``--out`` get the new face section, the checkpoints the new face head
    and model card. Nothing else changes: the fusion models learned from the face *features*, which a
    new head does not change."""
    from .expression import CONFIG as EXPRESSION_CONFIG
    from .expression import WEIGHTS as EXPRESSION_WEIGHTS
    from .expression import load_expression

    data, out = Path(args.data), Path(args.out)
    ckpt = Path(args.checkpoints) if args.checkpoints else out / "checkpoints"
    problem = replace_problem(ckpt)
    if problem:  # now, not after the hours of work whose models it would hold
        raise SystemExit(f"--checkpoints {ckpt}: {problem}")
    try:
        results = json.loads((out / "benchmark.json").read_text())
        md = (out / "benchmark.md").read_text()
        start, end = md.index(FACE_SECTION), md.index(AFTER_FACE)
        if not isinstance(results, dict) or not {"face", "encoders"} <= set(results) or end < start:
            raise ValueError("not the tables of a full run")
    except (OSError, ValueError) as err:
        raise SystemExit(f"--only face: no tables of an earlier full run in {out} ({err}); run python -m mmdemo.benchmark without --only first") from None
    if results.get("quick") != args.quick:
        raise SystemExit(f"--only face: the run in {out} was {'' if results.get('quick') else 'not '}--quick, this one is {'' if args.quick else 'not '}--quick")
    if not (ckpt / "unimodal" / "vision" / "config.json").is_file():  # a full run ships a face head beside the rest
        raise SystemExit(f"--only face: {ckpt} holds no checkpoints of a full run (no unimodal/vision/config.json); pass the run's --checkpoints")
    expression = None
    if results.get("expression") is not None:  # that run read expressions with mmdemo's CNN: the one it shipped
        if args.expression_cnn != "own":
            raise SystemExit(f"--only face: the run in {out} read expressions with mmdemo's CNN, not fer's")
        expression = ckpt / "unimodal" / "vision" / EXPRESSION_WEIGHTS
        try:
            load_expression(expression)
            meta = json.loads((ckpt / "unimodal" / "vision" / EXPRESSION_CONFIG).read_text())
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            raise SystemExit(f"--only face: no expression CNN shipped in {ckpt} ({err})") from None
        if meta.get("chosen_epoch") != results["expression"].get("chosen_epoch") or meta.get("valid_accuracy7") != results["expression"].get("valid_accuracy7"):
            raise SystemExit(f"--only face: the expression CNN in {ckpt} is not the one the tables in {out} describe")
    elif args.expression_cnn == "own":
        raise SystemExit(f"--only face: the run in {out} read expressions with fer's CNN; pass --expression-cnn fer")
    tcfg_uni, grid, limit = unimodal_settings(args)
    faces, s_face = extract_corpus(args, "faces", limit, expression=expression)
    fer, s_fer = extract_corpus(args, "fer2013", limit, expression=expression)
    rep, face_model, _ = face_stage(data, faces, fer, expression, grid, tcfg_uni, quick=args.quick, seed=args.seed)
    results["face"] = rep
    results["encoders"] |= {"faces": s_face, "fer2013": s_fer}
    provenance = {"generated_by": "python -m mmdemo.benchmark --only face", "data": "../shared/data (see checkpoints/README.md)",
                  "quick": args.quick, "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
                  "corpus": "expression photos (muxspace/facial_expressions subset) + FER-2013"}
    # every text first, then the writes, so that a failure leaves the files as they were
    md = md[:start] + "\n".join(face_markdown(rep, results.get("expression"))) + "\n" + md[end:]
    enc = md.find(ENCODERS_SECTION)
    if enc >= 0:  # the encoders' table: the face corpora's extraction is this run's
        enc_end = md.find("\n### ", enc + len(ENCODERS_SECTION))
        md = md[:enc] + encoder_summary(results["encoders"]) + "\n" + (md[enc_end:] if enc_end >= 0 else "")
    table = json.dumps(jsonable(results), indent=2) + "\n"
    with replacing_folder(ckpt) as stage:  # the new face head and its model card together, or neither
        save_fusion(face_model, stage / "unimodal" / "vision", extra={"metrics.json": jsonable(rep), "provenance.json": jsonable(provenance)})
        (stage / "README.md").write_text(model_card(results, stage))
    (out / "benchmark.md").write_text(md)
    (out / "benchmark.json").write_text(table)
    return results


def run(args) -> dict:
    if getattr(args, "only", None) == "face":
        return run_face_only(args)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoints) if args.checkpoints else out / "checkpoints"
    problem = replace_problem(ckpt)
    if problem:  # now, not after the hours of work whose models it would hold
        raise SystemExit(f"--checkpoints {ckpt}: {problem}")
    quick = args.quick
    tcfg_uni, grid, limit = unimodal_settings(args)
    results: dict = {"quick": quick, "encoders": {}, "words": {}, "voice": {}, "face": {}, "fusion": {}, "speed": {}}
    md: list[str] = []

    def extract(name: str, overlay: Path | None = None, **kw):
        return extract_corpus(args, name, limit, overlay, **kw)

    def save_words() -> None:  # see reused_words: what a later run can take, written as it is done
        (out / WORDS_DONE).write_text(json.dumps(jsonable({"words": results["words"]}), indent=2) + "\n")

    # what is reused is checked before an hour of work, not after it
    ftcfg = FinetuneConfig(train_layers=args.finetune_layers, epochs=1 if quick else args.finetune_epochs, seed=args.seed, device=args.device)
    folds_k = 2 if quick else args.oof_folds
    reuse = reused_words(args.reuse_words, ftcfg, folds_k) if args.reuse_words and args.finetune != "skip" else None
    if args.finetune != "skip" and (reuse is None or Path(reuse["dir"]).resolve() != out.resolve()):
        (out / WORDS_DONE).unlink(missing_ok=True)  # an earlier run's, beside encoders this run will overwrite
    from .expression import ExpressionConfig

    ecfg = ExpressionConfig(epochs=1 if quick else ExpressionConfig.epochs, width=8 if quick else ExpressionConfig.width, seed=args.seed, device=args.device)
    prev_cnn = reused_expression(args.reuse_expression, ecfg, limit) if args.reuse_expression and args.expression_cnn == "own" else None

    # -- 1. features -------------------------------------------------------------------------
    mosi, s_mosi = extract("mosi")
    mosei, s_mosei = extract("mosei")
    voice_sets = {name: extract(name, transcribe=False) for name in VOICE_CORPORA}
    expression = None  # None: the face feature reads expressions with fer's CNN
    if args.expression_cnn == "own":
        from .expression import CONFIG as EXPRESSION_CONFIG
        from .expression import WEIGHTS as EXPRESSION_WEIGHTS
        from .expression import run as train_expression_cnn

        if prev_cnn is not None:
            log.info("face: reusing the expression CNN of %s", prev_cnn["dir"])
            (out / "expression").mkdir(parents=True, exist_ok=True)
            for f in (EXPRESSION_WEIGHTS, EXPRESSION_CONFIG):
                if (prev_cnn["dir"] / f).resolve() != (out / "expression" / f).resolve():
                    shutil.copyfile(prev_cnn["dir"] / f, out / "expression" / f)
            results["expression"] = prev_cnn["result"] | {"reused_from": shown_path(args.reuse_expression)}
        else:
            log.info("face: the expression CNN on FER-2013 train")
            results["expression"] = train_expression_cnn(data, out / "expression", ecfg, limit=limit, progress=not args.quiet)
        expression = out / "expression" / EXPRESSION_WEIGHTS
    faces, s_face = extract("faces", expression=expression)
    fer, s_fer = extract("fer2013", expression=expression)
    results["encoders"] = {"mosi": s_mosi, "mosei": s_mosei, "faces": s_face, "fer2013": s_fer} | {n: v[1] for n, v in voice_sets.items()}
    corpora = [corpus_from_split_features(n, ds, voice_labels(data / VOICE_CORPORA[n]["folder"]), "audio") for n, (ds, _) in voice_sets.items()]

    # -- 2. words --------------------------------------------------------------------------
    words_frozen = concat(mosi, mosei)
    log.info("words: frozen MiniLM + head")
    frozen = fit_unimodal(words_frozen, grid, tcfg_uni)
    candidates = {"frozen": (frozen, mosi, mosei, None)}
    in_sample = None
    if args.finetune != "skip":
        log.info("words: fine-tuning the top %d MiniLM layers", args.finetune_layers)
        if reuse is not None:
            log.info("words: reusing the fine-tuned encoders of %s", reuse["dir"])
            overlay_dir = out / "words_finetuned"
            overlay_dir.mkdir(parents=True, exist_ok=True)
            overlay = overlay_dir / "encoder.safetensors"
            if overlay.resolve() != (reuse["dir"] / "words_finetuned" / "encoder.safetensors").resolve():
                shutil.copyfile(reuse["dir"] / "words_finetuned" / "encoder.safetensors", overlay)
            results["words"]["finetune"] = dict(reuse["finetune"], reused_from=shown_path(reuse["dir"]))
        else:
            tr, va = words_frozen.splits["train"], words_frozen.splits["valid"]
            keep_tr, keep_va = tr.present["text"], va.present["text"]
            ft = finetune(tr.text[keep_tr], tr.labels[keep_tr], va.text[keep_va], va.labels[keep_va], ftcfg, progress=not args.quiet)
            overlay_dir = out / "words_finetuned"
            overlay = save_overlay(ft["overlay"], overlay_dir, {"train_layers": ftcfg.train_layers, "valid_mae_head": ft["valid_mae"]})
            results["words"]["finetune"] = {"config": asdict(ftcfg), "history": ft["history"], "seconds": ft["seconds"]}
            results["words"]["out_of_fold"] = {"folds": folds_k, "by": "video", "valid_mae": [], "train_texts": [], "seconds": 0.0}
            save_words()  # a run stopped in the out-of-fold fine-tuning keeps this encoder
        mosi_ft, _ = extract("mosi", overlay)
        mosei_ft, _ = extract("mosei", overlay)
        words_ft = concat(mosi_ft, mosei_ft)
        # the downstream heads learn from out-of-fold train features (see out_of_fold_features)
        videos = video_ids(data / CORPORA["mosi"]["folder"]) | video_ids(data / CORPORA["mosei"]["folder"])
        def fold_done(info: dict) -> None:
            results["words"]["out_of_fold"] = info
            save_words()

        oof, oof_info = out_of_fold_features(words_frozen, videos, folds_k, ftcfg, out, args.device, not args.quiet, reuse, on_fold=fold_done)
        results["words"]["out_of_fold"] = oof_info
        save_words()
        words_oof = with_train_features(words_ft, "text", words_frozen.splits["train"].ids, oof)
        tuned = fit_unimodal(words_oof, grid, tcfg_uni)
        in_sample = fit_unimodal(words_ft, grid, tcfg_uni)  # the old way, reported beside it
        candidates["fine-tuned"] = (tuned, mosi_ft, mosei_ft, overlay)
    chosen = min(candidates, key=lambda k: candidates[k][0][2]["mae"])
    (w_model, w_cfg, _, _), w_mosi, w_mosei, w_overlay = candidates[chosen]
    words_for_fusion = words_oof if chosen == "fine-tuned" else words_frozen
    rows = {}
    for corpus, sets in (("mosi", {k: v[1] for k, v in candidates.items()}), ("mosei", {k: v[2] for k, v in candidates.items()})):
        base = mosi if corpus == "mosi" else mosei
        test = base.splits["test"]
        train_all = words_frozen.splits["train"].labels
        r = {"mean (train)": regression_metrics(np.full(len(test), train_all.mean()), test.labels),
             "VADER x 3": regression_metrics(vader_scores(test.text), test.labels)}
        for k, (fitted, *_rest) in candidates.items():
            label = "MiniLM fine-tuned + head (head on out-of-fold features)" if k == "fine-tuned" else f"MiniLM {k} + head"
            r[label] = evaluate(fitted[0], sets[k].splits["test"])
        if in_sample is not None:
            r["MiniLM fine-tuned + head (head on in-sample features: before)"] = evaluate(in_sample[0], sets["fine-tuned"].splits["test"])
        rows[corpus] = r
    chosen_row = "MiniLM fine-tuned + head (head on out-of-fold features)" if chosen == "fine-tuned" else f"MiniLM {chosen} + head"
    results["words"] |= {"chosen": chosen, "chosen_row": chosen_row, "valid_mae": {k: v[0][2]["mae"] for k, v in candidates.items()},
                         "head": asdict(w_cfg), "test": rows}
    if in_sample is not None:
        results["words"]["valid_mae"]["fine-tuned, head on in-sample features"] = in_sample[2]["mae"]

    # like-for-like with the published MOSI-only text models: fine-tuned on CMU-MOSI train only,
    # the fine-tuned model's own linear head, several seeds, every Acc-2 convention
    like = None
    wanted_seeds = list(range(2 if quick else args.mosi_seeds))
    if args.finetune != "skip" and args.reuse_words and (reuse.get("mosi_only") or {}).get("seeds") == wanted_seeds and wanted_seeds:
        like = dict(reuse["mosi_only"], reused_from=shown_path(reuse["dir"]))
        results["words"]["mosi_only"] = like
    elif args.finetune != "skip" and args.mosi_seeds:
        seeds = list(range(2 if quick else args.mosi_seeds))
        tr, va, te = (mosi.splits[s] for s in ("train", "valid", "test"))
        ktr, kva = tr.present["text"], va.present["text"]
        runs, secs = [], 0.0
        for seed in seeds:
            log.info("words: MiniLM fine-tuned on CMU-MOSI train only, seed %d", seed)
            cfg = FinetuneConfig(train_layers=args.finetune_layers, epochs=1 if quick else args.finetune_epochs, seed=seed, device=args.device)
            ft1 = finetune(tr.text[ktr], tr.labels[ktr], va.text[kva], va.labels[kva], cfg, progress=not args.quiet, predict={"test": list(te.text)})
            runs.append(regression_metrics(ft1["predictions"]["test"], te.labels))
            secs += ft1["seconds"]
        like = {"seeds": seeds, "runs": runs, "mean_std": mean_std(runs), "train_texts": int(ktr.sum()), "seconds": secs}
        results["words"]["mosi_only"] = like

    if args.finetune != "skip":
        save_words()
    ratio = words_frozen.splits["train"].present["text"].sum() / max(1, mosi.splits["train"].present["text"].sum())
    for corpus, title in (("mosi", f"CMU-MOSI test fold ({len(mosi.splits['test'])} segments)"), ("mosei", f"CMU-MOSEI test fold ({len(mosei.splits['test'])} segments)")):
        md += [f"### Words: {title}", "", REG_HEAD]
        for name, m in rows[corpus].items():
            note = "chosen on the valid folds; shipped" if name == chosen_row else ""
            note = f"CMU-MOSI + CMU-MOSEI train ({ratio:.1f}x MOSI's), 1 seed; " + note if "MiniLM" in name else note
            md.append(regression_row(name, m, note))
        if corpus == "mosi" and like is not None:
            ms = like["mean_std"]
            md += ["", f"**Like-for-like with the published text-only rows**: MiniLM fine-tuned on CMU-MOSI train only "
                   f"({like['train_texts']} texts), its own linear head, seeds {', '.join(map(str, like['seeds']))} (mean ± std), test read once per seed "
                   "(all test segments; one with an empty transcript gets the model's reading of an empty text):", "",
                   "| model | MAE | Corr | Acc-2 has-0 | Acc-2 non-0 | Acc-2 zero = negative | F1 zero = negative, swapped (T-BERT's) | Acc-7 |",
                   "|---|---|---|---|---|---|---|---|",
                   f"| MiniLM-L6 fine-tuned, MOSI train only, {len(like['seeds'])} seeds | {pm(ms, 'mae')} | {pm(ms, 'corr')} | {pm(ms, 'acc2_has0', True)} | "
                   f"{pm(ms, 'acc2_non0', True)} | {pm(ms, 'acc2_zero_neg', True)} | {pm(ms, 'f1_zero_neg_swapped', True)} | {pm(ms, 'acc7', True)} |",
                   "| *published:* T-BERT (BERT-base), MOSI train, mean of 5 seeds | 0.784 | 0.774 | - | - | 83.2 | 82.3 | 41.5 |"]
        md += ["", f"Reference baseline of ../shared/data: {REFERENCE[corpus]}.", "", published_table(corpus), ""]

    # -- 3. voice and face -------------------------------------------------------------------
    log.info("voice: leave-one-corpus-out over %s", ", ".join(c.name for c in corpora))
    before = Path(args.before) if args.before else ckpt  # by default the head this run replaces
    vres = voice_stage(corpora, tcfg_uni, grid=[VOICE_GRID[0], VOICE_GRID[-1]] if quick else VOICE_GRID, seed=args.seed, before=previous_voice_head(before))
    vres["before_from"] = (f"--before {args.before}" if args.before else f"{shown_path(ckpt)}, as the run found it") if "before" in vres else None
    voice_model, voice_prior, voice_cfg = vres["model"], vres["prior"], vres["config"]
    voice = voice_dataset(corpora, voice_cfg, voice_prior, seed=args.seed)
    results["voice"] = {k: v for k, v in vres.items() if k not in ("model", "prior", "config")} | {
        "config": asdict(voice_cfg), "features": "speaker_z" if voice_cfg.norm == "speaker" else "raw",
        "clips": {c.name: {s: int((c.split == s).sum()) for s in SPLITS} for c in corpora}}
    md += voice_markdown(vres, corpora, {n: v["title"] for n, v in VOICE_CORPORA.items()})
    rep, face_model, face_train = face_stage(data, faces, fer, expression, grid, tcfg_uni, quick=quick, seed=args.seed)
    results["face"] = rep
    md += face_markdown(rep, results.get("expression"))
    faces_for_fusion = face_train  # photos and FER-2013 in equal shares (FER-2013 without fer's in-sample probabilities)


    # -- 4. fusion on paired examples --------------------------------------------------------
    fcfg = FusionConfig(hidden=64, dropout=0.2)
    tcfg = TrainConfig(epochs=4 if quick else 60, patience=2 if quick else 8, batch_size=256, lr=2e-3, modality_dropout=0.25, seed=args.seed, device=args.device)
    subsets = {"all given": None, "words only": ("text",), "face + voice (no words)": ("audio", "vision")}

    def train_all(paired: FeatureDataset, latency: bool) -> tuple[dict, dict, float]:
        test = paired.splits["test"]
        rows_, models_, seconds = {}, {}, 0.0
        for name in list_fusions():
            log.info("fusion: %s", name)
            model, res, metrics = train_method(name, paired, fcfg, tcfg, progress=False)
            seconds += res.seconds
            per_subset = {}
            for label, keep in subsets.items():
                sub = test if keep is None else dataclasses.replace(test, feats=dict(test.feats), steps=dict(test.steps),
                                                                     present={m: p & (m in keep) for m, p in test.present.items()})
                per_subset[label] = evaluate(model, sub)
            e = explain(model, {m: torch.as_tensor(x) for m, x in test.feats.items()}, {m: torch.as_tensor(p) for m, p in test.present.items()},
                        {m: torch.as_tensor(st) for m, st in test.steps.items()})
            share = e.shapley.abs().mean(dim=0)
            rows_[name] = {"test": metrics, "subsets": per_subset, "params": num_params(model), "epochs": res.epochs_run,
                           "seconds": res.seconds, "mean_abs_shapley": dict(zip(e.modalities, share.tolist()))}
            if latency:
                rows_[name]["latency"] = update_latency(model, paired.dims)
            if hasattr(model, "global_weights"):
                rows_[name]["global_weights"] = model.global_weights()
            models_[name] = (model, res)
        return rows_, models_, seconds

    paired = build_paired({"text": words_for_fusion, "audio": voice, "vision": faces_for_fusion}, PairingConfig(seed=args.seed))
    paired.save(out / "paired.npz")
    results["fusion"]["pairing"] = paired.meta
    test = paired.splits["test"]
    fusion_rows, fusion_models, train_seconds = train_all(paired, latency=True)
    results["fusion"] |= {"methods": fusion_rows, "train_seconds_all": train_seconds, "config": asdict(fcfg), "train_config": asdict(tcfg)}
    before = None
    if chosen == "fine-tuned":
        # what the stacked in-sample words features did: the same pairing with the train texts'
        # features from the encoder that was fine-tuned on them (the models are not shipped)
        log.info("fusion: the same methods on in-sample words features (for comparison)")
        paired_in = build_paired({"text": words_ft, "audio": voice, "vision": faces_for_fusion}, PairingConfig(seed=args.seed))
        before, _, _ = train_all(paired_in, latency=False)
        results["fusion"]["in_sample_words"] = before
    base = regression_metrics(np.full(len(test), paired.splits["train"].labels.mean()), test.labels)
    md += [f"### Fusion on paired examples (test pairs: {len(test)}, built from test splits only)", "",
           "| method | params | MAE | Corr | Acc-2 (non-0) | Acc-7 | MAE words only | MAE face+voice only | mean abs Shapley words / voice / face | update ms (forward / with Shapley) |",
           "|---|---|---|---|---|---|---|---|---|---|",
           f"| mean (train) | - | {fmt(base['mae'])} | - | {fmt(base['acc2_non0'], True)} | {fmt(base['acc7'], True)} | - | - | - | - |"]
    for name, r in fusion_rows.items():
        t, s, sh, lat = r["test"], r["subsets"], r["mean_abs_shapley"], r["latency"]
        md.append(f"| {name} | {r['params']:,} | {fmt(t['mae'])} | {fmt(t['corr'])} | {fmt(t['acc2_non0'], True)} | {fmt(t['acc7'], True)} | "
                  f"{fmt(s['words only']['mae'])} | {fmt(s['face + voice (no words)']['mae'])} | "
                  f"{sh.get('text', 0):.2f} / {sh.get('audio', 0):.2f} / {sh.get('vision', 0):.2f} | {lat['forward_ms']:.2f} / {lat['explain_ms']:.2f} |")
    md += ["", f"All {len(fusion_rows)} methods trained in {train_seconds:.0f} s in total ({tcfg.device}, {torch.get_num_threads()} threads).", "",
           "Where a method scores better with all modalities than with words alone, that follows partly from *how the test pairs",
           "are sampled*: a voice clip and a face photo are drawn with the polarity of the transcript's label in most pairs (see",
           "mmdemo/pairing.py), so on these pairs face and voice carry the label's polarity by construction. On real recordings",
           "that agreement is not given; these numbers say nothing about it.", ""]
    if before is not None:
        md += ["**Words features of the train texts: in-sample vs out-of-fold.** The shipped fusion models learned from out-of-fold",
               "words features (an encoder that never saw the text); the table compares the same methods trained on the in-sample",
               "ones instead (the encoder's features of the texts it was fine-tuned on), scored on the same test pairs:", "",
               "| method | test MAE in-sample → out-of-fold | mean abs Shapley of words in-sample → out-of-fold | weighted θ words |",
               "|---|---|---|---|"]
        for name, r in fusion_rows.items():
            b_, th_a, th_b = before[name], before[name].get("global_weights", {}), r.get("global_weights", {})
            theta = f"{th_a['text']:.2f} → {th_b['text']:.2f}" if th_a and th_b else "-"
            md.append(f"| {name} | {b_['test']['mae']:.3f} → {r['test']['mae']:.3f} | {b_['mean_abs_shapley']['text']:.2f} → "
                      f"{r['mean_abs_shapley']['text']:.2f} | {theta} |")
        md.append("")

    # -- 5. checkpoints ------------------------------------------------------------------------
    results["checkpoints"] = shown_path(ckpt)
    with replacing_folder(ckpt) as stage:  # the models learned together: replaced together (an interrupted run leaves the earlier ones)
        write_checkpoints(stage, results, w_model, voice_model, face_model, fusion_models, w_overlay, args, voice_prior, expression)
        (stage / "README.md").write_text(model_card(results, stage))
    header = ["# mmdemo benchmark on real data", "",
              "Generated by `python -m mmdemo.benchmark`" + (" --quick (a small subset: numbers are not meaningful)" if quick else "") + ".",
              "No corpus here pairs face, voice and words: each modality is scored on its own corpus, and the fusion table is on",
              "examples paired across corpora (see mmdemo/pairing.py): cross-modal interactions are not learned from real co-occurrence.", "",
              encoder_summary(results["encoders"]), ""]
    (out / "benchmark.md").write_text("\n".join(header + md) + "\n")
    (out / "benchmark.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    return results


def encoder_summary(enc: dict) -> str:
    lines = [ENCODERS_SECTION, "", "| corpus | modality | items | found | share | absent because | extraction s |", "|---|---|---|---|---|---|---|"]
    for corpus, s in enc.items():
        for m, v in s["modalities"].items():
            why = "; ".join(f"{k or '?'}: {n}" for k, n in v["absent_because"].items()) or "-"
            cached = f" ({s['resumed']} were cached)" if s.get("resumed") else ""
            lines.append(f"| {corpus} | {DISPLAY_NAMES[m]} | {s['extracted']} | {v['present']} | {100 * v['share']:.1f}% | {why} | {s['seconds']:.0f}{cached} |")
    return "\n".join(lines)


def voice_card(v: dict) -> str:
    ch = v["loco"][v["chosen"]]["corpora"]
    def f(x, spec):
        return "-" if x is None or x != x else format(x, spec)

    return "; ".join(f"{n}: AUC pos-vs-neg {f(r['test']['auc_pos_neg'], '.2f')}, neutral mean {f(r['test']['mean']['neutral'], '+.2f')}, "
                     f"negative share {f(100 * r['test']['negative_share_balanced'], '.0f')}%" for n, r in ch.items())


def model_card(results: dict, ckpt: Path) -> str:
    """checkpoints/README.md: what every shipped model learned from, how it scores, its limits."""
    w, v, f, fu = results["words"], results["voice"], results["face"], results["fusion"]
    if f.get("expression_cnn", "fer") == "fer":
        cnn = "fer 7-class CNN"
        fer_note = (f"without fer's probabilities, which are in-sample there (the head learned from FER-2013 without them; "
                    f"{100 * f['fer_test']['model_with_fer_probabilities']['polarity3']['macro_f1']:.1f} with them)")
    else:
        d = f.get("fer_test_distinct")
        cnn = "mmdemo's 7-class expression CNN, learned from FER-2013 train"
        fer_note = ("(out of sample for the CNN and the head, but for the challenge split's copies of training images; "
                    + (f"{100 * d['model']['polarity3']['macro_f1']:.1f} without the {d['copies_left_out']} of them with a face found)" if d else "not left out here)"))
    mosi, mosei = w["test"]["mosi"], w["test"]["mosei"]
    chosen = w["chosen_row"]
    best = min(fu["methods"], key=lambda n: fu["methods"][n]["test"]["mae"])
    sizes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    enc = results["encoders"]
    share = lambda c, m: 100 * enc[c]["modalities"][m]["share"]  # noqa: E731
    lines = [
        "# Model card: the models mmdemo ships", "",
        f"Generated by `python -m mmdemo.benchmark` on {time.strftime('%Y-%m-%d')}" + (" (QUICK subset run: not the shipped models)" if results["quick"] else "") + ".",
        f"All files here together: {sizes / 2**20:.1f} MiB.", "",
        "**No corpus pairs the three modalities.** Each modality learned from its own corpus; the fusion models learned from",
        "examples paired across corpora (a transcript, a voice clip and a face photo whose labels agree, plus a share with a modality",
        "absent or disagreeing). They learn how far to trust each modality, not real cross-modal interactions (sarcasm, a smile that",
        "qualifies words): nothing here was learned from real co-occurrence.", "",
        "| modality | encoder (frozen unless said) | learned from | test result | limits |", "|---|---|---|---|---|",
        f"| words | all-MiniLM-L6-v2{' with its top layers fine-tuned here' if w['chosen'] == 'fine-tuned' else ''} (384-d) | CMU-MOSI + CMU-MOSEI train folds (transcripts, -3..+3){'; the head on out-of-fold features (' + str(w['out_of_fold']['folds']) + ' folds by video)' if w['chosen'] == 'fine-tuned' else ''} | CMU-MOSI test: MAE {mosi[chosen]['mae']:.3f}, Corr {mosi[chosen]['corr']:.3f}, Acc-2 {100 * mosi[chosen]['acc2_has0']:.1f} / {100 * mosi[chosen]['acc2_non0']:.1f}; CMU-MOSEI test: MAE {mosei[chosen]['mae']:.3f}, Acc-2 {100 * mosei[chosen]['acc2_non0']:.1f} (non-0) | English only; opinion monologues (movie reviews, YouTube); typed chat may differ |",
        f"| voice | eGeMAPSv02 functionals (88-d, openSMILE) over the speech of a 2.4 s window; Silero VAD; {'per-speaker z-scores (population prior, then the speaker' + chr(39) + 's own running statistics)' if v['features'] == 'speaker_z' else 'raw'} | RAVDESS, ASED, EmoSpeech train speakers (classes and corpora balanced); {'a linear' if v['config'].get('head') == 'linear' else 'an MLP'} head, chosen by leave-one-corpus-out | held out, one corpus at a time: {voice_card(v)} | acted or semi-acted emotions, mostly not English (valence carries across languages less well than arousal); phones and noisy rooms only in EmoSpeech; the emotion -> sentiment mapping is a heuristic (happy positive; neutral/calm 0; sad/angry/fearful/disgust negative) |",
        f"| face | MediaPipe FaceLandmarker: 52 blendshapes + head pose; {cnn} (62-d) | expression photos (person-independent split) + FER-2013 (challenge split) | photos' test people: polarity accuracy {100 * f['model']['polarity3']['accuracy']:.1f}%, macro-F1 {100 * f['model']['polarity3']['macro_f1']:.1f} (majority {100 * f['majority']['polarity3']['accuracy']:.1f}%, smile alone {100 * f['smile']['polarity3']['accuracy']:.1f}%); FER-2013 test: macro-F1 {100 * f['fer_test']['model']['polarity3']['macro_f1']:.1f} {fer_note} | still photos (news/web, 48x48 web crops), single annotations; posed vs spontaneous; webcam lighting differs; live, the signal is a moving average |",
        f"| fusion | every registered method, on the three features | {sum(fu['pairing']['counts']['train']['text'].values()):,} paired training examples | best test MAE: {best} {fu['methods'][best]['test']['mae']:.3f} on paired test examples (table below) | paired across corpora, see above |",
        "",
        f"What the encoders found: words in {share('mosi', 'text'):.1f}% of CMU-MOSI segments (the rest have no transcript), speech in "
        f"{share('ravdess', 'audio'):.1f}% of RAVDESS, {share('ased', 'audio'):.1f}% of ASED and {share('emospeech', 'audio'):.1f}% of EmoSpeech clips, a face in {share('faces', 'vision'):.1f}% of the photos "
        f"and {share('fer2013', 'vision'):.1f}% of FER-2013 "
        "(details in results/benchmark.md).", "",
        "## Files", "",
        "- `words/encoder.safetensors`: the fine-tuned top layers of all-MiniLM-L6-v2 (fp16), loaded over the packaged model (only when fine-tuning won on the valid folds)." if w["chosen"] == "fine-tuned" else "- words: the packaged all-MiniLM-L6-v2 as is (fine-tuning did not win on the valid folds).",
        "- `unimodal/{text,audio,vision}/`: one head per modality (each modality alone" + ("" if (f.get("members") or {}).get("chosen", 1) == 1
        else f"; the face's is the mean of {f['members']['chosen']} heads of one configuration, trained with seeds {', '.join(map(str, f['members']['seeds']))}")
        + "), `fusion/<method>/`: one model per fusion method.",
        "  Each is `model.safetensors` + `config.json` (rebuilt through the registry, loaded strictly) + `metrics.json` + `provenance.json`.",
        *([] if f.get("expression_cnn", "fer") == "fer" else [
            "- `unimodal/vision/expression.safetensors` + `expression.json`: mmdemo's expression CNN (fp16; its settings, the epoch chosen "
            "on FER-2013 valid and its test scores in the JSON), which the face feature reads expressions with; without it the face is "
            "read with fer's CNN. It learned from FER-2013 train, so FER-2013's terms (research use) apply to it."]),
        "- `voice_features.json`: what the voice models read (per-speaker z-scores and their population prior); `neutral_reference.json`: the median raw face "
        "feature of the neutral training photos and voice feature of the neutral/calm training clips, which the neutral-baseline calibration measures a user against.", "",
        "The words head and every fusion model learned from *out-of-fold* words features of the train texts (an encoder",
        "fine-tuned without them), never from features of texts the encoder was fine-tuned on (which look more reliable",
        "than words will be live)." if w["chosen"] == "fine-tuned" else "", "",
        "## Fusion methods on paired test examples", "",
        "On these pairs, face and voice agree with the label's polarity in most rows by construction (see below): a",
        "lower MAE with all modalities than with words alone follows from that sampling.", "",
        "| method | MAE | Corr | Acc-2 (non-0) | Acc-7 | MAE, words only | MAE, face + voice only |", "|---|---|---|---|---|---|---|",
    ]
    for name, r in fu["methods"].items():
        t, sub = r["test"], r["subsets"]
        lines.append(f"| {name} | {t['mae']:.3f} | {t['corr']:.3f} | {100 * t['acc2_non0']:.1f} | {100 * t['acc7']:.1f} | "
                     f"{sub['words only']['mae']:.3f} | {sub['face + voice (no words)']['mae']:.3f} |")
    lines += [
        "", "Pairing (mmdemo/pairing.py): for each transcript of a train/valid/test fold, a voice clip and a face photo of the same fold",
        f"whose polarity agrees; absent with probability {fu['pairing']['pairing']['absent']}, from another polarity with probability "
        f"{fu['pairing']['pairing']['disagree']}. Targets are the transcripts' labels.", "",
        "## Data, splits and licences", "",
        "| data | split used | licence |", "|---|---|---|",
        "| CMU-MOSI (Zadeh et al. 2016): 2,199 segments, transcripts + labels | standard folds 1284 / 229 / 686 | distributed by CMU MultiComp Lab for research |",
        "| CMU-MOSEI (Zadeh et al. 2018): 22,788 transcripts + labels | standard folds (source dropped 68 segments) | distributed by CMU MultiComp Lab for research |",
        "| RAVDESS (Livingstone & Russo 2018), speech audio | the data's speaker split | **CC BY-NC-SA 4.0**: the voice head and the fusion models derived from it are for non-commercial use, shared alike |",
        "| ASED (Retta et al. 2022, ACM TALLIP, doi:10.1145/3529759), Amharic speech | the data's speaker split | freely available for research (no licence file); cite the paper |",
        "| Indian EmoSpeech Command (Banga et al. 2019, arXiv:1910.13801), named users | the data's speaker split | **CC BY-NC-SA 4.0** |",
        "| facial expression photos (muxspace/facial_expressions) | by person (md5 of name) | repository Apache-2.0; the photos' own copyright is not cleared: no image is shipped, only models |",
        "| FER-2013 (Goodfellow et al. 2013), 48x48 faces | the challenge's train / public test / private test | released for research through the challenge; no image is shipped |",
        "| openSMILE eGeMAPS (audEERING) | - | research licence: **non-commercial use** (public demos allowed) |",
        "| all-MiniLM-L6-v2 (Apache-2.0), Whisper tiny.en (MIT), MediaPipe FaceLandmarker (Apache-2.0), fer's CNN (MIT) | - | as shipped in their packages |",
        "", "Not suited for decisions about people: these are demonstration models of sentiment on a -3..+3 scale, trained on small,",
        "acted or posed corpora, English only.",
    ]
    return "\n".join(lines) + "\n"


def write_checkpoints(ckpt: Path, results: dict, w_model, voice_model, face_model, fusion_models: dict, overlay: Path | None, args,
                      voice_prior=None, expression: Path | None = None) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    provenance = {"generated_by": "python -m mmdemo.benchmark", "data": "../shared/data (see checkpoints/README.md)",
                  "quick": args.quick, "seed": args.seed, "date": time.strftime("%Y-%m-%d")}
    words_dir = ckpt / "words"
    old = words_dir / "encoder.safetensors"
    if overlay is not None:
        words_dir.mkdir(parents=True, exist_ok=True)
        old.write_bytes(Path(overlay).read_bytes())
        (words_dir / "provenance.json").write_text(json.dumps(jsonable(provenance | {"finetune": results["words"].get("finetune")}), indent=2) + "\n")
    elif old.exists():
        old.unlink()  # the frozen encoder won: the live app must not load stale fine-tuned layers
    uni = {"text": (w_model, {"test_mosi": results["words"]["test"]["mosi"], "test_mosei": results["words"]["test"]["mosei"]}, "CMU-MOSI + CMU-MOSEI transcripts"),
           "audio": (voice_model, results["voice"], "RAVDESS, ASED and EmoSpeech speech (acted / semi-acted emotions)"),
           "vision": (face_model, results["face"], "expression photos (muxspace/facial_expressions subset) + FER-2013")}
    for m, (model, metrics, corpus) in uni.items():
        save_fusion(model, ckpt / "unimodal" / m, extra={"metrics.json": jsonable(metrics), "provenance.json": jsonable(provenance | {"corpus": corpus})})
    # the expression CNN the face head learned with ships beside it; without one, the live encoder reads with fer's
    from .expression import CONFIG as EXPRESSION_CONFIG
    from .expression import WEIGHTS as EXPRESSION_WEIGHTS

    for name in (EXPRESSION_WEIGHTS, EXPRESSION_CONFIG):
        target = ckpt / "unimodal" / "vision" / name
        if expression is not None:
            shutil.copyfile(Path(expression).with_name(name), target)
        elif target.exists():
            target.unlink()
    # what every model that reads the voice expects: per-speaker z-scores (with this prior) or raw features
    write_voice_features(ckpt, voice_prior if results["voice"]["features"] == "speaker_z" else None)
    # the population's neutral face and voice, which a user's neutral-baseline calibration is measured against
    from .personal import neutral_reference

    neutral_reference(Path(args.data), limit_per_split=40 if args.quick else None, progress=not args.quiet,
                      expression=ckpt / "unimodal" / "vision" / EXPRESSION_WEIGHTS if expression is not None else None).save(ckpt)
    for name, (model, res) in fusion_models.items():
        r = results["fusion"]["methods"][name]
        save_fusion(model, ckpt / "fusion" / name, extra={
            "metrics.json": jsonable({"test": r["test"], "subsets": r["subsets"], "mean_abs_shapley": r["mean_abs_shapley"], "epochs": res.epochs_run}),
            "provenance.json": jsonable(provenance | {"data": "paired examples (mmdemo/pairing.py)", "pairing": results["fusion"]["pairing"]["pairing"],
                                                      "train_config": results["fusion"]["train_config"]})})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the shared data folder (with cmu-mosi/, cmu-mosei-text/, ...)")
    ap.add_argument("--out", default="results", help="tables (benchmark.md/.json), the paired set, the fine-tuned layers")
    ap.add_argument("--checkpoints", help="where to write the models (default OUT/checkpoints; 'checkpoints' updates the shipped ones)")
    ap.add_argument("--quick", action="store_true", help="a small subset end to end (CI)")
    ap.add_argument("--finetune", choices=("auto", "skip"), default="auto", help="try fine-tuning MiniLM (the valid folds decide)")
    ap.add_argument("--finetune-layers", type=int, default=FinetuneConfig.train_layers)
    ap.add_argument("--finetune-epochs", type=int, default=FinetuneConfig.epochs)
    ap.add_argument("--oof-folds", type=int, default=3, help="folds (by video) of the out-of-fold words features the heads learn from")
    ap.add_argument("--mosi-seeds", type=int, default=5, help="seeds of the MOSI-only fine-tuning (like-for-like row); 0 skips it")
    ap.add_argument("--reuse-words", metavar="DIR", help="take the fine-tuned text encoders (main and out-of-fold) and the MOSI-only "
                    "results from an earlier run's output folder with the same settings, instead of fine-tuning again (about 2 h on 2 CPU cores)")
    ap.add_argument("--expression-cnn", choices=("fer", "own"), default="own",
                    help="the face feature's expression CNN: mmdemo's own (the default; chosen on the validation folds), "
                         "trained here on FER-2013 train (python -m mmdemo.expression; about 35 min on 2 CPU cores) and shipped "
                         "beside the face head, or fer's (trained on FER-2013, so in-sample there)")
    ap.add_argument("--reuse-expression", metavar="DIR", help="with --expression-cnn own: take the expression CNN an earlier run "
                    "trained with the same settings (DIR/expression/) instead of training it again; the face features it "
                    "gives are then read from the extraction cache")
    ap.add_argument("--only", choices=("face",), help="face: only the face stage again (features, heads, test scores), with the "
                    "expression CNN that --checkpoints holds, updating that earlier full run's tables in --out, the face head and the "
                    "model card (about 15 min on 2 CPU cores instead of hours, 10 of them extracting FER-2013's features where they are not cached)")
    ap.add_argument("--before", metavar="DIR", help="the checkpoints folder whose voice head the voice tables' 'head before' "
                    "columns read (default: the one in --checkpoints when the run starts, which a run replaces, so a second "
                    "run compares with the first's head). The README's columns: mkdir OLD && git archive 0048d98 checkpoints | "
                    "tar -x -C OLD, then --before OLD/checkpoints (the last voice head that read raw features)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.oof_folds < 2:
        ap.error("--oof-folds must be at least 2")
    if args.mosi_seeds < 0:
        ap.error("--mosi-seeds: 0 (skip the MOSI-only row) or more")
    try:  # the fine-tuning settings and the device, before hours of extraction
        FinetuneConfig(train_layers=args.finetune_layers, epochs=args.finetune_epochs, device=args.device)
    except ValueError as err:
        ap.error(as_flags(str(err), {"train_layers": "finetune-layers", "epochs": "finetune-epochs"}))
    for flag, folder in (("--out", args.out), ("--checkpoints", args.checkpoints)):
        problem = output_problem(folder, folder=True) if folder else None
        if problem:
            ap.error(f"{flag}: {problem}")
    if args.before and args.only:
        ap.error("--before goes with a full run (--only face trains no voice head)")
    if args.before and previous_voice_head(args.before) is None:  # checked before hours of work, not found missing after them
        ap.error(f"--before {args.before}: no readable voice head there (unimodal/audio/)")
    if args.reuse_expression and args.expression_cnn != "own":
        ap.error("--reuse-expression goes with --expression-cnn own")
    if args.only and (args.reuse_words or args.reuse_expression):
        ap.error("--only face reads the expression CNN of --checkpoints; --reuse-words / --reuse-expression go with a full run")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    missing = [c["folder"] for c in CORPORA.values() if not (Path(args.data) / c["folder"] / "labels.csv").exists()]
    if missing:
        ap.error(f"{args.data}: missing {', '.join(missing)}")
    run(args)
    print((Path(args.out) / "benchmark.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
