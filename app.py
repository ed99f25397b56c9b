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
import shutil  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
from fastapi import Request  # noqa: E402 - comes with gradio; resolves the WebRTC route's annotation
import numpy as np  # noqa: E402
import plotly  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import soundfile as sf  # noqa: E402

from mmdemo import DISPLAY_NAMES, MODALITIES, assets  # noqa: E402
from mmdemo.calibration import CALIBRATION_S, NEUTRAL_SENTENCE, Baseline, CalibrationError  # noqa: E402
from mmdemo.clip import analyse_clip  # noqa: E402
from mmdemo.device import resolve_device  # noqa: E402
from mmdemo.encoders import DIMS  # noqa: E402
from mmdemo.media import MediaError  # noqa: E402
from mmdemo.personal import PersonalConfig, PersonalError, cross_validate, fit_personal  # noqa: E402
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine, PipelineConfig, Session, Update, config_with  # noqa: E402
from mmdemo.profile import PROFILE_ID, Profile, ProfileError, data_root, new_profile_id, shipped_configs  # noqa: E402

log = logging.getLogger("mmdemo.app")

COLORS = {"text": "#4C78A8", "audio": "#F58518", "vision": "#54A24B"}
LABEL = {m: DISPLAY_NAMES[m] for m in MODALITIES}  # words / voice / face
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
FRAME_WIDTH = 320  # the annotated frame sent back to the browser
WEBCAM = {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}  # a face at arm's length is ~100 px: enough; cheaper to send and decode
MIN_FRAME_GAP_S = 0.07  # frames arriving sooner after the last processed one are skipped: at most ~14 processed/s
CHUNK_MAX_AGE_S = float(os.environ.get("MMDEMO_CHUNK_MAX_AGE_S", 30.0))  # microphone chunk files in Gradio's cache are removed once unused this long
CLIP_MAX_AGE_S = 600.0
MAX_LISTED = 200  # labelled moments listed with a delete button each  # clip-analysis outputs are kept this long (as Gradio's own cache)


# ============================================================================ state and models


class Studio:
    """What the app shares between users: the engine (read-only models) and its loading status."""

    def __init__(self, checkpoints: Path, device: str | None, data_dir: str | Path | None = None, config: PipelineConfig | None = None,
                 transport: str = "http"):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.engine = Engine(checkpoints, device=device, config=config or PipelineConfig())
        self.transport = transport
        # WebRTC: a page's offer names its session by a random token handed to that page only
        self.rtc_sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self.live: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()  # Gradio session hash -> its live session
        self.rtc = None
        if transport == "webrtc":
            from mmdemo.webrtc import RtcBridge

            self.rtc = RtcBridge(rtc_payload)
        self.data_dir = data_dir  # where profiles live (None: MMDEMO_DATA_DIR or ~/.local/share/mmdemo)
        self.personal_cfg = PersonalConfig()
        self.fusions = self.engine.available_fusions()
        self.ready = threading.Event()
        self.error: str | None = None
        self.metrics = {n: _read_json(checkpoints / "fusion" / n / "metrics.json") for n in self.fusions}
        self.card = (checkpoints / "README.md").read_text() if (checkpoints / "README.md").exists() else "No model card found."

    def rtc_token(self, session: Session) -> str:
        token = secrets.token_hex(16)
        self.rtc_sessions[token] = session
        return token

    def mount_rtc(self, app) -> None:
        """Adds the WebRTC signalling route (POST mmdemo/rtc/offer) to the running Gradio app."""
        from fastapi.responses import JSONResponse

        from mmdemo.webrtc import RtcError

        async def offer(request: Request):
            # anyone who can reach the port can post here (Gradio's --auth covers its own routes only):
            # the body is capped before it is read, and only a page's own session token opens anything
            try:
                size = int(request.headers.get("content-length", "0"))
            except ValueError:
                size = -1
            if not 0 < size <= MAX_OFFER_BYTES:
                return JSONResponse({"error": f"the offer must be a JSON body of at most {MAX_OFFER_BYTES} bytes"}, status_code=413)
            raw = b""
            async for part in request.stream():
                raw += part
                if len(raw) > MAX_OFFER_BYTES:
                    return JSONResponse({"error": "the offer is too large"}, status_code=413)
            try:
                body = json.loads(raw)
            except ValueError:
                return JSONResponse({"error": "the body must be JSON"}, status_code=400)
            token = body.get("token") if isinstance(body, dict) else None
            session = self.rtc_sessions.get(token) if isinstance(token, str) else None
            if session is None:
                return JSONResponse({"error": "unknown or expired session: reload the page"}, status_code=404)
            try:
                return JSONResponse(await self.rtc.answer(body, session))
            except RtcError as err:
                return JSONResponse({"error": str(err)}, status_code=400)

        app.add_api_route("/mmdemo/rtc/offer", offer, methods=["POST"])
        app.router.routes.insert(0, app.router.routes.pop())  # before Gradio's catch-all routes

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

    def browser_secret(self) -> str:
        """The key the browsers' profile ids are stored with (Gradio encrypts BrowserState): kept in
        the data folder, so a restart of the app does not cut users off their profiles."""
        try:
            root = data_root(self.data_dir, forbidden=(gradio_cache_dir(),))
            path = root / ".browser-secret"
            if not path.exists():
                root.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(new_profile_id() + new_profile_id())
            return path.read_text().strip()
        except (OSError, ProfileError) as err:
            log.warning("profiles will not survive a restart of the app: %s", err)
            return new_profile_id() + new_profile_id()

    def profile(self, profile_id: str) -> Profile:
        """A user's profile folder (never inside the project or Gradio's cache)."""
        return Profile(data_root(self.data_dir, forbidden=(gradio_cache_dir(),)), profile_id, DIMS)

    def status(self) -> str:
        if not self.fusions:
            return f"⚠️ No fusion models in {self.engine.checkpoints}/fusion: run `python -m mmdemo.benchmark` (README)."
        if self.error:
            return f"⚠️ Models failed to load: {html.escape(self.error)}"
        if not self.ready.is_set():
            return "⏳ Loading models (face, voice, words, speech recognition)… the first updates may be slow."
        start = "press Start camera and microphone" if self.transport == "webrtc" else "allow camera and microphone access, then press Record"
        return f"✓ Models ready ({self.engine.device.type}). To begin, {start}."


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================ rendering


def feed_payload(up: Update, *, src: str = "", reset: bool = False, recv: float | None = None) -> str:
    """The light update the live plots extend themselves with (one point). ``src`` says which
    input caused it (frame, audio, text, fusion), for the latency benchmark."""
    return json.dumps(feed_dict(up, src=src, reset=reset, recv=recv))


def feed_dict(up: Update, *, src: str = "", reset: bool = False, recv: float | None = None) -> dict:
    return ({"src": src,
        "t": round(up.t, 3), "pred": round(up.prediction, 4), "base": round(up.baseline, 4), "fusion": up.fusion,
        "any": up.any_present, "shap": {m: round(v, 4) for m, v in up.shapley.items()},
        "w": None if up.weights is None else {m: round(v, 4) for m, v in up.weights.items()},
        "recv": None if recv is None else recv * 1000, "sent": time.time() * 1000, "reset": reset,
    })


def rtc_payload(session: Session, up: Update, src: str) -> dict:
    """One data-channel message of the WebRTC transport: what the HTTP path's outputs carry."""
    return {"feed": feed_dict(up, src=src), "readout": readout_html(up), "status": status_html(up), "transcript": up.transcript,
            "box": list(up.face_box) if up.face_box else None, "expression": up.face_expression}


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
    who = " (personal)" if up.personal else ""
    return (f"<div class='mm-readout'><div class='mm-score' style='color:{color}'>{y:+.2f}</div>"
            f"<div class='mm-label'>{label} · {html.escape(up.fusion)}{who} · baseline {up.baseline:+.2f}</div>{note}"
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
    return "<div class='mm-status-rows'>" + "".join(rows) + "</div>"


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


def learned_under(prof, name: str) -> str | None:
    """The fingerprint of the baseline ``name``'s personal model learned under (None: not recorded or not readable)."""
    try:
        got = prof.load_personal(name)
    except (ProfileError, ValueError, OSError):
        return None
    return got[1].get("baseline") if got else None


def refit_note(prof, baseline: Baseline | None) -> str:
    """After a baseline change: the personal models that learned under another one (or under one not
    recorded) are to be fitted again; the moments are read with the new one at the next fit."""
    try:
        names = [n for n in prof.personal_fusions() if learned_under(prof, n) != Baseline.fingerprint(baseline)]
    except OSError:
        return ""
    return (f"; your personal model{'s' if len(names) > 1 else ''} ({', '.join(names)}) learned under another baseline: "
            "fit again (your labelled moments are read with this one)") if names else ""


def baseline_md(baseline: Baseline | None) -> str:
    if baseline is None:
        return "No neutral baseline: face and voice are read as they come."
    return "**Neutral baseline in use** (offsets removed from the live face and voice):\n" + "\n".join(f"- {line}" for line in baseline.describe())


def moment_line(r: dict) -> str:
    mods = ", ".join(LABEL[m] for m in MODALITIES if m in r["present"]) or "nothing"
    text = f" · “{html.escape(r['text'][:60])}{'…' if len(r['text']) > 60 else ''}”" if r.get("text") else ""
    clip = " · raw clip kept" if r.get("clip") else ""
    return f"**{r['label']:+g}** · {mods} · {html.escape(r['created'].replace('T', ' '))}{text}{clip}"


def personal_md(session: Session | None, profile: Profile | None) -> str:
    if session is None:
        return ""
    name = session.fusion_name
    metrics = {}
    if profile is not None:
        try:
            got = profile.load_personal(name)
            metrics = got[1] if got else {}
        except (ProfileError, ValueError, OSError):
            metrics = {}
    if name not in session.personal:
        return f"No personal model for **{name}** yet: label at least {PersonalConfig.min_moments} moments, then fit."
    learned, now = metrics.get("baseline"), Baseline.fingerprint(session.baseline)
    if learned is None:  # fitted before the baseline was recorded, or imported from such a file
        stale = "" if session.baseline is None else " (The baseline it learned under was not recorded: fit it again to be sure it matches yours.)"
    else:
        stale = "" if learned == now else " ⚠️ It learned under another neutral baseline than this session's: fit it again."
    if not {"moments", "scheme", "personal_mae", "generic_mae"} <= set(metrics):
        return f"Personal model for **{name}** loaded.{stale}"
    return (f"Personal model for **{name}** from {metrics['moments']} moments. {metrics['scheme'].capitalize()} error on "
            f"your moments (MAE): **personal {metrics['personal_mae']:.2f}**, generic {metrics['generic_mae']:.2f}.{stale}")


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

# Runs once in the browser (assets/live_plot.js): builds the figure, then extends it with each
# one-point payload (Plotly.extendTraces) instead of receiving whole figures.
LIVE_JS = assets.text("live_plot.js").replace("__COLORS__", json.dumps(COLORS))
RTC_TEMPLATE = ("<div class='mm-rtc'><div class='mm-rtc-view'><video class='mm-rtc-video' autoplay muted playsinline></video>"
                "<canvas class='mm-rtc-overlay'></canvas></div><div class='mm-rtc-bar'>"
                "<button class='mm-rtc-start'>Start camera and microphone</button> <button class='mm-rtc-stop' disabled>Stop</button> "
                "<span class='mm-rtc-state'></span></div></div>")
RTC_JS = assets.text("webrtc.js")
TRANSPORTS = ("http", "webrtc")
MAX_OFFER_BYTES = 128 * 1024  # a browser's SDP offer is a few kB
CSS = assets.text("app.css")


# ============================================================================ handlers


def close_session(session: Session | None) -> None:
    """Frees what a session runs beside it (its openSMILE stream), in a thread of its own: Gradio
    calls this on its event loop."""
    if session is not None:
        threading.Thread(target=session.close, name="mmdemo-close-session", daemon=True).start()


class Handlers:
    """Every UI event as a plain method (testable without a browser). None of them raises: a
    problem becomes a plain message in the UI and a log line, and the session goes on."""

    def __init__(self, studio: Studio, min_frame_gap_s: float = MIN_FRAME_GAP_S, *,
                 chunks: ChunkSweeper | None = None, clips: ClipOutputs | None = None):
        self.studio = studio
        self.min_frame_gap_s = min_frame_gap_s
        self.chunks = chunks or ChunkSweeper()
        self.clips = clips or ClipOutputs()
        self._last_frame: weakref.WeakKeyDictionary[Session, float] = weakref.WeakKeyDictionary()

    def session_of(self, state: Session | None, fusion: str | None = None) -> Session:
        return state if state is not None else self.studio.engine.session(fusion or None)

    def on_unload(self, request: gr.Request = None):
        """The tab closed: its session frees its openSMILE stream now (Gradio drops the state an hour later)."""
        close_session(self.studio.live.pop(getattr(request, "session_hash", None), None))

    def on_load(self, request: gr.Request = None):
        self.clips.sweep()  # old analyses and exports go even when nobody analyses or exports again
        try:
            s = self.studio.engine.session()
            if getattr(request, "session_hash", None):
                self.studio.live[request.session_hash] = s
            up = s.update()
            token = self.studio.rtc_token(s) if self.studio.rtc is not None else ""
            return s, feed_payload(up, reset=True), readout_html(None), status_html(up), gr.update(value=s.fusion_name), token
        except Exception as err:  # noqa: BLE001
            log.warning("session could not start: %s", err)
            return None, gr.update(), readout_html(None), warn_html(str(err)), gr.update(), ""

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
                data, sr = read_chunk(chunk, self.chunks)
                up = s.push_audio(data, sr)
            return feed_payload(up, src="audio"), readout_html(up), status_html(up), up.transcript, s
        except Exception as err:  # noqa: BLE001
            log.warning("audio chunk skipped: %s", err)
            return gr.update(), gr.update(), warn_html(f"audio skipped: {err}"), gr.update(), state

    def on_audio_stop(self, state):
        if state is None:
            return gr.update(), gr.update(), state
        try:
            up = state.stop_audio()
            return feed_payload(up), status_html(up), state
        except Exception as err:  # noqa: BLE001 - the session goes on
            log.warning("microphone stop: %s", err)
            return gr.update(), warn_html(f"microphone stop: {err}"), state

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

    # ---------------------------------------------------------------- calibrate & personalise
    def _profile(self, pid) -> Profile:
        if not isinstance(pid, str) or not PROFILE_ID.match(pid):
            raise ProfileError("this browser has no profile yet: reload the page")
        return self.studio.profile(pid)

    def _moments(self, pid) -> list[dict]:
        try:
            return self._profile(pid).moments()
        except (ProfileError, OSError) as err:
            log.warning("moments not listed: %s", err)
            return []

    def on_profile_load(self, pid, state):
        """The browser's profile (one id per browser, kept in its local storage): a new one on the
        first visit; its baseline and personal models are loaded into this tab's session."""
        s = state
        if not isinstance(pid, str) or not PROFILE_ID.match(pid):
            pid = new_profile_id()
        problems, moments, prof = [], [], None
        try:
            prof = self._profile(pid)
            moments = prof.moments()
        except Exception as err:  # noqa: BLE001 - the live studio works without a profile
            log.warning("profile not loaded: %s", err)
            problems.append(f"your moments could not be read: {err}")
        if s is not None and prof is not None:  # the baseline and each personal model on their own: one damaged file hides nothing else
            try:
                s.set_baseline(prof.load_baseline())
            except Exception as err:  # noqa: BLE001
                s.set_baseline(None)
                problems.append(f"your baseline could not be loaded: {err}")
            try:
                names = prof.personal_fusions()
            except OSError as err:
                names = []
                problems.append(f"your personal models could not be listed: {err}")
            for name in names:
                try:
                    got = prof.load_personal(name)
                except Exception as err:  # noqa: BLE001
                    got = None
                    problems.append(f"your personal model for {name} could not be loaded: {err}")
                if got is not None:  # None: being replaced by another tab's fit right now
                    s.set_personal(name, got[0])
        try:
            pers = personal_md(s, prof) if s else ""
        except Exception as err:  # noqa: BLE001
            pers = ""
            problems.append(str(err))
        msg = "\n\n".join(f"⚠️ {p}" for p in problems)  # Markdown: one paragraph each
        return (pid, s, baseline_md(s.baseline if s else None), moments, msg, pers, f"Profile {pid[:8]}… · stored in {data_root_text(self.studio)}")

    def on_calibrate_start(self, state):
        if state is None:
            return "⚠️ the session has not started yet: reload the page", gr.Timer(active=False), state
        try:
            state.start_calibration()
        except CalibrationError as err:
            return f"⚠️ {err}", gr.Timer(active=False), state
        return (f"⏺ Calibrating: look at the camera with a relaxed face and read the sentence aloud. "
                f"It stops by itself after {CALIBRATION_S:.0f} s."), gr.Timer(active=True), state

    def on_calibrate_tick(self, pid, state):
        progress = None if state is None else state.calibration_progress()
        if progress is None:
            return gr.skip(), gr.Timer(active=False), gr.skip(), state
        c, elapsed = progress
        if elapsed < CALIBRATION_S:
            return (f"⏺ Calibrating… {c['vision']} face frames, {c['audio']} voice windows so far", gr.Timer(active=True), gr.skip(), state)
        msg, md, state = self.on_calibrate_stop(pid, state)
        return msg, gr.Timer(active=False), md, state

    def on_calibrate_stop(self, pid, state):
        if state is None:
            return "⚠️ the session has not started yet: reload the page", gr.skip(), state
        if state.calibration_progress() is None and state.calibration_started:  # Stop again, or after the timer ended it: its message stands
            return gr.skip(), gr.skip(), state
        try:
            baseline = state.finish_calibration()
        except CalibrationError as err:
            return f"⚠️ {err}", gr.skip(), state
        try:
            prof = self._profile(pid)
            prof.save_baseline(baseline)
            saved = "saved in your profile" + refit_note(prof, baseline)
        except (ProfileError, OSError) as err:
            saved = f"used in this tab only (not saved: {err})"
        return f"✓ Baseline measured and {saved}.", baseline_md(baseline), state

    def on_baseline_reset(self, pid, state):
        if state is not None:
            state.cancel_calibration()
            state.set_baseline(None)
        try:
            prof = self._profile(pid)
            prof.save_baseline(None)
        except (ProfileError, OSError) as err:
            return f"⚠️ {err}", baseline_md(None), state
        return "Baseline removed" + refit_note(prof, None) + ".", baseline_md(None), state

    def on_label(self, value, keep_clip, pid, known, state):
        """Store the last seconds as one labelled moment."""
        if state is None:
            return "⚠️ the session has not started yet: reload the page", gr.skip()
        try:
            prof = self._profile(pid)
            moment = state.moment(keep_clip=bool(keep_clip))
            prof.add(moment, value, keep_clip=bool(keep_clip))
        except (ProfileError, OSError) as err:
            return f"⚠️ {err}", gr.skip()
        except Exception as err:  # noqa: BLE001 - whatever else a full disk or a codec raises: a message, not a broken page
            log.warning("labelling failed: %s", err)
            return f"⚠️ the moment could not be stored ({type(err).__name__}: {str(err)[:160]})", gr.skip()
        moments = prof.moments()
        mods = ", ".join(LABEL[m] for m in MODALITIES if moment.present[m])
        other = len(moments) - len(known or []) - 1
        extra = f" ({other} more moment(s) came from another tab of this profile)" if other > 0 else ""
        return f"✓ The last {moment.seconds:.0f} s labelled {float(value):+g} ({mods}); {len(moments)} moments in your profile{extra}.", moments

    def on_delete(self, clip_id, pid):
        try:
            prof = self._profile(pid)
            prof.delete(clip_id)
            return "Moment deleted.", prof.moments()
        except (ProfileError, OSError) as err:
            return f"⚠️ {err}", self._moments(pid)

    def on_fit(self, pid, state, progress=gr.Progress()):
        """Fit the personal model of the selected method on the profile's moments; its held-out
        error beside the generic model's; then use it."""
        if state is None:
            return "⚠️ the session has not started yet: reload the page", gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        name = state.fusion_name  # the method selected when the fit started (the user may switch meanwhile)
        try:
            prof = self._profile(pid)
            generation = prof.generation()  # before the moments are read: a change after it refuses the save
            # the faces as this session reads them: under its baseline, whatever each moment was labelled under
            baseline = state.baseline
            split = prof.split(face_offset=baseline.offsets.get("vision") if baseline else None)
            generic = self.studio.engine.fusion(name)
            cfg = self.studio.personal_cfg
            metrics = cross_validate(generic, split, cfg, progress=lambda i, n: progress(i / (n + 1), desc="held-out error"))
            progress(1.0, desc="fitting on all moments")
            t0 = time.perf_counter()
            model = fit_personal(generic, split, cfg)
            metrics["fit_seconds"] = time.perf_counter() - t0
            if Baseline.fingerprint(state.baseline) != Baseline.fingerprint(baseline):  # a calibration or reset finished meanwhile
                return ("⚠️ the baseline changed while the model was being fitted; it was not saved: fit again",
                        gr.skip(), gr.skip(), gr.skip(), gr.skip(), state)
            metrics["baseline"] = Baseline.fingerprint(baseline)
            prof.save_personal(model, metrics, generation=generation)
            state.set_personal(model.name, model)
            up = state.set_use_personal(True)
        except (PersonalError, ProfileError, OSError, KeyError) as err:
            return f"⚠️ {err}", gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        except Exception as err:  # noqa: BLE001 - out of memory, a torch error: a message, and the generic model answers on
            log.warning("fitting the personal model failed: %s", err)
            return f"⚠️ the personal model could not be fitted ({type(err).__name__}: {str(err)[:160]})", gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        return (f"✓ {name}: fitted in {metrics['fit_seconds']:.1f} s (the held-out error took {metrics['seconds']:.1f} s) and switched to it.",
                personal_md(state, prof), gr.update(value="personal"), feed_payload(up, src="personal"), readout_html(up), state)

    def on_personal_refresh(self, pid, state):
        """The personal-model panel again (after a baseline change or a switch of model): says whether
        the model learned under this session's baseline. Not while a calibration runs."""
        if state is None or state.calibration_progress() is not None:
            return gr.skip()
        try:
            return personal_md(state, self._profile(pid))
        except (ProfileError, OSError):
            return gr.skip()

    def on_model_choice(self, choice, pid, state):
        if state is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        msg = ""
        if choice == "personal" and state.fusion_name not in state.personal:
            try:
                got = self._profile(pid).load_personal(state.fusion_name)  # fitted in another tab, perhaps
                if got:
                    state.set_personal(state.fusion_name, got[0])
            except (ProfileError, ValueError, OSError) as err:
                msg = f"⚠️ {err}"
            if state.fusion_name not in state.personal:
                msg = msg or f"No personal model for {state.fusion_name} yet: the generic model answers until you fit one."
        up = state.set_use_personal(choice == "personal")
        return msg, feed_payload(up, src="personal"), readout_html(up), status_html(up), state

    def on_export(self, pid):
        try:
            prof = self._profile(pid)
            out = self.clips.new() / f"mmdemo-profile-{prof.id[:8]}.safetensors"
            prof.export(out)
        except (ProfileError, OSError, ValueError) as err:
            return f"⚠️ {err}", gr.update(value=None, visible=False)
        return f"✓ Exported {len(prof.moments())} moments, the baseline and personal models (features only, no raw clips).", gr.update(value=str(out), visible=True)

    @staticmethod
    def _load_saved(prof: Profile, state: Session | None) -> None:
        """The profile's baseline and personal models as they are on disk now, into this tab's
        session (where one cannot be read, what the session had stays)."""
        if state is None:
            return
        try:
            state.set_baseline(prof.load_baseline())
        except (ProfileError, OSError) as err:
            log.warning("baseline not loaded: %s", err)
        try:
            names = prof.personal_fusions()
        except OSError as err:
            names = []
            log.warning("personal models not listed: %s", err)
        for name in names:
            try:
                if (got := prof.load_personal(name)) is not None:
                    state.set_personal(name, got[0])
            except (ProfileError, OSError) as err:
                log.warning("personal model %s not loaded: %s", name, err)

    def on_import(self, file, pid, state):
        if not file:
            return "Choose an exported profile file first.", gr.skip(), gr.skip(), gr.skip(), state
        prof = None
        try:
            prof = self._profile(pid)
            got = prof.import_file(file if isinstance(file, str) else getattr(file, "name", file),
                                   configs=shipped_configs(self.studio.engine.checkpoints))
        except (ProfileError, OSError, ValueError) as err:  # ValueError: text a file holds that cannot be written (checked, but kept as a message)
            # an import stopped half-way says what it took: the list, the baseline and the models show what is there now
            if prof is None:
                return f"⚠️ not imported: {err}", gr.skip(), gr.skip(), gr.skip(), state
            self._load_saved(prof, state)
            return (f"⚠️ not imported: {err}", self._moments(pid), baseline_md(state.baseline if state else None),
                    personal_md(state, prof), state)
        try:
            if state is not None:
                if got["baseline"]:
                    state.set_baseline(prof.load_baseline())
                for name in got["personal"]:
                    if (model := prof.load_personal(name)) is not None:
                        state.set_personal(name, model[0])
            moments = prof.moments()
        except (ProfileError, OSError, ValueError) as err:
            log.warning("imported profile not loaded: %s", err)
            return f"⚠️ imported, but it could not be loaded here: {err}", gr.skip(), gr.skip(), gr.skip(), state
        msg = (f"✓ Imported {got['moments_added']} moments" + (f" ({got['moments_skipped']} already here)" if got["moments_skipped"] else "")
               + (", the baseline" if got["baseline"] else "") + (f", personal models for {', '.join(got['personal'])}" if got["personal"] else "") + "."
               + (f" Kept this profile's own {', '.join(got['kept'])} (delete it to take the imported one)." if got["kept"] else "")
               + (f" Left out {'; '.join(got['left_out'])}." if got.get("left_out") else "")
               + (f" The personal model{'s' if len(got['refit']) > 1 else ''} {', '.join(got['refit'])} learned under another "
                  "baseline than the one this profile has now: fit again." if got.get("refit") else ""))
        return msg, moments, baseline_md(state.baseline if state else None), personal_md(state, prof), state

    def on_delete_all(self, pid, state):
        if state is not None:  # a calibration running now would save its baseline again when it ends
            state.cancel_calibration()
        try:
            prof = self._profile(pid)
            prof.delete_all()
            self.clips.remove(f"mmdemo-profile-{prof.id[:8]}.safetensors")  # this profile's exports waiting for download
        except (ProfileError, OSError) as err:
            return f"⚠️ {err}", gr.skip(), gr.skip(), gr.skip(), state, gr.skip(), gr.skip(), gr.skip()
        if state is not None:
            state.set_baseline(None)
            state.personal.clear()
            state.set_use_personal(False)
        return ("Everything of this profile was deleted from this computer (the copies Gradio keeps of a file you exported "
                "or uploaded here go with its cache within 15 minutes).", [], baseline_md(None), personal_md(state, None), state,
                gr.Timer(active=False), gr.update(value="generic"), gr.update(value=None, visible=False))

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
        out = self.clips.new()
        stem = Path(video).stem
        csv_path, json_path = result.to_csv(out / f"{stem}.csv"), result.to_json(out / f"{stem}.json")
        if not rows:
            return ("⚠️ nothing could be analysed in this clip" + "".join(f"\n- {n}" for n in result.notes)), None, str(csv_path), str(json_path)
        preds = np.array([r["prediction"] for r in rows])
        summary = [f"**{Path(video).name}**: {result.seconds:.1f} s, {len(rows)} updates with **{fusion}**; "
                   f"mean sentiment {preds.mean():+.2f} (min {preds.min():+.2f}, max {preds.max():+.2f})."]
        for m in MODALITIES:
            summary.append(f"- {LABEL[m]}: present in {100 * np.mean([r[f'present_{m}'] for r in rows]):.0f}% of updates")
        if result.transcript:  # the whole of it is in the JSON file (and each utterance in the CSV's "said" column)
            more = f"… ({len(result.transcript)} characters in all: the JSON file has them)" if len(result.transcript) > 500 else ""
            summary.append(f"- transcript: “{result.transcript[:500]}”{more}")
        summary += [f"- ⚠️ {n}" for n in result.notes]
        return "\n".join(summary), timeline_figure(rows, f"{Path(video).name} · {fusion}"), str(csv_path), str(json_path)

    def api_predict(self, text: str, fusion: str = "") -> dict:
        """Sentiment of a text alone (the words modality), with its contributions. ``fusion``: one
        of the methods listed by /fusions (default: the app's default method)."""
        if fusion and fusion not in self.studio.fusions:
            raise gr.Error(f"unknown fusion method {str(fusion)[:60]!r}; choose one of: {', '.join(self.studio.fusions)}")
        if text is not None and not isinstance(text, str):
            raise gr.Error("text must be a string")
        s = self.studio.engine.session(fusion or None)
        up = s.set_text(text, t=0.0)
        return {"prediction": up.prediction, "baseline": up.baseline, "fusion": up.fusion, "present": up.present,
                "reasons": up.reasons, "shapley": up.shapley, "weights": up.weights}

    def api_fusions(self) -> dict:
        """The fusion methods with a trained model, and their test metrics."""
        return {n: self.studio.metrics.get(n, {}).get("test", {}) for n in self.studio.fusions}


def data_root_text(studio: Studio) -> str:
    try:
        return str(data_root(studio.data_dir, forbidden=(gradio_cache_dir(),)) / "profiles")
    except ProfileError as err:
        return f"nowhere ({err})"


def build(studio: Studio) -> gr.Blocks:
    gr.set_static_paths([str(PLOTLY_JS)])
    head = f"<script src='/gradio_api/file={PLOTLY_JS}'></script>"
    choices = studio.fusions
    default = studio.engine.default_fusion() if choices else None  # the live session's, and the clip analysis's
    h = Handlers(studio)

    with gr.Blocks(title="mmdemo · live multimodal sentiment", delete_cache=(300, 600)) as demo:
        state = gr.State(None, delete_callback=close_session)  # a closed tab's session frees its audio stream at once
        gr.Markdown("# mmdemo · live multimodal sentiment\nFace, voice and words → sentiment on the CMU-MOSI scale "
                    "(−3 strongly negative … +3 strongly positive), and how much each modality contributed.")
        with gr.Tab("Live"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    webrtc = studio.transport == "webrtc"  # one switch: the camera and microphone over WebRTC, or Gradio's streaming
                    rtc = gr.HTML("", html_template=RTC_TEMPLATE, js_on_load=RTC_JS, elem_id="rtc", visible=webrtc)
                    cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="webcam", elem_id="cam", height=240,
                                   webcam_options=gr.WebcamOptions(mirror=True, constraints=WEBCAM), visible=not webrtc)
                    annotated = gr.HTML(frame_html(None, None), elem_id="frame", js_on_load=None, visible=not webrtc)
                    mic = gr.Audio(sources=["microphone"], streaming=True, type="filepath", label="microphone", elem_id="mic", visible=not webrtc)
                    text = gr.Textbox(label="type (words count with what you say)", lines=2, max_length=20000, elem_id="text",
                                      placeholder="e.g. I really enjoyed this!")
                    transcript = gr.Textbox(label="what you said (Whisper tiny.en)", interactive=False, lines=3, elem_id="transcript")
                with gr.Column(scale=3, min_width=420):
                    with gr.Row():
                        fusion = gr.Dropdown(choices=choices, value=default, label="fusion method", elem_id="fusion",
                                             interactive=bool(choices))
                    method_info = gr.Markdown(method_md(studio, default) if choices else "", elem_id="method-info")
                    model_status = gr.Markdown(studio.status(), elem_id="model-status")
                    readout = gr.HTML(readout_html(None), elem_id="readout", js_on_load=None)
                    status = gr.HTML(status_html(None), elem_id="status", js_on_load=None)
                    live = gr.HTML("", html_template=LIVE_TEMPLATE, js_on_load=LIVE_JS, head=head, elem_id="live")
                    with gr.Accordion("Calibrate & personalise", open=False, elem_id="personalise"):
                        profile_md = gr.Markdown(elem_id="profile-info")
                        gr.Markdown(f"**1 · Neutral baseline** (about {CALIBRATION_S:.0f} s, camera and microphone on): look at the camera "
                                    f"with a relaxed, neutral face and read aloud:\n\n> {NEUTRAL_SENTENCE}")
                        with gr.Row():
                            cal_start = gr.Button("Start calibration", elem_id="cal-start", size="sm")
                            cal_stop = gr.Button("Stop now", elem_id="cal-stop", size="sm")
                            cal_reset = gr.Button("Reset baseline", elem_id="cal-reset", size="sm")
                        cal_msg = gr.Markdown(elem_id="cal-msg")
                        base_md = gr.Markdown(baseline_md(None), elem_id="baseline")
                        gr.Markdown("**2 · Label this moment**: how did you feel in the last few seconds?")
                        with gr.Row():
                            label_value = gr.Slider(-3, 3, value=0, step=0.5, label="your sentiment (−3 … +3)", elem_id="label-value", scale=3)
                            label_btn = gr.Button("Label the last 5 s", variant="primary", elem_id="label-btn", scale=1)
                        keep_clip = gr.Checkbox(False, elem_id="keep-clip", label=(
                            "also keep the raw clip (the last 5 s of microphone audio and the last camera frame) as files in your "
                            "profile folder on the computer running this app; without it only the features are stored"))
                        label_msg = gr.Markdown(elem_id="label-msg")
                        moments_state = gr.State([])

                        @gr.render(inputs=[moments_state])
                        def _moments_list(moments):
                            if not moments:
                                gr.Markdown("No labelled moments yet.", elem_id="moments-empty")
                                return
                            shown = moments[-MAX_LISTED:]
                            more = f" (the {len(shown)} newest are listed; delete older ones with **Delete my data** or in the profile folder)" \
                                if len(shown) < len(moments) else ""
                            gr.Markdown(f"**{len(moments)} labelled moment(s)**{more}", elem_id="moments-count")
                            for r in reversed(shown):
                                with gr.Row(elem_classes="mm-moment"):
                                    gr.Markdown(moment_line(r))
                                    btn = gr.Button("Delete", size="sm", scale=0, min_width=90, key=f"del-{r['clip_id']}", elem_classes="mm-delete")
                                    btn.click(lambda pid, cid=r["clip_id"]: h.on_delete(cid, pid), inputs=[profile],
                                              outputs=[label_msg, moments_state], show_progress="hidden")

                        gr.Markdown(f"**3 · Your model** (from at least {PersonalConfig.min_moments} labelled moments)")
                        with gr.Row():
                            fit_btn = gr.Button("Fit my model", elem_id="fit-btn", size="sm")
                            model_choice = gr.Radio(["generic", "personal"], value="generic", label="model in use", elem_id="model-choice")
                        fit_msg = gr.Markdown(elem_id="fit-msg")
                        pers_md = gr.Markdown(elem_id="personal-info")
                        gr.Markdown("**4 · Profile file**: baseline, personal models and labelled moments (features) in one file")
                        with gr.Row():
                            export_btn = gr.Button("Export profile", elem_id="export-btn", size="sm")
                            delete_all = gr.Button("Delete my data", elem_id="delete-all", size="sm", variant="stop")
                        export_file = gr.File(label="exported profile", visible=False, elem_id="export-file")
                        import_file = gr.File(label="import a profile (.safetensors)", file_types=[".safetensors"], elem_id="import-file")
                        profile_msg = gr.Markdown(elem_id="profile-msg")
        with gr.Tab("Analyse a clip"):
            with gr.Row():
                with gr.Column(scale=2):
                    video = gr.Video(sources=["upload"], label="video clip (with its audio)", elem_id="clip")
                    clip_fusion = gr.Dropdown(choices=choices, value=default, label="fusion method")
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

        profile = gr.BrowserState(None, storage_key="mmdemo-profile", secret=studio.browser_secret())
        cal_timer = gr.Timer(1.0, active=False)
        timer = gr.Timer(1.0)
        timer.tick(lambda: (studio.status(), gr.Timer(active=not studio.ready.is_set())), outputs=[model_status, timer], show_progress="hidden")
        demo.unload(h.on_unload)
        demo.load(h.on_load, outputs=[state, live, readout, status, fusion, rtc]).then(
            h.on_profile_load, inputs=[profile, state], outputs=[profile, state, base_md, moments_state, profile_msg, pers_md, profile_md])
        cal_start.click(h.on_calibrate_start, inputs=[state], outputs=[cal_msg, cal_timer, state], show_progress="hidden")
        # the progress tick and Stop never run at once: a tick computed just before a Stop would
        # otherwise arrive after it and show "Calibrating…" again (a tick only reads counters)
        cal_timer.tick(h.on_calibrate_tick, inputs=[profile, state], outputs=[cal_msg, cal_timer, base_md, state], show_progress="hidden",
                       concurrency_limit=1, concurrency_id="calibration").then(
            h.on_personal_refresh, inputs=[profile, state], outputs=[pers_md], show_progress="hidden")
        cal_stop.click(h.on_calibrate_stop, inputs=[profile, state], outputs=[cal_msg, base_md, state], show_progress="hidden",
                       concurrency_limit=1, concurrency_id="calibration").then(
            lambda: gr.Timer(active=False), outputs=[cal_timer]).then(
            h.on_personal_refresh, inputs=[profile, state], outputs=[pers_md], show_progress="hidden")
        cal_reset.click(h.on_baseline_reset, inputs=[profile, state], outputs=[cal_msg, base_md, state], show_progress="hidden").then(
            h.on_personal_refresh, inputs=[profile, state], outputs=[pers_md], show_progress="hidden")
        label_btn.click(h.on_label, inputs=[label_value, keep_clip, profile, moments_state, state], outputs=[label_msg, moments_state])
        fit_btn.click(h.on_fit, inputs=[profile, state], outputs=[fit_msg, pers_md, model_choice, live, readout, state],
                      concurrency_limit=1, concurrency_id="fit")  # one fit at a time: the live sessions keep the rest of the CPU
        model_choice.input(h.on_model_choice, inputs=[model_choice, profile, state], outputs=[fit_msg, live, readout, status, state],
                           show_progress="hidden").then(h.on_personal_refresh, inputs=[profile, state], outputs=[pers_md], show_progress="hidden")
        export_btn.click(h.on_export, inputs=[profile], outputs=[profile_msg, export_file])
        import_file.upload(h.on_import, inputs=[import_file, profile, state], outputs=[profile_msg, moments_state, base_md, pers_md, state])
        delete_all.click(h.on_delete_all, inputs=[profile, state], outputs=[profile_msg, moments_state, base_md, pers_md, state, cal_timer, model_choice, export_file])
        cam.stream(h.on_frame, inputs=[cam, state], outputs=[annotated, live, readout, status, state],
                   stream_every=0.1, time_limit=3600, concurrency_limit=8, show_progress="hidden")
        mic.stream(h.on_audio, inputs=[mic, state], outputs=[live, readout, status, transcript, state],
                   stream_every=0.5, time_limit=3600, concurrency_limit=8, show_progress="hidden")
        mic.stop_recording(h.on_audio_stop, inputs=[state], outputs=[live, status, state], show_progress="hidden")
        text.change(h.on_text, inputs=[text, state], outputs=[live, readout, status, state], trigger_mode="always_last", show_progress="hidden")
        fusion.change(h.on_fusion, inputs=[fusion, state], outputs=[live, readout, status, method_info, state], show_progress="hidden").then(
            lambda pid, s: personal_md(s, h._profile(pid) if isinstance(pid, str) and PROFILE_ID.match(pid) else None),
            inputs=[profile, state], outputs=[pers_md], show_progress="hidden")
        go_btn.click(h.on_analyse, inputs=[video, clip_fusion, fps], outputs=[clip_summary, clip_plot, csv_file, json_file], api_name="analyse")
        gr.api(h.api_predict, api_name="predict")
        gr.api(h.api_fusions, api_name="fusions")
    return demo


LAUNCH = {"css": CSS, "allowed_paths": [str(PLOTLY_JS)], "show_error": False}
"""Keyword arguments every launch of the app needs (the CLI below, tests, a Space)."""


def gradio_cache_dir() -> Path:
    return Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio")).resolve()


class ChunkSweeper:
    """Removes the microphone chunk files Gradio wrote to its cache, once they are old.

    Gradio stores an upload under a folder named by the content's hash, so two sessions sending
    identical chunks (digital silence, say) read the same path: a chunk must never be deleted as soon
    as one session has read it. A re-upload renames a fresh file over the old one, so a file's mtime
    says when that content last arrived; files (and then their empty folders) are removed only when
    nothing has arrived at that path for ``max_age_s``. Only paths inside Gradio's cache are touched.
    Gradio's own ``delete_cache`` would remove them after 10 to 15 minutes; a long session must not keep
    that many minutes of chunks on disk per user.
    """

    def __init__(self, max_age_s: float = CHUNK_MAX_AGE_S, every_s: float = 5.0, remember: int = 20000,
                 folder_age_s: float = 300.0):
        self.max_age_s = max_age_s
        self.every_s = min(every_s, max_age_s)
        self.remember = remember
        self.folder_age_s = folder_age_s
        self.paths: OrderedDict[Path, None] = OrderedDict()
        self.folders: OrderedDict[Path, None] = OrderedDict()  # emptied by us: removed once idle for folder_age_s
        self.lock = threading.Lock()
        self.last_sweep = 0.0

    def seen(self, path: Path) -> None:
        cache = gradio_cache_dir()
        path = Path(path).resolve()
        if cache not in path.parents:
            return
        with self.lock:
            self.paths[path] = None
            self.paths.move_to_end(path)
            while len(self.paths) > self.remember:
                self.paths.popitem(last=False)
            due = time.monotonic() - self.last_sweep >= self.every_s
            if due:
                self.last_sweep = time.monotonic()
        if due:
            self.sweep()

    def sweep(self) -> int:
        """Remove what is old enough; returns how many files went."""
        with self.lock:
            paths = list(self.paths)
        removed = 0
        for path in paths:
            state = self._remove_if_idle(path)
            if state == "kept":
                continue
            removed += state == "removed"
            with self.lock:
                self.paths.pop(path, None)
                if state == "removed":
                    self.folders[path.parent] = None
                    while len(self.folders) > self.remember:
                        self.folders.popitem(last=False)
        self._remove_idle_folders()
        return removed

    def _remove_if_idle(self, path: Path) -> str:
        """'removed', 'gone' (nothing there any more) or 'kept' (in use, or could not be removed)."""
        try:
            if time.time() - path.stat().st_mtime <= self.max_age_s:
                return "kept"
            trash = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.sweep")
            os.rename(path, trash)  # atomic: a reader has the file open already, or it arrives again
            if time.time() - trash.stat().st_mtime <= self.max_age_s:  # uploaded again meanwhile: put it back
                os.rename(trash, path)
                return "kept"
            trash.unlink()
            return "removed"
        except FileNotFoundError:
            return "gone"
        except OSError as err:
            log.debug("chunk %s not removed: %s", path, err)
            return "kept"

    def _remove_idle_folders(self) -> None:
        """The hash-named folders we emptied, once nothing has arrived in them for folder_age_s. (Gradio
        creates the folder, then moves the upload in: a folder idle that long is not being used; the
        remaining window is an upload of the very same content at the very moment of the removal,
        which then fails once and is reported for that chunk.)"""
        with self.lock:
            folders = list(self.folders)
        for folder in folders:
            try:
                if any(folder.iterdir()):  # the same content came again: its file will be seen and swept
                    done = True
                elif time.time() - folder.stat().st_mtime > self.folder_age_s:
                    folder.rmdir()
                    done = True
                else:
                    done = False
            except FileNotFoundError:
                done = True
            except OSError:
                done = False
            if done:
                with self.lock:
                    self.folders.pop(folder, None)


class ClipOutputs:
    """Folders holding the CSV/JSON of clip analyses (Gradio copies them into its cache when they
    are returned). Folders older than ``max_age_s`` are removed whenever a new one is made."""

    def __init__(self, root: Path | None = None, max_age_s: float = CLIP_MAX_AGE_S):
        self.root = Path(root) if root else Path(tempfile.gettempdir()) / "mmdemo-clips"
        self.max_age_s = max_age_s

    def new(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        return Path(tempfile.mkdtemp(prefix="clip-", dir=self.root))

    def remove(self, name: str) -> None:
        """Every output file called ``name`` (a profile's export, when its data is deleted)."""
        for f in self.root.glob(f"clip-*/{name}"):
            f.unlink(missing_ok=True)

    def sweep(self) -> None:
        for folder in self.root.glob("clip-*"):
            try:
                if time.time() - folder.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def read_chunk(chunk, sweeper: ChunkSweeper | None = None) -> tuple[np.ndarray, int]:
    """A streamed microphone chunk: (sample_rate, array) or a file path in Gradio's cache. The file
    is left for ``sweeper`` (another session may be reading the same content-addressed file)."""
    if isinstance(chunk, tuple):
        sr, data = chunk
        return np.asarray(data), int(sr)
    path = Path(chunk)
    try:
        data, sr = sf.read(str(path), dtype="int16", always_2d=False)
    finally:
        if sweeper is not None:
            sweeper.seen(path)
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
    ap.add_argument("--port", type=int, default=os.environ.get("MMDEMO_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860")))  # argparse checks a default from the environment too
    ap.add_argument("--share", action="store_true", help="create a public Gradio share link")
    ap.add_argument("--auth", default=os.environ.get("MMDEMO_AUTH"), help="user:password (or env MMDEMO_AUTH)")
    ap.add_argument("--device", default=os.environ.get("MMDEMO_DEVICE"), help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--checkpoints", type=Path, default=Path(os.environ.get("MMDEMO_CHECKPOINTS", DEFAULT_CHECKPOINTS)))
    ap.add_argument("--data-dir", default=os.environ.get("MMDEMO_DATA_DIR"),
                    help="where users' profiles (labelled moments, baselines, personal models) are stored (default ~/.local/share/mmdemo)")
    ap.add_argument("--transport", choices=TRANSPORTS, default=os.environ.get("MMDEMO_TRANSPORT", "http"),
                    help="how the camera and microphone reach the server: Gradio's HTTP streaming (default; works everywhere, "
                         "Spaces included) or WebRTC (lower latency; needs a direct connection: a LAN or this machine)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a live-pipeline setting (mmdemo.pipeline.PipelineConfig), e.g. --set face_interval_s=0 --set voice_stream=false")
    args = ap.parse_args(argv)
    if args.transport not in TRANSPORTS:  # argparse's choices do not check a default (MMDEMO_TRANSPORT)
        ap.error(f"--transport (or MMDEMO_TRANSPORT) {args.transport!r}: choose from {', '.join(TRANSPORTS)}")
    try:
        resolve_device(args.device)
    except ValueError as err:
        ap.error(f"--device (or MMDEMO_DEVICE): {err}")
    if not args.checkpoints.is_dir():
        ap.error(f"--checkpoints (or MMDEMO_CHECKPOINTS) {args.checkpoints}: no such folder (the project's checkpoints/ holds the shipped models)")
    try:
        config = config_with(args.set)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "faster_whisper", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    studio = Studio(args.checkpoints, args.device, args.data_dir, config, transport=args.transport)
    demo = build(studio)
    threading.Thread(target=studio.warm_up, name="mmdemo-warmup", daemon=True).start()
    demo.queue(default_concurrency_limit=8)
    if studio.rtc is None:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth), **LAUNCH)
        return
    app, _, _ = demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth),
                            prevent_thread_lock=True, **LAUNCH)
    studio.mount_rtc(app)
    demo.block_thread()


if __name__ == "__main__":
    main()
