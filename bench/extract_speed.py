"""Extraction throughput per modality (items/s) with the live encoders, on real data.

Words: CMU-MOSEI transcripts, batched (what `mmdemo.extract` does) and one at a time (what the
live app does). Voice: RAVDESS clips (decode + VAD + eGeMAPS). Face: the expression photos (decode
+ MediaPipe + fer). Speech recognition: Whisper tiny.en on RAVDESS clips. CPU; the torch/CTranslate2
parts also on CUDA when present. Models are loaded (and warmed up) before timing.

    python bench/extract_speed.py [--data ../shared/data] [--n 200]
Writes bench/results/extract_speed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmdemo.encoders import FaceEncoder, Transcriber, VoiceEncoder, WordsEncoder  # noqa: E402
from mmdemo.media import read_audio, read_image  # noqa: E402


def rows(folder: Path, n: int) -> list[dict]:
    with open(folder / "labels.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))[:n]


def timed(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "extract_speed.json"))
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    texts = [r["text"] for r in rows(args.data / "cmu-mosei-text", 5 * args.n)]
    clips = [args.data / "ravdess-speech-audio" / r["path"] for r in rows(args.data / "ravdess-speech-audio", args.n)]
    photos = [args.data / "facial-expressions-muxspace" / r["path"] for r in rows(args.data / "facial-expressions-muxspace", args.n)]
    results = []

    face, voice = FaceEncoder(), VoiceEncoder()
    face.warmup(), voice.warmup()
    results.append({"modality": "face", "device": "cpu", "what": "photo: decode + MediaPipe + fer", "items_per_s": timed(lambda p: face.encode(read_image(p)), photos)})
    results.append({"modality": "voice", "device": "cpu", "what": "2.4 s clip: decode + VAD + eGeMAPS", "items_per_s": timed(lambda p: voice.encode(read_audio(p)), clips)})
    for device in devices:
        words = WordsEncoder(device=device)
        words.warmup()
        t0 = time.perf_counter()
        words.encode_batch(texts)
        results.append({"modality": "words", "device": device, "what": "MOSEI transcript, batches of 64", "items_per_s": len(texts) / (time.perf_counter() - t0)})
        results.append({"modality": "words", "device": device, "what": "MOSEI transcript, one at a time (live)",
                        "items_per_s": timed(lambda t: words.model.embed([t]), texts[: args.n])})
        asr = Transcriber(device=device)
        asr.warmup()
        audio = [read_audio(p) for p in clips[:30]]
        results.append({"modality": "speech -> words", "device": device, "what": "Whisper tiny.en, 2.4 s clip", "items_per_s": timed(asr.transcribe, audio)})
    print("| modality | device | item | items/s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['modality']} | {r['device']} | {r['what']} | {r['items_per_s']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
