"""The live voice path: eGeMAPS from one openSMILE stream per session vs openSMILE over every window.

Real speech (RAVDESS test-split actors, a clip every ``--step`` clips, joined with 0.5 s pauses;
espeak-ng sentences when the corpus is absent) goes through two live sessions of the shipped models
in 0.5 s chunks: one with ``voice_stream`` (the default: descriptors computed once per sample,
functionals per window in numpy) and one with openSMILE over the whole 2.4 s window at every hop.
Reported: the CPU of the voice stage per second of audio in each (process CPU), and how far the
stream's answers are from the window-wise ones at the same updates: the voice model alone, the fused
prediction and the voice's contribution (mean and largest |difference|, sentiment units, -3..+3).

    python bench/voice_stream.py [--data ../shared/data] [--clips 24] [--step 37]
Prints a table and writes bench/results/voice_stream.json.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmdemo.audio import resample  # noqa: E402
from mmdemo.media import read_audio  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine, PipelineConfig, Session  # noqa: E402


def speech(data: Path, clips: int, step: int) -> tuple[np.ndarray, str]:
    folder = data / "ravdess-speech-audio"
    pause = np.zeros(8000, np.float32)
    if (folder / "labels.csv").exists():
        with open(folder / "labels.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
        parts = []
        for r in rows[::step][:clips]:
            x = read_audio(folder / r["path"])
            parts += [x, pause]
        return np.concatenate(parts), f"RAVDESS test split, {len(parts) // 2} clips"
    from tests.media import speech_16k

    tmp = Path(tempfile.mkdtemp())
    texts = ["I think this is a really good idea.", "No, that is terrible and I hate it!", "Well, maybe.", "It was fine, I suppose."]
    return np.concatenate([np.concatenate([speech_16k(tmp, t), pause]) for t in texts * 3]), "espeak-ng sentences (RAVDESS not found)"


def run(engine: Engine, stream: bool, audio48: np.ndarray) -> tuple[list, float]:
    e = copy.copy(engine)
    e.config = replace(PipelineConfig(), voice_stream=stream)
    s = Session(e, "weighted", blocking_asr=True)
    ups, voice_cpu = [], 0.0
    for i in range(0, len(audio48), 24000):
        u = s.push_audio(audio48[i : i + 24000], 48000, t=i / 48000)
        voice_cpu += u.cpu_ms.get("voice", 0.0)
        ups.append(u)
    s.close()
    return ups, voice_cpu / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--step", type=int, default=37)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "voice_stream.json"))
    args = ap.parse_args()
    x, source = speech(Path(args.data), args.clips, args.step)
    audio48 = (np.clip(resample(x, 16000, 48000), -1, 1) * 32767).astype(np.int16)
    seconds = len(x) / 16000
    engine = Engine(DEFAULT_CHECKPOINTS, device="cpu")
    engine.warmup("weighted")
    (window, cpu_window), (stream, cpu_stream) = run(engine, False, audio48), run(engine, True, audio48)
    both = [(a, b) for a, b in zip(window, stream) if a.present["audio"] and b.present["audio"]]
    diff = {
        "voice alone": [abs(a.unimodal["audio"] - b.unimodal["audio"]) for a, b in both if a.unimodal.get("audio") is not None],
        "fused prediction": [abs(a.prediction - b.prediction) for a, b in both],
        "voice contribution": [abs(a.shapley["audio"] - b.shapley["audio"]) for a, b in both],
    }
    out = {"source": source, "audio_s": seconds, "updates": len(window), "voice_updates": len(both),
           "presence_differs": sum(a.present["audio"] != b.present["audio"] for a, b in zip(window, stream)),
           "voice_cpu_s_per_s": {"openSMILE per window": cpu_window / seconds, "stream": cpu_stream / seconds},
           "difference": {k: {"mean": float(np.mean(v)), "max": float(np.max(v))} for k, v in diff.items() if v}}
    print(f"{source}: {seconds:.0f} s of audio, {len(both)} updates with a voice (presence differs in {out['presence_differs']})")
    print("\n| voice path | voice CPU-s per s of audio |\n|---|---|")
    for k, v in out["voice_cpu_s_per_s"].items():
        print(f"| {k} | {v:.3f} |")
    print("\n| stream vs per window | mean abs difference | largest |\n|---|---|---|")
    for k, v in out["difference"].items():
        print(f"| {k} | {v['mean']:.3f} | {v['max']:.3f} |")
    out["env"] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
