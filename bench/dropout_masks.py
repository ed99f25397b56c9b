"""Dropout masks on the CPU: ``F.dropout`` against mmdemo's ``Dropout`` (the same masks, drawn with
``torch.rand`` where this CPU's ``bernoulli_`` kernel draws the same numbers), and what that does to
a training epoch.

1. One mask per call, train mode, p = 0.5, one thread: microseconds per call for a few layer shapes
   of the fusion networks (median of ``--rounds`` rounds of ``--repeats`` calls).
2. ``concat`` (width 128, dropout 0.5, batch 128) trained on a CMU-MOSI-sized synthetic set of pooled
   vectors, one thread: seconds per epoch with every dropout layer as it ships and with every one
   forced to ``F.dropout``, in alternating turns; the two runs train the same model to the bit.

    python bench/dropout_masks.py [--repeats 2000] [--rounds 3] [--epochs 5]
Prints a table and writes bench/results/dropout_masks.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model  # noqa: E402
from mmdemo.fusion import FusionConfig, create_fusion  # noqa: E402
from mmdemo.fusion.base import Dropout, _rand_draws_bernoulli  # noqa: E402
from mmdemo.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from mmdemo.train import TrainConfig, fit  # noqa: E402

SHAPES = [(16, 128), (128, 128), (128, 256)]


def per_call_us(fn, x: torch.Tensor, repeats: int) -> float:
    for _ in range(min(50, repeats)):
        fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t) / repeats * 1e6


def epoch_seconds(data, epochs: int, plain: bool) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = create_fusion("concat", dims=data.dims, cfg=FusionConfig(hidden=128, dropout=0.5))
    if plain:  # every dropout layer as nn.Dropout draws its mask
        for mod in model.modules():
            if isinstance(mod, Dropout):
                mod.forward = lambda x, mod=mod: F.dropout(x, mod.p, mod.training, mod.inplace)
    res = fit(model, data, TrainConfig(epochs=epochs, patience=epochs, batch_size=128, seed=0, device="cpu"), progress=False)
    return res.seconds_per_epoch, model.state_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2000, help="calls per shape and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs of concat per round and way (0: skip)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dropout_masks.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or args.epochs < 0:
        ap.error("--repeats and --rounds must be at least 1, --epochs at least 0")
    torch.set_num_threads(1)
    layer = Dropout(0.5).train()
    rows = []
    for shape in SHAPES:
        x = torch.randn(shape)
        plain = [per_call_us(lambda t: F.dropout(t, 0.5, True), x, args.repeats) for _ in range(args.rounds)]
        ours = [per_call_us(layer, x, args.repeats) for _ in range(args.rounds)]
        rows.append({"shape": list(shape), "f_dropout_us": float(np.median(plain)), "mmdemo_us": float(np.median(ours))})
    train = None
    if args.epochs:
        data = make_synthetic(SyntheticSpec(seq_len=0, seed=0))
        plain, ours, same = [], [], True
        for _ in range(args.rounds):
            a, sa = epoch_seconds(data, args.epochs, plain=True)
            b, sb = epoch_seconds(data, args.epochs, plain=False)
            plain.append(a)
            ours.append(b)
            same &= all(torch.equal(sa[k], sb[k]) for k in sa)
        train = {"method": "concat", "hidden": 128, "dropout": 0.5, "batch_size": 128, "epochs": args.epochs,
                 "f_dropout_s_per_epoch": float(np.median(plain)), "mmdemo_s_per_epoch": float(np.median(ours)), "same_weights": bool(same)}
    fast = _rand_draws_bernoulli()
    print(f"the fast path is {'on' if fast else 'off (this CPU draws bernoulli_ otherwise: mmdemo uses F.dropout)'}; one thread, p = 0.5\n")
    print("| mask | F.dropout (us) | mmdemo Dropout (us) | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape'][0]} x {r['shape'][1]} | {r['f_dropout_us']:.1f} | {r['mmdemo_us']:.1f} | {r['f_dropout_us'] / r['mmdemo_us']:.2f}x |")
    if train:
        print(f"\nconcat (width 128, dropout 0.5, batch 128), pooled synthetic set, {args.epochs} epochs x {args.rounds} rounds: "
              f"{train['f_dropout_s_per_epoch']:.4f} s/epoch with F.dropout, {train['mmdemo_s_per_epoch']:.4f} with mmdemo's "
              f"({train['mmdemo_s_per_epoch'] / train['f_dropout_s_per_epoch']:.2f}x the time); the same weights: {train['same_weights']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": 1, "torch": torch.__version__}
    out.write_text(json.dumps(env | {"fast_path": fast, "masks": rows, "training": train}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
