"""Updates per second delivered to the live plots, and latency from a webcam frame leaving the
browser to its point on the plot, with 1 and with 4 concurrent sessions, in headless Chromium.

Each session is a real browser page with a fake webcam (a clip of a real face) and a fake
microphone (espeak-ng speech), both streaming, as in tests/test_browser.py. The page records the
time of every frame POST (a wrapped fetch) and of every point the plot draws for a frame; the k-th
frame plotted is matched with the k-th frame sent. Browser and server share one clock (loopback).

    python bench/app_latency.py [--sessions 1,4] [--seconds 30] [--device cpu]
Writes bench/results/app_latency.json. Needs chromium, ffmpeg, espeak-ng, sox (README).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port  # noqa: E402
from tests.media import video  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
WRAP_FETCH = """
window.mmPosts = [];
const _fetch = window.fetch;
window.fetch = function(input, init) {
  const url = typeof input === 'string' ? input : input.url;
  if (init && init.method === 'POST' && url.includes('/stream/')) window.mmPosts.push({t: Date.now(), size: (init.body && init.body.length) || 0});
  return _fetch.apply(this, arguments);
};
"""


def media(d: Path) -> dict:
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "I think this went really well and I am happy about it."], check=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(d / "speech.wav"), "pad", "0", "1.5"], check=True)
    mp4 = video(d / "face.mp4", seconds=4.0, size=480)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-vf", "scale=640:480,format=yuv420p", "-r", "15", str(d / "face.y4m")], check=True)
    return {"video": d / "face.y4m", "audio": d / "speech.wav"}


def run(url: str, n: int, seconds: float, m: dict, tmp: Path) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS + [
            f"--use-file-for-fake-video-capture={m['video']}", f"--use-file-for-fake-audio-capture={m['audio']}"])
        pages = []
        for i in range(n):
            ctx = browser.new_context(permissions=["camera", "microphone"], viewport={"width": 1280, "height": 1000})
            page = ctx.new_page()
            page.add_init_script(WRAP_FETCH)
            page.goto(url, wait_until="load")
            page.wait_for_function("window.mmLive !== undefined && typeof Plotly !== 'undefined'", timeout=60000)
            page.locator("#cam").get_by_text("Click to Access Webcam").click()
            page.wait_for_function("document.querySelector('#cam video') && document.querySelector('#cam video').videoWidth > 0", timeout=60000)
            pages.append(page)
        for page in pages:
            page.locator("#cam button.capture-button").click()
            page.locator("#mic button.record-button").click()
        time.sleep(5)  # warm-up: first frames, model caches
        marks = [page.evaluate("[window.mmLive.points, window.mmLive.framePlots.length, window.mmPosts.length]") for page in pages]
        time.sleep(seconds)
        for page, (p0, f0, s0) in zip(pages, marks):
            pts, plots, posts = page.evaluate("[window.mmLive.points, window.mmLive.framePlots, window.mmPosts.map(x => x.t)]")
            frames = len(plots) - f0
            k = min(len(plots), len(posts))
            lat = np.array(plots[f0:k]) - np.array(posts[f0:k]) if k > f0 else np.zeros(0)
            out.append({"sessions": n, "updates_per_s": (pts - p0) / seconds, "frame_updates_per_s": frames / seconds,
                        "frames_sent": len(posts) - s0, "frames_plotted": frames,
                        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None})
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,4")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_latency.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    m = media(tmp)
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", args.device], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(10)  # let the models finish loading
        results = []
        for n in [int(x) for x in args.sessions.split(",")]:
            rows = run(f"http://127.0.0.1:{port}/", n, args.seconds, m, tmp)
            results += rows
            for r in rows:
                print(f"{n} session(s): {r['updates_per_s']:.1f} updates/s ({r['frame_updates_per_s']:.1f} from frames; "
                      f"{r['frames_sent']} frames sent, {r['frames_plotted']} plotted), frame->plot p50 {r['latency_p50_ms']} ms p95 {r['latency_p95_ms']} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\n| sessions | updates/s per session | of which frames | frame -> plot p50 ms | p95 ms |\n|---|---|---|---|---|")
    for n in sorted({r["sessions"] for r in results}):
        rows = [r for r in results if r["sessions"] == n]
        mean = lambda k: np.mean([r[k] for r in rows if r[k] is not None])  # noqa: E731
        print(f"| {n} | {mean('updates_per_s'):.1f} | {mean('frame_updates_per_s'):.1f} | {mean('latency_p50_ms'):.0f} | {mean('latency_p95_ms'):.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": args.device, "cpus": os.cpu_count(), "seconds": args.seconds, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
