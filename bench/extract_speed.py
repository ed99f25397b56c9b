"""Extraction throughput per modality (items/s) with the live encoders, on real data.

Words: CMU-MOSEI transcripts, batched (what `mmdemo.extract` does) and one at a time (what the
live app does). Voice: RAVDESS clips (decode + VAD + eGeMAPS). Face: the expression photos (decode
+ MediaPipe + fer). Speech recognition: Whisper tiny.en on RAVDESS clips. CPU; the torch/CTranslate2
parts also on CUDA when present. Models are loaded (and warmed up) before timing.

    python bench/extract_speed.py [--data ../shared/data] [--n 200]
    python bench/extract_speed.py --modalities words [--devices cuda]   # MiniLM alone (transcripts only)
    python bench/extract_speed.py --ray [--clips 24]     # whole clips: one process vs local Ray, 1 and 2 workers
Writes bench/results/extract_speed.json (--ray: extract_speed_ray.json).

--ray times the whole extraction of talking-face videos made here (espeak-ng speech, the astronaut
photo, 3 s, frames at 5/s: face + voice + Whisper + words per clip), single-process
(mmdemo.extract.extract) and on local Ray (mmdemo.distributed.ray_extract) with 1 and 2 workers;
items/s counts the extraction after the models are loaded (worker start-up is reported apart).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
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

from bench.machine import cpu_model  # noqa: E402
from bench.machine import devices as parse_devices  # noqa: E402
from mmdemo.encoders import FaceEncoder, Transcriber, VoiceEncoder, WordsEncoder  # noqa: E402
from mmdemo.media import read_audio, read_image  # noqa: E402


def rows(folder: Path, n: int) -> list[dict]:
    if not (folder / "labels.csv").is_file():
        sys.exit(f"extract_speed: {folder / 'labels.csv'} not found: pass --data (the shared data folder, "
                 "see its README) or time other --modalities")
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
    ap.add_argument("--ray", action="store_true", help="whole-clip extraction: one process vs local Ray with 1 and 2 workers")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--modalities", default="face,voice,words,asr", help="which to time (words and asr also on CUDA when present)")
    ap.add_argument("--devices", default=None, help="for words and asr, e.g. cuda (default: the CPU, and CUDA when present)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    wanted = {m.strip() for m in args.modalities.split(",") if m.strip()}
    if args.ray and (args.devices or args.modalities != ap.get_default("modalities")):
        ap.error("--ray times whole clips (every modality, on the CPU): --modalities and --devices do not apply")
    if not wanted:
        ap.error("--modalities: no modality named (face, voice, words, asr)")
    if wanted - {"face", "voice", "words", "asr"}:
        ap.error(f"--modalities: unknown {sorted(wanted - {'face', 'voice', 'words', 'asr'})}")
    if args.ray:
        return ray_bench(args)
    args.out = args.out or str(ROOT / "bench" / "results" / "extract_speed.json")
    try:
        devices = parse_devices(args.devices)
    except ValueError as err:
        ap.error(f"--devices: {err}")
    results = []
    if wanted & {"voice", "asr"}:
        clips = [args.data / "ravdess-speech-audio" / r["path"] for r in rows(args.data / "ravdess-speech-audio", args.n)]
    if "face" in wanted:
        from mmdemo.expression import shipped_expression
        from mmdemo.pipeline import DEFAULT_CHECKPOINTS

        photos = [args.data / "facial-expressions-muxspace" / r["path"] for r in rows(args.data / "facial-expressions-muxspace", args.n)]
        cnn = shipped_expression(DEFAULT_CHECKPOINTS)  # the expression CNN the shipped face head reads with
        face = FaceEncoder(expression=cnn)
        face.warmup()
        results.append({"modality": "face", "device": "cpu", "what": f"photo: decode + MediaPipe + {'fer' if cnn is None else 'own expression CNN'}", "items_per_s": timed(lambda p: face.encode(read_image(p)), photos)})
    if "voice" in wanted:
        voice = VoiceEncoder()
        voice.warmup()
        results.append({"modality": "voice", "device": "cpu", "what": "2.4 s clip: decode + VAD + eGeMAPS", "items_per_s": timed(lambda p: voice.encode(read_audio(p)), clips)})
    for device in devices:
        if "words" in wanted:
            texts = [r["text"] for r in rows(args.data / "cmu-mosei-text", 5 * args.n)]
            words = WordsEncoder(device=device)
            words.warmup()
            # Two passes over the same texts: on CUDA the first use of each padded length sets up its
            # kernels (measured on an H200: fp16/bf16 first passes ran 24x slower than later ones),
            # so the second pass is the steady rate and the first is reported beside it.
            batched = [timed(words.encode_batch, [texts]) * len(texts) for _ in range(2)]
            results.append({"modality": "words", "device": device, "what": "MOSEI transcript, batches of 64", "dtype": words.model.dtype,
                            "texts": len(texts), "items_per_s": batched[1], "first_pass_items_per_s": batched[0]})
            single = [timed(lambda t: words.model.embed([t]), texts[: args.n]) for _ in range(2)]
            results.append({"modality": "words", "device": device, "what": "MOSEI transcript, one at a time (live)", "dtype": words.model.dtype,
                            "texts": len(texts[: args.n]), "items_per_s": single[1], "first_pass_items_per_s": single[0]})
        if "asr" not in wanted:
            continue
        asr = Transcriber(device=device)
        asr.warmup()
        audio = [read_audio(p) for p in clips[:30]]
        results.append({"modality": "speech -> words", "device": device, "what": "Whisper tiny.en, 2.4 s clip", "backend": asr.backend,
                        "items_per_s": timed(asr.transcribe, audio)})
    print("| modality | device | item | items/s | first pass (words) |\n|---|---|---|---|---|")
    for r in results:
        first = f"{r['first_pass_items_per_s']:.1f}" if "first_pass_items_per_s" in r else "–"
        print(f"| {r['modality']} | {r['device']} | {r['what']} | {r['items_per_s']:.1f} | {first} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": cpu_model(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
           "transformers": importlib.metadata.version("transformers")}
    out.write_text(json.dumps(env | {"results": results}, indent=2) + "\n")
    print(f"wrote {out}")


def ray_bench(args) -> None:
    import tempfile

    from mmdemo.distributed import ray_extract, start
    from mmdemo.extract import Extractor, Item, PartCache, extract
    from tests.media import espeak, video

    tmp = Path(tempfile.mkdtemp())
    wav = espeak(tmp / "speech.wav")
    items = []
    for i in range(args.clips):
        path = video(tmp / f"clip{i}.mp4", audio=wav, seconds=3.0)
        items.append(Item(f"clip{i}", float(i % 7 - 3), path, None, "train", f"s{i}"))
    modalities = ("text", "audio", "vision")
    rows = []
    from mmdemo.expression import shipped_expression
    from mmdemo.pipeline import DEFAULT_CHECKPOINTS

    ex = Extractor(modalities, expression=shipped_expression(DEFAULT_CHECKPOINTS))
    ex.face.warmup(), ex.voice.warmup(), ex.words.warmup(), ex.asr.warmup()
    t0, c0 = time.perf_counter(), time.process_time()
    extract(items, ex, PartCache(tmp / "c-one", modalities), progress=False)
    one, cpu = time.perf_counter() - t0, time.process_time() - c0
    # cores the single process keeps busy (CPU-seconds per second): how much room is left for workers
    rows.append({"path": "one process", "workers": 1, "items_per_s": len(items) / one, "startup_s": None, "cores_busy": cpu / one})
    ray = start(None, num_cpus=os.cpu_count())
    for workers in (1, 2):
        stats: dict = {}
        ray_extract(items, {"modalities": modalities, "expression": ex.face.expression}, PartCache(tmp / f"c-ray{workers}", modalities), workers=workers, progress=False, stats=stats)
        rows.append({"path": "local Ray", "workers": workers, "items_per_s": len(items) / stats["work_s"], "startup_s": stats["startup_s"],
                     "cpus_per_worker": stats["cpus_per_worker"]})
    ray.shutdown()
    print(f"{len(items)} clips of 3 s (face at 5 frames/s, voice, Whisper, words), {os.cpu_count()} CPUs; "
          f"the single process kept {rows[0]['cores_busy']:.2f} cores busy\n")
    print("| path | workers | clips/s | vs one process | worker start-up (s) |\n|---|---|---|---|---|")
    for r in rows:
        start_s = "–" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        print(f"| {r['path']} | {r['workers']} | {r['items_per_s']:.2f} | {r['items_per_s'] / rows[0]['items_per_s']:.2f}x | {start_s} |")
    out = Path(args.out or ROOT / "bench" / "results" / "extract_speed_ray.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "clips": len(items), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
