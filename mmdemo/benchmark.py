"""Regenerate everything learned from real data: features, unimodal models, fusion models, tables.

    python -m mmdemo.benchmark --data ../shared/data --out results/ --checkpoints checkpoints/

1. Features with the live encoders (``mmdemo.extract``, cached and resumable): words for CMU-MOSI
   and CMU-MOSEI transcripts, voice for RAVDESS speech, face for the expression photos.
2. Words: frozen MiniLM + a trained head, and MiniLM with its top layers fine-tuned; the
   validation folds choose. Scored on the CMU-MOSI test fold (686) and the CMU-MOSEI test fold
   beside trivial baselines (mean, VADER) and published results.
3. Voice (RAVDESS, actor-independent) and face (photos, person-independent): a head on the
   encoder features, scored as polarity (accuracy, macro-F1) beside majority and smile baselines.
4. Fusion: multimodal examples paired across the corpora (:mod:`mmdemo.pairing`), every
   registered fusion method trained with the one training loop, scored on pairs built from test
   splits only.
5. Checkpoints (safetensors + JSON config + provenance/metrics) and the model card, and the tables
   as Markdown + JSON under ``--out``.

``--quick`` runs a small subset end to end (CI); it never writes into the shipped checkpoints
unless ``--checkpoints`` says so.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import DISPLAY_NAMES
from .checkpoint import save_fusion
from .contributions import explain
from .data import SPLITS, FeatureDataset, Split
from .encoders.face import BLENDSHAPES
from .extract import run_extraction
from .fusion import FusionConfig, list_fusions
from .fusion.base import num_params
from .metrics import classification_metrics, jsonable, polarity, regression_metrics
from .pairing import PairingConfig, build_paired
from .text_model import FinetuneConfig, finetune, save_overlay
from .train import Batches, TrainConfig, evaluate, predict, train_method

log = logging.getLogger(__name__)

CORPORA = {
    "mosi": {"folder": "cmu-mosi", "modality": "text", "label": "label"},
    "mosei": {"folder": "cmu-mosei-text", "modality": "text", "label": "label"},
    "ravdess": {"folder": "ravdess-speech-audio", "modality": "audio", "label": "polarity"},
    "faces": {"folder": "facial-expressions-muxspace", "modality": "vision", "label": "polarity"},
}

# Published results (test folds), as reported by the sources named; not re-run here.
PUBLISHED = {
    "mosi": [
        ("BERT-base fine-tuned, text only", "T", None, None, "83.4 (non-0)", None, "M-BERT, Rahman et al. 2019 (arXiv:1908.05787): M-BERT 84.38%, 1.02 points above text-only BERT"),
        ("T-BERT, text only", "T", 0.784, 0.774, "83.2", 41.5, "CM-BERT authors' table (thuiar/Cross-Modal-BERT README)"),
        ("TFN", "TAV", 0.970, 0.633, "73.9", 32.1, "CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("LMF", "TAV", 0.912, 0.668, "76.4", 32.8, "CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MulT (aligned)", "TAV", 0.871, 0.698, "83.0 (non-0)", 40.0, "CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MISA", "TAV", 0.783, 0.761, "81.8 / 83.4", 42.3, "CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("MAG-BERT (aligned)", "TAV", 0.712, 0.796, "84.2 / 86.1", None, "CMU-MultimodalSDK CMU_MOSI scoreboard"),
        ("Self-MM", "TAV", 0.713, 0.798, "84.00 / 85.98", None, "as quoted in Semi-IIN, Table 1"),
        ("MMIM", "TAV", 0.700, 0.800, "84.14 / 86.06", 46.65, "as quoted in ALMT (EMNLP 2023), Table 1"),
    ],
    "mosei": [
        ("TFN (BERT features)", "TAV", 0.593, 0.700, "82.5 (non-0)", 50.2, "as quoted in ALMT (EMNLP 2023), Table 1"),
        ("LMF (BERT features)", "TAV", 0.623, 0.677, "82.0 (non-0)", 48.0, "as quoted in ALMT (EMNLP 2023), Table 1"),
        ("MulT", "TAV", 0.580, 0.703, "82.5 (non-0)", 51.8, "as quoted in ALMT (EMNLP 2023), Table 1"),
        ("MISA", "TAV", 0.555, 0.756, "83.6 / 85.5", 52.2, "as quoted in ALMT (EMNLP 2023), Table 1"),
        ("Self-MM", "TAV", 0.530, 0.765, "82.81 / 85.17", None, "as quoted in Semi-IIN, Table 1"),
        ("MMIM", "TAV", 0.526, 0.772, "82.24 / 85.97", 54.24, "as quoted in ALMT (EMNLP 2023), Table 1"),
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
    splits = {}
    for s in SPLITS:
        parts = [d.splits[s] for d in datasets]
        mods = parts[0].feats
        splits[s] = Split(
            feats={m: np.concatenate([p.feats[m] for p in parts]) for m in mods},
            present={m: np.concatenate([p.present[m] for p in parts]) for m in mods},
            labels=np.concatenate([p.labels for p in parts]),
            ids=np.concatenate([p.ids for p in parts]),
            text=np.concatenate([p.text if p.text is not None else np.array([""] * len(p)) for p in parts]),
        )
    return FeatureDataset(splits, {"source": " + ".join(d.meta.get("source", "?") for d in datasets)})


def relabel(ds: FeatureDataset, values: dict[str, float]) -> FeatureDataset:
    splits = {}
    for s, sp in ds.splits.items():
        keep = np.array([i in values for i in sp.ids])
        sub = sp.subset(keep)
        sub.labels = np.array([values[i] for i in sub.ids], np.float32)
        splits[s] = sub
    return FeatureDataset(splits, dict(ds.meta))


def voice_targets(folder: Path) -> dict[str, float]:
    """RAVDESS emotion -> sentiment: polarity x intensity (x2 strong), calm at most +1,
    surprised left out (ambiguous valence), as the data's README suggests."""
    out = {}
    for row in csv.DictReader(open(folder / "labels.csv", encoding="utf-8")):
        if row["polarity"] == "":
            continue
        p = float(row["polarity"])
        scale = 2.0 if row["intensity"] == "strong" and row["emotion"] != "calm" else 1.0
        out[row["clip_id"]] = p * scale
    return out


def only_present(ds: FeatureDataset, m: str) -> FeatureDataset:
    return FeatureDataset({s: sp.subset(sp.present[m]) for s, sp in ds.splits.items()}, dict(ds.meta))


# ----------------------------------------------------------------------------- models


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
            f"{fmt(m['f1_has0'], True)} / {fmt(m['f1_non0'], True)} | {fmt(m['acc7'], True)} | {note} |")


REG_HEAD = "| model | MAE | Corr | Acc-2 (has-0 / non-0) | F1 (has-0 / non-0) | Acc-7 | notes |\n|---|---|---|---|---|---|---|"
CLS_HEAD = "| model | polarity accuracy | polarity macro-F1 | pos-vs-neg accuracy | pos-vs-neg macro-F1 |\n|---|---|---|---|---|"


def cls_row(name: str, r: dict) -> str:
    return (f"| {name} | {fmt(r['polarity3']['accuracy'], True)} | {fmt(r['polarity3']['macro_f1'], True)} | "
            f"{fmt(r['pos_vs_neg']['accuracy'], True)} | {fmt(r['pos_vs_neg']['macro_f1'], True)} |")


def published_table(corpus: str) -> str:
    lines = ["| published (not re-run here) | modalities | MAE | Corr | Acc-2 (has-0 / non-0) | Acc-7 | source |", "|---|---|---|---|---|---|---|"]
    for name, mods, mae, corr, acc2, acc7, src in PUBLISHED[corpus]:
        lines.append(f"| {name} | {mods} | {mae if mae is not None else '-'} | {corr if corr is not None else '-'} | {acc2} | {acc7 if acc7 is not None else '-'} | {src} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def run(args) -> dict:
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoints) if args.checkpoints else out / "checkpoints"
    quick = args.quick
    limit = 40 if quick else None
    tcfg_uni = TrainConfig(epochs=8 if quick else 80, patience=3 if quick else 10, batch_size=128, lr=1e-3,
                           modality_dropout=0.0, seed=args.seed, device=args.device)
    grid = [FusionConfig(hidden=64, dropout=0.2)] if quick else [FusionConfig(hidden=h, dropout=d) for h in (64, 256) for d in (0.1, 0.3)]
    results: dict = {"quick": quick, "encoders": {}, "words": {}, "voice": {}, "face": {}, "fusion": {}, "speed": {}}
    md: list[str] = []

    def extract(name: str, overlay: Path | None = None, **kw):
        c = CORPORA[name]
        folder = data / c["folder"]
        log.info("features: %s (%s)%s", name, c["modality"], " with the fine-tuned text encoder" if overlay else "")
        ds, summary, errors = run_extraction(folder, folder / "labels.csv", modalities=(c["modality"],), label_col=c["label"],
                                             limit_per_split=limit, device=args.device, words_overlay=overlay,
                                             progress=not args.quiet, **kw)
        ds.meta = {"source": c["folder"]}  # no machine paths in what is written
        return ds, summary | {"broken": len(errors)}

    # -- 1. features -------------------------------------------------------------------------
    mosi, s_mosi = extract("mosi")
    mosei, s_mosei = extract("mosei")
    voice_raw, s_voice = extract("ravdess", transcribe=False)
    faces, s_face = extract("faces")
    voice = relabel(voice_raw, voice_targets(data / CORPORA["ravdess"]["folder"]))
    results["encoders"] = {"mosi": s_mosi, "mosei": s_mosei, "ravdess": s_voice, "faces": s_face}

    # -- 2. words --------------------------------------------------------------------------
    words_frozen = concat(mosi, mosei)
    log.info("words: frozen MiniLM + head")
    frozen = fit_unimodal(words_frozen, grid, tcfg_uni)
    candidates = {"frozen": (frozen, mosi, mosei, None)}
    if args.finetune != "skip":
        log.info("words: fine-tuning the top %d MiniLM layers", args.finetune_layers)
        ftcfg = FinetuneConfig(train_layers=args.finetune_layers, epochs=1 if quick else args.finetune_epochs, seed=args.seed, device=args.device)
        tr, va = words_frozen.splits["train"], words_frozen.splits["valid"]
        keep_tr, keep_va = tr.present["text"], va.present["text"]
        ft = finetune(tr.text[keep_tr], tr.labels[keep_tr], va.text[keep_va], va.labels[keep_va], ftcfg, progress=not args.quiet)
        overlay_dir = out / "words_finetuned"
        overlay = save_overlay(ft["overlay"], overlay_dir, {"train_layers": ftcfg.train_layers, "valid_mae_head": ft["valid_mae"]})
        results["words"]["finetune"] = {"config": asdict(ftcfg), "history": ft["history"], "seconds": ft["seconds"]}
        mosi_ft, _ = extract("mosi", overlay)
        mosei_ft, _ = extract("mosei", overlay)
        tuned = fit_unimodal(concat(mosi_ft, mosei_ft), grid, tcfg_uni)
        candidates["fine-tuned"] = (tuned, mosi_ft, mosei_ft, overlay)
    chosen = min(candidates, key=lambda k: candidates[k][0][2]["mae"])
    (w_model, w_cfg, _, _), w_mosi, w_mosei, w_overlay = candidates[chosen]
    rows = {}
    for corpus, sets in (("mosi", {k: v[1] for k, v in candidates.items()}), ("mosei", {k: v[2] for k, v in candidates.items()})):
        base = mosi if corpus == "mosi" else mosei
        test = base.splits["test"]
        train_all = words_frozen.splits["train"].labels
        r = {"mean (train)": regression_metrics(np.full(len(test), train_all.mean()), test.labels),
             "VADER x 3": regression_metrics(vader_scores(test.text), test.labels)}
        for k, (fitted, *_rest) in candidates.items():
            r[f"MiniLM {k} + head"] = evaluate(fitted[0], sets[k].splits["test"])
        rows[corpus] = r
    results["words"] |= {"chosen": chosen, "valid_mae": {k: v[0][2]["mae"] for k, v in candidates.items()},
                         "head": asdict(w_cfg), "test": rows}
    for corpus, title in (("mosi", "CMU-MOSI test fold (686 segments)"), ("mosei", f"CMU-MOSEI test fold ({len(mosei.splits['test'])} segments)")):
        md += [f"### Words: {title}", "", REG_HEAD]
        for name, m in rows[corpus].items():
            note = "chosen on the valid folds" if name == f"MiniLM {chosen} + head" else ""
            md.append(regression_row(name, m, note))
        md += ["", f"Reference baseline of ../shared/data: {REFERENCE[corpus]}.", "", published_table(corpus), ""]

    # -- 3. voice and face -------------------------------------------------------------------
    for key, ds, name, title in (("voice", voice, "audio", "Voice: RAVDESS speech, test actors 21-24"),
                                 ("face", faces, "vision", "Face: expression photos, test people")):
        present = only_present(ds, name)
        log.info("%s: head on the encoder features", key)
        model, fcfg, valid, _ = fit_unimodal(present, grid, tcfg_uni)
        test = present.splits["test"]
        pred = predict(model, Batches(test, model.modalities, model.device))
        rep = {"model": polarity_report(pred, test.labels), "majority": majority_report(present.splits["train"].labels, test.labels),
               "regression": regression_metrics(pred, test.labels), "head": asdict(fcfg), "n_test": len(test),
               "absent_test": int((~ds.splits["test"].present[name]).sum())}
        if key == "face":
            rep["smile"] = smile_baseline(present)
        results[key] = rep
        if key == "voice":
            voice_model = model
        else:
            face_model = model
        md += [f"### {title} ({len(test)} items with the modality found)", "", CLS_HEAD,
               cls_row("majority class (train)", rep["majority"])]
        if key == "face":
            md.append(cls_row(f"smile blendshape alone (thresholds {rep['smile']['thresholds'][0]:.2f}/{rep['smile']['thresholds'][1]:.2f} on valid)", rep["smile"]))
        md += [cls_row("mmdemo: " + ("eGeMAPS" if key == "voice" else "blendshapes + pose + FER") + " -> head", rep["model"]), "",
               f"Reference baseline of ../shared/data: {REFERENCE['ravdess' if key == 'voice' else 'faces']}.", ""]

    # -- 4. fusion on paired examples --------------------------------------------------------
    words_chosen = concat(w_mosi, w_mosei)
    paired = build_paired({"text": words_chosen, "audio": voice, "vision": faces}, PairingConfig(seed=args.seed))
    paired.save(out / "paired.npz")
    results["fusion"]["pairing"] = paired.meta
    fcfg = FusionConfig(hidden=64, dropout=0.2)
    tcfg = TrainConfig(epochs=4 if quick else 60, patience=2 if quick else 8, batch_size=256, lr=2e-3, modality_dropout=0.25, seed=args.seed, device=args.device)
    test = paired.splits["test"]
    subsets = {"all given": None, "words only": ("text",), "face + voice (no words)": ("audio", "vision")}
    fusion_rows, fusion_models, train_seconds = {}, {}, 0.0
    for name in list_fusions():
        log.info("fusion: %s", name)
        model, res, metrics = train_method(name, paired, fcfg, tcfg, progress=False)
        train_seconds += res.seconds
        per_subset = {}
        for label, keep in subsets.items():
            sub = test if keep is None else Split(feats=test.feats, present={m: p & (m in keep) for m, p in test.present.items()},
                                                   labels=test.labels, ids=test.ids)
            per_subset[label] = evaluate(model, sub)
        e = explain(model, {m: torch.as_tensor(x) for m, x in test.feats.items()}, {m: torch.as_tensor(p) for m, p in test.present.items()})
        share = e.shapley.abs().mean(dim=0)
        fusion_rows[name] = {"test": metrics, "subsets": per_subset, "params": num_params(model), "epochs": res.epochs_run,
                             "seconds": res.seconds, "mean_abs_shapley": dict(zip(e.modalities, share.tolist())),
                             "latency": update_latency(model, paired.dims)}
        if hasattr(model, "global_weights"):
            fusion_rows[name]["global_weights"] = model.global_weights()
        fusion_models[name] = (model, res)
    results["fusion"] |= {"methods": fusion_rows, "train_seconds_all": train_seconds, "config": asdict(fcfg), "train_config": asdict(tcfg)}
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
    md += ["", f"All {len(fusion_rows)} methods trained in {train_seconds:.0f} s in total ({tcfg.device}, {torch.get_num_threads()} threads).", ""]

    # -- 5. checkpoints ------------------------------------------------------------------------
    write_checkpoints(ckpt, results, w_model, voice_model, face_model, fusion_models, w_overlay, args)
    results["checkpoints"] = str(ckpt)
    (ckpt / "README.md").write_text(model_card(results, ckpt))
    header = ["# mmdemo benchmark on real data", "",
              "Generated by `python -m mmdemo.benchmark`" + (" --quick (a small subset: numbers are not meaningful)" if quick else "") + ".",
              "No corpus here pairs face, voice and words: each modality is scored on its own corpus, and the fusion table is on",
              "examples paired across corpora (see mmdemo/pairing.py): cross-modal interactions are not learned from real co-occurrence.", "",
              encoder_summary(results["encoders"]), ""]
    (out / "benchmark.md").write_text("\n".join(header + md) + "\n")
    (out / "benchmark.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    return results


def encoder_summary(enc: dict) -> str:
    lines = ["### What the encoders returned", "", "| corpus | modality | items | found | share | absent because | extraction s |", "|---|---|---|---|---|---|---|"]
    for corpus, s in enc.items():
        for m, v in s["modalities"].items():
            why = "; ".join(f"{k or '?'}: {n}" for k, n in v["absent_because"].items()) or "-"
            cached = f" ({s['resumed']} were cached)" if s.get("resumed") else ""
            lines.append(f"| {corpus} | {DISPLAY_NAMES[m]} | {s['extracted']} | {v['present']} | {100 * v['share']:.1f}% | {why} | {s['seconds']:.0f}{cached} |")
    return "\n".join(lines)


def model_card(results: dict, ckpt: Path) -> str:
    """checkpoints/README.md: what every shipped model learned from, how it scores, its limits."""
    w, v, f, fu = results["words"], results["voice"], results["face"], results["fusion"]
    mosi, mosei = w["test"]["mosi"], w["test"]["mosei"]
    chosen = f"MiniLM {w['chosen']} + head"
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
        f"| words | all-MiniLM-L6-v2{' with its top layers fine-tuned here' if w['chosen'] == 'fine-tuned' else ''} (384-d) | CMU-MOSI + CMU-MOSEI train folds (transcripts, -3..+3) | CMU-MOSI test: MAE {mosi[chosen]['mae']:.3f}, Corr {mosi[chosen]['corr']:.3f}, Acc-2 {100 * mosi[chosen]['acc2_has0']:.1f} / {100 * mosi[chosen]['acc2_non0']:.1f}; CMU-MOSEI test: MAE {mosei[chosen]['mae']:.3f}, Acc-2 {100 * mosei[chosen]['acc2_non0']:.1f} (non-0) | English only; opinion monologues (movie reviews, YouTube); typed chat may differ |",
        f"| voice | eGeMAPSv02 functionals (88-d, openSMILE) over the speech of a 2.4 s window; Silero VAD | RAVDESS speech, actors 1-16 (valid 17-20) | actors 21-24: polarity accuracy {100 * v['model']['polarity3']['accuracy']:.1f}% (majority {100 * v['majority']['polarity3']['accuracy']:.1f}%), positive vs negative {100 * v['model']['pos_vs_neg']['accuracy']:.1f}% | acted emotions by 24 professional actors, two neutral sentences, clips cut to 2.4 s; North American English; emotion -> sentiment mapping is a heuristic (calm/happy positive; sad/angry/fearful/disgust negative) |",
        f"| face | MediaPipe FaceLandmarker: 52 blendshapes + head pose; fer 7-class CNN (62-d) | expression photos (person-independent split) | test people: polarity accuracy {100 * f['model']['polarity3']['accuracy']:.1f}% (majority {100 * f['majority']['polarity3']['accuracy']:.1f}%, smile alone {100 * f['smile']['polarity3']['accuracy']:.1f}%) | still photos (news/web), single student annotations; posed vs spontaneous; webcam lighting differs |",
        f"| fusion | every registered method, on the three features | {sum(fu['pairing']['counts']['train']['text'].values()):,} paired training examples | best test MAE: {best} {fu['methods'][best]['test']['mae']:.3f} on paired test examples (table below) | paired across corpora, see above |",
        "",
        f"What the encoders found: words in {share('mosi', 'text'):.1f}% of CMU-MOSI segments (the rest have no transcript), speech in "
        f"{share('ravdess', 'audio'):.1f}% of RAVDESS clips, a face in {share('faces', 'vision'):.1f}% of the photos "
        "(details in results/benchmark.md).", "",
        "## Files", "",
        "- `words/encoder.safetensors`: the fine-tuned top layers of all-MiniLM-L6-v2 (fp16), loaded over the packaged model (only when fine-tuning won on the valid folds)." if w["chosen"] == "fine-tuned" else "- words: the packaged all-MiniLM-L6-v2 as is (fine-tuning did not win on the valid folds).",
        "- `unimodal/{text,audio,vision}/`: one head per modality (each modality alone), `fusion/<method>/`: one model per fusion method.",
        "  Each is `model.safetensors` + `config.json` (rebuilt through the registry, loaded strictly) + `metrics.json` + `provenance.json`.", "",
        "## Fusion methods on paired test examples", "",
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
        "| RAVDESS (Livingstone & Russo 2018), speech audio | actors 1-16 / 17-20 / 21-24 | **CC BY-NC-SA 4.0**: the voice head and the fusion models derived from it are for non-commercial use, shared alike |",
        "| facial expression photos (muxspace/facial_expressions) | by person (md5 of name) | repository Apache-2.0; the photos' own copyright is not cleared: no image is shipped, only models |",
        "| openSMILE eGeMAPS (audEERING) | - | research licence: **non-commercial use** (public demos allowed) |",
        "| all-MiniLM-L6-v2 (Apache-2.0), Whisper tiny.en (MIT), MediaPipe FaceLandmarker (Apache-2.0), fer's CNN (MIT) | - | as shipped in their packages |",
        "", "Not suited for decisions about people: these are demonstration models of sentiment on a -3..+3 scale, trained on small,",
        "acted or posed corpora, English only.",
    ]
    return "\n".join(lines) + "\n"


def write_checkpoints(ckpt: Path, results: dict, w_model, voice_model, face_model, fusion_models: dict, overlay: Path | None, args) -> None:
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
           "audio": (voice_model, results["voice"], "RAVDESS speech (acted emotions, 2.4 s clips)"),
           "vision": (face_model, results["face"], "expression photos (muxspace/facial_expressions subset)")}
    for m, (model, metrics, corpus) in uni.items():
        save_fusion(model, ckpt / "unimodal" / m, extra={"metrics.json": jsonable(metrics), "provenance.json": jsonable(provenance | {"corpus": corpus})})
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    missing = [c["folder"] for c in CORPORA.values() if not (Path(args.data) / c["folder"] / "labels.csv").exists()]
    if missing:
        ap.error(f"{args.data}: missing {', '.join(missing)}")
    run(args)
    print((Path(args.out) / "benchmark.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
