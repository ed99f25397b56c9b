"""How steady the live face signal is on a person holding one expression.

Steady-expression test videos are built from still faces of people the face model never learned
from (the expression photos' test people, FER-2013's test images less the copies of training images that
the challenge's split holds): each photo becomes a 5 s video at
10 frames/s with small shifts, scale and lighting changes and sensor noise
(:func:`mmdemo.smoothing.jittered_frames`). Each video runs through a live session twice, with the
face smoothing and label hysteresis of the pipeline and without them (raw frames), and the
benchmark reports per set: expression-label changes per second, sign changes per second of the
face-alone prediction, and how far the face-alone prediction strays from its mean over the 5 s
(the target: within ±0.3).

    python bench/face_stability.py [--data ../shared/data] [--per-set 30] [--seconds 5] [--time-constants 0.35,0.7,1.0]
                                   [--split valid|test] [--checkpoints DIR]

``--split valid`` builds the videos from the validation people and images instead: settings (the
smoothing's time constant, how often the face is read) are compared there, and the test videos are
read once with the choice.
The shipped models by default; ``--checkpoints`` reads others (for example the models of an earlier
commit: ``mkdir OLD && git archive COMMIT checkpoints | tar -x -C OLD``, then ``--checkpoints OLD/checkpoints``).
Prints a table and writes bench/results/face_stability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.data import copies_of_train  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine  # noqa: E402
from mmdemo.smoothing import STEADY_MIN_SIDE, face_stability, steady_faces, steady_video  # noqa: E402

SETS = {"photos, {} people": "facial-expressions-muxspace", "FER-2013 {}": "fer2013-faces"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--per-set", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-constants", default="", help="extra rows: the smoothing with these time constants (s), e.g. 0.35,0.7,1.0")
    ap.add_argument("--face-intervals", default="0,0.2",
                    help="extra rows: the face read at most every this many seconds (0 = every frame), with each smoothing")
    ap.add_argument("--split", choices=("valid", "test"), default="test",
                    help="the people the videos are made of: valid to choose settings, test to report them (default)")
    ap.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS, help="the models to read (default: the shipped ones)")
    ap.add_argument("--out", default=None, help="default: bench/results/face_stability.json (face_stability_valid.json with --split valid)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / ("face_stability.json" if args.split == "test" else "face_stability_valid.json"))
    if not (args.checkpoints / "unimodal" / "vision" / "config.json").is_file():  # else every row would read nothing
        ap.error(f"--checkpoints {args.checkpoints}: no face head there (unimodal/vision/config.json)")
    engine = Engine(args.checkpoints, device="cpu")
    engine.warmup()
    raw_cfg = replace(engine.config, face_smooth_s=0.0, face_label_margin=0.0, face_interval_s=0.0)  # every frame, as it comes
    variants = {"smoothed": None, "raw": raw_cfg}
    taus = [None] + [float(t) for t in args.time_constants.split(",") if t.strip()]
    for every in [None] + [float(t) for t in args.face_intervals.split(",") if t.strip()]:
        for tau in taus:
            if every is None and tau is None:
                continue
            cfg, label = engine.config, "smoothed"
            if tau is not None:
                cfg, label = replace(cfg, face_smooth_s=tau), f"{label}, {tau:g} s"
            if every is not None:
                cfg = replace(cfg, face_interval_s=every)
                label += ", face read every frame" if every <= 0 else f", face read at most {1 / every:g}/s"
            variants[label] = cfg
    rows, t0 = [], time.time()
    for set_title, name in SETS.items():
        set_name = set_title.format(args.split)
        folder = Path(args.data) / name
        if not (folder / "labels.csv").exists():
            print(f"skipped {set_name}: {folder} not found")
            continue
        per = {v: [] for v in variants}
        copies = copies_of_train(folder)  # FER-2013's valid and test splits hold copies of training images: never drawn
        for k, path in enumerate(steady_faces(folder, args.per_set, args.seed, split=args.split, exclude=copies)):
            frames = steady_video(path, seconds=args.seconds, fps=args.fps, seed=args.seed + k, min_side=STEADY_MIN_SIDE[name])
            for variant, cfg in variants.items():
                r = face_stability(engine, frames, args.fps, config=cfg)
                if r["with_face"] >= 0.8 * r["frames"]:
                    per[variant].append(r)
        for variant, rs in per.items():
            if not rs:
                continue
            far = np.array([r["max_from_mean"] for r in rs])
            rows.append({"set": set_name, "variant": variant, "videos": len(rs),
                         "label_changes_per_s": float(np.mean([r["label_changes_per_s"] for r in rs])),
                         "label_changes_per_s_p90": float(np.percentile([r["label_changes_per_s"] for r in rs], 90)),
                         "sign_changes_per_s": float(np.mean([r["sign_changes_per_s"] for r in rs])),
                         "max_from_mean_median": float(np.median(far)), "within_0.3": float(np.mean(far <= 0.3))})
    print("\n| set | face signal | videos | label changes/s (mean / p90) | sign changes/s | largest distance from the 5 s mean (median) | videos within ±0.3 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['variant']} | {r['videos']} | {r['label_changes_per_s']:.2f} / {r['label_changes_per_s_p90']:.2f} | "
              f"{r['sign_changes_per_s']:.2f} | {r['max_from_mean_median']:.2f} | {100 * r['within_0.3']:.0f}% |")
    env = {"checkpoints": "shipped" if args.checkpoints.resolve() == Path(DEFAULT_CHECKPOINTS).resolve() else args.checkpoints.resolve().name,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "seconds": time.time() - t0, "face_smooth_s": engine.config.face_smooth_s,
           "face_interval_s": engine.config.face_interval_s,
           "date": time.strftime("%Y-%m-%d"), "split": args.split, "per_set": args.per_set, "video_seconds": args.seconds, "fps": args.fps, "seed": args.seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
