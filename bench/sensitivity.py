"""How the CMU-MOSI benchmark's choices move with one setting the search does not vary: the valid
MAE of each method's chosen configuration (from a ``python -m mmdemo.trimodal`` results file) with
one setting changed at a time, on the valid fold only. The test fold is never read.

Each configuration is trained as the benchmark's search trains it (``mmdemo.trimodal.run_job``:
the same epochs limit, early stopping and search seeds), so the row of the value the benchmark
used gives the search's own valid MAE of that choice, and the output says whether it does.

The default probes are the settings of a method that its search leaves at their defaults:
``late`` and ``weighted``'s weight of each sub-network's own loss (``unimodal_weight``; the
sub-networks' share of one scale is what makes ``weighted``'s θ readable), ``autoencoder``'s weight
of the reconstruction (``recon_weight``), ``cross_attention``'s heads and blocks, and every method's
loss (l1 or huber) and gradient clipping.

    python bench/sensitivity.py [--results results/trimodal.json] [--probe late:unimodal_weight=0,0.5,1 ...] [--workers 2]
Prints a table and writes bench/results/sensitivity.{json,md} (sensitivity_mosei_words.{json,md} for
the results of a ``--words mosei`` run; or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from mmdemo.fusion import FUSIONS, FusionConfig, create_fusion  # noqa: E402
from mmdemo.train import TrainConfig  # noqa: E402
from mmdemo.trimodal import Job, load_source, run_all, split_config  # noqa: E402

DEFAULT_PROBES = (
    [("late", "unimodal_weight", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)),
     ("weighted", "unimodal_weight", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)),
     ("autoencoder", "recon_weight", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)),
     ("cross_attention", "heads", (1, 2, 4, 8)),
     ("cross_attention", "layers", (1, 2))]
    + [(m, "loss", ("l1", "huber")) for m in FUSIONS]  # every registered method
    + [(m, "grad_clip", (0.0, 1.0, 5.0)) for m in FUSIONS]
)
FUSION_FIELDS = {f.name: f.type for f in fields(FusionConfig)}
TRAIN_FIELDS = {f.name: f.type for f in fields(TrainConfig) if f.name not in ("epochs", "seed", "device")}


def parse_value(setting: str, text: str):
    """``text`` as the type of ``setting``'s field (FusionConfig's or TrainConfig's)."""
    kind = FUSION_FIELDS.get(setting, TRAIN_FIELDS.get(setting))
    kind = getattr(kind, "__name__", kind)
    try:
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        raise ValueError(f"{setting}: {text!r} is not a valid {kind}") from None


def parse_probe(text: str) -> tuple[str, str, tuple]:
    """``method:setting=v1,v2,...`` as (method, setting, values)."""
    try:
        method, rest = text.split(":", 1)
        setting, values = rest.split("=", 1)
    except ValueError:
        raise ValueError(f"--probe {text!r}: expected method:setting=value,value,... (e.g. late:unimodal_weight=0,0.5,1)") from None
    method, setting = method.strip(), setting.strip()
    if method not in FUSIONS:
        raise ValueError(f"--probe {text!r}: unknown method {method!r} (one of {', '.join(sorted(FUSIONS))})")
    if setting not in FUSION_FIELDS and setting not in TRAIN_FIELDS:
        raise ValueError(f"--probe {text!r}: {setting!r} is not a setting of FusionConfig or TrainConfig (epochs, seed and device are the benchmark's)")
    vals = tuple(parse_value(setting, v.strip()) for v in values.split(",") if v.strip())
    if not vals:
        raise ValueError(f"--probe {text!r}: no values")
    return method, setting, vals


def job(method: str, config: dict, setting: str, value, *, modalities: tuple[str, ...], epochs: int, seed: int) -> Job:
    """The benchmark's job for ``config`` with ``setting`` set to ``value`` (valid fold only)."""
    f, t = split_config(config, epochs=epochs, seed=seed)
    if setting in FUSION_FIELDS:
        f = f | {setting: value}
    else:
        t = t | {setting: value}
    return Job(method, tuple(modalities), f, t, seed, test=False)


def check(j: Job, dims: dict[str, int]) -> str:
    """A job's identity as training sees it (every setting, defaults included, so a value written out
    and the same value left at its default are one job); raises ValueError for a value the method
    cannot take, here rather than in the middle of the run."""
    f, t = FusionConfig(**j.fusion), TrainConfig(**j.train)
    create_fusion(j.method, dims={m: dims[m] for m in j.modalities}, cfg=f)
    return json.dumps([j.method, list(j.modalities), asdict(f), asdict(t), j.seed, j.test, j.context], sort_keys=True)


def used_value(config: dict, setting: str):
    """The value the benchmark trained ``config`` with."""
    if setting in config:
        return config[setting]
    return getattr(FusionConfig(), setting) if setting in FUSION_FIELDS else getattr(TrainConfig(), setting)


def shown(path: str) -> str:
    """``path`` relative to the repository where it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def markdown(res: dict) -> str:
    md = ["## Valid MAE of each chosen configuration, one setting changed at a time", "",
          f"`python bench/sensitivity.py --results {shown(res['results'])}`: the chosen configuration of each method, trained as the "
          f"benchmark's search trains it (seeds {', '.join(map(str, res['seeds']))}, up to {res['epochs']} epochs, early stopping), "
          f"with one setting changed; mean valid MAE over the seeds (the test fold is not read). * marks the value the benchmark "
          f"used; {res['cpu']}, {res['date']}, {res['seconds'] / 60:.1f} min.", "",
          "| method | setting | valid MAE per value | best | the benchmark's value reproduces its search |", "|---|---|---|---|---|"]
    for p in res["probes"]:
        cells = ", ".join(f"{v}{'*' if v == p['used'] else ''}: {mae:.4f}" for v, mae in zip(p["values"], p["valid_mae"]))
        best = p["values"][int(np.argmin(p["valid_mae"]))]
        same = {True: "yes", False: "no", None: "–"}[p["reproduces_search"]]
        md.append(f"| `{p['method']}` | `{p['setting']}` | {cells} | {best} | {same} |")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmu-mosi-trimodal-features"),
                    help="the cmu-mosi-trimodal-features folder the results were made from (default: ../shared/data's)")
    ap.add_argument("--results", default=str(ROOT / "results" / "trimodal.json"),
                    help="a python -m mmdemo.trimodal results file: its chosen configurations are probed (default: results/trimodal.json)")
    ap.add_argument("--probe", action="append", default=None, metavar="METHOD:SETTING=V1,V2,...",
                    help="a setting to vary for one method (repeatable); default: the settings the search leaves at their defaults")
    ap.add_argument("--workers", type=int, default=2, help="training processes at once (one thread each)")
    ap.add_argument("--out", default=None,
                    help="the JSON to write, a .md beside it (default: bench/results/sensitivity.json, or sensitivity_mosei_words.json "
                         "for a --words mosei run)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    try:
        probes = [parse_probe(p) for p in args.probe] if args.probe else list(DEFAULT_PROBES)
    except ValueError as e:
        ap.error(str(e))
    results = Path(args.results)
    if not results.is_file():
        ap.error(f"--results {results}: no such file (run python -m mmdemo.trimodal first, or give its results file)")
    try:
        res = json.loads(results.read_text())
        chosen = {m: r["config"] for m, r in res["methods"].items()}
        seeds, epochs = list(res["select_seeds"]), int(res["max_epochs"])
        searched = {m: r["search"] for m, r in res["methods"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        ap.error(f"--results {results}: not a python -m mmdemo.trimodal results file ({e})")
    if not Path(args.data, "labels.csv").is_file():
        ap.error(f"--data {args.data}: no labels.csv there (the cmu-mosi-trimodal-features folder of ../shared/data)")
    words = str(results.parent / "words-mosei") if res.get("words") else None
    if words and not (Path(words) / "words.json").exists():
        ap.error(f"{results} was made with --words mosei, and its words features are not in {words}: rerun that benchmark first")
    if args.probe:
        absent = sorted({m for m, _, _ in probes if m not in chosen})
        if absent:
            ap.error(f"--results {results} has no chosen configuration of {', '.join(absent)} (it has {', '.join(chosen)})")
    else:
        probes = [p for p in probes if p[0] in chosen]  # the defaults: whichever methods the run had
    if not probes:
        ap.error(f"--results {results} has none of the probed methods")
    try:  # the data as the benchmark read it, and every job checked, before any training
        ds = load_source(args.data, words)
        jobs = [job(m, chosen[m], s, v, modalities=ds.modalities, epochs=epochs, seed=seed)
                for m, s, vals in probes for v in vals for seed in seeds]
        key = [check(j, ds.dims) for j in jobs]
    except (ValueError, TypeError, KeyError, OSError) as e:
        ap.error(str(e))
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / ("sensitivity_mosei_words.json" if words else "sensitivity.json")

    t0 = time.perf_counter()
    unique = list(dict.fromkeys(key))  # a method's chosen configuration is in several of its probes: trained once
    done = dict(zip(unique, run_all([jobs[key.index(k)] for k in unique], args.data, args.workers, "sensitivity", not args.no_progress, words)))
    runs = iter(done[k] for k in key)
    out = {"results": str(results), "data": Path(args.data).name, "words": words is not None, "seeds": seeds, "epochs": epochs,
           "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "jobs": len(jobs), "trained": len(unique), "probes": []}
    for m, s, vals in probes:
        maes = [float(np.mean([next(runs)["valid"]["mae"] for _ in seeds])) for _ in vals]
        used = used_value(chosen[m], s)
        # the search's own valid MAE of the chosen configuration (the same jobs): the row of the value it used must give it
        theirs = [e["valid_mae"] for e in searched[m] if e["config"] == chosen[m]]
        same = None
        if used in vals and theirs:
            same = maes[vals.index(used)] == theirs[0]  # the same runs: the same number, to the bit
        out["probes"].append({"method": m, "setting": s, "values": list(vals), "valid_mae": maes, "used": used,
                              "search_valid_mae": theirs[0] if theirs else None, "reproduces_search": same})
    out["seconds"] = time.perf_counter() - t0
    path = out_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    md = markdown(out)
    path.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
