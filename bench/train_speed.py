"""Training speed of every fusion method on a CMU-MOSI-sized synthetic set.

2199 samples (1284 / 229 / 686), text 300-d, audio 74-d, vision 35-d, as sequences of 50 steps and
as pooled vectors. Per method and device: parameters, seconds per epoch (mean of the timed epochs
after one warm-up epoch; an epoch includes its validation pass) and, with --full, the wall time of
a complete training run with the default early stopping. The CPU, and CUDA when present, unless
--devices names others.

    python bench/train_speed.py                      # per-epoch table
    python bench/train_speed.py --full               # + full training runs (the "< 2 min" target)
    python bench/train_speed.py --devices cuda       # the GPU only
Writes bench/results/train_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import devices as parse_devices  # noqa: E402
from mmdemo.fusion import FusionConfig, create_fusion, list_fusions  # noqa: E402
from mmdemo.fusion.base import num_params  # noqa: E402
from mmdemo.synthetic import SyntheticSpec, make_synthetic  # noqa: E402
from mmdemo.train import TrainConfig, fit  # noqa: E402


def time_epochs(name: str, data, device: str, epochs: int) -> float:
    torch.manual_seed(0)
    model = create_fusion(name, dims=data.dims, cfg=FusionConfig())
    fit(model, data, TrainConfig(epochs=1, patience=1, device=device), progress=False)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    res = fit(model, data, TrainConfig(epochs=epochs, patience=epochs + 1, device=device), progress=False)
    return res.seconds / res.epochs_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per method")
    ap.add_argument("--full", action="store_true", help="also time complete default training runs")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--devices", default=None, help="e.g. cuda: only these (default: the CPU, and CUDA when present)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = ap.parse_args()
    methods = list_fusions() if args.methods == "all" else args.methods.split(",")
    try:
        devices = parse_devices(args.devices)
    except ValueError as err:
        ap.error(f"--devices: {err}")
    variants = {"seq50": 50, "pooled": 0}
    rows = []
    for vname, seq in variants.items():
        data = make_synthetic(SyntheticSpec(seq_len=seq))
        for device in devices:
            for name in methods:
                params = num_params(create_fusion(name, dims=data.dims))
                row = {"variant": vname, "device": device, "method": name, "params": params,
                       "s_per_epoch": time_epochs(name, data, device, args.epochs)}
                if args.full:
                    torch.manual_seed(0)
                    model = create_fusion(name, dims=data.dims)
                    t = time.perf_counter()
                    res = fit(model, data, TrainConfig(device=device), progress=False)
                    row |= {"full_s": time.perf_counter() - t, "full_epochs": res.epochs_run}
                rows.append(row)
                print(f"{vname:7s} {device:5s} {name:16s} {params:>9,d} params  {row['s_per_epoch']:.3f} s/epoch"
                      + (f"  full {row['full_s']:.1f} s ({row['full_epochs']} epochs)" if args.full else ""), flush=True)
    print("\n| variant | device | method | params | s/epoch |" + (" full run (s) | epochs |" if args.full else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.full else ""))
    for r in rows:
        line = f"| {r['variant']} | {r['device']} | {r['method']} | {r['params']:,} | {r['s_per_epoch']:.3f} |"
        if args.full:
            line += f" {r['full_s']:.1f} | {r['full_epochs']} |"
        print(line)
    if args.full:
        for vname in variants:
            for device in devices:
                total = sum(r["full_s"] for r in rows if r["variant"] == vname and r["device"] == device)
                print(f"all methods, {vname}, {device}: {total:.1f} s in total" + (" (target: under 120 s on 2 CPU cores)" if device == "cpu" else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
