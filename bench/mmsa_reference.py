"""MMSA 2.2.1's implementations on the cmu-mosi-trimodal-features folder, timed on *this* machine, so
that `python -m mmdemo.trimodal` can give speed ratios measured on one machine on one day.

MMSA is never a dependency of mmdemo: this script runs in its own environment and imports nothing
from mmdemo.

    python3.11 -m venv /tmp/mmsa && /tmp/mmsa/bin/pip install torch==2.13.0 MMSA==2.2.1
    /tmp/mmsa/bin/python bench/mmsa_reference.py --data ../shared/data/cmu-mosi-trimodal-features

Each model runs with MMSA's own default configuration for MOSI (its ``config_regression.json``), on
the CPU with one thread (as each mmdemo run of the benchmark), the features fed as sequences of length
1 (MMSA reads sequences), the folder's own split. Per model and seed: the test metrics MMSA reports,
the epochs run, the training seconds (training epochs and their valid passes, as mmdemo counts them),
seconds per epoch, and the GFLOP of one training step (:func:`step_gflop`). Writes ``bench/results/mmsa_reference.json`` (read by ``mmdemo.trimodal``
when present) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import pickle
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # MMSA draws a bar per batch loop
MODELS = ("lf_dnn", "tfn", "lmf", "mfn")
NAMES = {"lf_dnn": "LF-DNN", "tfn": "TFN", "lmf": "LMF", "mfn": "MFN"}


def cpu_model() -> str:
    """The CPU's model name, as mmdemo.trimodal records it (this script imports nothing from mmdemo):
    the trimodal benchmark uses these timings only when they come from its own CPU model."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def mmsa_pickle(folder: Path, out: Path) -> Path:
    """The folder as the feature pickle MMSA reads: per split (N, 1, D) arrays, ids, raw text,
    regression labels and lengths of 1."""
    rows = list(csv.DictReader(open(folder / "labels.csv", encoding="utf-8")))
    x = {m: np.load(folder / f"{m}.npy") for m in ("text", "audio", "vision")}
    split = np.array([r["split"] for r in rows])
    data = {}
    for s in ("train", "valid", "test"):
        k = split == s
        n = int(k.sum())
        data[s] = {m: x[m][k][:, None, :].astype(np.float32) for m in x}
        data[s] |= {"id": np.array([r["clip_id"] for r in rows])[k], "raw_text": np.array([r["text"] for r in rows])[k],
                    "regression_labels": np.array([float(r["label"]) for r in rows], np.float32)[k],
                    "audio_lengths": np.ones(n, int), "vision_lengths": np.ones(n, int)}
    with open(out, "wb") as f:
        pickle.dump(data, f)
    return out


class EpochCounter(logging.Handler):
    """Counts MMSA's per-epoch training log lines ("TRAIN-(MODEL) [...]")."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.epochs = 0

    def emit(self, record):
        if str(record.getMessage()).startswith("TRAIN-("):
            self.epochs += 1


def step_gflop(model, train, criterion) -> float:
    """The matrix products' floating-point operations (10^9) of one training step on a full batch of
    ``train`` (forward and backward of MMSA's own loss), as ``torch.utils.flop_counter`` counts them:
    the count bench/speed_vs_mmsa.py gives mmdemo's side. On a copy of ``model``, so that its
    BatchNorm statistics stay as trained; with oneDNN off, whose LSTM kernel the counter cannot
    see (MMSA's text sub-network is an LSTM: it would count as nothing)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = next(iter(train))
    twin = copy.deepcopy(model).train()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # said by the switch itself
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            out = twin(batch["text"], batch["audio"], batch["vision"])["M"]
            criterion(out, batch["labels"]["M"].view(-1, 1)).backward()
    return counter.get_total_flops() / 1e9


def run_model(name: str, features: Path, seeds: list[int], work: Path) -> list[dict]:
    import torch
    from MMSA import run as mmsa_run
    from MMSA.config import get_config_regression

    torch.set_num_threads(1)
    torch.cuda.set_device = lambda *a, **k: None  # MMSA calls it even on the CPU
    cfg_file = Path(mmsa_run.__file__).parent / "config" / "config_regression.json"
    out = []
    for seed in seeds:
        args = get_config_regression(name, "mosi", cfg_file)
        args.update({"model_save_path": work / f"{name}-{seed}.pth", "device": torch.device("cpu"), "train_mode": "regression",
                     "custom_feature": str(features), "feature_T": "", "feature_A": "", "feature_V": "", "cur_seed": 1,
                     "need_data_aligned": True})
        counter = EpochCounter()
        logging.getLogger("MMSA").handlers = [counter]
        logging.getLogger("MMSA").setLevel(logging.DEBUG)
        mmsa_run.setup_seed(seed)
        from MMSA.data_loader import MMDataLoader
        from MMSA.models import AMIO
        from MMSA.trains import ATIO

        loader = MMDataLoader(args, 0)
        model = AMIO(args).to("cpu")
        trainer = ATIO().getTrain(args)
        t0 = time.perf_counter()
        trainer.do_train(model, loader)
        seconds = time.perf_counter() - t0
        model.load_state_dict(torch.load(args["model_save_path"]))
        test = trainer.do_test(model, loader["test"], mode="TEST")
        gflop = step_gflop(model, loader["train"], trainer.criterion)
        logging.getLogger("MMSA").removeHandler(counter)
        if counter.epochs == 0:
            raise SystemExit(f"{name}: no per-epoch log line of MMSA was seen (its wording changed?): cannot time an epoch")
        out.append({"seed": seed, "test": {k: float(v) for k, v in test.items()}, "epochs": counter.epochs, "train_seconds": seconds,
                    "s_per_epoch": seconds / max(counter.epochs, 1), "batch_size": int(args.get("batch_size", 0)),
                    "gflop_per_step": gflop})
        print(f"{NAMES[name]} seed {seed}: MAE {test['MAE']:.3f} Corr {test['Corr']:.3f}, {counter.epochs} epochs, "
              f"{seconds / max(counter.epochs, 1):.3f} s/epoch", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mosi-trimodal-features"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="1111")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mmsa_reference.json"))
    args = ap.parse_args()
    try:
        import MMSA  # noqa: F401
    except ImportError:
        raise SystemExit("MMSA is not installed in this environment: see this script's docstring (a separate venv)") from None
    seeds = [int(s) for s in args.seeds.split(",")]
    res = {}
    with tempfile.TemporaryDirectory() as d:
        feats = mmsa_pickle(Path(args.data), Path(d) / "features.pkl")
        for name in args.models.split(","):
            res[NAMES[name]] = run_model(name, feats, seeds, Path(d))
    import MMSA
    import torch

    env = {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": 1, "date": time.strftime("%Y-%m-%d"),
           "mmsa": getattr(MMSA, "__version__", "2.2.1"), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "models": res}, indent=1) + "\n")
    print("\n| model | MAE | Corr | epochs | s/epoch |\n|---|---|---|---|---|")
    for n, rs in res.items():
        print(f"| {n} | {np.mean([r['test']['MAE'] for r in rs]):.3f} | {np.mean([r['test']['Corr'] for r in rs]):.3f} | "
              f"{np.mean([r['epochs'] for r in rs]):.0f} | {np.mean([r['s_per_epoch'] for r in rs]):.3f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
