"""Seconds per training epoch of mmdemo's fusion methods and of their MMSA counterparts, timed in one
run on one machine, in alternating turns, so that each ratio compares runs made minutes apart.

Virtual machines of one kind differ 2-3x in speed, and one machine drifts during a day; a ratio of
two numbers timed on different days (``bench/mmsa_reference.py`` then ``python -m mmdemo.trimodal``)
carries that drift. Here each round times MMSA's LF-DNN, TFN and LMF (``bench/mmsa_reference.py`` in
MMSA's own environment: its default configuration for MOSI, one seed, one thread), then every mmdemo
method's chosen configuration from a ``python -m mmdemo.trimodal`` results file (one thread,
``--epochs`` epochs without early stopping, at its own batch size and at its counterpart's); the order
flips every round. Per method: the ratio counterpart s/epoch / method s/epoch in each round, and its
median and range over the rounds.

    python3.11 -m venv /tmp/mmsa && /tmp/mmsa/bin/pip install torch==2.13.0 MMSA==2.2.1   # once; never a dependency of mmdemo
    python bench/speed_vs_mmsa.py --mmsa-python /tmp/mmsa/bin/python
    python bench/speed_vs_mmsa.py --mmsa-python /tmp/mmsa/bin/python --results results/mosei-words/trimodal.json

Writes ``bench/results/speed_vs_mmsa.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdemo.device import cpu_model  # noqa: E402
from mmdemo.trimodal import COUNTERPART, MMSA_BATCH, best_mmsa, load_source, split_config  # noqa: E402

MMSA_KEYS = {"LF-DNN": "lf_dnn", "TFN": "tfn", "LMF": "lmf", "MFN": "mfn"}


def time_mmsa(python: str, data: Path, peers: list[str], seed: int) -> dict[str, tuple[float, float | None]]:
    """s/epoch of each MMSA model, from one run of bench/mmsa_reference.py in MMSA's environment, and
    the GFLOP of one of its training steps (None where that run did not count them)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mmsa.json"
        cmd = [python, str(ROOT / "bench" / "mmsa_reference.py"), "--data", str(data), "--seeds", str(seed),
               "--models", ",".join(MMSA_KEYS[p] for p in peers), "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"MMSA run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        models = json.loads(out.read_text())["models"]
    return {p: (float(np.mean([r["s_per_epoch"] for r in models[p]])), models[p][0].get("gflop_per_step")) for p in peers}


def time_mmdemo(ds, method: str, config: dict, epochs: int, seed: int) -> float:
    """s/epoch of one configuration trained for ``epochs`` epochs (no early stopping), one thread."""
    import torch

    from mmdemo.fusion import FusionConfig, create_fusion
    from mmdemo.train import TrainConfig, fit

    fusion, train = split_config(config | {"patience": epochs}, epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    model = create_fusion(method, dims=ds.dims, cfg=FusionConfig(**fusion))
    return fit(model, ds, TrainConfig(**train), progress=False).seconds_per_epoch


def gflop_per_step(dims: dict[str, int], method: str, config: dict, batch: int) -> float:
    """The matrix products' floating-point operations (10^9) of one training step of ``config`` on a
    batch of ``batch`` vectors with every modality present: forward and backward of the training
    loss, as ``torch.utils.flop_counter`` counts them (matrix products, attention's included, not
    the elementwise work), with oneDNN off as on MMSA's side (bench/mmsa_reference.py). A count,
    not a timing: it does not depend on the machine's speed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmdemo.fusion import FusionConfig, create_fusion

    fusion, _ = split_config(config, epochs=1, seed=0)
    torch.manual_seed(0)
    model = create_fusion(method, dims=dims, cfg=FusionConfig(**fusion)).train()
    feats = {m: torch.randn(batch, d) for m, d in dims.items()}
    every = torch.ones(batch, len(model.modalities), dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # said by the switch itself
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            model.training_loss(feats, every, every, torch.zeros(batch)).backward()
    return counter.get_total_flops() / 1e9


def markdown(res: dict) -> str:
    env = res["env"]
    md = ["## Seconds per training epoch: mmdemo and MMSA 2.2.1 timed in one run", "",
          f"`python bench/speed_vs_mmsa.py --results {res['results']}`: {res['rounds']} round{'s' if res['rounds'] != 1 else ''}, each MMSA model and each mmdemo "
          f"configuration once per round, in alternating order; one thread each; {env['cpu']}, {env['cpus']} CPUs, {env['date']}, "
          f"{res['seconds'] / 60:.1f} min. mmdemo: the chosen configuration of each method from `{res['results']}`, "
          f"{res['epochs']} epochs without early stopping (every epoch includes its validation pass, as MMSA's do). "
          "Ratio = counterpart s/epoch / method s/epoch in the same round: median (lowest-highest) over rounds.", ""]
    if res["words"]:
        md += [f"mmdemo's configurations read mmdemo's own words feature ({res['dims']['text']}-d, `--words mosei`); MMSA reads the "
               f"folder's ({res['data_dims']['text']}-d), as in the accuracy tables of that run: the two sides do not read the same input.", ""]
    md += ["| method | counterpart | s/epoch, own batch | ratio | s/epoch at the counterpart's batch | ratio | 3x or more (counterpart's batch) | GFLOP per step (counterpart's batch) |",
           "|---|---|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        own, peer = r["own"], r["peer_batch"]
        work = f"{r['gflop_per_step']:.3f}" if "gflop_per_step" in r else "–"  # results files from before it was counted
        theirs = res["mmsa"][r["peer"]]
        their_work = f", {theirs['gflop_per_step']:.3f} GFLOP per step" if theirs.get("gflop_per_step") is not None else ""
        md.append(f"| `{m}` | MMSA {r['peer']} ({theirs['median']:.3f} s/epoch, batch {MMSA_BATCH[r['peer']]}{their_work}) | "
                  f"{own['median']:.3f} (batch {r['batch_size']}) | {own['ratio']:.1f}x ({own['ratio_min']:.2f}-{own['ratio_max']:.2f}) | "
                  f"{peer['median']:.3f} | {peer['ratio']:.1f}x ({peer['ratio_min']:.2f}-{peer['ratio_max']:.2f}) | "
                  f"{'✓' if peer['ratio_min'] >= 3 else ('✗' if peer['ratio_max'] < 3 else 'in some rounds')} | "
                  f"{work} |")
    if any("gflop_per_step" in r for r in res["methods"].values()):
        md += ["", "GFLOP per step: the matrix products' floating-point operations of one training step (forward and backward, every "
               "modality present) at the counterpart's batch size, counted by `torch.utils.flop_counter` with oneDNN off: a count, not "
               "a timing. MMSA's is counted the same way, on a batch of its own training loader, by bench/mmsa_reference.py."]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mmsa-python", required=True, help="the Python of an environment with MMSA 2.2.1 (see the module docstring)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmu-mosi-trimodal-features"))
    ap.add_argument("--results", default="results/trimodal.json", help="a python -m mmdemo.trimodal results file: its chosen configurations are timed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of each mmdemo configuration per round")
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed_vs_mmsa.json"))
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1:
        ap.error("--rounds and --epochs must be at least 1")
    if not Path(args.mmsa_python).exists():
        ap.error(f"--mmsa-python {args.mmsa_python}: no such file (make MMSA's environment first: see --help)")
    results = Path(args.results)
    try:
        res = json.loads(results.read_text())
        chosen = {m: r["config"] for m, r in res["methods"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"--results {results}: not a python -m mmdemo.trimodal results file ({e})")
    # a run with --words mosei chose its configurations on its own words feature, cached beside its results
    words = str(results.parent / "words-mosei") if res.get("words") else None
    if words and not (Path(words) / "words.json").exists():
        ap.error(f"{results} was made with --words mosei, and its words features are not in {words}: rerun that benchmark first")

    import torch

    torch.set_num_threads(1)
    ds = load_source(args.data, words)
    peer = {m: COUNTERPART.get(m, best_mmsa()) for m in chosen}
    peers = sorted(set(peer.values()))
    mmsa = {p: [] for p in peers}
    mmsa_work = dict.fromkeys(peers)
    own = {m: [] for m in chosen}
    at_peer = {m: [] for m in chosen}
    t0 = time.perf_counter()
    for k in range(args.rounds):
        turns = ["mmsa", "mmdemo"] if k % 2 == 0 else ["mmdemo", "mmsa"]
        for turn in turns:
            if turn == "mmsa":
                for p, (s, g) in time_mmsa(args.mmsa_python, Path(args.data), peers, args.seed).items():
                    mmsa[p].append(s)
                    mmsa_work[p] = g
            else:
                for m, c in chosen.items():
                    own[m].append(time_mmdemo(ds, m, c, args.epochs, args.seed))
                    same = c["batch_size"] == MMSA_BATCH[peer[m]]
                    at_peer[m].append(own[m][-1] if same else time_mmdemo(ds, m, c | {"batch_size": MMSA_BATCH[peer[m]]}, args.epochs, args.seed))
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{p} {mmsa[p][-1]:.3f}" for p in peers) + "; "
              + ", ".join(f"{m} {at_peer[m][-1]:.3f}" for m in chosen), flush=True)

    def stats(times: list[float], theirs: list[float]) -> dict:
        ratios = np.array(theirs) / np.array(times)
        return {"s_per_epoch": times, "median": float(np.median(times)), "ratio": float(np.median(ratios)),
                "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max())}

    out = {"results": str(results), "data": Path(args.data).name, "words": words is not None, "dims": ds.dims,
           "data_dims": load_source(args.data).dims if words else ds.dims, "rounds": args.rounds, "epochs": args.epochs,
           "seed": args.seed, "seconds": time.perf_counter() - t0,
           "env": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": 1, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
           "mmsa": {p: {"s_per_epoch": v, "median": float(np.median(v)), "batch_size": MMSA_BATCH[p], "gflop_per_step": mmsa_work[p]}
                    for p, v in mmsa.items()},
           "methods": {m: {"peer": peer[m], "batch_size": chosen[m]["batch_size"], "own": stats(own[m], mmsa[peer[m]]),
                           "peer_batch": stats(at_peer[m], mmsa[peer[m]]),
                           "gflop_per_step": gflop_per_step(ds.dims, m, chosen[m], MMSA_BATCH[peer[m]])} for m in chosen}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    md = markdown(out)
    path.with_suffix(".md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
