"""One live fusion update on CPU: a single-sample forward of every shipped fusion checkpoint, and
the same with its exact Shapley values (all 2^M modality subsets in one batched forward).

    python bench/fusion_update.py [--checkpoints checkpoints] [--repeats 500] [--rounds 3]
Prints a table (median over rounds) and writes bench/results/fusion_update.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.benchmark import update_latency  # noqa: E402
from mmdemo.checkpoint import load_fusion  # noqa: E402
from mmdemo.encoders import DIMS  # noqa: E402
from mmdemo.fusion import list_fusions  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all methods (the median is reported)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fusion_update.json"))
    args = ap.parse_args()
    models = {n: load_fusion(args.checkpoints / "fusion" / n) for n in list_fusions() if (args.checkpoints / "fusion" / n).exists()}
    if not models:
        sys.exit(f"no fusion checkpoints in {args.checkpoints / 'fusion'}")
    runs: dict[str, list[dict]] = {n: [] for n in models}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every method alike
        for n, model in models.items():
            runs[n].append(update_latency(model, DIMS, repeats=args.repeats))
    rows = []
    print("| method | params | forward ms | with Shapley ms |\n|---|---|---|---|")
    for n, rs in runs.items():
        fwd, exp = (float(np.median([r[k] for r in rs])) for k in ("forward_ms", "explain_ms"))
        params = sum(p.numel() for p in models[n].parameters())
        rows.append({"method": n, "params": params, "forward_ms": fwd, "explain_ms": exp})
        print(f"| {n} | {params:,} | {fwd:.2f} | {exp:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
