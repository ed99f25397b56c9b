"""fer's expression CNN against mmdemo's own (``python -m mmdemo.expression``), frame by frame.

The same steady-expression test videos as ``bench/face_stability.py`` (still faces of test people
and FER-2013 test images, each made into a video with small shifts, scale and lighting changes and
sensor noise), read by the face encoder with each CNN in turn, with no smoothing: how often the
expression label changes, how much the CNN's valence reading P(happy) - P(angry, disgust, fear or
sad) moves within a video (its standard deviation over the frames, and the share of videos whose
reading stays within ±0.15 of its mean), how often the three-way polarity of the mean reading matches
the image's label, and what a face read costs with each (milliseconds of one thread, both timed in
the same run, alternating).

FER-2013's stills leave out the test images whose pixels equal a training image's (as
``bench/face_stability.py`` does); mmdemo's CNN learned from those copies, so its scores on FER-2013's
test images are also given as the challenge split has them and without the copies.

    python bench/expression_cnn.py [--expression results/expression/expression.safetensors] [--per-set 30]
Prints the tables and writes bench/results/expression_cnn.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.face_stability import SETS  # noqa: E402
from bench.machine import cpu_model  # noqa: E402
from mmdemo.data import copies_of_train  # noqa: E402
from mmdemo.encoders import FaceEncoder  # noqa: E402
from mmdemo.encoders.face import FER_CLASSES  # noqa: E402
from mmdemo.expression import NEGATIVE, load_expression, polarity_of, predict_proba, read_fer2013, scores, to_input  # noqa: E402
from mmdemo.smoothing import STEADY_MIN_SIDE, steady_faces, steady_video  # noqa: E402

HAPPY = FER_CLASSES.index("happy")


def valence(probs: np.ndarray) -> np.ndarray:
    return probs[:, HAPPY] - probs[:, list(NEGATIVE)].sum(1)


def read_video(enc: FaceEncoder, frames: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    probs, ms = [], []
    for f in frames:
        t0 = time.perf_counter()
        r = enc.encode(f)
        ms.append(1000 * (time.perf_counter() - t0))
        if r.present:
            probs.append(r.feature[-len(FER_CLASSES):])
    return np.array(probs).reshape(-1, len(FER_CLASSES)), ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expression", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints" / "unimodal" / "vision" / "expression.safetensors",
                    help="mmdemo's CNN (expression.safetensors; default: the shipped one)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--per-set", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "expression_cnn.json"))
    args = ap.parse_args()
    if not args.expression.is_file():
        ap.error(f"{args.expression}: no such file (python -m mmdemo.expression or the benchmark writes it)")
    import torch

    torch.set_num_threads(1)  # one thread, as a live face read gets
    encoders = {"fer": FaceEncoder(), "mmdemo": FaceEncoder(expression=args.expression)}
    for e in encoders.values():
        e.warmup()
    rows, results = [], {}
    copies: dict[str, set[str]] = {}
    for title, corpus in SETS.items():
        set_name = title.format("test")
        folder = Path(args.data) / corpus
        if not (folder / "labels.csv").exists():
            print(f"skipping {set_name}: {folder} not found")
            continue
        labels = {r["path"]: r["polarity"] for r in csv.DictReader(open(folder / "labels.csv", encoding="utf-8"))}
        per = {k: {"changes_per_s": [], "std": [], "within": [], "correct": [], "ms": []} for k in encoders}
        copies[corpus] = copies_of_train(folder)
        for i, path in enumerate(steady_faces(folder, args.per_set, args.seed, exclude=copies[corpus])):
            frames = steady_video(path, seconds=args.seconds, fps=args.fps, seed=args.seed + i, min_side=STEADY_MIN_SIDE[corpus])
            truth = int(labels[str(path.relative_to(folder))])
            for name in (list(encoders) if i % 2 == 0 else list(encoders)[::-1]):  # alternate who runs first
                probs, ms = read_video(encoders[name], frames)
                per[name]["ms"] += ms
                if len(probs) < 2:
                    continue
                v = valence(probs)
                per[name]["changes_per_s"].append(float(np.sum(np.diff(probs.argmax(1)) != 0)) / args.seconds)
                per[name]["std"].append(float(v.std()))
                per[name]["within"].append(bool(np.abs(v - v.mean()).max() <= 0.15))
                per[name]["correct"].append(int(polarity_of(probs.mean(0, keepdims=True))[0]) == truth)
        results[set_name] = {}
        for name, d in per.items():
            r = {"videos": len(d["std"]), "label_changes_per_s": float(np.mean(d["changes_per_s"])) if d["std"] else None,
                 "valence_std": float(np.mean(d["std"])) if d["std"] else None,
                 "within_0_15": float(np.mean(d["within"])) if d["std"] else None,
                 "polarity_accuracy": float(np.mean(d["correct"])) if d["std"] else None,
                 "ms_per_read_median": float(np.median(d["ms"])) if d["ms"] else None}
            results[set_name][name] = r
            rows.append((set_name, name, r))
    images = fer_images(Path(args.data), args.expression, copies.get("fer2013-faces"))
    out = {"machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": 1}, "args": {k: str(v) for k, v in vars(args).items()},
           "date": time.strftime("%Y-%m-%d"), "results": results, "fer2013_test_images": images}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"machine: {out['machine']['cpu']}, 1 thread\n")
    print("| test faces | expression CNN | videos | label changes/s | valence std within a video | videos within ±0.15 | polarity of the mean reading correct | ms per face read (median) |")
    print("|---|---|---|---|---|---|---|---|")

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    for set_name, name, r in rows:
        print(f"| {set_name} | {name} | {r['videos']} | {f(r['label_changes_per_s'], '.2f')} | {f(r['valence_std'], '.3f')} | "
              f"{f(r['within_0_15'] and 100 * r['within_0_15'], '.0f')}% | {f(r['polarity_accuracy'] and 100 * r['polarity_accuracy'], '.0f')}% | "
              f"{f(r['ms_per_read_median'], '.1f')} |")
    if images:
        print("\n| mmdemo's CNN on FER-2013 test images | images | 7-class accuracy | three-way polarity accuracy | polarity macro-F1 |\n|---|---|---|---|---|")
        for name, r in images.items():
            print(f"| {name} | {r['n']} ({r['n_polarity']} with a polarity) | {100 * r['accuracy7']:.1f}% | "
                  f"{100 * r['polarity3']['accuracy']:.1f}% | {100 * r['polarity3']['macro_f1']:.1f} |")


def fer_images(data: Path, expression: Path, copies: set[str] | None) -> dict | None:
    """mmdemo's CNN on FER-2013's test images (the 48x48 crops as given): all of them, and those
    that are not copies of training images."""
    folder = data / "fer2013-faces"
    if copies is None or not (folder / "labels.csv").exists():
        return None
    test = read_fer2013(folder, progress=False)["test"]
    with open(folder / "labels.csv", encoding="utf-8") as fh:
        copy_ids = {r["clip_id"] for r in csv.DictReader(fh) if r["path"] in copies}
    probs = predict_proba(load_expression(expression), to_input(np.stack(test["images"])))
    emotion, polarity = np.asarray(test["emotion"]), np.asarray(test["polarity"], np.float64)
    keep = ~np.isin(np.asarray(test["ids"]), list(copy_ids))
    return {"as given": scores(probs, emotion, polarity),
            f"less the {int((~keep).sum())} copies of training images": scores(probs[keep], emotion[keep], polarity[keep])}


if __name__ == "__main__":
    main()
