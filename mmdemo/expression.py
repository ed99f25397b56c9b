"""mmdemo's own facial-expression CNN: 7 expression probabilities of a grey face crop.

    python -m mmdemo.expression --data ../shared/data --out results/expression

fer's CNN (the expression part of the face feature so far) was trained on FER-2013, so on
FER-2013 its probabilities are in-sample and no test there says what a new face gets. This network
learns from FER-2013's train split only, the epoch is chosen on its valid split, and its test split
(and the expression photos' test people) are read once, out of sample.

It is trained for the live signal as much as for accuracy: every crop is standardised (its own mean
and contrast removed, so a darker room or a different camera gain reads the same), and each training
image is shifted, scaled, rotated, mirrored, relit (gain, gamma, a light gradient) and given sensor
noise, the changes a webcam brings from one frame to the next. At run time the crop and its mirror
image are averaged.

Same classes and order as fer's (``FER_CLASSES``), so the 62-d face feature keeps its layout. What
ships is ``expression.safetensors`` + ``expression.json`` (config, metrics, data provenance) beside
the face head; :class:`mmdemo.encoders.FaceEncoder` uses it when given its path.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .device import resolve_device
from .encoders.face import FER_CLASSES

log = logging.getLogger(__name__)

SIZE = 48  # FER-2013's resolution: what the network reads
FORMAT = "mmdemo-expression/1"
WEIGHTS, CONFIG = "expression.safetensors", "expression.json"
NEGATIVE = tuple(FER_CLASSES.index(c) for c in ("angry", "disgust", "fear", "sad"))
HAPPY, NEUTRAL = FER_CLASSES.index("happy"), FER_CLASSES.index("neutral")


@dataclass(frozen=True)
class ExpressionConfig:
    width: int = 32  # channels of the first block (x2, x4, x8 after each pooling)
    epochs: int = 14
    batch_size: int = 64
    lr: float = 3e-3  # the one-cycle schedule's peak
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.4
    seed: int = 0
    device: str = "auto"


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each crop minus its mean, over its contrast (a flat crop is not blown up)."""
    m = x.mean((2, 3), keepdim=True)
    s = x.std((2, 3), keepdim=True).clamp_min(0.02)
    return (x - m) / s


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class ExpressionNet(nn.Module):
    """Four stages of two 3x3 convolutions (48 -> 24 -> 12 -> 6), global average pooling, 7 logits."""

    def __init__(self, width: int = 32, dropout: float = 0.4):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(1, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), _block(4 * w, 4 * w), nn.MaxPool2d(2),
            _block(4 * w, 8 * w), _block(8 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * w, len(FER_CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 48, 48) grey in [0, 1] -> (N, 7) logits."""
        return self.head(self.features(standardise(x)))


def to_input(crops) -> torch.Tensor:
    """uint8 grey crops, (H, W) or (N, H, W) of any square-ish size -> (N, 1, 48, 48) floats in [0, 1]."""
    arr = np.asarray(crops)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"grey crops must be (H, W) or (N, H, W), got {arr.shape}")
    if arr.shape[1:] != (SIZE, SIZE):
        arr = np.stack([cv2.resize(a, (SIZE, SIZE), interpolation=cv2.INTER_AREA if min(a.shape) >= SIZE else cv2.INTER_LINEAR)
                        for a in arr]) if len(arr) else np.zeros((0, SIZE, SIZE), arr.dtype)
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    return (x / 255.0 if arr.dtype == np.uint8 else x.clamp(0, 1)).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What a webcam changes between frames, drawn per image: shift (±10%), scale (±15%),
    rotation (±12°), mirror, gain (±20%), offset, gamma, a left-right light gradient, sensor noise."""
    n, dev = x.shape[0], x.device

    def u(*shape):  # uniform in [-0.5, 0.5)
        return torch.rand(*shape, generator=gen).to(dev) - 0.5

    ang, sc = u(n) * 2 * math.radians(12), 1 + u(n) * 0.3
    tx, ty = u(n) * 0.2, u(n) * 0.2
    flip = torch.where(u(n) < 0, -1.0, 1.0).to(dev)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False).clamp(0, 1)
    x = x ** torch.exp(u(n, 1, 1, 1) * 0.6)
    x = x * (1 + u(n, 1, 1, 1) * 0.4) + u(n, 1, 1, 1) * 0.2
    ramp = torch.linspace(-1, 1, x.shape[-1], device=dev).view(1, 1, 1, -1) * u(n, 1, 1, 1) * 0.2
    noise = torch.randn(x.shape, generator=gen).to(dev) * (u(n, 1, 1, 1) + 0.5) * 0.04
    return (x + ramp + noise).clamp(0, 1)


@torch.inference_mode()
def predict_proba(net: ExpressionNet, x: torch.Tensor, *, batch: int = 512, mirror: bool = True) -> np.ndarray:
    """(N, 7) probabilities; with ``mirror`` the mean over each crop and its mirror image."""
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        b = x[i : i + batch].to(dev)
        if mirror:  # one pass over the crops and their mirror images
            p = F.softmax(net(torch.cat([b, b.flip(-1)])), 1)
            p = (p[: len(b)] + p[len(b) :]) / 2
        else:
            p = F.softmax(net(b), 1)
        out.append(p.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(FER_CLASSES)), np.float32)


def polarity_of(probs: np.ndarray) -> np.ndarray:
    """-1 / 0 / +1: whichever of P(angry, disgust, fear or sad), P(neutral), P(happy) is largest
    (surprise, whose valence is ambiguous, is in none of the three)."""
    p = np.asarray(probs)
    grouped = np.stack([p[:, list(NEGATIVE)].sum(1), p[:, NEUTRAL], p[:, HAPPY]], 1)
    return grouped.argmax(1) - 1


def scores(probs: np.ndarray, emotions: np.ndarray, polarity: np.ndarray) -> dict:
    """7-class accuracy, and three-way polarity (accuracy, macro-F1) on the items that have one."""
    from .metrics import classification_metrics

    out = {"n": int(len(probs)), "accuracy7": float(np.mean(probs.argmax(1) == emotions)) if len(probs) else float("nan")}
    has = ~np.isnan(polarity)
    out["n_polarity"] = int(has.sum())
    out["polarity3"] = classification_metrics(polarity_of(probs[has]), polarity[has].astype(np.int64)) if has.any() else {}
    return out


def train_expression(train_x: torch.Tensor, train_y: np.ndarray, valid_x: torch.Tensor, valid_y: np.ndarray,
                     cfg: ExpressionConfig = ExpressionConfig(), *, progress: bool = True) -> tuple[ExpressionNet, dict]:
    """Train with augmentation and a one-cycle schedule; keep the epoch with the best valid accuracy."""
    dev = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = ExpressionNet(cfg.width, cfg.dropout).to(dev)
    channels_last = dev.type == "cpu"  # faster convolutions on the CPU
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ty = torch.as_tensor(train_y, dtype=torch.long)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.15)
    history, best, best_state, t0 = [], -1.0, None, time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(train_x), generator=gen)
        total, t_epoch = 0.0, time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"expression CNN, epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for s in bar:
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb = augment(train_x[idx].to(dev), gen)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(xb), ty[idx].to(dev), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = float(np.mean(predict_proba(net, valid_x).argmax(1) == valid_y)) if len(valid_x) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, len(train_x)), "valid_accuracy7": acc,
                        "seconds": time.perf_counter() - t_epoch})
        log.info("expression CNN epoch %d/%d: loss %.3f, valid accuracy %.3f", epoch + 1, cfg.epochs, history[-1]["train_loss"], acc)
        if acc > best or best_state is None:
            best, best_state = acc, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    net = ExpressionNet(cfg.width, cfg.dropout)
    net.load_state_dict(best_state)
    chosen = max(history, key=lambda h: h["valid_accuracy7"])["epoch"] if history else 0
    return net.eval(), {"history": history, "chosen_epoch": chosen, "valid_accuracy7": best, "seconds": time.perf_counter() - t0,
                        "device": str(dev)}


def save_expression(net: ExpressionNet, folder: str | Path, cfg: ExpressionConfig, info: dict) -> Path:
    """``expression.safetensors`` (fp16 weights, nothing executable) + ``expression.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    (folder / CONFIG).write_text(json.dumps({"format": FORMAT, "classes": list(FER_CLASSES), "config": asdict(cfg)} | info, indent=2) + "\n")
    return folder / WEIGHTS


def load_expression(path: str | Path) -> ExpressionNet:
    """The network from ``expression.safetensors`` (its ``expression.json`` beside it), loaded strictly, in fp32."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    meta_path = path.with_name(CONFIG)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: no readable {CONFIG} beside it ({err})") from None
    if meta.get("format") != FORMAT or meta.get("classes") != list(FER_CLASSES):
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} with classes {meta.get('classes')}, expected {FORMAT!r} with {list(FER_CLASSES)}")
    known = {f.name for f in fields(ExpressionConfig)}
    cfg = ExpressionConfig(**{k: v for k, v in meta.get("config", {}).items() if k in known})
    net = ExpressionNet(cfg.width, cfg.dropout)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def shipped_expression(checkpoints: str | Path) -> Path | None:
    """The expression CNN the shipped face head learned with (``unimodal/vision/expression.safetensors``),
    or None: the face head learned with fer's CNN, and the live face feature must read with it too."""
    path = Path(checkpoints) / "unimodal" / "vision" / WEIGHTS
    return path if path.exists() else None


# ----------------------------------------------------------------------------- data


def read_fer2013(folder: str | Path, *, limit_per_split: int | None = None, progress: bool = True) -> dict[str, dict]:
    """FER-2013 as given (``labels.csv``: path, emotion, polarity, split) -> per split: images
    (N, 48, 48) uint8, emotion index, polarity (nan for surprise), ids. Unreadable images are skipped
    and counted. ``limit_per_split``: a random subset of each split (fixed seed; the file is sorted by
    expression, so its first rows would all be one class)."""
    folder = Path(folder)
    with open(folder / "labels.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if limit_per_split is not None:
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    out: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for r in tqdm(rows, desc="reading FER-2013", disable=not progress, leave=False):
        split = r["split"]
        if limit_per_split is not None and seen.get(split, 0) >= limit_per_split:
            continue
        img = cv2.imread(str(folder / r["path"]), cv2.IMREAD_GRAYSCALE)
        d = out.setdefault(split, {"images": [], "emotion": [], "polarity": [], "ids": [], "unreadable": 0})
        if img is None or r["emotion"] not in FER_CLASSES:
            d["unreadable"] += 1
            continue
        seen[split] = seen.get(split, 0) + 1
        d["images"].append(img if img.shape == (SIZE, SIZE) else cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
        d["emotion"].append(FER_CLASSES.index(r["emotion"]))
        d["polarity"].append(float(r["polarity"]) if r["polarity"] not in ("", None) else np.nan)
        d["ids"].append(r["clip_id"])
    for d in out.values():
        d["images"] = np.stack(d["images"]) if d["images"] else np.zeros((0, SIZE, SIZE), np.uint8)
        d["emotion"], d["polarity"], d["ids"] = np.array(d["emotion"], np.int64), np.array(d["polarity"], np.float64), np.array(d["ids"])
    return out


PHOTO_EMOTIONS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy", "sadness": "sad",
                  "surprise": "surprise", "neutral": "neutral"}  # contempt has no FER-2013 class


def photo_crops(folder: str | Path, split: str = "test", *, limit: int | None = None, progress: bool = True) -> dict:
    """The expression photos of one split as the live encoder sees them: MediaPipe finds the face,
    the crop is the one an expression CNN reads there (:func:`mmdemo.encoders.face.expression_crop`)."""
    from .encoders.face import FaceEncoder

    folder = Path(folder)
    with open(folder / "labels.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    if limit is not None:  # a random subset (fixed seed), not the first rows
        rows = [rows[i] for i in sorted(np.random.default_rng(0).permutation(len(rows))[:limit])]
    enc = FaceEncoder(keep_crop=True)
    crops, emotion, pol, missed = [], [], [], 0
    for r in tqdm(rows, desc=f"faces in the photos ({split})", disable=not progress, leave=False):
        img = cv2.imread(str(folder / r["path"]), cv2.IMREAD_COLOR)
        res = enc.encode(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)) if img is not None else None
        if res is None or not res.present or "crop" not in res.info:
            missed += 1
            continue
        crops.append(res.info["crop"])
        name = PHOTO_EMOTIONS.get(r["emotion"])
        emotion.append(FER_CLASSES.index(name) if name else -1)
        pol.append(float(r["polarity"]) if r["polarity"] not in ("", None) else np.nan)
    return {"crops": np.stack(crops) if crops else np.zeros((0, 64, 64), np.uint8), "emotion": np.array(emotion, np.int64),
            "polarity": np.array(pol, np.float64), "no_face": missed}


def run(data: Path, out: Path, cfg: ExpressionConfig, *, limit: int | None = None, progress: bool = True) -> dict:
    """Train on FER-2013 train, choose the epoch on valid, read FER-2013 test and the photos' test people once."""
    fer = read_fer2013(data / "fer2013-faces", limit_per_split=limit, progress=progress)
    for need in ("train", "valid", "test"):
        if need not in fer or not len(fer[need]["images"]):
            raise SystemExit(f"{data / 'fer2013-faces'}: no readable {need} images")
    tr, va, te = fer["train"], fer["valid"], fer["test"]
    net, info = train_expression(to_input(tr["images"]), tr["emotion"], to_input(va["images"]), va["emotion"], cfg, progress=progress)
    result = {"trained_on": f"FER-2013 train ({len(tr['images'])} images)", "chosen_on": f"FER-2013 valid ({len(va['images'])})",
              "limit": limit} | info  # limit: at most this many images per split (a quick run), None for all
    result["fer2013_test"] = scores(predict_proba(net, to_input(te["images"])), te["emotion"], te["polarity"])
    photos = data / "facial-expressions-muxspace"
    if (photos / "labels.csv").exists():
        ph = photo_crops(photos, "test", limit=limit, progress=progress)
        p = predict_proba(net, to_input(ph["crops"])) if len(ph["crops"]) else np.zeros((0, len(FER_CLASSES)))
        keep = ph["emotion"] >= 0
        result["photos_test"] = scores(p[keep], ph["emotion"][keep], ph["polarity"][keep]) | {"no_face": ph["no_face"]}
    save_expression(net, out, cfg, result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.expression", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the shared data folder (with fer2013-faces/, and facial-expressions-muxspace/ for the photos' test)")
    ap.add_argument("--out", default="results/expression", help="where expression.safetensors and expression.json go")
    ap.add_argument("--epochs", type=int, default=ExpressionConfig.epochs)
    ap.add_argument("--width", type=int, default=ExpressionConfig.width)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--limit", type=int, help="at most this many images per split (a quick check)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.width < 1:
        ap.error("--epochs and --width must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (Path(args.data) / "fer2013-faces" / "labels.csv").exists():
        ap.error(f"{args.data}: no fer2013-faces/labels.csv")
    cfg = ExpressionConfig(width=args.width, epochs=args.epochs, seed=args.seed, device=args.device)
    r = run(Path(args.data), Path(args.out), cfg, limit=args.limit, progress=not args.quiet)
    for name in ("fer2013_test", "photos_test"):
        if name in r:
            s = r[name]
            print(f"{name}: 7-class accuracy {100 * s['accuracy7']:.1f}% ({s['n']}), three-way polarity accuracy "
                  f"{100 * s['polarity3'].get('accuracy', float('nan')):.1f}%, macro-F1 {100 * s['polarity3'].get('macro_f1', float('nan')):.1f} ({s['n_polarity']})")
    print(f"chosen epoch {r['chosen_epoch']} (valid accuracy {100 * r['valid_accuracy7']:.1f}%), {r['seconds']:.0f} s; wrote {Path(args.out) / WEIGHTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
