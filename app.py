"""mmdemo live studio: webcam + microphone + text in, live sentiment and modality contributions out.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass] [--device cpu|cuda]
                  [--checkpoints checkpoints/]

This file is the Gradio UI only: it turns browser payloads into calls of the core (mmdemo) and
results into plots. Per-user state lives in gr.State (one mmdemo Session each); the models are
shared read-only and load in the background while the page is already usable.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime phones home otherwise (see mmdemo/__init__.py)

import argparse  # noqa: E402
import base64  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import plotly  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import soundfile as sf  # noqa: E402

from mmdemo import DISPLAY_NAMES, MODALITIES  # noqa: E402
from mmdemo.clip import analyse_clip  # noqa: E402
from mmdemo.media import MediaError  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine, Session, Update  # noqa: E402

log = logging.getLogger("mmdemo.app")

COLORS = {"text": "#4C78A8", "audio": "#F58518", "vision": "#54A24B"}
LABEL = {m: DISPLAY_NAMES[m] for m in MODALITIES}  # words / voice / face
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
FRAME_WIDTH = 320  # the annotated frame sent back to the browser
WEBCAM = {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}  # a face at arm's length is ~100 px: enough; cheaper to send and decode
MIN_FRAME_GAP_S = 0.07  # frames arriving sooner after the last processed one are skipped: at most ~14 processed/s


# ============================================================================ state and models


class Studio:
    """What the app shares between users: the engine (read-only models) and its loading status."""

    def __init__(self, checkpoints: Path, device: str | None):
        self.engine = Engine(checkpoints, device=device)
        self.fusions = self.engine.available_fusions()
        self.ready = threading.Event()
        self.error: str | None = None
        self.metrics = {n: _read_json(checkpoints / "fusion" / n / "metrics.json") for n in self.fusions}
        self.card = (checkpoints / "README.md").read_text() if (checkpoints / "README.md").exists() else "No model card found."

    def warm_up(self) -> None:
        try:
            t0 = time.perf_counter()
            self.engine.warmup(self.engine.default_fusion())
            log.info("models ready in %.1f s", time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001 - shown in the UI, the app keeps running
            self.error = f"{type(err).__name__}: {err}"
            log.error("loading the models failed: %s", self.error)
        finally:
            self.ready.set()

    def status(self) -> str:
        if not self.fusions:
            return f"⚠️ No fusion models in {self.engine.checkpoints}/fusion: run `python -m mmdemo.benchmark` (README)."
        if self.error:
            return f"⚠️ Models failed to load: {html.escape(self.error)}"
        if not self.ready.is_set():
            return "⏳ Loading models (face, voice, words, speech recognition)… the first updates may be slow."
        return f"✓ Models ready ({self.engine.device.type}). Allow camera and microphone access, then press Record."


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================ rendering


def feed_payload(up: Update, *, src: str = "", reset: bool = False, recv: float | None = None) -> str:
    """The light update the live plots extend themselves with (one point). ``src`` says which
    input caused it (frame, audio, text, fusion), for the latency benchmark."""
    return json.dumps({"src": src,
        "t": round(up.t, 3), "pred": round(up.prediction, 4), "base": round(up.baseline, 4), "fusion": up.fusion,
        "any": up.any_present, "shap": {m: round(v, 4) for m, v in up.shapley.items()},
        "w": None if up.weights is None else {m: round(v, 4) for m, v in up.weights.items()},
        "recv": None if recv is None else recv * 1000, "sent": time.time() * 1000, "reset": reset,
    })


def readout_html(up: Update | None) -> str:
    if up is None:
        return "<div class='mm-readout'><div class='mm-score'>–</div><div class='mm-label'>waiting for input</div></div>"
    y = up.prediction
    label = "positive" if y >= 0.5 else "negative" if y <= -0.5 else "neutral"
    color = "#2e7d32" if label == "positive" else "#c62828" if label == "negative" else "#616161"
    bars = []
    for m in MODALITIES:
        v = up.shapley[m]
        width = min(50.0, abs(v) / 3.0 * 50.0)
        left = 50.0 if v >= 0 else 50.0 - width
        w = "" if up.weights is None else f" · weight {up.weights[m]:.2f}"
        alone = up.unimodal.get(m)
        w += "" if alone is None else f" · alone {alone:+.2f}"
        bars.append(
            f"<div class='mm-bar'><span class='mm-mod'>{LABEL[m]}</span><span class='mm-track'>"
            f"<span class='mm-fill' style='left:{left:.1f}%;width:{width:.1f}%;background:{COLORS[m]}'></span></span>"
            f"<span class='mm-val'>{v:+.2f}{w}</span></div>"
        )
    note = "" if up.any_present else "<div class='mm-label'>no modality present: the model's prior</div>"
    return (f"<div class='mm-readout'><div class='mm-score' style='color:{color}'>{y:+.2f}</div>"
            f"<div class='mm-label'>{label} · {html.escape(up.fusion)} · baseline {up.baseline:+.2f}</div>{note}"
            f"<div class='mm-bars'>{''.join(bars)}</div></div>")


def status_html(up: Update | None) -> str:
    rows = []
    if up is not None:
        for m in MODALITIES:
            if up.present[m]:
                extra = {"vision": f" ({up.face_expression})" if up.face_expression else "",
                         "audio": f" · {up.audio_level_dbfs:.0f} dBFS", "text": ""}[m]
                rows.append(f"<span class='mm-chip on'>● {LABEL[m]}: present{html.escape(extra)}</span>")
            else:
                rows.append(f"<span class='mm-chip off'>○ {LABEL[m]}: {html.escape(up.reasons[m])}</span>")
        level = max(0.0, min(100.0, (up.audio_level_dbfs + 70) / 70 * 100))
        rows.append(f"<div class='mm-meter' title='microphone level'><span style='width:{level:.0f}%'></span></div>")
        rows += [f"<div class='mm-note'>ℹ️ {html.escape(n)}</div>" for n in up.notes[:4]]
        if up.timings_ms:
            rows.append(f"<div class='mm-note'>update {up.timings_ms.get('total', 0):.0f} ms</div>")
    return "".join(rows)


def warn_html(message: str) -> str:
    return f"<div class='mm-status-line'>⚠️ {html.escape(message)}</div>"


def frame_html(frame: np.ndarray | None, up: Update | None) -> str:
    """The webcam frame, small, with the face box and expression drawn on it (inline JPEG: no
    temporary file per frame)."""
    if frame is None:
        return "<div class='mm-frame empty'>no camera frame</div>"
    h, w = frame.shape[:2]
    scale = FRAME_WIDTH / max(w, 1)
    small = cv2.resize(frame, (FRAME_WIDTH, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    if up is not None and up.face_box:
        x0, y0, x1, y1 = (round(v * scale) for v in up.face_box)
        cv2.rectangle(bgr, (x0, y0), (x1, y1), (80, 200, 80), 2)
        cv2.putText(bgr, up.face_expression or "", (x0, max(12, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (80, 200, 80), 1, cv2.LINE_AA)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return f"<img class='mm-frame' alt='annotated frame' src='data:image/jpeg;base64,{base64.b64encode(jpg).decode()}'/>"


def method_md(studio: Studio, name: str) -> str:
    m = studio.metrics.get(name, {})
    t = m.get("test") or {}
    if not t:
        return f"**{name}**: no test metrics in its checkpoint."
    sub = m.get("subsets", {})
    words = (sub.get("words only") or {}).get("mae")
    fv = (sub.get("face + voice (no words)") or {}).get("mae")
    parts = [f"**{name}** on paired test examples: MAE {t['mae']:.3f}, Corr {t['corr']:.3f}, Acc-2 {100 * t['acc2_non0']:.1f}%, Acc-7 {100 * t['acc7']:.1f}%"]
    if words is not None and fv is not None:
        parts.append(f"MAE with words only {words:.3f}, with face + voice only {fv:.3f}")
    parts.append("(fusion learned from unpaired corpora: see the model card)")
    return " · ".join(parts)


def timeline_figure(rows: list[dict], title: str) -> go.Figure:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45],
                        subplot_titles=("sentiment (-3 … +3)", "contribution of each modality (Shapley, sentiment units)"))
    t = [r["t"] for r in rows]
    for y0, y1, c in ((-3, -0.5, "rgba(198,40,40,0.08)"), (-0.5, 0.5, "rgba(97,97,97,0.06)"), (0.5, 3, "rgba(46,125,50,0.08)")):
        fig.add_hrect(y0=y0, y1=y1, fillcolor=c, line_width=0, row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=[r["prediction"] for r in rows], mode="markers", name="prediction", marker={"size": 4, "color": "#333"}), 1, 1)
    for m in MODALITIES:
        fig.add_trace(go.Scatter(x=t, y=[r[f"shapley_{m}"] for r in rows], name=LABEL[m], mode="lines", fill="tozeroy",
                                 line={"color": COLORS[m], "width": 1.5}), 2, 1)
    fig.update_yaxes(range=[-3.1, 3.1], row=1, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_layout(height=520, margin={"l": 40, "r": 10, "t": 50, "b": 40}, title=title, legend={"orientation": "h"})
    return fig


# ============================================================================ the live plots (client side)

LIVE_TEMPLATE = "<div class='mm-live'><div class='mm-live-plot'></div></div>"

# Runs once in the browser: builds the figure, then extends it with each one-point payload
# (Plotly.extendTraces) instead of receiving whole figures; keeps the last 600 points.
LIVE_JS = """
const el = element.querySelector('.mm-live-plot');
const C = {text: '%(text)s', audio: '%(audio)s', vision: '%(vision)s'};
const L = {text: 'words', audio: 'voice', vision: 'face'};
const M = ['text', 'audio', 'vision'];
const N = 600;
window.mmLive = {points: 0, latencies: [], framePlots: [], draws: [], fusion: null, ema: null, lastT: -1};
function init() {
  const traces = [
    {x: [], y: [], mode: 'markers', name: 'prediction', marker: {size: 4, color: '#555'}, xaxis: 'x', yaxis: 'y'},
    {x: [], y: [], mode: 'lines', name: 'smoothed', line: {color: '#111', width: 2}, xaxis: 'x', yaxis: 'y'},
  ];
  for (const m of M) traces.push({x: [], y: [], mode: 'lines', name: L[m] + ' contribution', fill: 'tozeroy',
                                  line: {color: C[m], width: 1.5}, xaxis: 'x', yaxis: 'y2'});
  for (const m of M) traces.push({x: [], y: [], mode: 'lines', name: L[m] + ' weight', stackgroup: 'w',
                                  line: {color: C[m], width: 0.5}, xaxis: 'x', yaxis: 'y3', showlegend: false});
  const band = (y0, y1, c) => ({type: 'rect', xref: 'paper', yref: 'y', x0: 0, x1: 1, y0: y0, y1: y1, fillcolor: c, line: {width: 0}, layer: 'below'});
  const layout = {
    height: 580, margin: {l: 45, r: 10, t: 20, b: 55}, showlegend: true, legend: {orientation: 'h', y: -0.14},
    xaxis: {title: {text: 'time (s)'}, anchor: 'y3'},
    yaxis: {domain: [0.58, 1], range: [-3.1, 3.1], title: {text: 'sentiment'}},
    yaxis2: {domain: [0.24, 0.54], title: {text: 'Shapley'}, zeroline: true},
    yaxis3: {domain: [0, 0.18], range: [0, 1], title: {text: 'weights'}},
    shapes: [band(-3.1, -0.5, 'rgba(198,40,40,0.09)'), band(-0.5, 0.5, 'rgba(97,97,97,0.07)'), band(0.5, 3.1, 'rgba(46,125,50,0.09)')],
    annotations: [],
  };
  Plotly.newPlot(el, traces, layout, {displayModeBar: false, responsive: true});
}
const pending = {x: [[], [], [], [], [], [], [], []], y: [[], [], [], [], [], [], [], []]};
// raw points (one SVG node each, the costly part of a redraw) for the last 15 s; lines for 60 s
const KEEP = {x: [150, N, N, N, N, N, N, N], y: [150, N, N, N, N, N, N, N]};
let scheduled = false, lastDraw = 0, drawMs = 20;
// Redraw as soon as a point arrives unless redraws would take more than two thirds of the page's
// time: then points arriving meanwhile are drawn together in one call (slow machines, many points).
const gap = () => Math.max(30, 1.5 * drawMs);
function draw() {
  scheduled = false;
  if (!pending.x[0].length) return;
  const t0 = performance.now();
  Plotly.extendTraces(el, {x: pending.x, y: pending.y}, [0, 1, 2, 3, 4, 5, 6, 7], KEEP);
  for (let i = 0; i < 8; i++) { pending.x[i] = []; pending.y[i] = []; }
  lastDraw = performance.now();
  drawMs = 0.8 * drawMs + 0.2 * (lastDraw - t0);
  window.mmLive.drawMs = drawMs;
  window.mmLive.draws.push(Date.now());
  if (window.mmLive.draws.length > 5000) window.mmLive.draws.shift();
}
function push() {
  if (!props.value) return;
  let d; try { d = JSON.parse(props.value); } catch (e) { return; }
  if (d.reset) {
    window.mmLive.ema = null; window.mmLive.lastT = -1;
    for (let i = 0; i < 8; i++) { pending.x[i] = []; pending.y[i] = []; }  // nothing of the old session is drawn
    init(); return;
  }
  if (d.t < window.mmLive.lastT) return;  // two streams: keep time order
  window.mmLive.lastT = d.t;
  const a = 0.3;
  window.mmLive.ema = window.mmLive.ema === null ? d.pred : a * d.pred + (1 - a) * window.mmLive.ema;
  const ys = [d.pred, window.mmLive.ema].concat(M.map(m => d.shap[m]), M.map(m => d.w ? d.w[m] : null));
  for (let i = 0; i < 8; i++) { pending.x[i].push(d.t); pending.y[i].push(ys[i]); }
  if (!scheduled) {
    scheduled = true;
    const wait = gap() - (performance.now() - lastDraw);
    if (wait <= 0) requestAnimationFrame(draw); else setTimeout(() => requestAnimationFrame(draw), wait);
  }
  if (window.mmLive.fusion !== null && window.mmLive.fusion !== d.fusion) {
    const anns = (el.layout.annotations || []).concat([{x: d.t, y: 3, xref: 'x', yref: 'y', text: d.fusion, showarrow: true, arrowhead: 0, ay: -18, font: {size: 10}}]);
    Plotly.relayout(el, {annotations: anns.slice(-8)});
  }
  window.mmLive.fusion = d.fusion;
  window.mmLive.points += 1;
  window.mmLive.latencies.push(Date.now() - d.sent);
  if (window.mmLive.latencies.length > 2000) window.mmLive.latencies.shift();
  if (d.recv) { window.mmLive.recv = window.mmLive.recv || []; window.mmLive.recv.push([d.recv, d.sent, Date.now()]); if (window.mmLive.recv.length > 2000) window.mmLive.recv.shift(); }
  if (d.src === 'frame') { window.mmLive.framePlots.push(Date.now()); if (window.mmLive.framePlots.length > 5000) window.mmLive.framePlots.shift(); }
}
if (typeof Plotly === 'undefined') {
  el.innerHTML = '<p>plotly.js did not load: live plots are unavailable.</p>';
} else {
  init();
  watch('value', push);
}
""" % COLORS

CSS = """
.mm-readout {padding: 8px 12px; border-radius: 8px; background: var(--block-background-fill);}
.mm-score {font-size: 2.6em; font-weight: 700; line-height: 1.1;}
.mm-label {color: var(--body-text-color-subdued); font-size: 0.9em;}
.mm-bar {display: flex; align-items: center; gap: 6px; font-size: 0.85em; margin-top: 4px;}
.mm-mod {width: 44px;} .mm-val {width: 210px; font-variant-numeric: tabular-nums;}
.mm-track {position: relative; flex: 1; height: 10px; background: rgba(128,128,128,0.15); border-radius: 5px;}
.mm-track::after {content: ''; position: absolute; left: 50%; top: -2px; height: 14px; border-left: 1px solid #999;}
.mm-fill {position: absolute; top: 0; height: 10px; border-radius: 5px;}
.mm-chip {display: inline-block; margin: 2px 6px 2px 0; padding: 2px 8px; border-radius: 10px; font-size: 0.85em;}
.mm-chip.on {background: rgba(46,125,50,0.15);} .mm-chip.off {background: rgba(128,128,128,0.15);}
.mm-meter {height: 6px; background: rgba(128,128,128,0.2); border-radius: 3px; margin: 6px 0;}
.mm-meter span {display: block; height: 6px; background: #F58518; border-radius: 3px;}
.mm-note {font-size: 0.8em; color: var(--body-text-color-subdued);}
.mm-frame {width: 100%; border-radius: 6px;} .mm-frame.empty {padding: 40px; text-align: center; background: rgba(128,128,128,0.1);}
"""


# ============================================================================ handlers


class Handlers:
    """Every UI event as a plain method (testable without a browser). None of them raises: a
    problem becomes a plain message in the UI and a log line, and the session goes on."""

    def __init__(self, studio: Studio, min_frame_gap_s: float = MIN_FRAME_GAP_S):
        self.studio = studio
        self.min_frame_gap_s = min_frame_gap_s
        self._last_frame: weakref.WeakKeyDictionary[Session, float] = weakref.WeakKeyDictionary()

    def session_of(self, state: Session | None, fusion: str | None = None) -> Session:
        return state if state is not None else self.studio.engine.session(fusion or None)

    def on_load(self):
        try:
            s = self.studio.engine.session()
            up = s.update()
            return s, feed_payload(up, reset=True), readout_html(None), status_html(up), gr.update(value=s.fusion_name)
        except Exception as err:  # noqa: BLE001
            log.warning("session could not start: %s", err)
            return None, gr.update(), readout_html(None), warn_html(str(err)), gr.update()

    def on_frame(self, frame, state):
        recv = time.time()
        try:
            s = self.session_of(state)
            if frame is None:
                up = s.update()
                return frame_html(None, up), feed_payload(up), readout_html(up), status_html(up), s
            now = time.monotonic()
            if now - self._last_frame.get(s, -1e9) < self.min_frame_gap_s:
                # Gradio already keeps only the newest frame of a stream; this also caps the rate so
                # a fast camera does not take the CPU from the microphone and the other users
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), s
            self._last_frame[s] = now
            frame = np.asarray(frame)
            up = s.push_frame(frame)
            return frame_html(frame, up), feed_payload(up, src="frame", recv=recv), readout_html(up), status_html(up), s
        except Exception as err:  # noqa: BLE001 - a bad frame must not end the stream
            log.warning("frame skipped: %s", err)
            return gr.update(), gr.update(), gr.update(), warn_html(f"frame skipped: {err}"), state

    def on_audio(self, chunk, state):
        try:
            s = self.session_of(state)
            if chunk is None:
                up = s.update()
            else:
                data, sr = read_chunk(chunk)
                up = s.push_audio(data, sr)
            return feed_payload(up, src="audio"), readout_html(up), status_html(up), up.transcript, s
        except Exception as err:  # noqa: BLE001
            log.warning("audio chunk skipped: %s", err)
            return gr.update(), gr.update(), warn_html(f"audio skipped: {err}"), gr.update(), state

    def on_audio_stop(self, state):
        if state is None:
            return gr.update(), gr.update(), state
        up = state.stop_audio()
        return feed_payload(up), status_html(up), state

    def on_text(self, text, state):
        try:
            s = self.session_of(state)
            up = s.set_text(text)
            return feed_payload(up, src="text"), readout_html(up), status_html(up), s
        except Exception as err:  # noqa: BLE001
            log.warning("text not used: %s", err)
            return gr.update(), gr.update(), warn_html(str(err)), state

    def on_fusion(self, name, state):
        try:
            s = self.session_of(state, name)
            up = s.set_fusion(name)
            return feed_payload(up, src="fusion"), readout_html(up), status_html(up), method_md(self.studio, name), s
        except Exception as err:  # noqa: BLE001
            return gr.update(), gr.update(), warn_html(str(err)), gr.update(), state

    def on_analyse(self, video, fusion, fps, progress=gr.Progress()):
        if not video:
            return "Upload a video (or audio) file first.", None, None, None
        try:
            result = analyse_clip(self.studio.engine, video, fusion=fusion, fps=float(fps), progress=lambda f: progress(f, desc="analysing"))
        except MediaError as err:
            return f"⚠️ {err}", None, None, None
        except Exception as err:  # noqa: BLE001
            log.warning("analysis failed: %s", err)
            return f"⚠️ the clip could not be analysed: {err}", None, None, None
        rows = result.rows()
        out = Path(tempfile.mkdtemp(prefix="mmdemo-clip-"))
        stem = Path(video).stem
        csv_path, json_path = result.to_csv(out / f"{stem}.csv"), result.to_json(out / f"{stem}.json")
        if not rows:
            return "⚠️ nothing could be analysed in this clip", None, str(csv_path), str(json_path)
        preds = np.array([r["prediction"] for r in rows])
        summary = [f"**{Path(video).name}**: {result.seconds:.1f} s, {len(rows)} updates with **{fusion}**; "
                   f"mean sentiment {preds.mean():+.2f} (min {preds.min():+.2f}, max {preds.max():+.2f})."]
        for m in MODALITIES:
            summary.append(f"- {LABEL[m]}: present in {100 * np.mean([r[f'present_{m}'] for r in rows]):.0f}% of updates")
        if rows[-1]["transcript"]:
            summary.append(f"- transcript: “{rows[-1]['transcript'][:500]}”")
        summary += [f"- ⚠️ {n}" for n in result.notes]
        return "\n".join(summary), timeline_figure(rows, f"{Path(video).name} · {fusion}"), str(csv_path), str(json_path)

    def api_predict(self, text: str, fusion: str = "") -> dict:
        """Sentiment of a text alone (the words modality), with its contributions."""
        s = self.studio.engine.session(fusion or None)
        up = s.set_text(text, t=0.0)
        return {"prediction": up.prediction, "baseline": up.baseline, "fusion": up.fusion, "present": up.present,
                "reasons": up.reasons, "shapley": up.shapley, "weights": up.weights}

    def api_fusions(self) -> dict:
        """The fusion methods with a trained model, and their test metrics."""
        return {n: self.studio.metrics.get(n, {}).get("test", {}) for n in self.studio.fusions}


def build(studio: Studio) -> gr.Blocks:
    gr.set_static_paths([str(PLOTLY_JS)])
    head = f"<script src='/gradio_api/file={PLOTLY_JS}'></script>"
    choices = studio.fusions
    h = Handlers(studio)

    with gr.Blocks(title="mmdemo · live multimodal sentiment", delete_cache=(300, 600)) as demo:
        state = gr.State(None)
        gr.Markdown("# mmdemo · live multimodal sentiment\nFace, voice and words → sentiment on the CMU-MOSI scale "
                    "(−3 strongly negative … +3 strongly positive), and how much each modality contributed.")
        with gr.Tab("Live"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="webcam", elem_id="cam", height=240,
                                   webcam_options=gr.WebcamOptions(mirror=True, constraints=WEBCAM))
                    annotated = gr.HTML(frame_html(None, None), elem_id="frame", js_on_load=None)
                    mic = gr.Audio(sources=["microphone"], streaming=True, type="filepath", label="microphone", elem_id="mic")
                    text = gr.Textbox(label="type (words count with what you say)", lines=2, max_length=20000, elem_id="text",
                                      placeholder="e.g. I really enjoyed this!")
                    transcript = gr.Textbox(label="what you said (Whisper tiny.en)", interactive=False, lines=3, elem_id="transcript")
                with gr.Column(scale=3, min_width=420):
                    with gr.Row():
                        fusion = gr.Dropdown(choices=choices, value=choices[0] if choices else None, label="fusion method", elem_id="fusion",
                                             interactive=bool(choices))
                    method_info = gr.Markdown(method_md(studio, choices[0]) if choices else "", elem_id="method-info")
                    model_status = gr.Markdown(studio.status(), elem_id="model-status")
                    readout = gr.HTML(readout_html(None), elem_id="readout", js_on_load=None)
                    status = gr.HTML(status_html(None), elem_id="status", js_on_load=None)
                    live = gr.HTML("", html_template=LIVE_TEMPLATE, js_on_load=LIVE_JS, head=head, elem_id="live")
        with gr.Tab("Analyse a clip"):
            with gr.Row():
                with gr.Column(scale=2):
                    video = gr.Video(sources=["upload"], label="video clip (with its audio)", elem_id="clip")
                    clip_fusion = gr.Dropdown(choices=choices, value=choices[0] if choices else None, label="fusion method")
                    fps = gr.Slider(1, 10, value=5, step=1, label="frames analysed per second")
                    go_btn = gr.Button("Analyse", variant="primary", elem_id="analyse")
                with gr.Column(scale=3):
                    clip_summary = gr.Markdown(elem_id="clip-summary")
                    clip_plot = gr.Plot(label="timeline", elem_id="clip-plot")
                    with gr.Row():
                        csv_file = gr.File(label="timeline (CSV)")
                        json_file = gr.File(label="timeline (JSON)")
        with gr.Tab("Model card"):
            gr.Markdown(studio.card, elem_id="card")

        timer = gr.Timer(1.0)
        timer.tick(lambda: (studio.status(), gr.Timer(active=not studio.ready.is_set())), outputs=[model_status, timer], show_progress="hidden")
        demo.load(h.on_load, outputs=[state, live, readout, status, fusion])
        cam.stream(h.on_frame, inputs=[cam, state], outputs=[annotated, live, readout, status, state],
                   stream_every=0.1, time_limit=3600, concurrency_limit=8, show_progress="hidden")
        mic.stream(h.on_audio, inputs=[mic, state], outputs=[live, readout, status, transcript, state],
                   stream_every=0.5, time_limit=3600, concurrency_limit=8, show_progress="hidden")
        mic.stop_recording(h.on_audio_stop, inputs=[state], outputs=[live, status, state], show_progress="hidden")
        text.change(h.on_text, inputs=[text, state], outputs=[live, readout, status, state], trigger_mode="always_last", show_progress="hidden")
        fusion.change(h.on_fusion, inputs=[fusion, state], outputs=[live, readout, status, method_info, state], show_progress="hidden")
        go_btn.click(h.on_analyse, inputs=[video, clip_fusion, fps], outputs=[clip_summary, clip_plot, csv_file, json_file], api_name="analyse")
        gr.api(h.api_predict, api_name="predict")
        gr.api(h.api_fusions, api_name="fusions")
    return demo


LAUNCH = {"css": CSS, "allowed_paths": [str(PLOTLY_JS)], "show_error": False}
"""Keyword arguments every launch of the app needs (the CLI below, tests, a Space)."""


def read_chunk(chunk) -> tuple[np.ndarray, int]:
    """A streamed microphone chunk: (sample_rate, array) or a file path that is deleted once read
    (Gradio writes every chunk to its cache; a long session must not leave one file per chunk)."""
    if isinstance(chunk, tuple):
        sr, data = chunk
        return np.asarray(data), int(sr)
    path = Path(chunk)
    try:
        data, sr = sf.read(str(path), dtype="int16", always_2d=False)
    finally:
        cache = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio")).resolve()
        try:
            if cache in path.resolve().parents:
                path.unlink(missing_ok=True)
                if not any(path.parent.iterdir()):
                    path.parent.rmdir()
        except OSError:
            pass
    return data, int(sr)


def parse_auth(value: str | None):
    if not value:
        return None
    if ":" not in value:
        raise SystemExit("--auth / MMDEMO_AUTH must look like user:password")
    user, password = value.split(":", 1)
    return (user, password)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="mmdemo live studio")
    ap.add_argument("--host", default=os.environ.get("MMDEMO_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")))
    ap.add_argument("--port", type=int, default=int(os.environ.get("MMDEMO_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))))
    ap.add_argument("--share", action="store_true", help="create a public Gradio share link")
    ap.add_argument("--auth", default=os.environ.get("MMDEMO_AUTH"), help="user:password (or env MMDEMO_AUTH)")
    ap.add_argument("--device", default=os.environ.get("MMDEMO_DEVICE"), help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--checkpoints", type=Path, default=Path(os.environ.get("MMDEMO_CHECKPOINTS", DEFAULT_CHECKPOINTS)))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    studio = Studio(args.checkpoints, args.device)
    demo = build(studio)
    threading.Thread(target=studio.warm_up, name="mmdemo-warmup", daemon=True).start()
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth), **LAUNCH)


if __name__ == "__main__":
    main()
