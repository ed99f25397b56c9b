"""Latency of the streaming pipeline per update, per stage, over long sessions.

Simulated live input, fed as fast as the pipeline takes it: webcam frames at 10 fps (the
astronaut photo on a 640x480 canvas: a real face every frame) and microphone audio in 0.5 s hops
(48 kHz int16 espeak-ng speech with pauses, so utterances open, close and get transcribed; here in
line, so that each CPU-second is counted where it was spent, and left out of the latencies). Sessions of 1, 10 and 30 minutes of input; for each, p50/p95 of every stage and of the
whole update, the p50 of the first and the last minute (flat cost = equal), the process memory
before and after, and the CPU cost as CPU-seconds per second of session (per stage, and for the
whole process with speech recognition): a ratio comparable across machines, unlike milliseconds.
CPU, and CUDA when present (--device).

    python bench/pipeline_latency.py                 # 1, 10, 30 minutes
    python bench/pipeline_latency.py --minutes 1,3   # quicker
    python bench/pipeline_latency.py --concurrent 1,4 --seconds 60
    python bench/pipeline_latency.py --minutes 0.5 --before   # before/after the CPU cuts, one run
    python bench/pipeline_latency.py --minutes 0.5 --versus OLD_CHECKPOINTS   # other models, same run

--concurrent N runs N sessions at once in real time, one thread each, as N users of one server
would: frames come every 1/fps s; a session that is still busy when its next frame is due skips
to the newest frame (as the app does). It reports the updates per second each session got and
the latency from a frame being due to its update being ready (waiting included): the server's
capacity, without the browsers and the network (bench/app_latency.py measures those).
Writes bench/results/pipeline_latency.json (or --out). Needs espeak-ng.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.machine import cpu_model  # noqa: E402
from mmdemo.audio import resample  # noqa: E402
from mmdemo.checkpoint import save_fusion  # noqa: E402
from mmdemo.encoders import DIMS  # noqa: E402
from mmdemo.fusion import create_fusion, list_fusions  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine, PipelineConfig  # noqa: E402

STAGES = ("face", "vad", "voice", "words", "fusion", "total")
CPU_STAGES = ("face", "vad", "voice", "words", "fusion")



def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def media(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    canvas = np.full((480, 640, 3), 60, np.uint8)
    canvas[:, 64:576] = data.astronaut()[16:496]
    wav = tmp / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "I think this is a really good idea and I am quite happy with how it went today."], check=True)
    x, sr = sf.read(str(wav), dtype="float32")
    x16 = np.concatenate([resample(x, sr), np.zeros(16000 * 2, np.float32)])  # speech, then 2 s pause
    return canvas, (resample(x16, 16000, 48000) * 32767).astype(np.int16)


def run_session(engine: Engine, fusion: str, minutes: float, frame: np.ndarray, loop: np.ndarray, fps: float, hop: float) -> dict:
    # speech recognition in line, so every CPU-second is counted where it was spent (in the
    # background it would run during, and be counted in, whichever stage was running); the
    # latencies leave its time out, as the live app runs it beside the updates
    s = engine.session(fusion, blocking_asr=True)
    n_hop = int(48000 * hop)
    audio = np.tile(loop, int(np.ceil(minutes * 60 * 48000 / len(loop))) + 1)
    rows = []  # (t, stage dict)
    rss0 = rss_mb()
    cpu_rows = []
    c_run = time.process_time()
    t, next_audio, pos = 0.0, 0.0, 0
    end = minutes * 60
    while t < end:
        if t >= next_audio:
            t0 = time.perf_counter()
            up = s.push_audio(audio[pos : pos + n_hop], 48000, t=t)
            rows.append((t, up.timings_ms | {"total": 1000 * (time.perf_counter() - t0) - up.timings_ms.get("asr", 0.0)}))
            cpu_rows.append(up.cpu_ms)
            pos += n_hop
            next_audio += hop
        t0 = time.perf_counter()
        up = s.push_frame(frame, t=t)
        rows.append((t, up.timings_ms | {"total": 1000 * (time.perf_counter() - t0) - up.timings_ms.get("asr", 0.0)}))
        cpu_rows.append(up.cpu_ms)
        t += 1 / fps
    s.wait_for_transcripts()
    s.close()
    c_run = time.process_time() - c_run
    out = {"minutes": minutes, "updates": len(rows), "rss_mb_start": rss0, "rss_mb_end": rss_mb(), "history": len(s.history),
           "transcript_chars": len(s.update(t).transcript)}
    # CPU-seconds per second of session: process CPU (every thread) per stage, speech recognition,
    # and the whole run (which adds the bookkeeping between stages and the simulated input)
    session_s = minutes * 60
    per = {st: sum(r.get(st, 0.0) for r in cpu_rows) / 1000 / session_s for st in CPU_STAGES}
    per["stages"] = sum(per.values())
    per["speech recognition"] = sum(r.get("asr", 0.0) for r in cpu_rows) / 1000 / session_s
    per["whole process"] = c_run / session_s
    per["rest"] = per["whole process"] - per["stages"] - per["speech recognition"]
    out["cpu_s_per_s"] = per
    for stage in STAGES:
        v = np.array([r[stage] for _, r in rows if stage in r])
        out[stage] = {"n": int(v.size), "p50": float(np.percentile(v, 50)) if v.size else None, "p95": float(np.percentile(v, 95)) if v.size else None}
    first = np.array([r["total"] for tt, r in rows if tt < 60])
    last = np.array([r["total"] for tt, r in rows if tt >= end - 60])
    out["total_p50_first_min"], out["total_p50_last_min"] = float(np.median(first)), float(np.median(last))
    out["total_p95_first_min"], out["total_p95_last_min"] = float(np.percentile(first, 95)), float(np.percentile(last, 95))
    return out


def run_concurrent(engine: Engine, fusion: str, n: int, seconds: float, frame: np.ndarray, loop: np.ndarray, fps: float, hop: float) -> dict:
    import threading

    n_hop = int(48000 * hop)
    audio = np.tile(loop, int(np.ceil(seconds * 48000 / len(loop))) + 2)
    lat: list[list[float]] = [[] for _ in range(n)]
    counts = [0] * n
    start = time.monotonic() + 0.5

    def user(i: int) -> None:
        s = engine.session(fusion)
        next_frame, next_audio, pos = start + i / (fps * n), start, 0
        while True:
            now = time.monotonic()
            if now >= start + seconds:
                break
            if now >= next_audio:  # audio chunks are never dropped: the browser queues them
                s.push_audio(audio[pos : pos + n_hop], 48000, t=next_audio - start)
                pos += n_hop
                next_audio += hop
                counts[i] += 1
            elif now >= next_frame:
                due = next_frame + int((now - next_frame) * fps) / fps  # the newest frame due
                s.push_frame(frame, t=due - start)
                lat[i].append(1000 * (time.monotonic() - due))
                counts[i] += 1
                next_frame = due + 1 / fps
            else:
                time.sleep(min(next_frame, next_audio) - now)
        s.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    allv = np.concatenate([np.array(v) for v in lat])
    return {"sessions": n, "seconds": seconds, "updates_per_s": [c / seconds for c in counts],
            "frame_updates_per_s": [len(v) / seconds for v in lat],
            "frame_latency_p50_ms": float(np.percentile(allv, 50)), "frame_latency_p95_ms": float(np.percentile(allv, 95))}


def print_cpu_table(results: list[dict]) -> None:
    keys = [*CPU_STAGES, "stages", "speech recognition", "rest", "whole process"]
    print("\nCPU-seconds per second of session (process CPU of all threads; comparable across machines):\n")
    print("| device | pipeline | session | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 3))
    for r in results:
        if "cpu_s_per_s" in r:
            print(f"| {r['device']} | {r['variant']} | {r['minutes']:g} min | " + " | ".join(f"{r['cpu_s_per_s'][k]:.3f}" for k in keys) + " |")


def print_table(results: list[dict]) -> None:
    head = "| device | pipeline | session | updates | " + " | ".join(f"{s} p50/p95 ms" for s in STAGES) + " | total p50 first/last min | RSS MB start/end |"
    print("\n" + head + "\n|" + "---|" * (len(STAGES) + 6))
    for r in results:
        if "sessions" in r:
            continue
        cells = [r["device"], r["variant"], f"{r['minutes']:g} min", str(r["updates"])]
        cells += [f"{r[s]['p50']:.1f} / {r[s]['p95']:.1f}" if r[s]["p50"] is not None else "-" for s in STAGES]
        cells += [f"{r['total_p50_first_min']:.1f} / {r['total_p50_last_min']:.1f}", f"{r['rss_mb_start']:.0f} / {r['rss_mb_end']:.0f}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", default="1,10,30")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--hop", type=float, default=0.5)
    ap.add_argument("--fusion", default="weighted")
    ap.add_argument("--concurrent", default=None, help="e.g. 1,4: that many sessions at once, in real time")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of a --concurrent run")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    ap.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    ap.add_argument("--face-interval", type=float, default=None,
                    help="read the face at most this often, seconds (default: the pipeline's; 0 = every frame, as before)")
    ap.add_argument("--before", action="store_true",
                    help="first run the pipeline as it was before the CPU cuts (face every frame, openSMILE over every voice window, "
                         "torch's default threads), then as it is: a before/after table from one run")
    ap.add_argument("--versus", type=Path, metavar="DIR",
                    help="first run with the models in DIR (e.g. a copy of checkpoints/ before a change of its encoders), then with "
                         "--checkpoints: the two sets of models from one run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline_latency.json"))
    args = ap.parse_args()
    if args.versus is not None and not (args.versus / "fusion" / args.fusion / "config.json").exists():
        ap.error(f"--versus {args.versus}: no trained {args.fusion} model there")
    default_threads = torch.get_num_threads()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tmp = Path(tempfile.mkdtemp())
    ckpt = args.checkpoints
    trained = (ckpt / "fusion" / args.fusion / "config.json").exists()
    if not trained:  # the cost does not depend on the weights; say so
        ckpt = tmp / "ckpt"
        for n in list_fusions():
            save_fusion(create_fusion(n, dims=DIMS), ckpt / "fusion" / n)
        print(f"no trained checkpoints in {args.checkpoints}: timing untrained models of the same size")
    frame, loop = media(tmp)
    results = []
    now = PipelineConfig() if args.face_interval is None else replace(PipelineConfig(), face_interval_s=args.face_interval)
    before = replace(PipelineConfig(), face_interval_s=0.0, face_smooth_s=0.5, voice_stream=False, torch_threads=None)
    variants = ([("before", before)] if args.before else []) + [("now", now)]
    runs = [(f"{v} ({args.versus.name})", c, args.versus) for v, c in variants if args.versus is not None] + [(v, c, ckpt) for v, c in variants]
    for device in devices:
        for variant, config, models in runs:
            if config.torch_threads is None:
                torch.set_num_threads(default_threads)
            engine = Engine(models, device=device, config=config)
            t0 = time.perf_counter()
            engine.warmup(args.fusion)
            load_s = time.perf_counter() - t0
            tag = {"device": device, "variant": variant, "torch_threads": torch.get_num_threads()}
            if args.concurrent:
                for n in [int(x) for x in args.concurrent.split(",")]:
                    r = run_concurrent(engine, args.fusion, n, args.seconds, frame, loop, args.fps, args.hop) | tag
                    results.append(r)
                    print(f"{device} {variant}: {n} session(s) at once: updates/s per session {min(r['updates_per_s']):.1f}-{max(r['updates_per_s']):.1f} "
                          f"(frames {min(r['frame_updates_per_s']):.1f}-{max(r['frame_updates_per_s']):.1f}); frame due -> update p50 "
                          f"{r['frame_latency_p50_ms']:.1f} ms p95 {r['frame_latency_p95_ms']:.1f} ms", flush=True)
                continue
            for minutes in [float(m) for m in args.minutes.split(",")]:
                r = run_session(engine, args.fusion, minutes, frame, loop, args.fps, args.hop) | tag | {"load_s": load_s}
                results.append(r)
                print(f"{device} {variant} {minutes:g} min: {r['updates']} updates, total p50 {r['total']['p50']:.1f} ms p95 {r['total']['p95']:.1f} ms; "
                      f"first/last minute p50 {r['total_p50_first_min']:.1f}/{r['total_p50_last_min']:.1f} ms; RSS {r['rss_mb_start']:.0f}->{r['rss_mb_end']:.0f} MB", flush=True)
    if any("sessions" not in r for r in results):
        print_table(results)
        print_cpu_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "trained_checkpoints": trained,
           "fps": args.fps, "hop_s": args.hop, "fusion": args.fusion, "machine": platform.processor() or platform.machine(),
           "cpu_model": cpu_model(), "variants": {v: {k: getattr(c, k) for k in ("face_interval_s", "face_smooth_s", "voice_stream", "torch_threads")} for v, c in variants},
           "versus": str(args.versus) if args.versus else None,
           "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
