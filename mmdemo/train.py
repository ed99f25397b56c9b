"""One training loop for every fusion method, and the CLI that trains and compares them.

    python -m mmdemo.train --fusion weighted --data features.npz --out runs/
    python -m mmdemo.train --fusion all --data features.npz --out runs/   # + comparison table

Adam, modality dropout (each modality hidden with probability p, all of them now and then, so every
model also learns what to say from any subset, including none), early stopping on the validation
MAE with the best weights restored, seeds, a tqdm bar, CPU or CUDA. The whole dataset lives on the
device as tensors and batches are indexed there (no DataLoader workers).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import save_fusion
from .data import FeatureDataset, Split, load_dataset, with_context
from .device import resolve_device
from .fusion import Fusion, FusionConfig, create_fusion, list_fusions
from .fusion.base import LOSSES, num_params
from .metrics import HEADLINE, jsonable, regression_metrics
from .settings import COUNT, NON_NEGATIVE, POSITIVE, SHARE, as_flags, check_ranges, output_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 8  # epochs without a better validation MAE before stopping
    modality_dropout: float = 0.25
    grad_clip: float = 1.0  # 0: no clipping
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_ranges(self, [(("epochs", "batch_size", "patience"), COUNT), (("lr",), POSITIVE),
                            (("weight_decay", "grad_clip"), NON_NEGATIVE), (("modality_dropout",), SHARE)])


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs_run, 1)


class Batches:
    """A split as tensors on one device (features, availability, labels and the step masks of
    padded sequences)."""

    def __init__(self, split: Split, modalities: tuple[str, ...], device: torch.device | str):
        device = torch.device(device)
        self.feats = {m: torch.as_tensor(split.feats[m], device=device) for m in modalities}
        self.steps = {m: torch.as_tensor(split.steps[m], device=device) for m in modalities if m in split.steps}
        self.avail = torch.stack([torch.as_tensor(split.present[m], device=device) for m in modalities], dim=1)  # (N, M)
        self.labels = torch.as_tensor(split.labels, device=device)
        self.modalities = modalities

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
        return ({m: x[idx] for m, x in self.feats.items()}, self.avail[idx], self.labels[idx],
                {m: s[idx] for m, s in self.steps.items()})

    def prepared(self, model: Fusion) -> Prepared:
        """The split through ``model.prepare`` once (standardised, absent rows and padding zeroed),
        so that a training step only indexes it."""
        with torch.no_grad():
            x, avail, steps = model.prepare(self.feats, {m: self.avail[:, j] for j, m in enumerate(self.modalities)}, self.steps)
        return Prepared(x, avail, steps, self.labels)


@dataclass
class Prepared:
    """A split as :meth:`Fusion.prepare` returns it, for :meth:`Fusion.step_loss` and :meth:`Fusion.fuse`."""

    x: dict[str, torch.Tensor]
    avail: torch.Tensor  # (N, M) bool, as prepare returns it (a sequence of nothing but padding is absent)
    steps: dict[str, torch.Tensor | None]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
        return ({m: t[idx] for m, t in self.x.items()}, self.avail[idx], self.labels[idx],
                {m: None if s is None else s[idx] for m, s in self.steps.items()})


def normalization_stats(split: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-modality mean/std over present training rows (and their real time steps: padding is
    not data)."""
    stats = {}
    for m, x in split.feats.items():
        if m in split.steps:
            flat = x[split.present[m][:, None] & split.steps[m]].astype(np.float64)  # (real steps, D)
        else:
            flat = x[split.present[m]].reshape(-1, x.shape[-1]).astype(np.float64)
        flat = flat[np.isfinite(flat).all(axis=1)]
        if len(flat) < 2:
            mean, std = np.zeros(x.shape[-1]), np.ones(x.shape[-1])
        else:
            mean, std = flat.mean(axis=0), flat.std(axis=0)
        stats[m] = (torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    return stats


@torch.inference_mode()
def predict(model: Fusion, batches: Batches | Prepared, batch_size: int = 1024) -> np.ndarray:
    """Predictions for every row, ``batch_size`` rows at a time. A :class:`Prepared` split goes
    straight to the model's ``fuse``: it must have been prepared by this model, with the
    normalisation it has now (``Batches.prepared(model)``)."""
    model.eval()
    out = []
    for start in range(0, len(batches), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(batches)), device=batches.labels.device)
        feats, avail, _, steps = batches.take(idx)
        if isinstance(batches, Prepared):
            out.append(model.fuse(feats, avail, steps).prediction.float().cpu())
        else:
            present = {m: avail[:, j] for j, m in enumerate(batches.modalities)}
            out.append(model(feats, present, steps).prediction.float().cpu())
    return torch.cat(out).numpy()


def adam(groups: list[dict]) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel for every parameter: about 10x less optimizer time per
    step than the per-tensor loop on CPU for these small models); the per-tensor loop where a build
    has no fused kernel for the device."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(groups)


def fit(model: Fusion, data: FeatureDataset, cfg: TrainConfig = TrainConfig(), *, progress: bool = True) -> FitResult:
    """Train ``model`` on ``data['train']``, early-stopping on ``data['valid']`` MAE; the best
    weights are loaded back into ``model`` before returning."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.set_normalization(normalization_stats(data.splits["train"]))
    model.to(device)
    # each split through the model's normalisation once: a step only indexes it
    train = Batches(data.splits["train"], model.modalities, device).prepared(model)
    valid = Batches(data.splits["valid"], model.modalities, device).prepared(model)
    opt = adam(model.param_groups(lr=cfg.lr, weight_decay=cfg.weight_decay))
    params = [p for p in model.parameters() if p.requires_grad]  # listed once: walking the modules every step is not free
    best, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {model.name}", disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train), generator=gen).to(device)
        total, count = 0.0, 0
        for s in range(0, len(train), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            x, avail, y, steps = train.take(idx)
            drop = (torch.rand(avail.shape, generator=gen) < cfg.modality_dropout).to(device)
            loss = model.step_loss(x, avail, avail & ~drop, y, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        valid_mae = float(np.mean(np.abs(predict(model, valid) - data.splits["valid"].labels)))
        history.append({"epoch": epoch, "train_loss": total / count, "valid_mae": valid_mae})
        bar.set_postfix(loss=f"{total / count:.3f}", valid_mae=f"{valid_mae:.3f}")
        if valid_mae < best - 1e-4:
            best, best_epoch, stale = valid_mae, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch, epochs_run=epoch, seconds=time.perf_counter() - start, history=history)


def evaluate(model: Fusion, split: Split, device: torch.device | str | None = None) -> dict[str, float]:
    """Test metrics of ``model`` on ``split``, computed on the model's own device unless told."""
    return regression_metrics(predict(model, Batches(split, model.modalities, device or model.device)), split.labels)


def train_method(
    name: str, data: FeatureDataset, fusion_cfg: FusionConfig = FusionConfig(), train_cfg: TrainConfig = TrainConfig(), *, progress: bool = True
) -> tuple[Fusion, FitResult, dict]:
    """Build, train and test one registered method. Returns (model, fit result, test metrics)."""
    torch.manual_seed(train_cfg.seed)
    model = create_fusion(name, dims=data.dims, cfg=fusion_cfg)
    result = fit(model, data, train_cfg, progress=progress)
    return model, result, evaluate(model, data.splits["test"])


def mean_baseline(data: FeatureDataset) -> dict[str, float]:
    """The trivial baseline every method must beat: predict the training-set mean."""
    test = data.splits["test"]
    return regression_metrics(np.full(len(test), data.splits["train"].labels.mean()), test.labels)


LABELS = {"mae": "MAE", "corr": "Corr", "acc2_has0": "Acc-2 (has-0)", "acc2_non0": "Acc-2 (non-0)", "f1_non0": "F1 (non-0)", "acc7": "Acc-7"}


def comparison_markdown(rows: list[dict]) -> str:
    head = ["method", "params", "epochs", "s/epoch"] + [LABELS[k] for k in HEADLINE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['params']:,}" if r.get("params") else "-", str(r.get("epochs") or "-")]
        cells.append(f"{r['seconds_per_epoch']:.2f}" if r.get("seconds_per_epoch") else "-")
        for k in HEADLINE:
            v = r["test"].get(k)
            cells.append("-" if v is None or v != v else (f"{v:.3f}" if k in ("mae", "corr") else f"{100 * v:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.train", description="Train fusion methods on a feature dataset.")
    ap.add_argument("--fusion", required=True, help=f"one of {', '.join(list_fusions())}, a comma list, or 'all'")
    ap.add_argument("--data", required=True, help="feature dataset: .npz from mmdemo, a MulT/MMSA CMU-MOSI .pkl, or a folder of labels.csv + <modality>.npy (cmu-mosi-trimodal-features)")
    ap.add_argument("--context", action="store_true",
                    help="add to each row's features the mean of its video's rows (the neighbouring utterances bc-LSTM reads; needs video ids, e.g. the video_id column of a feature folder)")
    ap.add_argument("--out", default="runs", help="output folder: one checkpoint folder per method + comparison")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--patience", type=int, default=TrainConfig.patience)
    ap.add_argument("--modality-dropout", type=float, default=TrainConfig.modality_dropout)
    ap.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    ap.add_argument("--hidden", type=int, default=FusionConfig.hidden)
    ap.add_argument("--dropout", type=float, default=FusionConfig.dropout)
    ap.add_argument("--loss", choices=LOSSES, default=FusionConfig.loss,
                    help="the prediction's loss: l1 (MAE, the literature's; snaps to a label on labels of a few values) or huber (a graded reading between them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    names = list_fusions() if args.fusion == "all" else [n.strip() for n in args.fusion.split(",") if n.strip()]
    if not names:
        ap.error(f"--fusion names no method; choose from {', '.join(list_fusions())} or all")
    for n in names:
        if n not in list_fusions():
            ap.error(f"unknown fusion {n!r}; choose from {', '.join(list_fusions())} or all")
    try:  # settings out of range or a misspelt device: refused before the data loads
        fcfg = FusionConfig(hidden=args.hidden, dropout=args.dropout, loss=args.loss)
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience, weight_decay=args.weight_decay,
                           modality_dropout=args.modality_dropout, seed=args.seed, device=args.device)
        resolve_device(args.device)
    except ValueError as err:  # the settings' field names, as the flags that set them
        ap.error(as_flags(str(err)))
    problem = output_problem(args.out, folder=True)
    if problem:
        ap.error(f"--out: {problem}")
    try:
        data = load_dataset(args.data)
        if args.context:
            data = with_context(data)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
        ap.error(f"{args.data}: {err}" if str(args.data) not in str(err) else str(err))
    empty = [s for s in ("train", "valid", "test") if len(data.splits[s]) == 0]
    if empty:
        ap.error(f"{args.data}: the {', '.join(empty)} split is empty (training needs train and valid, scoring needs test)")
    print(f"data: {args.data}: {data.describe()}")
    out = Path(args.out)
    rows = [{"method": "mean (baseline)", "test": mean_baseline(data)}]
    for n in tqdm(names, desc="methods", disable=args.quiet or len(names) == 1):
        model, res, test = train_method(n, data, fcfg, tcfg, progress=not args.quiet)
        valid = evaluate(model, data.splits["valid"])
        metrics = {"test": test, "valid": valid, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "seconds": res.seconds}
        provenance = {"data": str(args.data), "context": args.context, "data_meta": data.meta, "train_config": asdict(tcfg)}
        if len(rows) == 1:  # before the first checkpoint is replaced (not before: a run stopped while training changed nothing)
            for stale in ("comparison.md", "comparison.json"):  # an earlier run's table would not match checkpoints half-replaced by this one
                (out / stale).unlink(missing_ok=True)
        save_fusion(model, out / n, extra={"metrics.json": jsonable(metrics), "provenance.json": jsonable(provenance)})
        rows.append({"method": n, "params": num_params(model), "epochs": res.epochs_run, "seconds_per_epoch": res.seconds_per_epoch, "test": test})
    table = comparison_markdown(rows)
    print(f"\ntest split ({len(data.splits['test'])} samples):\n{table}")
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(jsonable(rows), indent=2) + "\n")
    print(f"\nwrote {out / 'comparison.md'} and {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
