"""Updates per second delivered to the live plots, and latency from a webcam frame leaving the
browser to its point on the plot, with 1 and with 4 concurrent sessions, in headless Chromium.

Each session is a real browser page streaming a webcam and a microphone to the app. The webcam is
a canvas stream (getUserMedia is replaced in the page) that draws a real face photo at the frame
rate and size the page asks for (15 fps when it names none) with
the capture time written in a bar of black and white blocks at the bottom of every frame; the
microphone is Chromium's fake device playing espeak-ng speech. When the app's annotated frame for
a processed frame appears, the page decodes the bar from it and records now - capture time: the
latency from the frame leaving the camera to its update on the page (the plot point arrives in
the same message). Frames the app drops when it is behind are not counted as updates.

    python bench/app_latency.py [--sessions 1,4] [--seconds 30] [--device cpu] [--before] [--transports http,webrtc]

With --transport webrtc the app sends back, with each result, the RTP timestamp of the frame it is
for; the page notes when each frame left the encoder (an encoded-frame transform) and which canvas
frame it was, so the same latency is measured: canvas frame drawn -> its point drawn on the plot.
Writes bench/results/app_latency.json. Needs chromium, ffmpeg, espeak-ng, sox (README).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.media import astronaut  # noqa: E402

BEFORE = ["face_interval_s=0", "face_smooth_s=0.5", "voice_stream=false", "torch_threads=none"]  # the pipeline before the CPU cuts
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
BITS = 32
PROBE = """
(() => {
  const BITS = %(bits)d, BAR_SHARE = 0.05;
  let W = 640, H = 480, FPS = 15, timer = null;
  window.mmProbe = {lat: [], parts: [], frames: 0, drawn: [], enc: []};
  const face = new Image();
  face.src = '%(face)s';
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d');
  const tick = () => {
    if (canvas.width !== W) { canvas.width = W; canvas.height = H; }
    const BAR = Math.round(H * BAR_SHARE);
    ctx.fillStyle = '#777'; ctx.fillRect(0, 0, W, H);
    if (face.complete) ctx.drawImage(face, W / 10, 0, W * 0.8, H - BAR);
    const t = Date.now() %% 4294967296;
    for (let i = 0; i < BITS; i++) {
      ctx.fillStyle = (Math.floor(t / Math.pow(2, i)) %% 2) ? '#fff' : '#000';
      ctx.fillRect(i * W / BITS, H - BAR, W / BITS, BAR);
    }
    window.mmProbe.frames++;
    window.mmProbe.drawn.push(Date.now());
    if (window.mmProbe.drawn.length > 20000) window.mmProbe.drawn.shift();
  };
  timer = setInterval(tick, 1000 / FPS);
  const stream = canvas.captureStream();  // a frame whenever the canvas is drawn
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  // the page's requested size (the app asks for one), like a real camera honouring constraints
  const ideal = (v, d) => (v && typeof v === 'object') ? (v.ideal || v.exact || d) : (v || d);
  navigator.mediaDevices.getUserMedia = async (c) => {
    if (!(c && c.video)) return original(c);
    W = ideal(c.video.width, 640); H = ideal(c.video.height, 480);
    const fps = ideal(c.video.frameRate, 15);
    if (fps !== FPS) { FPS = fps; clearInterval(timer); timer = setInterval(tick, 1000 / FPS); }
    if (!c.audio) return stream;
    const mic = await original({audio: c.audio});  // camera and microphone in one request (the WebRTC page)
    return new MediaStream([...stream.getVideoTracks(), ...mic.getAudioTracks()]);
  };
  // WebRTC: note when each video frame leaves the encoder, by its RTP timestamp (the server sends
  // back the timestamp of the frame each result is for)
  const Native = window.RTCPeerConnection;
  if (Native) {
    window.RTCPeerConnection = function (cfg) {
      const pc = new Native(Object.assign({}, cfg || {}, {encodedInsertableStreams: true}));
      const addTrack = pc.addTrack.bind(pc);
      pc.addTrack = (track, ...streams) => {
        const sender = addTrack(track, ...streams);
        const {readable, writable} = sender.createEncodedStreams();
        readable.pipeThrough(new TransformStream({transform(frame, ctl) {
          if (track.kind === 'video') {
            window.mmProbe.enc.push([frame.timestamp, Date.now()]);
            if (window.mmProbe.enc.length > 20000) window.mmProbe.enc.shift();
          }
          ctl.enqueue(frame);
        }})).pipeTo(writable);
        return sender;
      };
      return pc;
    };
    window.RTCPeerConnection.prototype = Native.prototype;
  }
  const read = document.createElement('canvas');
  function decode(img) {
    read.width = img.naturalWidth; read.height = img.naturalHeight;
    const g = read.getContext('2d', {willReadFrequently: true}); g.drawImage(img, 0, 0);
    const y = Math.floor(img.naturalHeight * (1 - BAR_SHARE / 2)), w = img.naturalWidth / BITS;
    let t = 0;
    for (let i = 0; i < BITS; i++) {  // the webcam image is mirrored: bit i is i blocks from the right
      const p = g.getImageData(Math.floor((BITS - i - 0.5) * w), y, 1, 1).data;
      if (p[0] + p[1] + p[2] > 384) t += Math.pow(2, i);
    }
    return t;
  }
  const observer = new MutationObserver(() => {
    const img = document.querySelector('#frame img');
    if (!img || img.dataset.seen === img.src.length + ':' + img.src.slice(-32)) return;
    img.dataset.seen = img.src.length + ':' + img.src.slice(-32);
    const arrived = Date.now();
    const probe = new Image();
    probe.onload = () => {
      const captured = decode(probe);
      const lat = (arrived %% 4294967296) - captured;
      if (lat >= 0 && lat < 60000) window.mmProbe.lat.push([arrived, arrived - lat]);
      const r = (window.mmLive && window.mmLive.recv) ? window.mmLive.recv[window.mmLive.recv.length - 1] : null;
      if (r && lat >= 0 && lat < 60000) window.mmProbe.parts.push([(r[0] %% 4294967296) - captured, r[1] - r[0], arrived - r[1]]);
    };
    probe.src = img.src;
  });
  const start = () => observer.observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""


def media(d: Path, silent: bool = False) -> dict:
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "I think this went really well and I am happy about it."], check=True)
    effect = ["vol", "0"] if silent else []  # silence: no speech, so no Whisper work
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(d / "speech.wav"), "pad", "0", "1.5", *effect], check=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    return {"audio": d / "speech.wav", "face": "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()}


def _open(p, url: str, n: int, m: dict, ready: str):
    """A headless Chromium with ``n`` pages of the app, the probe in each, loaded until ``ready``."""
    probe = PROBE % {"bits": BITS, "face": m["face"]}
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                args=ARGS + [f"--use-file-for-fake-audio-capture={m['audio']}"])
    pages = []
    for _ in range(n):
        ctx = browser.new_context(permissions=["camera", "microphone"], viewport={"width": 1280, "height": 1000})
        page = ctx.new_page()
        page.add_init_script(probe)
        page.goto(url, wait_until="load")
        page.wait_for_function(ready, timeout=60000)
        pages.append(page)
    return browser, pages


def _by_face(parts: np.ndarray) -> dict:
    """WebRTC only (its messages say whether the frame's face was read): the handler's p50 / p95
    for frames whose face was read and for the others, and the share of frames of each kind."""
    if parts.shape[1] < 4 or not len(parts):
        return {}
    out = {"face_read_share": float(parts[:, 3].mean())}
    for name, rows in (("face_read", parts[parts[:, 3] > 0]), ("no_face_read", parts[parts[:, 3] == 0])):
        if len(rows):
            out[f"handler_{name}_p50_ms"] = float(np.median(rows[:, 1]))
            out[f"handler_{name}_p95_ms"] = float(np.percentile(rows[:, 1], 95))
    return out


def _row(n: int, seconds: float, points: int, frame_points: int, lat: np.ndarray, parts: np.ndarray, draws: list, draw_ms: float,
         since_ms: float) -> dict:
    return {"sessions": n, "updates_per_s": points / seconds, "frame_updates_per_s": frame_points / seconds,
            "latency_n": int(lat.size),
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            # where the time goes (medians): capture -> handler start (browser encode, upload or
            # WebRTC transport, queue, decode), handler, handler end -> page
            "to_handler_p50_ms": float(np.median(parts[:, 0])) if len(parts) else None,
            "handler_p50_ms": float(np.median(parts[:, 1])) if len(parts) else None,
            "to_page_p50_ms": float(np.median(parts[:, 2])) if len(parts) else None,
            # and their tails
            "to_handler_p95_ms": float(np.percentile(parts[:, 0], 95)) if len(parts) else None,
            "handler_p95_ms": float(np.percentile(parts[:, 1], 95)) if len(parts) else None,
            "to_page_p95_ms": float(np.percentile(parts[:, 2], 95)) if len(parts) else None,
            **_by_face(parts),
            "plot_redraw_ms": draw_ms, "redraws_per_s": float(np.sum(np.array(draws, dtype=float) > since_ms)) / seconds}


def run(url: str, n: int, seconds: float, m: dict) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser, pages = _open(p, url, n, m, "window.mmLive !== undefined && typeof Plotly !== 'undefined'")
        for page in pages:
            page.locator("#cam").get_by_text("Click to Access Webcam").click()
            page.wait_for_function("document.querySelector('#cam video') && document.querySelector('#cam video').videoWidth > 0", timeout=60000)
        for page in pages:
            page.locator("#cam button.capture-button").click()
            page.locator("#mic button.record-button").click()
        time.sleep(5)  # warm-up: first frames, model caches
        marks = [page.evaluate("[window.mmLive.points, window.mmLive.framePlots.length, window.mmProbe.lat.length]") for page in pages]
        marks_t = time.time() * 1000
        time.sleep(seconds)
        for page, (p0, f0, l0) in zip(pages, marks):
            pts, plots, probes, parts, draws, shown, draw_ms = page.evaluate(
                "[window.mmLive.points, window.mmLive.framePlots.length, window.mmProbe.lat, window.mmProbe.parts, window.mmLive.draws, "
                "window.mmLive.shown, window.mmLive.drawMs]")
            # a frame's point is on the plot at the first drawing after its update reached the page:
            # the canvas edge over the plot draws it at once, or a redraw of the figure takes it in
            on_plot = np.sort(np.array(draws + shown, dtype=float))
            lat = []
            for arrived, captured in probes[l0:]:
                k = np.searchsorted(on_plot, arrived)
                if k < len(on_plot):
                    lat.append(on_plot[k] - captured)
            lat = np.array(lat, dtype=float)
            parts = np.array(parts[-len(lat):] if len(lat) else [], dtype=float).reshape(-1, 3)
            out.append(_row(n, seconds, pts - p0, plots - f0, lat, parts, draws, draw_ms, marks_t))
        browser.close()
    return out


def rtc_offset(frames: list, enc: list) -> int | None:
    """The browser may add a constant offset to RTP timestamps on the wire: the offset that
    matches the most of the first results to encoded frames."""
    if not frames or not enc:
        return None
    counts: dict[int, int] = {}
    encoded = [int(ts) % 2**32 for ts, _ in enc]
    for pts, *_ in frames[:50]:
        for ts in encoded:
            off = (int(pts) - ts) % 2**32
            counts[off] = counts.get(off, 0) + 1
    return max(counts, key=counts.get)


def rtc_latencies(frames: list, enc: list, drawn: list, on_plot: np.ndarray, offset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame -> plot latencies of the WebRTC page. ``frames``: [rtp timestamp, arrival, server
    receive, server send] per result; ``enc``: [rtp timestamp, time] per encoded frame; ``drawn``:
    the canvas camera's frame times. The browser may add a constant offset to RTP timestamps on the
    wire: the offset that matches the most results is used. Capture = the last canvas frame drawn
    before the encoder took it."""
    offset = rtc_offset(frames, enc) if offset is None else offset
    if not frames or offset is None:
        return np.zeros(0), np.zeros((0, 4))
    enc_ts = {int(ts) % 2**32: t for ts, t in enc}
    drawn = np.asarray(drawn, dtype=float)
    lat, parts = [], []
    for pts, arrived, recv, sent, *face in frames:
        t_enc = enc_ts.get((int(pts) - offset) % 2**32)
        if t_enc is None or recv is None or sent is None:
            continue
        i = np.searchsorted(drawn, t_enc, side="right") - 1
        k = np.searchsorted(on_plot, arrived)
        if i < 0 or k >= len(on_plot):
            continue
        captured = drawn[i]
        lat.append(on_plot[k] - captured)
        parts.append([recv - captured, sent - recv, arrived - sent, float(bool(face and face[0]))])
    return np.asarray(lat, dtype=float), np.asarray(parts, dtype=float).reshape(-1, 4)


def run_rtc(url: str, n: int, seconds: float, m: dict) -> list[dict]:
    """As :func:`run`, for the app started with --transport webrtc."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser, pages = _open(p, url, n, m, "window.mmRtc !== undefined && window.mmLive !== undefined && window.mmLive.feed !== undefined")
        for page in pages:
            page.wait_for_function("window.mmRtc.ready === true", timeout=60000)  # the session token arrived
            page.locator("#rtc .mm-rtc-start").click()
        for page in pages:
            page.wait_for_function("window.mmRtc.state === 'WebRTC: connected'", timeout=60000)
        time.sleep(5)  # warm-up
        marks = [page.evaluate("[window.mmLive.points, window.mmLive.framePlots.length, window.mmRtc.frames.length, window.mmRtc.faces.length]")
                 for page in pages]
        marks_t = time.time() * 1000
        time.sleep(seconds)
        for page, (p0, f0, r0, q0) in zip(pages, marks):
            pts, plots, frames, faces, enc, drawn, draws, shown, draw_ms = page.evaluate(
                "[window.mmLive.points, window.mmLive.framePlots.length, window.mmRtc.frames, window.mmRtc.faces, window.mmProbe.enc, "
                "window.mmProbe.drawn, window.mmLive.draws, window.mmLive.shown, window.mmLive.drawMs]")
            on_plot = np.sort(np.array(draws + shown, dtype=float))
            offset = rtc_offset(frames, enc)
            lat, parts = rtc_latencies(frames[r0:], enc, drawn, on_plot, offset)
            row = _row(n, seconds, pts - p0, plots - f0, lat, parts, draws, draw_ms, marks_t)
            # faces read apart from the frames (face_apart): a frame's face reaches the plot in an
            # update of its own; its latency is the age of the face the plot shows when it changes,
            # and its handler time the face read (counted from the frame's arrival)
            face_lat, face_parts = rtc_latencies(faces[q0:], enc, drawn, on_plot, offset)
            row |= {"face_updates_per_s": (len(faces) - q0) / seconds, "face_latency_n": int(face_lat.size),
                    "face_latency_p50_ms": float(np.percentile(face_lat, 50)) if face_lat.size else None,
                    "face_latency_p95_ms": float(np.percentile(face_lat, 95)) if face_lat.size else None,
                    "face_handler_p50_ms": float(np.median(face_parts[:, 1])) if len(face_parts) else None,
                    "face_handler_p95_ms": float(np.percentile(face_parts[:, 1], 95)) if len(face_parts) else None}
            out.append(row)
        browser.close()
    return out


def _label(variant: str, settings: list[str], transport: str) -> str:
    return f"{variant}, {transport}" + ("".join(f", {x}" for x in settings) if variant == "now" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="1,4")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--silent-mic", action="store_true", help="the microphone plays silence (no speech to transcribe)")
    ap.add_argument("--before", action="store_true",
                    help="first run the app as it was before the CPU cuts (face every frame, openSMILE over every voice window, torch's "
                         "default threads), then as it is: a before/after table from one run")
    ap.add_argument("--transports", default="http,webrtc",
                    help="the app's transports to measure (python app.py --transport), each optionally with settings for the app's "
                         "--set: 'webrtc+face_apart=false' is the WebRTC app reading faces in line with the frames")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_latency.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    m = media(tmp, silent=args.silent_mic)
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    variants = ([("before", BEFORE, "http")] if args.before else []) + [
        ("now", t.split("+")[1:], t.split("+")[0]) for t in args.transports.split(",")]
    results = []
    for variant, settings, transport in variants:
        variant = _label(variant, settings, transport)
        port = free_port()
        log = open(tmp / f"app-{variant}.log", "w")
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", args.device, "--transport", transport]
        for item in settings:
            cmd += ["--set", item]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            time.sleep(10)  # let the models finish loading
            for n in [int(x) for x in args.sessions.split(",")]:
                measure = run_rtc if transport == "webrtc" else run
                rows = [r | {"variant": variant} for r in measure(f"http://127.0.0.1:{port}/", n, args.seconds, m)]
                results += rows
                for r in rows:
                    print(f"{variant}, {n} session(s): {r['updates_per_s']:.1f} updates/s ({r['frame_updates_per_s']:.1f} from frames), "
                          f"frame -> plot p50 {r['latency_p50_ms']} ms p95 {r['latency_p95_ms']} ms ({r['latency_n']} frames); "
                          f"p50 parts: to handler {r['to_handler_p50_ms']}, handler {r['handler_p50_ms']}, to page {r['to_page_p50_ms']} ms; "
                          f"plot redraw {r['plot_redraw_ms']} ms, {r['redraws_per_s']:.1f}/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("\n| app | sessions | updates/s per session | of which frames | frame -> plot p50 ms | p95 ms | face -> plot p50 / p95 ms |\n"
          "|---|---|---|---|---|---|---|")
    for variant in dict.fromkeys(r["variant"] for r in results):
        for n in sorted({r["sessions"] for r in results}):
            rows = [r for r in results if r["sessions"] == n and r["variant"] == variant]
            mean = lambda k: np.mean([r[k] for r in rows if r[k] is not None])  # noqa: E731
            face = (f"{mean('face_latency_p50_ms'):.0f} / {mean('face_latency_p95_ms'):.0f}"
                    if any(r.get("face_latency_p50_ms") is not None for r in rows) else "in line")
            print(f"| {variant} | {n} | {mean('updates_per_s'):.1f} | {mean('frame_updates_per_s'):.1f} | {mean('latency_p50_ms'):.0f} | "
                  f"{mean('latency_p95_ms'):.0f} | {face} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": args.device, "cpus": os.cpu_count(), "cpu_model": cpu_model(), "seconds": args.seconds, "microphone": "silence" if args.silent_mic else "speech",
                               "variants": {_label(v, st, t): st for v, st, t in variants}, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
