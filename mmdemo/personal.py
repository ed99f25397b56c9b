"""Personal models from a few self-labelled moments, and the path to a truly paired corpus.

A personal model is the selected fusion method's shipped model, fine-tuned on one person's labelled
moments (the live encoders' features of face, voice and words of the same seconds: truly paired).
It stays the same class, so the contributions (exact Shapley values, the method's own weights) work
as for the generic model. With 8 to a few hundred examples it must not forget what it knew: the
fine-tuning is full-batch Adam for a fixed number of steps on the squared error, with an L2 pull of
every weight toward its shipped value (L2-SP, Li et al. 2018, "Explicit inductive bias for
transfer learning with convolutional networks"); the bias vectors are not pulled back, so a person's
constant offsets are learned without a penalty. ``PersonalConfig``'s defaults (loss, steps, pull, pull on biases)
were chosen on the validation users of ``bench/personal.py`` (simulated users built with the live
encoders), never on its test users. The held-out error trains all its folds at once
(:func:`_held_out_batched`).

Command line (``python -m mmdemo.personal ...``):

- ``merge PROFILE ... --out DIR``: exported profiles (``.safetensors``) or profile folders of many
  people -> one feature folder (``labels.csv`` + ``<modality>.npy``), ``video_id`` = the person, and
  train/valid/test splits by person (a person's moments never span two splits);
- ``train --data DIR --out RUNS``: every fusion method with the one training loop on such a folder
  (the same as ``python -m mmdemo.train --fusion all``);
- ``reference --data ../shared/data --out checkpoints/``: the population's neutral face and voice
  features that the neutral-baseline calibration measures against (:mod:`mmdemo.calibration`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import DISPLAY_NAMES, MODALITIES
from .data import Split, split_by_group
from .fusion import Fusion
from .settings import output_problem
from .train import adam

log = logging.getLogger(__name__)
# cross_attention's CPU attention kernel has no vmap batching rule yet: torch loops over the folds inside it, correctly
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule",
                        category=UserWarning)


PERSONAL_LOSSES = ("mse", "l1")


class PersonalError(ValueError):
    """Moments that cannot give a personal model (too few, all one label): the message says why."""


@dataclass(frozen=True)
class PersonalConfig:
    steps: int = 50  # full-batch Adam steps
    lr: float = 3e-3
    anchor: float = 3.0  # L2-SP strength on the sum of squared distances of the weights from the shipped ones
    bias_anchor: float = 0.0  # the strength on bias vectors, as a fraction of ``anchor`` (a bias absorbs a constant shift of its input)
    loss: str = "mse"  # on the moments: "l1" (absolute error, what the held-out error measures) or "mse" (squared error)
    min_moments: int = 8
    loo_max: int = 24  # up to this many moments the error is leave-one-out, beyond it 10-fold

    def __post_init__(self):
        if self.loss not in PERSONAL_LOSSES:
            raise ValueError(f"unknown personal loss {self.loss!r}; choose one of {', '.join(PERSONAL_LOSSES)}")
        for key in ("anchor", "bias_anchor"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")


def check_moments(split: Split, cfg: PersonalConfig = PersonalConfig()) -> None:
    n = len(split)
    if n < cfg.min_moments:
        raise PersonalError(f"label at least {cfg.min_moments} moments first (this profile has {n})")
    if float(np.ptp(split.labels)) == 0.0:
        raise PersonalError(f"every moment is labelled {split.labels[0]:+g}: label some moments differently, "
                            "or the model can only learn to say that one value")
    if not any(p.any() for p in split.present.values()):
        raise PersonalError("no moment has any modality present")


def _tensors(split: Split, model: Fusion, index=None):
    device = next(model.parameters()).device
    idx = np.arange(len(split)) if index is None else np.asarray(index)
    feats = {m: torch.as_tensor(split.feats[m][idx], device=device) for m in model.modalities}
    present = {m: torch.as_tensor(split.present[m][idx], device=device) for m in model.modalities}
    return feats, present, torch.as_tensor(split.labels[idx], device=device)


def is_bias(name: str) -> bool:
    """A bias vector of a layer, by its parameter name: ``bias``, ``...bias`` and the like of
    ``nn.MultiheadAttention``'s ``in_proj_bias``."""
    return name.rsplit(".", 1)[-1].endswith("bias")


def _error(pred: torch.Tensor, y: torch.Tensor, cfg: PersonalConfig) -> torch.Tensor:
    """Per-moment training error of a personal fit."""
    if cfg.loss == "mse":
        return (pred - y) ** 2
    if cfg.loss == "l1":
        return (pred - y).abs()
    raise ValueError(f"unknown personal loss {cfg.loss!r}")


def _optimise(params: list[torch.Tensor], anchor: list[torch.Tensor], names: list[str], loss_fn, cfg: PersonalConfig, on_step=None) -> None:
    """Full-batch Adam on ``loss_fn()`` with the L2 pull of ``params`` toward ``anchor`` (L2-SP; on
    the parameters ``names`` calls biases, ``cfg.bias_anchor`` times as strong);
    ``on_step(i, steps)`` after every 10th step and the last."""
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = adam([{"params": params, "lr": cfg.lr, "weight_decay": 0.0}])
    if len(names) != len(params):
        raise ValueError(f"{len(names)} parameter names for {len(params)} parameters")
    scale = [2 * cfg.anchor * (cfg.bias_anchor if is_bias(n) else 1.0) for n in names]
    for i in range(cfg.steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if cfg.anchor:  # the gradient of anchor * sum((p - p0)^2) (each tensor's share), in fused calls
            pull = torch._foreach_sub(params, anchor)
            torch._foreach_mul_(pull, scale)
            torch._foreach_add_([p.grad for p in params], pull)
        opt.step()
        if on_step is not None and ((i + 1) % 10 == 0 or i + 1 == cfg.steps):
            on_step(i + 1, cfg.steps)


def fit_personal(generic: Fusion, split: Split, cfg: PersonalConfig = PersonalConfig(), index=None) -> Fusion:
    """A copy of ``generic`` fine-tuned on ``split`` (rows ``index``; all when None), pulled toward
    the generic weights. The generic model is not changed."""
    model = copy.deepcopy(generic).eval()  # eval: no dropout noise on a handful of examples
    named = list(model.named_parameters())
    names, params = [n for n, _ in named], [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
    anchor = [p.detach().clone() for p in params]
    feats, present, y = _tensors(split, model, index)
    _optimise(params, anchor, names, lambda: _error(model(feats, present).prediction, y, cfg).mean(), cfg)
    for p in params:
        p.requires_grad_(False)
    return model.eval()


def _held_out_batched(generic: Fusion, split: Split, held: list[np.ndarray], cfg: PersonalConfig, on_step=None) -> np.ndarray:
    """Every fold's personal model trained at once: the parameters stacked along a fold axis and the
    model mapped over it (``torch.func.vmap``); fold k's loss weighs only its training moments. Adam
    and the pull toward the shipped weights act element by element, so in exact arithmetic each
    fold's slice takes the same steps as ``fit_personal`` on that fold's training moments; in floats
    the two differ by rounding, which grows over the steps (more with the l1 loss, whose gradient
    flips sign at every moment it fits). One forward and backward pass per step instead of one per
    fold: several times faster for a few dozen moments, about the same for hundreds."""
    from torch.func import functional_call, vmap

    model = copy.deepcopy(generic).eval()
    names = [k for k, _ in model.named_parameters()]
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    k_folds, n = len(held), len(split)
    stacked = {k: v.unsqueeze(0).repeat(k_folds, *[1] * v.dim()).requires_grad_(True) for k, v in start.items()}
    feats, present, y = _tensors(split, model)
    weight = torch.ones(k_folds, n, device=y.device)
    for k, test in enumerate(held):
        weight[k, torch.as_tensor(test, device=y.device)] = 0.0
    weight = weight / weight.sum(1, keepdim=True)  # fold k: the mean over its training moments
    every_fold = vmap(lambda p: functional_call(model, (p, buffers), (feats, present)).prediction)
    params = [stacked[k] for k in names]
    anchor = [stacked[k].detach().clone() for k in names]  # the same shape as the stacked weights (the fused update's fast path)
    _optimise(params, anchor, names, lambda: (_error(every_fold(stacked), y, cfg) * weight).sum(), cfg, on_step)
    with torch.no_grad():
        pred = every_fold(stacked).float().cpu().numpy()  # (folds, moments)
    out = np.zeros(n, np.float32)
    for k, test in enumerate(held):
        out[test] = pred[k, test]
    return out


@torch.inference_mode()
def predict(model: Fusion, split: Split, index=None) -> np.ndarray:
    feats, present, _ = _tensors(split, model, index)
    return model(feats, present).prediction.float().cpu().numpy()


def folds(n: int, cfg: PersonalConfig = PersonalConfig(), seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Held-out index sets: one per moment up to ``cfg.loo_max`` moments, else 10 folds."""
    if n <= cfg.loo_max:
        return [np.array([i]) for i in range(n)], "leave-one-out"
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[k::10]) for k in range(10)], "10-fold"


def cross_validate(generic: Fusion, split: Split, cfg: PersonalConfig = PersonalConfig(), *, progress=None, batched: bool = True) -> dict:
    """Held-out error of the personal model vs the generic one on the same moments: each fold's
    personal model never saw its held-out moments. The folds are trained together
    (:func:`_held_out_batched`); a method whose forward pass cannot be mapped over stacked weights
    (or ``batched=False``) trains them one after another. ``progress(i, n)`` reports i of n steps
    (folds trained together) or folds (one after another) done."""
    check_moments(split, cfg)
    n = len(split)
    held, scheme = folds(n, cfg)
    t0 = time.perf_counter()
    personal = None
    if progress is not None:
        progress(0, cfg.steps if batched else len(held))
    if batched:
        try:
            personal = _held_out_batched(generic, split, held, cfg, progress)
        except RuntimeError as err:  # an operation torch.func cannot map (or memory): the per-fold loop trains the same models
            first = (str(err).splitlines() or [repr(err)])[0][:200]
            log.warning("%s: held-out folds trained one by one (%s)", type(generic).__name__, first)
    if personal is None:
        personal = np.zeros(n, np.float32)
        for i, test in enumerate(held):
            train = np.setdiff1d(np.arange(n), test)
            personal[test] = predict(fit_personal(generic, split, cfg, train), split, test)
            if progress is not None:
                progress(i + 1, len(held))
    generic_pred = predict(generic, split)
    return {"moments": n, "scheme": scheme, "generic_mae": float(np.mean(np.abs(generic_pred - split.labels))),
            "personal_mae": float(np.mean(np.abs(personal - split.labels))), "seconds": time.perf_counter() - t0,
            "fit_steps": cfg.steps, "fit_lr": cfg.lr, "fit_anchor": cfg.anchor, "fit_bias_anchor": cfg.bias_anchor, "fit_loss": cfg.loss}


# ============================================================================ many people -> one corpus


def _load_people(sources: list[Path], dims: dict[str, int]) -> list[tuple[str, list[dict], dict[str, np.ndarray], np.ndarray]]:
    """(person, moment rows, features, labels) of each exported profile file or profile folder."""
    from .profile import Profile, ProfileError, read_profile_file, read_under

    people = []
    for src in sources:
        if src.is_dir():
            if not (src / "moments").exists():
                raise PersonalError(f"{src}: not a profile folder (no moments/)")
            try:
                prof = Profile.at(src, dims)
                sp = prof.split()  # faces without any baseline where each moment's offset is known, as the generic models read them
            except ProfileError as err:
                raise PersonalError(str(err) if str(src) in str(err) else f"{src}: {err}") from None
            rows = [{"clip_id": i, "text": t} for i, t in zip(sp.ids, sp.text)]
            people.append((prof.person, rows, sp.feats, sp.labels))
        else:
            try:
                parsed = read_profile_file(src, dims)
            except ProfileError as err:  # its messages speak of "the profile file": say which one
                raise PersonalError(f"{src}: {err}") from None
            person = parsed["info"].get("person")
            if not isinstance(person, str) or not person.isalnum():
                raise PersonalError(f"{src}: the profile names no person")
            people.append((person[:32], parsed["moments"], read_under(parsed["feats"]), parsed["labels"]))
    return people


def merge(sources: list[str | Path], out: str | Path, *, dims: dict[str, int] | None = None, valid: float = 0.2, test: float = 0.2) -> dict:
    """Write one feature folder from many people's profiles (see the module docstring)."""
    from .encoders import DIMS

    dims = dims or dict(DIMS)
    sources = [Path(s) for s in sources]
    loaded = _load_people(sources, dims)
    empty = [str(src) for src, p in zip(sources, loaded) if not len(p[1])]
    if empty:  # a profile without moments adds no one: said, not silently dropped
        log.warning("no labelled moments in %s: left out", ", ".join(empty))
    people = [p for p in loaded if len(p[1])]
    ids = [p[0] for p in people]
    if len(set(ids)) != len(ids):
        raise PersonalError("the same person appears twice; merge each profile once")
    seen: dict[str, str] = {}
    for person, moments, _, _ in people:
        for r in moments:
            other = seen.setdefault(r["clip_id"], person)
            if other != person:  # one moment imported into two people's profiles: it would span two splits
                raise PersonalError(f"moment {r['clip_id']} is in the profiles of two people ({other[:8]}, {person[:8]}); remove it from one")
    if len(people) < 3:
        raise PersonalError(f"{len(people)} person(s): person-independent train/valid/test splits need at least 3 people")
    split = split_by_group(ids, valid=valid, test=test, salt="mmdemo-personal")
    # every split gets someone: the hash decides, then the largest split lends a person where one is empty
    for need in ("test", "valid", "train"):
        if need not in split:
            donor = max(("train", "valid", "test"), key=lambda s: (split == s).sum())
            split[int(np.flatnonzero(split == donor)[0])] = need
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, arrays = [], {m: [] for m in MODALITIES}
    for (person, moments, feats, labels), s in zip(people, split):
        for i, r in enumerate(moments):
            rows.append({"clip_id": f"{person[:12]}-{r['clip_id']}", "label": f"{float(labels[i]):g}", "split": s,
                         "text": r.get("text", ""), "video_id": person})
        for m in MODALITIES:
            arrays[m].append(np.asarray(feats[m], np.float32))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "label", "split", "text", "video_id"])
        w.writeheader()
        w.writerows(rows)
    for m in MODALITIES:
        np.save(out / f"{m}.npy", np.concatenate(arrays[m]), allow_pickle=False)
    counts = {s: int(sum(1 for r in rows if r["split"] == s)) for s in ("train", "valid", "test")}
    people_per = {s: int((split == s).sum()) for s in ("train", "valid", "test")}
    return {"people": len(people), "moments": len(rows), "moments_per_split": counts, "people_per_split": people_per, "folder": str(out),
            "without_moments": empty}


# ============================================================================ the neutral reference


def neutral_reference(data: str | Path, *, limit_per_split: int | None = None, progress: bool = True, expression: Path | None = None):
    """Median raw features of the neutral training clips: face from the expression photos (label
    neutral; ``expression``: the expression CNN the face models read with, default fer's), voice from
    the neutral/calm clips of RAVDESS, ASED and EmoSpeech (train speakers)."""
    from .benchmark import CORPORA
    from .calibration import NeutralReference
    from .crosscorpus import VOICE_CORPORA, voice_labels
    from .extract import run_extraction

    data = Path(data)
    vectors, source = {}, {}
    face_folder = data / CORPORA["faces"]["folder"]
    with open(face_folder / "labels.csv", encoding="utf-8") as f:
        neutral_faces = {r["clip_id"] for r in csv.DictReader(f) if r.get("emotion", "").strip().lower() == "neutral"}
    ds, _, _ = run_extraction(face_folder, face_folder / "labels.csv", modalities=("vision",), label_col="polarity",
                              limit_per_split=limit_per_split, progress=progress, expression=expression)
    tr = ds.splits["train"]
    keep = tr.present["vision"] & np.isin(tr.ids, list(neutral_faces))
    if not keep.any():
        raise PersonalError(f"{face_folder}: no neutral training photo with a face found")
    vectors["vision"] = np.median(tr.feats["vision"][keep], axis=0)
    source["vision"] = f"{int(keep.sum())} neutral training photos of {CORPORA['faces']['folder']}"
    xs, parts = [], []
    for name, c in VOICE_CORPORA.items():
        folder = data / c["folder"]
        labels = voice_labels(folder)
        ds, _, _ = run_extraction(folder, folder / "labels.csv", modalities=("audio",), label_col="polarity", transcribe=False,
                                  limit_per_split=limit_per_split, progress=progress)
        tr = ds.splits["train"]
        keep = tr.present["audio"] & np.array([i in labels and labels[i].cls == 0 for i in tr.ids], bool)
        xs.append(tr.feats["audio"][keep])
        parts.append(f"{int(keep.sum())} {name}")
    if not sum(len(x) for x in xs):
        raise PersonalError("no neutral training clip with speech found in the voice corpora")
    vectors["audio"] = np.median(np.concatenate(xs), axis=0)
    source["audio"] = "neutral/calm training clips: " + ", ".join(parts)
    return NeutralReference({m: v.astype(np.float32) for m, v in vectors.items()}, source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.personal", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="many people's exported profiles -> one person-independent feature folder")
    m.add_argument("profiles", nargs="+", type=Path, help="exported profile files (.safetensors) or profile folders")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--train", action="store_true", help="then train every fusion method on it (into OUT/runs)")
    t = sub.add_parser("train", help="train every fusion method on a merged folder (python -m mmdemo.train --fusion all)")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, default=Path("runs/personal"))
    r = sub.add_parser("reference", help="measure the neutral face and voice reference of the calibration")
    r.add_argument("--data", type=Path, default=Path("../shared/data"))
    r.add_argument("--out", type=Path, default=Path("checkpoints"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .profile import ProfileError
    from .train import main as train_main

    problem = output_problem(args.out, folder=True)
    if problem:
        ap.error(f"--out: {problem}")
    try:
        if args.cmd == "merge":
            summary = merge(args.profiles, args.out)
            print(f"merged {summary['people']} people, {summary['moments']} moments into {summary['folder']}: "
                  + ", ".join(f"{s} {summary['moments_per_split'][s]} moments of {summary['people_per_split'][s]} people"
                              for s in ("train", "valid", "test")))
            if args.train:
                return train_main(["--fusion", "all", "--data", str(args.out), "--out", str(args.out / "runs")])
        elif args.cmd == "train":
            return train_main(["--fusion", "all", "--data", str(args.data), "--out", str(args.out)])
        else:
            from .expression import shipped_expression

            # the face models of the checkpoints in --out read with this expression CNN (fer's when none ships)
            ref = neutral_reference(args.data, expression=shipped_expression(args.out))
            path = ref.save(args.out)
            print(f"wrote {path}: " + "; ".join(f"{DISPLAY_NAMES[k]}: {v}" for k, v in ref.source.items()))
    except (PersonalError, ProfileError, OSError) as err:  # OSError: a folder that exists already, a full disk, ...
        ap.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
