"""Personal models and the neutral baseline on simulated users: held-out error and fit time.

Simulated users (:mod:`mmdemo.simulate`): the people of the expression photos' validation and
test splits who have photos of at least two expressions (one of them neutral), each with an espeak-ng voice of
their own (pitch, speed, variant) and a script of CMU-MOSI sentences with their labels (spoken and
typed: valid sentences for the validation people, test sentences for the test people); a moment's
photo matches the label's sign. Three conditions per user: no bias,
a biased face (the raw face features shifted by the population's negative-minus-neutral difference:
a resting face that reads negative), a biased voice (the same for the raw voice features).

For each user the generic model (the shipped checkpoint of ``--fusion``) and the personal model are
scored on the same moments, the personal one out of sample (leave-one-out with ``--moments``
moments: each moment predicted by a model fitted on the others). The personal model's settings
(L2-SP strength, its share on bias vectors, steps, learning rate, loss) are chosen on the validation people and reported on the test people; the neutral baseline (calibration with a neutral photo and the calibration sentence) is
reported beside it. Fit times for 8 / 32 / 128 moments for every fusion method.

    python bench/personal.py [--data ../shared/data] [--users 12] [--moments 16] [--fusion weighted]
                             [--anchors 0.3,1,3,10,30] [--steps 50,150] [--lrs 0.003] [--bias-anchors 1,0.1,0]
Prints the tables and writes bench/results/personal.json and personal.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.calibration import NeutralReference  # noqa: E402
from mmdemo.checkpoint import load_fusion  # noqa: E402
from mmdemo.data import Split  # noqa: E402
from mmdemo.encoders import DIMS  # noqa: E402
from mmdemo.extract import run_extraction  # noqa: E402
from mmdemo.fusion import list_fusions  # noqa: E402
from mmdemo.media import read_image  # noqa: E402
from mmdemo.personal import PERSONAL_LOSSES, PersonalConfig, cross_validate, fit_personal  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS  # noqa: E402
from mmdemo.simulate import Encoders, SimulatedUser, Voice, as_read, calibrate, record  # noqa: E402

VARIANTS = ["en+m1", "en+m2", "en+m3", "en+m4", "en+f1", "en+f2", "en+f3", "en+f4"]
BIAS_SCALE = 3.0  # a biased user: 3x the population's negative-minus-neutral difference (each model alone then reads neutral as about -1)
ANCHORS = (0.3, 1.0, 3.0, 10.0, 30.0)  # the L2-SP strengths searched
STEPS = (50, 150)  # the step counts searched
LRS = (PersonalConfig.lr,)  # the learning rates searched
BIAS_ANCHORS = (1.0, 0.1, 0.0)  # the strengths on biases searched (fractions of the strength; 0: free)


def grid(anchors=ANCHORS, steps=STEPS, lrs=LRS, bias_anchors=BIAS_ANCHORS) -> list[PersonalConfig]:
    """The personal-model settings the validation users choose among: every loss x strength x steps x
    learning rate x strength on biases."""
    return [PersonalConfig(anchor=a, steps=s, lr=lr, loss=loss, bias_anchor=b)
            for loss in PERSONAL_LOSSES for a in anchors for s in steps for lr in lrs for b in bias_anchors]


def numbers(kind, zero: bool = False):
    """An argparse type: a comma-separated list of positive (or, with ``zero``, non-negative) ``kind`` values."""
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(not math.isfinite(v) or v < 0 or (v == 0 and not zero) for v in values):
            raise argparse.ArgumentTypeError(f"expected {'non-negative' if zero else 'positive'} numbers, got {text!r}")
        return values
    return parse


def people(data: Path, n: int) -> list[tuple[str, str, dict[int, list[Path]]]]:
    """(fold, person, photos by polarity): the photos' validation people choose, their test people
    report (the face model learned from neither); people with a neutral photo and another expression."""
    folder = data / "facial-expressions-muxspace"
    by: dict[tuple[str, str], dict[int, list[Path]]] = {}
    with open(folder / "labels.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["split"] in ("valid", "test") and r["polarity"].strip():
                by.setdefault((r["split"], r["subject"]), {}).setdefault(int(r["polarity"]), []).append(folder / r["path"])
    out = []
    for fold in ("valid", "test"):
        ok = sorted((s for (sp, s), p in by.items() if sp == fold and 0 in p and len(p) >= 2), key=lambda s: hashlib.md5(s.encode()).hexdigest())
        out += [(fold, s, by[(fold, s)]) for s in ok[:n]]
    return out


def mosi_sentences(data: Path, split: str) -> list[tuple[str, float]]:
    """CMU-MOSI sentences of four words or more of ``split`` with their labels: the validation users
    speak valid sentences, the test users test ones (the words model learned from neither)."""
    with open(data / "cmu-mosi" / "labels.csv", encoding="utf-8") as f:
        return [(r["text"], float(r["label"])) for r in csv.DictReader(f) if r["split"] == split and len(r["text"].split()) >= 4]


def bias_vectors(data: Path, checkpoints: Path) -> dict[str, np.ndarray]:
    """Population negative-minus-neutral difference of the raw features (training splits), the face
    read with the expression CNN the checkpoints' face models read with."""
    from mmdemo.crosscorpus import VOICE_CORPORA, voice_labels
    from mmdemo.expression import shipped_expression

    out = {}
    folder = data / "facial-expressions-muxspace"
    ds, _, _ = run_extraction(folder, folder / "labels.csv", modalities=("vision",), label_col="polarity", progress=False,
                              expression=shipped_expression(checkpoints))
    tr = ds.splits["train"]
    ok = tr.present["vision"]
    out["vision"] = np.median(tr.feats["vision"][ok & (tr.labels < 0)], 0) - np.median(tr.feats["vision"][ok & (tr.labels == 0)], 0)
    neg, neu = [], []
    for c in VOICE_CORPORA.values():
        f = data / c["folder"]
        labels = voice_labels(f)
        ds, _, _ = run_extraction(f, f / "labels.csv", modalities=("audio",), label_col="polarity", transcribe=False, progress=False)
        tr = ds.splits["train"]
        cls = np.array([labels[i].cls if i in labels else 9 for i in tr.ids])
        neg.append(tr.feats["audio"][tr.present["audio"] & (cls == -1)])
        neu.append(tr.feats["audio"][tr.present["audio"] & (cls == 0)])
    out["audio"] = np.median(np.concatenate(neg), 0) - np.median(np.concatenate(neu), 0)
    return {m: v.astype(np.float32) for m, v in out.items()}


def bias_readings(ckpt: Path, reference, bias: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """What each modality's own model says of the neutral reference without and with the bias (voice
    against the population prior: a session's first seconds)."""
    import torch

    from mmdemo.speaker import read_voice_features

    prior, _ = read_voice_features(ckpt)
    out = {}
    for m, b in bias.items():
        head = load_fusion(ckpt / "unimodal" / m)
        read = (lambda v: (v - prior.mean) / prior.std) if m == "audio" and prior is not None else (lambda v: v)
        with torch.inference_mode():
            a, c = (float(head({m: torch.tensor(read(v), dtype=torch.float32)[None]}).prediction)
                    for v in (reference.vectors[m], reference.vectors[m] + b))
        out[m] = (a, c)
    return out


def fit_times(fusions: list[str], pool: Split, cfg: PersonalConfig, ckpt: Path) -> dict:
    out = {}
    for name in fusions:
        generic = load_fusion(ckpt / "fusion" / name)
        row = {}
        for n in (8, 32, 128):
            idx = np.arange(n) % len(pool)
            runs = []
            for _ in range(3):
                c0, t0 = time.process_time(), time.perf_counter()
                fit_personal(generic, pool, cfg, idx)
                runs.append((time.perf_counter() - t0, time.process_time() - c0))
            wall, cpu = np.median([r[0] for r in runs]), np.median([r[1] for r in runs])
            row[n] = {"wall_s": float(wall), "cpu_s": float(cpu)}
        loo = pool.subset(np.arange(16) % len(pool))
        for batched in (True, False):  # the held-out error the panel shows: every fold at once, or one fit per fold
            t0 = time.perf_counter()
            cross_validate(generic, loo, cfg, batched=batched)
            row["loo16_" + ("batched" if batched else "one_by_one")] = time.perf_counter() - t0
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    ap.add_argument("--users", type=int, default=12, help="simulated users per fold (validation people choose the settings, test people report)")
    ap.add_argument("--moments", type=int, default=16, help="labelled moments per user")
    ap.add_argument("--fusion", default="weighted")
    ap.add_argument("--anchors", type=numbers(float), default=ANCHORS, help="L2-SP strengths searched, comma-separated")
    ap.add_argument("--steps", type=numbers(int), default=STEPS, help="step counts searched, comma-separated")
    ap.add_argument("--lrs", type=numbers(float), default=LRS, help="learning rates of the fine-tuning searched, comma-separated")
    ap.add_argument("--bias-anchors", type=numbers(float, zero=True), default=BIAS_ANCHORS,
                    help="strengths on bias vectors searched, as fractions of the strength (0: biases move freely), comma-separated")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    t_start = time.perf_counter()
    enc = Encoders(args.checkpoints)
    reference = NeutralReference.load(args.checkpoints, dims=DIMS)
    generic = load_fusion(args.checkpoints / "fusion" / args.fusion)
    sentences = {fold: mosi_sentences(args.data, fold) for fold in ("valid", "test")}
    bias = bias_vectors(args.data, args.checkpoints)
    conditions = {"no bias": {}, "biased face": {"vision": BIAS_SCALE * bias["vision"]}, "biased voice": {"audio": BIAS_SCALE * bias["audio"]}}
    bias_reading = bias_readings(args.checkpoints, reference, {m: BIAS_SCALE * v for m, v in bias.items()})
    print("each modality's own model on the neutral reference, unbiased -> biased: "
          + ", ".join(f"{m} {a:+.2f} -> {b:+.2f}" for m, (a, b) in bias_reading.items()), flush=True)
    users = []
    for k, (fold, name, photos) in enumerate(people(args.data, args.users)):
        rng = np.random.default_rng(k)
        voice = Voice(pitch=int(rng.integers(15, 85)), speed=int(rng.integers(130, 200)), variant=VARIANTS[k % len(VARIANTS)])
        imgs = {p: [read_image(f) for f in fs] for p, fs in photos.items()}
        script = [sentences[fold][i] for i in rng.choice(len(sentences[fold]), args.moments, replace=False)]
        user = SimulatedUser(name, imgs, voice)
        rec = record(enc, user, script, seed=k)
        users.append({"name": name, "user": user, "rec": rec, "fold": fold, "seed": k})
        print(f"user {k + 1} ({fold}): {name} ({voice.variant}, pitch {voice.pitch}, speed {voice.speed})", flush=True)

    def score(u, cond, cfg, baseline: bool) -> dict:
        b = calibrate(enc, u["user"], reference, bias=conditions[cond], seed=u["seed"]) if baseline else None
        split = as_read(u["rec"], enc, bias=conditions[cond], baseline=b)
        r = cross_validate(generic, split, cfg)
        return {"generic": r["generic_mae"], "personal": r["personal_mae"]}

    # -- choose the settings on the validation users ------------------------------------------------
    valid = [u for u in users if u["fold"] == "valid"]
    test = [u for u in users if u["fold"] == "test"]
    choice = []
    for cfg in grid(args.anchors, args.steps, args.lrs, args.bias_anchors):
        res = {c: [score(u, c, cfg, False) for u in valid] for c in conditions}
        ratio = {c: float(np.mean([r["personal"] for r in v]) / np.mean([r["generic"] for r in v])) for c, v in res.items()}
        choice.append({"config": asdict(cfg), "ratio": ratio, "mean_ratio": float(np.mean(list(ratio.values())))})
        print(f"valid {cfg.anchor=} {cfg.bias_anchor=} {cfg.steps=} {cfg.lr=} {cfg.loss=}: " + ", ".join(f"{c} {v:.3f}" for c, v in ratio.items()), flush=True)
    # the lowest mean error ratio among settings that keep unbiased users within 5% of the generic model
    safe = [c for c in choice if c["ratio"]["no bias"] <= 1.05] or choice
    best = min(safe, key=lambda c: c["mean_ratio"])
    cfg = replace(PersonalConfig(), **{k: best["config"][k] for k in ("anchor", "bias_anchor", "steps", "lr", "loss")})

    # -- report on the test users -------------------------------------------------------------------
    table = {}
    for c in conditions:
        plain = [score(u, c, cfg, False) for u in test]
        calib = [score(u, c, cfg, True) for u in test]
        g, p = np.array([r["generic"] for r in plain]), np.array([r["personal"] for r in plain])
        gb, pb = np.array([r["generic"] for r in calib]), np.array([r["personal"] for r in calib])
        table[c] = {"users": len(test), "generic": float(g.mean()), "personal": float(p.mean()), "generic+baseline": float(gb.mean()),
                    "personal+baseline": float(pb.mean()), "personal_vs_generic": float(1 - p.mean() / g.mean()),
                    "personal_vs_generic_with_baseline": float(1 - pb.mean() / gb.mean()),
                    "users_better": int((p < g).sum())}
    pool = as_read(users[0]["rec"], enc)
    times = fit_times(list_fusions(), pool, cfg, args.checkpoints)
    result = {"fusion": args.fusion, "moments": args.moments, "bias_scale": BIAS_SCALE, "bias_readings": bias_reading, "users": {"valid": len(valid), "test": len(test)},
              "chosen": asdict(cfg), "grid": choice, "test": table, "fit_seconds": times,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "seconds": time.perf_counter() - t_start, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    lines = [f"Simulated users, {args.moments} moments each, {args.fusion}; leave-one-out MAE on the {len(test)} test users "
             f"(settings chosen on {len(valid)} validation users: anchor {cfg.anchor} (on biases x{cfg.bias_anchor:g}), {cfg.steps} steps, learning rate {cfg.lr:g}, {cfg.loss} loss)", "",
             f"Bias: {BIAS_SCALE:g}x the population's negative-minus-neutral raw-feature difference; each modality's own model "
             "reads the neutral reference " + ", ".join(f"{ {'vision': 'face', 'audio': 'voice'}[m]} {a:+.2f} -> {b:+.2f}" for m, (a, b) in bias_reading.items())
             + " (voice: against the population prior, a session's first seconds).", "",
             "| user | generic | personal | generic + baseline | personal + baseline | personal vs generic | both with the baseline | users where personal is better |",
             "|---|---|---|---|---|---|---|---|"]
    for c, r in table.items():
        lines.append(f"| {c} | {r['generic']:.3f} | {r['personal']:.3f} | {r['generic+baseline']:.3f} | {r['personal+baseline']:.3f} | "
                     f"{100 * r['personal_vs_generic']:+.1f}% | {100 * r['personal_vs_generic_with_baseline']:+.1f}% | {r['users_better']}/{r['users']} |")
    lines += ["", "Fit time of a personal model (median of 3, wall s / CPU s, "
              f"{result['machine']['cores']} cores, {torch.get_num_threads()} torch threads):", "",
              "| method | 8 moments | 32 moments | 128 moments | held-out error of 16 moments, one run each: folds at once / one by one (wall s) |",
              "|---|---|---|---|---|"]
    for name, row in times.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]['wall_s']:.2f} / {row[n]['cpu_s']:.2f}" for n in (8, 32, 128))
                     + f" | {row['loo16_batched']:.1f} / {row['loo16_one_by_one']:.1f} ({row['loo16_one_by_one'] / row['loo16_batched']:.1f}x) |")
    md = "\n".join(lines)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "personal.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / "personal.md").write_text(md + "\n")
    print(f"\nwrote {args.out / 'personal.json'} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
