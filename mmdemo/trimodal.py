"""Every fusion method on real paired data: CMU-MOSI with a words, a voice and a face feature of the
same moment (``../shared/data/cmu-mosi-trimodal-features/``), beside the peer implementations
researchers use today (MMSA).

    python -m mmdemo.trimodal --data ../shared/data/cmu-mosi-trimodal-features --out results/
    python -m mmdemo.trimodal --data ../shared/data/cmu-mosi-trimodal-features --words mosei --out results/mosei-words/

1. **Search, on the valid fold only.** The same ``--search`` configurations for every method: the
   training loop's defaults, then random draws from :data:`SEARCH` (width, dropout, learning rate,
   weight decay, modality-dropout rate, batch size, early-stopping patience; ``tensor`` and
   ``low_rank`` add to each draw a value of their own width, :data:`METHOD_SEARCH`); then up to
   ``--refine`` rounds of a local search per method: every configuration one step away from its
   best so far along one setting, until the best stops moving (the results say which methods
   stopped at the limit instead). Each is trained with ``--select-seeds`` seeds; the lowest mean
   valid MAE wins. The test fold is never read here.
2. **Report.** Each method's chosen configuration and its default configuration, trained with the
   ``--seeds`` seeds (1111-1115 by default, MMSA's): mean ± std of the test metrics, seconds per
   epoch (training + the valid pass of early stopping), epochs run, mean valid MAE. The best method
   is the one with the lowest mean valid MAE over these seeds.
   **2b. One configuration for every method**: per setting, the value most methods chose, trained
   with the same seeds for every method (a method's own settings at their defaults): a candidate
   for the training loop's defaults (runs are reused where it equals a method's own choice or its
   defaults).
3. **Ablations.** The method with the lowest mean valid MAE, its chosen configuration, on each
   modality alone and on each pair (same seeds): does fusion beat words alone on real data?
4. **Video context** (``--no-context`` skips it): every method at its chosen configuration, and the
   best method on words alone, with each segment's features followed by its video's mean
   (:func:`mmdemo.data.with_context`): the information the published bc-LSTM numbers use. Reported
   as its own setting, not chosen on valid.
5. **What the methods say about the modalities:** mean |Shapley| per modality on the test fold for
   every method, ``weighted``'s learned θ and ``attention``'s mean weights (over seeds).

The MMSA rows are the data folder's own measurements (same file, MMSA's defaults, seeds
1111-1115). Speed ratios use MMSA timed on this machine by ``bench/mmsa_reference.py`` (run in a
separate environment) when its result file exists, and say so when they cannot.

``--words mosei`` replaces the release's words feature by mmdemo's own (:func:`mosei_words`: the
live app's MiniLM embedding, its top layers fine-tuned on CMU-MOSEI's transcripts only, so that
every CMU-MOSI segment is out of sample for it); voice and face stay the release's, and the results
say that the MMSA rows, on the release's words feature, are then not like-for-like.

Writes ``trimodal.md`` and ``trimodal.json`` under ``--out``. The models trained here read the
release's features (text-CNN, openSMILE, 3D-CNN), not the live encoders' features: they are a
benchmark of the fusion methods and are not shipped to the app. Runs take their jobs in
``--workers`` processes (one thread each: these models are small, and a process per core is faster
than threads inside one).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import FeatureDataset, load_dataset, with_context
from .device import cpu_model
from .fusion import FusionConfig, list_fusions
from .metrics import jsonable
from .settings import output_problem
from .train import TrainConfig, mean_baseline

# Widened on 2026-12-03: the first search (3 values per setting, without the outer ones here) chose
# a value at an edge of its range for most settings of most methods (width 128, learning rate 3e-4,
# weight decay 1e-2, modality dropout 0.25 for 7 of 8 methods), so the best lay outside it. The wider
# grid is still chosen at its edges (learning rate 1e-4 or 3e-3, weight decay 3e-2, batch 16 for
# several methods; results/trimodal.md, "Chosen configurations"): its bounds still limit the search.
SEARCH = {
    "hidden": (32, 64, 128, 256),
    "dropout": (0.1, 0.3, 0.5, 0.7),
    "lr": (1e-4, 3e-4, 1e-3, 3e-3),
    "weight_decay": (1e-4, 1e-3, 1e-2, 3e-2),
    "modality_dropout": (0.0, 0.1, 0.25, 0.4),
    "batch_size": (16, 32, 64, 128),
    "patience": (10, 20),
}
# A method's own width, searched beside SEARCH for that method only (added 2026-12-04). For `tensor`,
# `hidden` is only the width of the MLP after the outer product: its modality embeddings' width
# `tensor_dim` sets the (tensor_dim + 1)^3 fused features, as the sub-networks' output sizes do in
# TFN. For `low_rank`, `rank` is the number of modality-specific factors, LMF's own capacity setting.
# The other methods' draws are those of SEARCH alone, the same as before this was added.
METHOD_SEARCH = {
    "tensor": {"tensor_dim": (4, 8, 12, 16)},
    "low_rank": {"rank": (2, 4, 8, 16)},
}
REFINE_ROUNDS = 2  # rounds of the local search around each method's best configuration
FUSION_KEYS = ("hidden", "dropout", "tensor_dim", "rank")
MAX_EPOCHS = 200

# The peer implementations on the same file (../shared/data/cmu-mosi-trimodal-features/README.md,
# "Reference"): MMSA 2.2.1 with its own default configurations, the features fed as sequences of
# length 1, the same split, on a 2-core CPU machine of the kind this project runs on (not this run:
# machines of that kind differ 2-3x in speed). Mean ± std over seeds 1111-1115.
MMSA = {
    "LF-DNN": {"mae": (0.926, 0.002), "corr": (0.623, 0.002), "acc2_has0": 0.753, "acc2_non0": 0.770, "acc7": 0.332, "s_per_epoch": 0.42},
    "TFN": {"mae": (0.930, 0.025), "corr": (0.625, 0.011), "acc2_has0": 0.757, "acc2_non0": 0.774, "acc7": 0.323, "s_per_epoch": 11.6},
    "MFN": {"mae": (0.938, 0.016), "corr": (0.612, 0.005), "acc2_has0": 0.757, "acc2_non0": 0.770, "acc7": 0.320, "s_per_epoch": 0.87},
    "LMF": {"mae": (0.954, 0.007), "corr": (0.611, 0.003), "acc2_has0": 0.750, "acc2_non0": 0.767, "acc7": 0.311, "s_per_epoch": 0.54},
}
MMSA_HERE = Path(__file__).resolve().parents[1] / "bench" / "results" / "mmsa_reference.json"  # bench/mmsa_reference.py
# MMSA's default batch sizes for MOSI (its config_regression.json): an epoch of the same number of steps
MMSA_BATCH = {"LF-DNN": 128, "TFN": 32, "LMF": 64, "MFN": 128}
TIMING_REPEATS = 3  # runs per chosen configuration in the timing pass (the median is reported)
COUNTERPART = {"tensor": "TFN", "low_rank": "LMF", "late": "LF-DNN", "concat": "LF-DNN"}  # the others: the best MMSA row
PUBLISHED = "bc-LSTM (Poria et al., ACL 2017) with these features: about 80% binary accuracy for text + audio + video, with context from the neighbouring utterances of the same video (the rows above use none)"
NAMES = {"text": "words", "audio": "voice", "vision": "face"}


@dataclass(frozen=True)
class Job:
    method: str
    modalities: tuple[str, ...]
    fusion: dict
    train: dict
    seed: int
    test: bool  # read the test fold (reported runs only)
    readings: bool = False
    context: bool = False  # each row's features followed by its video's mean (:func:`mmdemo.data.with_context`)


def search_space(method: str | None = None) -> dict[str, tuple]:
    """The settings searched for ``method``: :data:`SEARCH`, and its own from :data:`METHOD_SEARCH`."""
    return SEARCH | METHOD_SEARCH.get(method, {})


def configurations(n: int, seed: int = 0, method: str | None = None) -> list[dict]:
    """The defaults first, then ``n - 1`` distinct random draws from :data:`SEARCH`: the same draws
    for every method. A method with settings of its own (:data:`METHOD_SEARCH`) adds to each draw
    a value of each of them, from a random stream of its own (the defaults keep its defaults)."""
    default = {k: getattr(FusionConfig(), k) if k in FUSION_KEYS else getattr(TrainConfig(), k) for k in SEARCH}
    out = [default]
    grid = list(itertools.product(*SEARCH.values()))
    rng = np.random.default_rng(seed)
    for i in rng.permutation(len(grid)):
        if len(out) >= n:
            break
        c = dict(zip(SEARCH, grid[i]))
        if c not in out:
            out.append(c)
    out = out[:n]
    own = METHOD_SEARCH.get(method, {})
    if own:
        rng = np.random.default_rng([seed, 1])  # not the shared draws' stream: those stay the same
        out = [c | {k: getattr(FusionConfig(), k) if i == 0 else v[rng.integers(len(v))] for k, v in own.items()} for i, c in enumerate(out)]
    return out


def neighbours(c: dict, space: dict[str, tuple] | None = None) -> list[dict]:
    """The configurations one step away from ``c`` along one setting of ``space`` (:data:`SEARCH`
    unless told; a method's is ``search_space(method)``): the next value up or down; for a value
    outside the grid, such as a default, the grid values on either side of it."""
    out = []
    for k, grid in (space or SEARCH).items():
        v = c[k]
        if v in grid:
            i = grid.index(v)
            near = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
        else:
            near = [max((g for g in grid if g < v), default=None), min((g for g in grid if g > v), default=None)]
        out += [c | {k: n} for n in near if n is not None]
    return out


def shared_config(configs: list[dict]) -> dict:
    """One configuration for every method: per setting, the most common value among ``configs``
    (not always a majority; a tie goes to the tied value seen first in ``configs``). A candidate for
    the training loop's defaults."""
    out = {}
    for k in SEARCH:
        values = [c[k] for c in configs]
        out[k] = max(dict.fromkeys(values), key=values.count)  # first-seen order breaks ties
    return out


def split_config(c: dict, *, epochs: int, seed: int) -> tuple[dict, dict]:
    own = {k for ks in METHOD_SEARCH.values() for k in ks}
    f = {k: c[k] for k in FUSION_KEYS if k in c or k not in own}  # a method's own settings only where searched
    t = {k: v for k, v in c.items() if k not in FUSION_KEYS} | {"epochs": epochs, "seed": seed, "device": "cpu"}
    return f, t


def subset(ds: FeatureDataset, modalities: tuple[str, ...]) -> FeatureDataset:
    from .data import Split

    return FeatureDataset({s: Split(feats={m: sp.feats[m] for m in modalities}, present={m: sp.present[m] for m in modalities},
                                    labels=sp.labels, ids=sp.ids, text=sp.text, steps={m: st for m, st in sp.steps.items() if m in modalities},
                                    groups=sp.groups)
                           for s, sp in ds.splits.items()}, dict(ds.meta))


WORDS = ("release", "mosei")  # --words: the release's text-CNN features, or mmdemo's encoder fine-tuned on CMU-MOSEI
WORDS_DIR = "words-mosei"  # under --out: the fine-tuned layers and the features, reused while their inputs are the same
WORDS_FORMAT = "mmdemo-words/1"  # of words.json; a change of how the features are made changes it (and the cache key)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mosei_words(data: Path, mosei: Path, out: Path, cfg=None, *, progress: bool = True, limit: int | None = None) -> dict:
    """mmdemo's own words feature for every segment of ``data``: all-MiniLM-L6-v2 with its top
    layers fine-tuned (:func:`mmdemo.text_model.finetune`, the benchmark's settings) on CMU-MOSEI's
    train transcripts, early-stopped on CMU-MOSEI's valid fold (no CMU-MOSI text or label is read
    in fine-tuning, and the two corpora share no video), then the live words feature of each
    transcript (the 384-d mean-pooled, L2-normalised embedding). Every CMU-MOSI feature is thus out
    of sample for the encoder, train fold included. Writes ``out/words-mosei/`` (the fine-tuned
    layers, ``text.npy`` in the folder's row order, ``words.json``) and reuses it while the settings
    and both label files are the same. ``limit``: the first ``limit`` transcripts of each MOSEI fold
    only (a quick run). Returns the ``words.json`` record."""
    import csv
    import math
    from dataclasses import asdict

    from .data import warn_scale
    from .encoders.words import MiniLM, WordsEncoder, check_text
    from .text_model import FinetuneConfig, finetune, save_overlay

    cfg = cfg or FinetuneConfig(device="cpu")
    folder = Path(out) / WORDS_DIR
    key = {"format": WORDS_FORMAT, "finetune": asdict(cfg), "mosei_labels": _sha256(Path(mosei) / "labels.csv"),
           "data_labels": _sha256(Path(data) / "labels.csv")}
    if limit:
        key["limit"] = limit
    record_path, feats_path = folder / "words.json", folder / "text.npy"
    if record_path.is_file() and feats_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = {}
        if record.get("key") == key and record.get("text_sha256") == _sha256(feats_path):
            return record | {"reused": True}
    with open(Path(mosei) / "labels.csv", newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        gone = {"label", "text", "split"} - set(reader.fieldnames or ())
        if gone:
            raise ValueError(f"{mosei}/labels.csv: no {', '.join(sorted(gone))} column (expected clip_id, label, text, split)")
        rows = [r for r in reader if (r.get("text") or "").strip()]
    fold = {s: [r for r in rows if r.get("split") == s][:limit or None] for s in ("train", "valid")}
    if not fold["train"] or not fold["valid"]:
        raise ValueError(f"{mosei}/labels.csv: needs train and valid rows with text")
    labels = {}
    for name, part in fold.items():
        values = []
        for r in part:
            try:
                values.append(float(r["label"]))
            except (TypeError, ValueError):
                values.append(math.nan)
            if not math.isfinite(values[-1]):
                raise ValueError(f"{mosei}/labels.csv: label {r['label']!r} of {r.get('clip_id', '?')} is not a number, or not a finite one")
        labels[name] = np.array(values, np.float32)
        warn_scale(labels[name], f"{mosei}/labels.csv")
    record_path.unlink(missing_ok=True)  # a run stopped from here on leaves nothing that could be reused
    ft = finetune([r["text"] for r in fold["train"]], labels["train"], [r["text"] for r in fold["valid"]], labels["valid"], cfg, progress=progress)
    overlay = save_overlay(ft["overlay"], folder, {"train_layers": cfg.train_layers, "valid_mae_head": ft["valid_mae"]})
    with open(Path(data) / "labels.csv", newline="", encoding="utf-8-sig") as f:
        segments = list(csv.DictReader(f))
    checked = [check_text(r.get("text") or "") for r in segments]
    # a model of its own (not the app's shared one, which is kept by the overlay's path: a file
    # written again here would not be read again)
    model = MiniLM(device=cfg.device if cfg.device != "auto" else None, overlay=overlay)
    feats = np.zeros((len(segments), WordsEncoder.dim), np.float32)
    ok = [i for i, (_, why) in enumerate(checked) if not why]
    if ok:
        feats[ok] = model.embed([checked[i][0] for i in ok])
    np.save(feats_path, feats)
    record = {"key": key, "source": "all-MiniLM-L6-v2, top layers fine-tuned on CMU-MOSEI train transcripts (early stopping on CMU-MOSEI valid)",
              "mosei_train": len(fold["train"]), "mosei_valid": len(fold["valid"]), "mosei_valid_mae": ft["valid_mae"],
              "history": ft["history"], "seconds": ft["seconds"], "dim": int(feats.shape[1]), "text_sha256": _sha256(feats_path),
              "ids": [r["clip_id"] for r in segments], "absent": {r["clip_id"]: why for r, (_, why) in zip(segments, checked) if why}}
    tmp = record_path.with_name(".words.json.tmp")
    tmp.write_text(json.dumps(jsonable(record), indent=1) + "\n")
    os.replace(tmp, record_path)  # last: its hash of text.npy ties the two together
    return record


def load_source(path: str, words: str | None = None) -> FeatureDataset:
    """The feature folder at ``path``; with ``words`` (a ``words-mosei`` folder of
    :func:`mosei_words`), its text features replaced by those (a segment without a transcript
    counts as words missing)."""
    ds = load_dataset(path)
    if words is None:
        return ds
    from .data import Split

    record = json.loads((Path(words) / "words.json").read_text())
    if record.get("text_sha256") != _sha256(Path(words) / "text.npy"):
        raise ValueError(f"{words}: text.npy is not the one words.json describes (a run stopped while writing it?): make it again")
    if record.get("key", {}).get("data_labels") != _sha256(Path(path) / "labels.csv"):
        raise ValueError(f"{words}: made for another folder's labels.csv than {path}'s")
    feats = np.load(Path(words) / "text.npy")
    row = {cid: i for i, cid in enumerate(record["ids"])}
    splits = {}
    for name, sp in ds.splits.items():
        missing = [i for i in sp.ids if i not in row]
        if missing:
            raise ValueError(f"{words}: no words feature for {len(missing)} segment(s) of {path} (e.g. {missing[0]}): made for another folder")
        idx = np.array([row[i] for i in sp.ids], dtype=int)
        present = np.array([i not in record["absent"] for i in sp.ids], dtype=bool)
        splits[name] = Split(feats=sp.feats | {"text": feats[idx]}, present=sp.present | {"text": present}, labels=sp.labels, ids=sp.ids,
                             text=sp.text, steps=sp.steps, groups=sp.groups)
    return FeatureDataset(splits, dict(ds.meta))


_DATA: dict[str, FeatureDataset] = {}


def _init(path: str, words: str | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    _DATA.clear()  # another run in this process (workers=1) must not read the last one's data
    _DATA["all"] = load_source(path, words)


def run_job(job: Job) -> dict:
    """Train one configuration with one seed; valid metrics always, test metrics and per-modality
    readings only when the job says so."""
    import torch

    from .contributions import explain
    from .fusion import create_fusion
    from .metrics import regression_metrics
    from .train import Batches, fit, predict

    if job.context and "context" not in _DATA:
        _DATA["context"] = with_context(_DATA["all"])
    ds = subset(_DATA["context" if job.context else "all"], job.modalities)
    torch.manual_seed(job.seed)
    model = create_fusion(job.method, dims=ds.dims, cfg=FusionConfig(**job.fusion))
    res = fit(model, ds, TrainConfig(**job.train), progress=False)
    out = {"valid": regression_metrics(predict(model, Batches(ds.splits["valid"], model.modalities, "cpu")), ds.splits["valid"].labels),
           "epochs": res.epochs_run, "best_epoch": res.best_epoch, "s_per_epoch": res.seconds_per_epoch}
    if job.test:
        test = ds.splits["test"]
        out["test"] = regression_metrics(predict(model, Batches(test, model.modalities, "cpu")), test.labels)
        if job.readings:
            b = Batches(test, model.modalities, "cpu")
            ex = explain(model, b.feats, {m: b.avail[:, j] for j, m in enumerate(model.modalities)})
            out["abs_shapley"] = {m: float(ex.shapley[:, j].abs().mean()) for j, m in enumerate(model.modalities)}
            if ex.weights is not None:
                out["weights"] = {m: float(ex.weights[:, j].mean()) for j, m in enumerate(model.modalities)}
    return out


def run_all(jobs: list[Job], data: str, workers: int, desc: str, progress: bool, words: str | None = None) -> list[dict]:
    from tqdm.auto import tqdm

    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            _init(data, words)
            return [run_job(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
        finally:
            torch.set_num_threads(threads)  # the caller's process keeps its own setting
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(data, words)) as ex:
        return list(tqdm(ex.map(run_job, jobs), total=len(jobs), desc=desc, disable=not progress))


def summary(runs: list[dict]) -> dict:
    keys = runs[0]["test"].keys()
    vals = {k: np.array([np.nan if r["test"][k] is None else r["test"][k] for r in runs], dtype=float) for k in keys}
    # a metric a seed cannot define (the correlation of a model that predicts one constant) is left
    # out of the mean, and the seeds it is missing from are counted
    out = {k: (float(np.nanmean(v)), float(np.nanstd(v))) if np.isfinite(v).any() else (float("nan"), float("nan")) for k, v in vals.items()}
    out["n_seeds"] = len(runs)
    undefined = {k: int((~np.isfinite(v)).sum()) for k, v in vals.items() if not np.isfinite(v).all()}
    if undefined:
        out["undefined"] = undefined
    out["valid_mae"] = float(np.mean([r["valid"]["mae"] for r in runs]))
    out["s_per_epoch"] = float(np.mean([r["s_per_epoch"] for r in runs]))
    out["epochs"] = float(np.mean([r["epochs"] for r in runs]))
    for key in ("abs_shapley", "weights"):
        if runs[0].get(key):
            out[key] = {m: float(np.mean([r[key][m] for r in runs])) for m in runs[0][key]}
    return out


def chosen_methods(spec: str | None) -> list[str]:
    """The registered methods ``--methods`` names (all of them without it)."""
    methods = [m.strip() for m in spec.split(",") if m.strip()] if spec else list_fusions()
    unknown = set(methods) - set(list_fusions())
    if unknown or not methods:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(list_fusions())}" if unknown
                         else f"--methods names no method; choose from {', '.join(list_fusions())}")
    return methods


def run(args) -> dict:
    data = str(args.data)
    own_words = getattr(args, "words_dir", None)
    ds = load_source(data, own_words)
    methods = chosen_methods(args.methods)
    configs = {m: configurations(args.search, seed=0, method=m) for m in methods}
    mods = ds.modalities
    t0 = time.perf_counter()
    # 1. search on valid: the same random draws for every method, then rounds of a local search
    # around each method's best so far (every configuration one step away along one setting)
    search: dict[str, list] = {m: [] for m in methods}
    todo = {m: list(configs[m]) for m in methods}
    for stage in range(args.refine + 1):
        pairs = [(m, c) for m in methods for c in todo[m]]
        if not pairs:
            break
        jobs = [Job(m, mods, *split_config(c, epochs=args.epochs, seed=s), seed=s, test=False) for m, c in pairs for s in range(args.select_seeds)]
        desc = "search (valid fold)" if stage == 0 else f"local search {stage}/{args.refine} (valid fold)"
        out = run_all(jobs, data, args.workers, desc, not args.quiet, own_words)
        before = {m: min(search[m], key=lambda r: r["valid_mae"])["config"] if search[m] else None for m in methods}
        for i, (m, c) in enumerate(pairs):
            rs = out[i * args.select_seeds:(i + 1) * args.select_seeds]
            search[m].append({"config": c, "valid_mae": float(np.mean([r["valid"]["mae"] for r in rs])),
                              "epochs": float(np.mean([r["epochs"] for r in rs])), "stage": stage})
        todo = {}
        for m in methods:
            best_c = min(search[m], key=lambda r: r["valid_mae"])["config"]
            seen = [r["config"] for r in search[m]]
            # a method whose best did not move has had its neighbourhood searched: it is done
            todo[m] = [] if best_c == before[m] else [n for n in neighbours(best_c, search_space(m)) if n not in seen]
    chosen = {m: min(search[m], key=lambda r: r["valid_mae"])["config"] for m in methods}
    # 2. reported runs: chosen and default configurations, every seed
    seeds = args.seeds
    jobs, keys = [], []
    for m in methods:
        for label, c in (("chosen", chosen[m]), ("default", configs[m][0])):
            for s in seeds:
                jobs.append(Job(m, mods, *split_config(c, epochs=args.epochs, seed=s), seed=s, test=True, readings=label == "chosen"))
                keys.append((m, label))
    out = run_all(jobs, data, args.workers, f"reported runs ({len(seeds)} seeds)", not args.quiet, own_words)
    runs: dict = {m: {"chosen": [], "default": []} for m in methods}
    for (m, label), r in zip(keys, out):
        runs[m][label].append(r)
    results = {m: {"config": chosen[m], "chosen": summary(runs[m]["chosen"]), "default": summary(runs[m]["default"]),
                   "runs": runs[m]["chosen"], "search": search[m]} for m in methods}
    best = min(methods, key=lambda m: results[m]["chosen"]["valid_mae"])
    # 2b. one configuration for every method (per setting, what most methods chose), the reported
    # seeds: does one set of defaults win here on valid, for every method? A method whose own choice
    # or whose defaults are that configuration reuses those runs (the same jobs, the same numbers)
    shared = {"config": shared_config([chosen[m] for m in methods]), "methods": {}, "reused": {}}
    for m in methods:
        for label, c in (("chosen", chosen[m]), ("default", configs[m][0])):
            # a method's own settings stay at their defaults in the shared configuration
            if m not in shared["reused"] and c == configs[m][0] | shared["config"]:
                shared["reused"][m] = label
    fresh = [m for m in methods if m not in shared["reused"]]
    jobs = [Job(m, mods, *split_config(configs[m][0] | shared["config"], epochs=args.epochs, seed=s), seed=s, test=True) for m in fresh for s in seeds]
    out = run_all(jobs, data, args.workers, "one configuration for all", not args.quiet, own_words) if jobs else []
    for m in methods:
        k = fresh.index(m) if m in fresh else None
        shared["methods"][m] = summary(out[k * len(seeds):(k + 1) * len(seeds)] if k is not None else runs[m][shared["reused"][m]])
    # 3. ablations with the best method
    subsets = [s for k in range(1, len(mods)) for s in itertools.combinations(mods, k)]
    jobs = [Job(best, s, *split_config(chosen[best], epochs=args.epochs, seed=sd), seed=sd, test=True) for s in subsets for sd in seeds]
    out = run_all(jobs, data, args.workers, "ablations", not args.quiet, own_words)
    ablations = {"+".join(s): summary(out[i * len(seeds):(i + 1) * len(seeds)]) for i, s in enumerate(subsets)}
    # 4. the setting of the published bc-LSTM numbers: each row also sees its video's mean (every
    # method at its chosen configuration, and the best method on words alone); not chosen on valid
    context = None
    if args.context and all(sp.groups is not None for sp in ds.splits.values()):
        words = tuple(m for m in mods if m == "text")
        runs_ctx = [(m, mods) for m in methods] + ([(best, words)] if words and len(mods) > 1 else [])
        jobs = [Job(m, ms, *split_config(chosen[m], epochs=args.epochs, seed=sd), seed=sd, test=True, context=True) for m, ms in runs_ctx for sd in seeds]
        out = run_all(jobs, data, args.workers, "with video context", not args.quiet, own_words)
        context = {"methods": {m: summary(out[i * len(seeds):(i + 1) * len(seeds)]) for i, (m, ms) in enumerate(runs_ctx) if ms == mods}}
        if len(runs_ctx) > len(methods):
            context["words_alone"] = summary(out[len(methods) * len(seeds):])
        context["best"] = min(context["methods"], key=lambda m: context["methods"][m]["valid_mae"])
    # 5. speed: each chosen configuration timed alone (this process, one thread, none of this run's
    # other jobs beside it), as bench/mmsa_reference.py times MMSA; the runs above shared the cores
    if args.timing_epochs:
        reps = seeds[:TIMING_REPEATS]
        peer_batch = {m: MMSA_BATCH[COUNTERPART.get(m, best_mmsa())] for m in methods}
        timed = [(m, "s_per_epoch_alone", chosen[m]) for m in methods]
        timed += [(m, "s_per_epoch_peer_batch", chosen[m] | {"batch_size": peer_batch[m]}) for m in methods if peer_batch[m] != chosen[m]["batch_size"]]
        jobs = [Job(m, mods, *split_config(c | {"patience": args.timing_epochs}, epochs=args.timing_epochs, seed=sd), seed=sd, test=False)
                for m, _, c in timed for sd in reps]
        out = run_all(jobs, data, 1, "timing (one run at a time)", not args.quiet, own_words)
        for k, (m, key, _) in enumerate(timed):
            results[m]["chosen"][key] = float(np.median([r["s_per_epoch"] for r in out[k * len(reps):(k + 1) * len(reps)]]))
        for m in methods:  # the chosen batch is MMSA's: one configuration, timed once
            results[m]["chosen"].setdefault("s_per_epoch_peer_batch", results[m]["chosen"]["s_per_epoch_alone"])
    env = {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "workers": args.workers, "torch_threads_per_worker": 1,
           "seconds": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d"), "timing_epochs": args.timing_epochs, "timing_repeats": min(TIMING_REPEATS, len(seeds))}
    return {"mmsa_here": mmsa_timed_here(args.mmsa), "data": ds.describe(), "source": Path(data).name, "seeds": list(seeds), "select_seeds": list(range(args.select_seeds)),
            "search_space": SEARCH, "method_search_space": {m: METHOD_SEARCH[m] for m in methods if m in METHOD_SEARCH}, "configurations": len(next(iter(configs.values()))), "refine": args.refine, "max_epochs": args.epochs, "methods": results, "best": best,
            "ablations": ablations, "shared": shared, "context": context, "mean_baseline": mean_baseline(ds), "mmsa": MMSA, "env": env, "quick": args.quick,
            "words": words_summary(getattr(args, "words_record", None))}


def words_summary(record: dict | None) -> dict | None:
    """What the results say of an own words feature (:func:`mosei_words`): None for the release's."""
    if record is None:
        return None
    return {"source": record["source"], "dim": record["dim"], "mosei_train": record["mosei_train"], "mosei_valid": record["mosei_valid"],
            "mosei_valid_mae": record["mosei_valid_mae"], "finetune_seconds": record["seconds"], "epochs": len(record["history"]),
            "absent": len(record["absent"]), "reused": bool(record.get("reused")), "config": record["key"]["finetune"]}


def mmsa_timed_here(path) -> dict | None:
    """MMSA timed on this machine by bench/mmsa_reference.py (None when that file is absent)."""
    if not path or not Path(path).exists():
        return None
    ref = json.loads(Path(path).read_text())
    return {"env": ref["env"], "models": {n: {"s_per_epoch": float(np.mean([r["s_per_epoch"] for r in rs])),
                                              "mae": float(np.mean([r["test"]["MAE"] for r in rs])),
                                              "corr": float(np.mean([r["test"]["Corr"] for r in rs])),
                                              "epochs": float(np.mean([r["epochs"] for r in rs])), "seeds": [r["seed"] for r in rs]}
                                          for n, rs in ref["models"].items()}}


def _pm(s: dict, k: str, pct: bool = False, constant_note: bool = False) -> str:
    """``mean ± std``; a metric some seeds could not define says how many; with ``constant_note``, a
    metric every seed defined says how many seeds it averages that predicted a constant."""
    m, sd = s[k]
    if m is None or not np.isfinite(m):
        return "undefined"
    text = f"{100 * m:.1f} ± {100 * sd:.1f}" if pct else f"{m:.3f} ± {sd:.3f}"
    undefined = s.get("undefined") or {}
    if undefined.get(k):
        return f"{text} ({undefined[k]} of {s['n_seeds']} seeds undefined: constant prediction)"
    if constant_note and undefined:
        return f"{text} (includes {max(undefined.values())} of {s['n_seeds']} seeds with a constant prediction)"
    return text


def search_outcome(r: dict, refine: int, own: dict | None = None) -> dict:
    """Where a method's search found its best configuration (the defaults, the random draws or a
    local round), and whether the local search stopped at the ``--refine`` limit (its best still
    moving, with neighbours not yet tried) rather than because the best stopped moving."""
    search = r["search"]
    top = min(search, key=lambda x: x["valid_mae"])
    stage = top.get("stage", 0)
    seen = [x["config"] for x in search]
    where = "the defaults" if top is search[0] else "the random draws" if not stage else f"local round {stage}"
    space = SEARCH | {k: tuple(v) for k, v in (own or {}).items()}  # the settings of this method's search (``own``: its own ones)
    at_limit = refine > 0 and stage == refine and any(n not in seen for n in neighbours(top["config"], space))
    first = min(x["valid_mae"] for x in search if x.get("stage", 0) == 0)
    return {"where": where, "at_limit": at_limit, "best": top["valid_mae"], "best_first": first, "tried": len(search)}


def mmsa_here(res: dict) -> dict | None:
    """MMSA's timing from bench/mmsa_reference.py when it ran on this run's CPU model on the same day;
    else None (a file from another machine or day, or one that did not record its CPU, says nothing
    about speed here: virtual machines of one kind report one CPU name and still differ 2-3x)."""
    here = res.get("mmsa_here")
    env = res.get("env", {})
    ok = here and env.get("cpu") and here["env"].get("cpu") == env["cpu"] and here["env"].get("date") == env.get("date")
    return here if ok else None


def best_mmsa() -> str:
    """The MMSA row with the lowest MAE: the counterpart of the methods MMSA has no version of."""
    return min(MMSA, key=lambda k: MMSA[k]["mae"][0])


def _mean(s: dict, k: str) -> float:
    """The mean over seeds of metric ``k`` (NaN where no seed defined it; JSON stores that as null)."""
    m = s[k][0]
    return float("nan") if m is None else float(m)


def _fmt(v, pct: bool = False, signed: bool = False) -> str:
    """A number for a table or a sentence: ``0.892`` (``78.0`` with ``pct``, ``+0.027`` with
    ``signed``), or ``undefined`` for None or NaN (a metric no seed defined)."""
    if v is None or not np.isfinite(v):
        return "undefined"
    return f"{100 * v:.1f}" if pct else f"{v:+.3f}" if signed else f"{v:.3f}"


def _num(s: dict, k: str, pct: bool = False) -> str:
    """The mean over seeds of metric ``k`` (:func:`_fmt`)."""
    return _fmt(_mean(s, k), pct)


def _order(s: dict) -> float:
    """Sort key by mean MAE, undefined last."""
    m = _mean(s, "mae")
    return m if np.isfinite(m) else float("inf")


def _avg(values, signed: bool = False) -> str:
    """The mean of the defined ``values`` (:func:`_fmt`; ``undefined`` when none is)."""
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return _fmt(float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else None, signed=signed)


# what markdown() reads: a file without one of these was not written by this command (or by an
# older version of it)
RESULT_KEYS = ("methods", "best", "seeds", "ablations", "env", "data", "configurations", "select_seeds", "max_epochs", "mean_baseline")
ENV_KEYS = ("cpus", "date", "seconds", "workers")
METHOD_KEYS = ("chosen", "default", "config", "search")
SUMMARY_KEYS = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_non0", "acc7", "s_per_epoch", "epochs", "valid_mae")


def check_result(res) -> None:
    """Raise ValueError naming what is missing when ``res`` is not a result this command wrote."""
    if not isinstance(res, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in RESULT_KEYS if k not in res]
    if missing:
        raise ValueError(f"missing keys: {', '.join(missing)}")
    if not isinstance(res["env"], dict) or any(k not in res["env"] for k in ENV_KEYS):
        raise ValueError(f"env lacks one of {', '.join(ENV_KEYS)}")
    if not isinstance(res["methods"], dict) or not res["methods"]:
        raise ValueError("methods: not a non-empty object")
    for m, r in res["methods"].items():
        gone = [k for k in METHOD_KEYS if not isinstance(r, dict) or k not in r]
        if gone:
            raise ValueError(f"method {m!r}: missing keys: {', '.join(gone)}")
        for label in ("chosen", "default"):
            gone = [k for k in SUMMARY_KEYS if not isinstance(r[label], dict) or k not in r[label]]
            if gone:
                raise ValueError(f"method {m!r}, {label}: missing keys: {', '.join(gone)}")
    if not isinstance(res["best"], str) or res["best"] not in res["methods"]:
        raise ValueError(f"the best method {res['best']!r} is not among its methods")


def targets(res: dict) -> dict:
    """The comparison with MMSA per method (mean test MAE and Corr over seeds) and the best
    method's absolute targets."""
    out = {}
    for m, r in res["methods"].items():
        peer = COUNTERPART.get(m, best_mmsa())
        c = r["chosen"]
        here = (mmsa_here(res) or {}).get("models", {}).get(peer)
        theirs = (here or MMSA[peer])["s_per_epoch"]
        out[m] = {"peer": peer, "mae_ok": _mean(c, "mae") <= MMSA[peer]["mae"][0], "corr_ok": _mean(c, "corr") >= MMSA[peer]["corr"][0],
                  "speedup": theirs / c.get("s_per_epoch_alone", c["s_per_epoch"]), "speed_measured_here": here is not None}
        if "s_per_epoch_peer_batch" in c:
            out[m]["speedup_peer_batch"] = theirs / c["s_per_epoch_peer_batch"]
    b = res["methods"][res["best"]]["chosen"]
    out["best"] = {"mae_0.88": _mean(b, "mae") <= 0.88, "corr_0.66": _mean(b, "corr") >= 0.66, "acc2_non0_80": _mean(b, "acc2_non0") >= 0.80}
    return out


def markdown(res: dict) -> str:
    tg = targets(res)
    seeds = ", ".join(map(str, res["seeds"]))
    space = res.get("search_space", SEARCH)
    own_space = res.get("method_search_space", {})  # a method's own settings (results files before 2026-12-04 have none)
    outcome = {m: search_outcome(r, res.get("refine", 0), own_space.get(m)) for m, r in res["methods"].items()}
    counts = sorted({o["tried"] for o in outcome.values()})
    tried = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    head = "| | MAE | Corr | Acc-2 has-0 | Acc-2 non-0 | F1 non-0 | Acc-7 | s/epoch | epochs | valid MAE |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"

    def row(name: str, s: dict, alone: bool = False) -> str:
        speed = s.get("s_per_epoch_alone", s["s_per_epoch"]) if alone else s["s_per_epoch"]
        return (f"| {name} | {_pm(s, 'mae')} | {_pm(s, 'corr')} | {_pm(s, 'acc2_has0', True)} | {_pm(s, 'acc2_non0', True)} | "
                f"{_pm(s, 'f1_non0', True)} | {_pm(s, 'acc7', True)} | {speed:.3f} | {s['epochs']:.0f} | {_fmt(s['valid_mae'])} |")

    own = res.get("words")
    title = "## Fusion on real paired data: CMU-MOSI with words, voice and face features of the same moment"
    command = "`python -m mmdemo.trimodal --data ../shared/data/cmu-mosi-trimodal-features --out results/`"
    if own:
        title += ", the words read by mmdemo's own encoder"
        command = "`python -m mmdemo.trimodal --data ../shared/data/cmu-mosi-trimodal-features --words mosei --out results/mosei-words/`"
    md = [title, "",
          f"{command} ({res['data']}; the "
          "release's speaker-independent split, valid = every 6th train video). Mean ± std over seeds "
          f"{seeds} on the test fold (std over seeds with ddof 0, as MMSA computes it); every configuration chosen on the valid fold alone ({res['configurations']} configurations "
          f"per method, the defaults first, then up to {res.get('refine', 0)} round(s) of local search around each method's best, one setting one step at a time: "
          f"{tried} configurations per method in all; "
          f"each trained with {len(res['select_seeds'])} seed(s); up to {res['max_epochs']} epochs, "
          "early stopping on valid MAE); the best method is the one with the lowest mean valid MAE over the reported seeds (last "
          "column). s/epoch: one training epoch and the valid pass, one CPU thread per run "
          f"({res['env'].get('cpu') or res['env']['machine']}, {res['env']['cpus']} cores, {res['env']['date']}); "
          + (f"in the first table, each chosen configuration timed alone after the rest of the run ({res['env']['timing_epochs']} epochs, "
             f"median of {res['env']['timing_repeats']} runs; one run at a time, one thread, as MMSA is timed); in the other tables, "
             f"from runs that shared the cores ({res['env']['workers']} at a time)." if res["env"].get("timing_epochs") else
             f"from runs that shared the cores ({res['env']['workers']} at a time)."), ""]
    if res.get("quick"):
        md += ["**Quick run (CI): a handful of configurations and seeds, few epochs. The numbers say nothing about the methods.**", ""]
    if own:
        md += [f"**The words feature is not the release's.** Here it is mmdemo's: {own['source']} ({own['mosei_train']} train and "
               f"{own['mosei_valid']} valid transcripts; MOSEI valid MAE of the fine-tuning head {own['mosei_valid_mae']:.3f}, the best of "
               f"{own['epochs']} epoch(s); {own['dim']}-d, the live app's words feature{'; reused from an earlier run' if own['reused'] else ''}"
               f"), {own['absent']} segment(s) without a transcript counted as words missing. No CMU-MOSI text or label was read to make it, "
               "so every segment's words feature is out of sample, the train and valid folds' too (the release's text-CNN was trained "
               "on the train videos: in-sample there). The voice and face features are the release's. The MMSA rows read the "
               "release's text-CNN features: beside these rows they are **not like-for-like** (different words features, this one "
               f"learned from {own['mosei_train']} labelled MOSEI transcripts); they show what a researcher gets from those tools on the release's features, "
               "not what MMSA's models would reach on these.", ""]
    md += ["### Every method (chosen configuration) beside MMSA 2.2.1 " + ("(on the release's words features)" if own else "on the same file"), "", head, sep]
    for m in sorted(res["methods"], key=lambda m: _order(res["methods"][m]["chosen"])):
        md.append(row(f"mmdemo `{m}`{' (best on valid)' if m == res['best'] else ''}", res["methods"][m]["chosen"], alone=True))
    timed_here = (mmsa_here(res) or {}).get("models", {})
    for name, r in MMSA.items():
        speed = f"{timed_here[name]['s_per_epoch']:.3f} (timed here)" if name in timed_here else f"{r['s_per_epoch']:.2f}"
        md.append(f"| MMSA {name} (*reference, not this run*) | {r['mae'][0]:.3f} ± {r['mae'][1]:.3f} | {r['corr'][0]:.3f} ± {r['corr'][1]:.3f} | "
                  f"{100 * r['acc2_has0']:.1f} | {100 * r['acc2_non0']:.1f} | - | {100 * r['acc7']:.1f} | {speed} | - | - |")
    mb = res["mean_baseline"]
    md += [f"| predict the train mean | {mb['mae']:.3f} | - | {100 * mb['acc2_has0']:.1f} | {100 * mb['acc2_non0']:.1f} | - | {100 * mb['acc7']:.1f} | - | - | - |", "",
           "MMSA rows: measured on this file with MMSA's own default configurations (features fed as sequences of length 1), seeds "
           "1111-1115, on another machine of the same kind (`../shared/data/cmu-mosi-trimodal-features/README.md`). MMSA's MulT and "
           "EF-LSTM could not run on vectors; every mmdemo method runs on vectors and on sequences. "
           f"Published context: {PUBLISHED}{'; rows with video context follow the ablations' if res.get('context') else ''}.", ""]
    here = mmsa_here(res)
    if here:
        e = here["env"]
        md += [f"MMSA timed on this machine (`bench/mmsa_reference.py`, {e['cpu']}, MMSA {e['mmsa']}, torch {e['torch']}, one thread, {e['date']}; "
               "seeds " + ", ".join(str(s) for s in next(iter(here["models"].values()))["seeds"]) + "): "
               + "; ".join(f"{n} {v['s_per_epoch']:.3f} s/epoch (MAE {v['mae']:.3f}, Corr {v['corr']:.3f}, {v['epochs']:.0f} epochs)"
                           for n, v in here["models"].items()) + ". The speed ratios below use these.", ""]
    else:
        other = res.get("mmsa_here")
        why = (f"`bench/mmsa_reference.py` last ran on {other['env'].get('cpu') or 'a CPU it did not record'} on "
               f"{other['env'].get('date', 'a day it did not record')}, not on this run's CPU and day"
               if other else "`bench/mmsa_reference.py` not run")
        md += [f"MMSA was not timed on this machine ({why}): the speed ratios below divide the data README's s/epoch by this "
               "run's, across machines that differ 2-3x in speed: indicative only.", ""]
    md += ["| method | compared with | mean MAE at or below | mean Corr at or above | s/epoch ratio (MMSA / mmdemo) | at MMSA's batch size |",
           "|---|---|---|---|---|---|"]
    for m in res["methods"]:
        t = tg[m]
        where = "" if t["speed_measured_here"] else " (across machines)"
        pb = f"{t['speedup_peer_batch']:.1f}x{where} (batch {MMSA_BATCH[t['peer']]})" if "speedup_peer_batch" in t else "-"
        md.append(f"| `{m}` | MMSA {t['peer']} | {'✓' if t['mae_ok'] else '✗'} | {'✓' if t['corr_ok'] else '✗'} | "
                  f"{t['speedup']:.1f}x{where} | {pb} |")
    if any("speedup_peer_batch" in tg[m] for m in res["methods"]):
        md += ["", "s/epoch ratio: at the configuration chosen on valid (its batch size); at MMSA's batch size: the same configuration "
               "with the counterpart's default batch size for MOSI, so that both epochs take the same number of steps."]
    b = tg["best"]
    md += ["", f"Best method on valid: `{res['best']}`. Targets for it: MAE ≤ 0.88 {'✓' if b['mae_0.88'] else '✗'}, Corr ≥ 0.66 "
           f"{'✓' if b['corr_0.66'] else '✗'}, Acc-2 non-0 ≥ 80 {'✓' if b['acc2_non0_80'] else '✗'}"
           + (" (with mmdemo's words feature, not the release's: see above)." if own else "."), "",
           "### What the search bought: the training loop's defaults, same seeds", "", head, sep]
    for m in res["methods"]:
        md.append(row(f"`{m}` defaults", res["methods"][m]["default"]))
    sh = res.get("shared")
    if sh:
        cfg = ", ".join(f"{k} {v:g}" for k, v in sh["config"].items())
        md += ["", "### One configuration for every method: a candidate for the training loop's defaults", "",
               f"Per setting, the value most methods chose (the most common one; a tie goes to the value seen first): {cfg}. "
               "Trained with the same seeds; the test columns are shown whatever valid says. It would replace the training loop's "
               "defaults only if it beat them on valid for every method."
               + ("" if not res.get("method_search_space") else " A method's own settings (" + ", ".join(
                   f"`{m}`'s {', '.join(ks)}" for m, ks in res["method_search_space"].items()) + ") stay at their defaults in it.")
               + ("" if not sh.get("reused") else " Reused runs: " + ", ".join(f"`{m}` (its {'own choice' if v == 'chosen' else 'defaults'})" for m, v in sh["reused"].items()) + "."), "",
               "| method | valid MAE defaults | valid MAE this one | valid MAE own choice | test MAE defaults | test MAE this one | test MAE own choice | Corr this one |",
               "|---|---|---|---|---|---|---|---|"]
        for m, r in res["methods"].items():
            o = sh["methods"][m]
            md.append(f"| `{m}` | {_fmt(r['default']['valid_mae'])} | {_fmt(o['valid_mae'])} | {_fmt(r['chosen']['valid_mae'])} | {_pm(r['default'], 'mae', constant_note=True)} | "
                      f"{_pm(o, 'mae', constant_note=True)} | {_pm(r['chosen'], 'mae', constant_note=True)} | {_pm(o, 'corr')} |")
        won = [m for m, r in res["methods"].items() if sh["methods"][m]["valid_mae"] < r["default"]["valid_mae"]]
        md += ["", f"On valid it beats the training loop's defaults for {len(won)} of {len(res['methods'])} methods"
               + (f" (not: {', '.join(f'`{m}`' for m in res['methods'] if m not in won)})." if len(won) < len(res["methods"]) else ".")]
    md += ["", f"### Ablations: `{res['best']}` (its chosen configuration) on fewer modalities", "", head, sep]
    md.append(row("words + voice + face", res["methods"][res["best"]]["chosen"]))
    for k, s in sorted(res["ablations"].items(), key=lambda kv: _order(kv[1])):
        md.append(row(" + ".join(NAMES.get(m, m) for m in k.split("+")), s))
    full = res["methods"][res["best"]]["chosen"]
    if res["ablations"]:
        top, top_s = min(res["ablations"].items(), key=lambda kv: _order(kv[1]))
        subset = " + ".join(NAMES.get(m, m) for m in top.split("+"))
        if not np.isfinite(_mean(top_s, "mae")) and not np.isfinite(_mean(full, "mae")):
            md += ["", "No seed defined the MAE of the ablations or of all three modalities: no comparison."]
        elif _order(top_s) < _order(full):
            md += ["", f"Fewer modalities do better here: {subset} alone scores MAE {_num(top_s, 'mae')} (Corr {_num(top_s, 'corr')}) "
                   f"against {_num(full, 'mae')} ({_num(full, 'corr')}) with all three."]
        else:
            md += ["", f"All three modalities do best: MAE {_num(full, 'mae')} against {_num(top_s, 'mae')} for the best subset ({subset})."]
    valid = _avg([r["chosen"]["valid_mae"] for r in res["methods"].values()])
    test = _avg([_mean(r["chosen"], "mae") for r in res["methods"].values()])
    md += ["", f"Valid vs test: the chosen configurations average valid MAE {valid} and test MAE {test}. In this release the "
           + ("3D-CNN face extractor was trained on the train videos, which include the valid fold, so valid face features are "
              "in-sample for it (the words feature here is out of sample everywhere): a choice on valid favours configurations that "
              "trust the face most." if own else
              "text-CNN and 3D-CNN extractors were trained on the train videos, which include the valid fold, so valid features are "
              "in-sample for them: a choice on valid favours configurations that trust the features most.")]
    ctx = res.get("context")
    if ctx:
        cb = ctx["methods"][ctx["best"]]
        md += ["", "### With video context: the setting of the published bc-LSTM numbers", "",
               "Each segment's features followed by the mean of its video's segments, per modality (`--context` of `python -m "
               "mmdemo.train`, `mmdemo.data.with_context`; labels are never read), every method at its chosen configuration, same seeds. "
               "This is the information bc-LSTM reads (the neighbouring utterances of the same video), so these rows are the ones to set "
               "beside its published binary accuracy; bc-LSTM's own network, seeds and metric details differ. Context was not chosen on "
               "valid: it is reported as its own setting.", "", head, sep]
        for m in sorted(ctx["methods"], key=lambda m: _order(ctx["methods"][m])):
            md.append(row(f"`{m}` + context{' (best on valid)' if m == ctx['best'] else ''}", ctx["methods"][m]))
        if ctx.get("words_alone"):
            md.append(row(f"`{res['best']}` + context, words alone", ctx["words_alone"]))
        v_ctx = _avg([r["valid_mae"] for r in ctx["methods"].values()])
        t_ctx = _avg([_mean(r, "mae") for r in ctx["methods"].values()])
        gain = [_mean(res["methods"][m]["chosen"], "mae") - _mean(r, "mae") for m, r in ctx["methods"].items()]
        md += ["", f"Context lowers the test MAE of {sum(g > 0 for g in gain)} of {len(gain)} methods (mean change {_avg([-g for g in gain], signed=True)}; "
               f"mean valid MAE {v_ctx} with context against {valid} without, mean test MAE {t_ctx} against {test}). "
               f"Best with context on valid: `{ctx['best']}`, MAE {_num(cb, 'mae')} (target ≤ 0.88 {'✓' if _mean(cb, 'mae') <= 0.88 else '✗'}), "
               f"Corr {_num(cb, 'corr')} (≥ 0.66 {'✓' if _mean(cb, 'corr') >= 0.66 else '✗'}), Acc-2 non-0 {_num(cb, 'acc2_non0', True)} "
               f"(≥ 80 {'✓' if _mean(cb, 'acc2_non0') >= 0.80 else '✗'}; bc-LSTM published about 80)."]
    mods = list(next(iter(res["methods"].values()))["chosen"]["abs_shapley"])
    md += ["", "### What each method says about the modalities (test fold, mean over seeds)", "",
           "Mean |Shapley| per modality (exact, over the three modalities), and the method's own weights where it has them "
           "(`weighted`: its learned θ; `late`: fixed equal weights; `attention`, `cross_attention`: their mean attention weights).", "",
           "| method | " + " | ".join(f"|Shapley| {NAMES.get(m, m)}" for m in mods) + " | " + " | ".join(f"weight {NAMES.get(m, m)}" for m in mods) + " |",
           "|---|" + "---|" * (2 * len(mods))]
    for m, r in res["methods"].items():
        c = r["chosen"]
        w = c.get("weights")
        md.append(f"| `{m}` | " + " | ".join(f"{c['abs_shapley'][x]:.3f}" for x in mods) + " | "
                  + " | ".join(f"{w[x]:.2f}" if w else "-" for x in mods) + " |")
    own_col = bool(own_space)
    md += ["", "### Chosen configurations", "", "| method | " + " | ".join(space) + (" | its own settings" if own_col else "")
           + " | mean valid MAE (search) | best of defaults + draws | configurations tried | found in |",
           "|---|" + "---|" * (len(space) + 4 + own_col)]
    for m, r in res["methods"].items():
        o = outcome[m]
        where = o["where"] + (" (stopped at the --refine limit)" if o["at_limit"] else "")
        own = (" | " + (", ".join(f"{k} {r['config'][k]:g}" for k in own_space.get(m, {})) or "–")) if own_col else ""
        md.append(f"| `{m}` | " + " | ".join(f"{r['config'][k]:g}" for k in space) + own + f" | {o['best']:.3f} | {o['best_first']:.3f} | {o['tried']} | {where} |")
    limited = [m for m in res["methods"] if outcome[m]["at_limit"]]
    edges = {k: sum(r["config"][k] in (v[0], v[-1]) for r in res["methods"].values()) for k, v in space.items() if len(v) > 2}
    own_edges = [f"{k} of `{m}`" for m, ks in own_space.items() for k, v in ks.items() if res["methods"][m]["config"].get(k) in (v[0], v[-1])]
    lead = "Chosen" if not res.get("refine") else (
        f"The local search stopped at its limit of {res['refine']} round(s), its best still moving, for {len(limited)} of {len(res['methods'])} methods"
        + (f" ({', '.join(f'`{x}`' for x in limited)})" if limited else "") + "; chosen")
    md += ["", lead + " at an edge of its range: " + ", ".join(f"{k} {n} of {len(res['methods'])}" for k, n in edges.items())
           + (f"; of the methods' own settings: {', '.join(own_edges) or 'none'}" if own_col else "") + "."]
    own_text = "".join(f"; `{m}` also {', '.join(f'{k} {list(v)}' for k, v in ks.items())}" for m, ks in own_space.items())
    md += ["", f"Search space: {', '.join(f'{k} {list(v)}' for k, v in space.items())}{own_text}. Run time {res['env']['seconds'] / 60:.1f} min.", ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.trimodal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mosi-trimodal-features"),
                    help="the cmu-mosi-trimodal-features folder (labels.csv + text/audio/vision.npy)")
    ap.add_argument("--out", default="results", help="folder for trimodal.md and trimodal.json")
    ap.add_argument("--words", choices=WORDS, default="release",
                    help="the words feature: the release's text-CNN (default), or mosei: mmdemo's own encoder (all-MiniLM-L6-v2) "
                         "fine-tuned on CMU-MOSEI's transcripts only, so that every CMU-MOSI segment is out of sample for it "
                         "(about 20 min on 2 cores the first time; kept in OUT/words-mosei/ and reused)")
    ap.add_argument("--mosei", help="with --words mosei: the cmu-mosei-text folder (default: beside --data)")
    ap.add_argument("--search", type=int, default=16, help="configurations per method (the defaults + random draws)")
    ap.add_argument("--refine", type=int, default=REFINE_ROUNDS, help="rounds of local search around each method's best configuration "
                    "(every configuration one step away along one setting; 0: the random draws only)")
    ap.add_argument("--select-seeds", type=int, default=2, help="seeds per configuration in the search")
    ap.add_argument("--seeds", default="1111,1112,1113,1114,1115", help="seeds of the reported runs")
    ap.add_argument("--epochs", type=int, default=MAX_EPOCHS, help="most epochs per run (early stopping on valid MAE)")
    ap.add_argument("--methods", default="", help="comma list (default: every registered method)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time (one process, one thread each)")
    ap.add_argument("--mmsa", default=str(MMSA_HERE), help="MMSA timed on this machine by bench/mmsa_reference.py (used when the file exists)")
    ap.add_argument("--timing-epochs", type=int, default=20, help="epochs of each chosen configuration timed alone for the speed ratios (0: skip; "
                    "the ratios then use the s/epoch of runs that shared the cores)")
    ap.add_argument("--no-context", dest="context", action="store_false", help="skip the runs with video context (the setting of the published bc-LSTM numbers)")
    ap.add_argument("--quick", action="store_true", help="2 configurations, 1 selection seed, 2 seeds, 3 epochs, 2 timed epochs (CI)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="no training: write trimodal.md under --out again from a trimodal.json this command wrote")
    args = ap.parse_args(argv)
    problem = output_problem(args.out, folder=True)
    if problem:
        ap.error(f"--out: {problem}")
    if args.render:
        try:
            res = json.loads(Path(args.render).read_text())
        except (OSError, ValueError) as err:
            ap.error(f"--render {args.render}: cannot read it ({type(err).__name__}: {err})")
        try:
            check_result(res)
        except ValueError as err:
            ap.error(f"--render {args.render}: not a trimodal.json this command wrote ({err})")
        try:
            md = markdown(res)
        except (TypeError, KeyError, ValueError, AttributeError, IndexError) as err:  # the right keys, values of the wrong kind
            ap.error(f"--render {args.render}: not a trimodal.json this command wrote ({type(err).__name__}: {err})")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trimodal.md").write_text(md)
        print(md if not args.quiet else f"wrote {out / 'trimodal.md'}")
        return 0
    if not Path(args.data).is_dir():
        ap.error(f"--data {args.data}: not a folder (expected labels.csv + text.npy/audio.npy/vision.npy)")
    try:  # read once here so that a broken folder is named before any worker starts
        ds = load_dataset(args.data)
    except (OSError, ValueError) as err:
        ap.error(f"--data {args.data}: {err}")
    empty = [s for s in ("train", "valid", "test") if len(ds.splits[s]) == 0]
    if empty:
        ap.error(f"--data {args.data}: the {', '.join(empty)} split is empty (the search needs train and valid, the report test)")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error("--seeds: a comma list of integers")
    if args.quick:
        args.search, args.select_seeds, args.seeds, args.epochs, args.timing_epochs = 2, 1, args.seeds[:2], 3, min(args.timing_epochs, 2)
        args.refine = min(args.refine, 1)
    if args.search < 1 or args.select_seeds < 1 or not args.seeds or args.epochs < 1:
        ap.error("--search, --select-seeds, --seeds and --epochs need at least one")
    if args.refine < 0:
        ap.error("--refine: 0 (no local search) or more rounds")
    if args.timing_epochs < 0:
        ap.error("--timing-epochs: 0 (skip) or more")
    try:
        chosen_methods(args.methods)  # before fine-tuning the words encoder: a typo must not cost 20 minutes
    except SystemExit as err:
        ap.error(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.words == "mosei":
        from .text_model import FinetuneConfig

        mosei = Path(args.mosei) if args.mosei else Path(args.data).resolve().parent / "cmu-mosei-text"
        if not (mosei / "labels.csv").is_file():
            ap.error(f"--mosei {mosei}: no labels.csv there (the cmu-mosei-text folder)")
        if "text" not in ds.modalities:
            ap.error(f"--words mosei: {args.data} has no text.npy (its words features are the ones replaced)")
        if not any(sp.text is not None and any(str(t).strip() for t in sp.text) for sp in ds.splits.values()):
            ap.error(f"--words mosei: {args.data} has no transcripts (a text column in labels.csv) to encode")
        # --quick (CI): a few hundred transcripts, one epoch
        cfg = FinetuneConfig(device="cpu", epochs=1) if args.quick else FinetuneConfig(device="cpu")
        try:
            args.words_record = mosei_words(Path(args.data), mosei, out, cfg, progress=not args.quiet, limit=256 if args.quick else None)
        except (OSError, ValueError) as err:
            ap.error(f"--words mosei: {err}")
        args.words_dir = str(out / WORDS_DIR)
    res = run(args)
    (out / "trimodal.json").write_text(json.dumps(jsonable(res | {"targets": targets(res)}), indent=1) + "\n")  # first: --render rebuilds the rest from it
    md = markdown(res)
    (out / "trimodal.md").write_text(md)
    print(md)
    print(f"wrote {out / 'trimodal.md'} and {out / 'trimodal.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
