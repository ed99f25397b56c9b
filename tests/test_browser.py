"""End to end in headless Chromium with a fake webcam (a clip of a real face) and a fake
microphone (espeak-ng speech), as ../shared/docs/E2E.md describes. Marked slow + browser."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.media import need, video

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("MMDEMO_ARTIFACTS", ROOT / "test-artifacts"))
CHUNK_AGE_S = 2.0  # the app removes microphone chunk files unused this long (30 s by default)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    need("ffmpeg"), need("espeak-ng"), need("sox")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (see the README's apt-get line)")
    d = tmp_path_factory.mktemp("fake-devices")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "I really love this movie. The acting was wonderful and I am very happy."], check=True)
    body = d / "body.wav"
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(body)], check=True)
    silence = d / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", str(silence), "trim", "0", "1.5"], check=True)
    speech = d / "speech.wav"
    subprocess.run(["sox", str(body), str(silence), str(speech)], check=True)
    mp4 = video(d / "face.mp4", seconds=4.0, size=480)
    y4m = d / "face.y4m"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-vf", "scale=640:480,format=yuv420p", "-r", "15", str(y4m)], check=True)
    return {"video": y4m, "audio": speech}


def _serve(tmp_path_factory, *extra):
    port = free_port()
    temp = tmp_path_factory.mktemp("gradio-temp")
    env = dict(os.environ, GRADIO_TEMP_DIR=str(temp), MMDEMO_CHUNK_MAX_AGE_S=str(CHUNK_AGE_S), MMDEMO_DATA_DIR=str(tmp_path_factory.mktemp("userdata")), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu", *extra], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while time.time() - t0 < 120:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, open(log.name).read()
            time.sleep(0.3)
    started = time.time() - t0
    yield {"url": url, "temp": temp, "log": log.name, "startup_s": started, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)
    text = open(log.name).read()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def rtc_server(tmp_path_factory):
    yield from _serve(tmp_path_factory, "--transport", "webrtc")


def _browser(p, profile, media):
    return p.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 1000},
        args=ARGS + [f"--use-file-for-fake-video-capture={media['video']}", f"--use-file-for-fake-audio-capture={media['audio']}"])


def _start_streams(page):
    page.wait_for_selector("#cam")
    page.wait_for_function("window.mmLive !== undefined && typeof Plotly !== 'undefined'", timeout=30000)
    page.locator("#cam").get_by_text("Click to Access Webcam").click()
    page.wait_for_function("document.querySelector('#cam video') && document.querySelector('#cam video').videoWidth > 0", timeout=30000)
    page.locator("#cam button.capture-button").click()
    page.locator("#mic button.record-button").click()


def _streaming_page(p, profile, media, server):
    """A browser on the app with the fake webcam and microphone streaming."""
    ctx = _browser(p, profile, media)
    page = ctx.new_page()
    page.goto(server["url"], wait_until="load")
    _start_streams(page)
    return ctx, page


def test_live_session_in_a_real_browser(server, media, tmp_path):
    from playwright.sync_api import sync_playwright

    assert server["startup_s"] < 60, "the app should answer within seconds (models load lazily)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx, page = _streaming_page(p, tmp_path / "profile-a", media, server)
        streaming_from = time.time()
        page.locator("#text textarea").press_sequentially("What a wonderful day", delay=30)
        # the plots update live
        page.wait_for_function("window.mmLive.points > 40", timeout=90000)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('face: present')", timeout=30000)
        # switch the method mid-stream: the plots continue with it
        page.locator("#fusion input").click()
        page.locator("[role=option]", has_text="cross_attention").first.click()
        page.wait_for_function("window.mmLive.fusion === 'cross_attention'", timeout=30000)
        n = page.evaluate("window.mmLive.points")
        page.wait_for_function(f"window.mmLive.points > {n + 20}", timeout=60000)
        traces = page.evaluate("document.querySelector('#live .js-plotly-plot').data.map(t => t.x.length)")
        assert min(traces[:5]) > 20  # prediction, smoothed line, three contributions
        # what was said appears as a transcript and feeds the words modality
        page.wait_for_function("document.querySelector('#transcript textarea')?.value.toLowerCase().includes('movie')", timeout=90000)
        assert "words: present" in page.locator("#status").inner_text()
        assert "cross_attention" in page.locator("#method-info").inner_text()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
        page.wait_for_timeout(max(0.0, 12 * CHUNK_AGE_S - (time.time() - streaming_from)) * 1000)  # long enough to sweep
        ctx.close()
        streamed_s = time.time() - streaming_from
    # chunk files do not pile up in Gradio's temp folder: the app removes those unused for
    # CHUNK_AGE_S, so what is left is about the last CHUNK_AGE_S (+ a sweep interval, + chunks the
    # queue dropped, which Gradio removes later) of a session that sent one chunk per 0.5 s
    assert streamed_s > 10 * CHUNK_AGE_S
    chunks = list(Path(server["temp"]).rglob("*.wav"))
    assert 0 < len(chunks) < streamed_s / 0.5 / 3, (len(chunks), streamed_s)


def test_two_sessions_do_not_see_each_other(server, media, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        a = _browser(p, tmp_path / "a", media)
        b = _browser(p, tmp_path / "b", media)
        pa, pb = a.new_page(), b.new_page()
        pa.goto(server["url"], wait_until="load")
        pb.goto(server["url"], wait_until="load")
        for page in (pa, pb):
            page.wait_for_function("window.mmLive !== undefined", timeout=30000)
        pa.locator("#text textarea").press_sequentially("I hate this, it is terrible", delay=20)
        pa.wait_for_function("document.querySelector('#status')?.innerText.includes('words: present')", timeout=30000)
        pb.locator("#fusion input").click()
        pb.locator("[role=option]", has_text="tensor").first.click()
        pb.wait_for_function("window.mmLive.fusion === 'tensor'", timeout=30000)
        pa.wait_for_timeout(1000)
        assert "no text" in pb.locator("#status").inner_text()  # b never typed
        assert pa.evaluate("window.mmLive.fusion") != "tensor"  # a never switched
        assert pa.locator("#text textarea").input_value() and not pb.locator("#text textarea").input_value()
        a.close()
        b.close()


def test_calibrate_label_fit_switch_export_and_import(server, media, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx, page = _streaming_page(p, tmp_path / "me", media, server)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('face: present')", timeout=60000)
        page.locator("#personalise").get_by_text("Calibrate & personalise").first.click()
        page.wait_for_function("document.querySelector('#profile-info')?.innerText.includes('Profile')", timeout=30000)
        # 1. neutral baseline: a few seconds of the (fake) camera and microphone
        page.locator("#cal-start").click()
        page.wait_for_function("document.querySelector('#cal-msg')?.innerText.includes('Calibrating')", timeout=30000)
        page.wait_for_timeout(4000)
        page.locator("#cal-stop").click()
        page.wait_for_function("document.querySelector('#baseline')?.innerText.includes('face: offset from')", timeout=30000)
        assert "saved in your profile" in page.locator("#cal-msg").inner_text()
        page.locator("#personalise").screenshot(path=str(ARTIFACTS / "calibration.png"))
        # 2. label moments (face present; words typed), delete one
        labels = [2, -2, 1, -1, 0, 3, -3, 1.5, -0.5]
        for i, v in enumerate(labels):
            box = page.locator("#label-value input[type=number]")
            box.fill(str(v))
            box.press("Tab")
            page.locator("#label-btn").click()
            page.wait_for_function(f"document.querySelector('#label-msg')?.innerText.includes('{i + 1} moments in your profile')", timeout=30000)
        page.wait_for_function(f"document.querySelectorAll('.mm-delete').length === {len(labels)}", timeout=30000)
        page.locator(".mm-delete").first.click()
        page.wait_for_function("document.querySelector('#label-msg')?.innerText.includes('Moment deleted')", timeout=30000)
        page.wait_for_function(f"document.querySelectorAll('.mm-delete').length === {len(labels) - 1}", timeout=30000)
        page.locator("#personalise").screenshot(path=str(ARTIFACTS / "moments.png"))
        # 3. fit, switch to the personal model and back
        page.locator("#fit-btn").click()
        page.wait_for_function("document.querySelector('#fit-msg')?.innerText.includes('fitted in')", timeout=120000)
        assert "personal" in page.locator("#personal-info").inner_text().lower()
        page.wait_for_function("document.querySelector('#readout')?.innerText.includes('(personal)')", timeout=30000)
        page.locator("#model-choice").get_by_text("generic").click()
        page.wait_for_function("!document.querySelector('#readout')?.innerText.includes('(personal)')", timeout=30000)
        page.locator("#model-choice").get_by_text("personal").click()
        page.wait_for_function("document.querySelector('#readout')?.innerText.includes('(personal)')", timeout=30000)
        # 4. export, then import the same file: nothing doubles
        page.locator("#export-btn").click()
        link = page.locator("#export-file a").first
        link.wait_for(timeout=30000)
        with page.expect_download() as dl:
            link.click()
        exported = tmp_path / "profile.safetensors"
        dl.value.save_as(str(exported))
        assert exported.stat().st_size > 1000
        page.locator("#import-file input[type=file]").set_input_files(str(exported))
        page.wait_for_function("document.querySelector('#profile-msg')?.innerText.includes('Imported 0 moments')", timeout=30000)
        assert f"({len(labels) - 1} already here)" in page.locator("#profile-msg").inner_text()
        page.screenshot(path=str(ARTIFACTS / "personalise.png"), full_page=True)
        ctx.close()


def test_the_webrtc_transport_streams_camera_and_microphone(rtc_server, media, tmp_path):
    """python app.py --transport webrtc: the page sends its camera and microphone as WebRTC media
    tracks and draws every result from the data channel: plot, readout, status, face box and
    transcript; Stop ends the connection and the session hears it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = _browser(p, tmp_path / "profile", media)
        page = ctx.new_page()
        page.goto(rtc_server["url"], wait_until="load")
        page.wait_for_function("window.mmRtc !== undefined && window.mmLive !== undefined && window.mmLive.feed !== undefined", timeout=60000)
        assert not page.locator("#cam").is_visible() and not page.locator("#mic").is_visible()  # one transport at a time
        page.wait_for_function("document.querySelector('#rtc .mm-rtc-start') && !document.querySelector('#rtc .mm-rtc-start').disabled")
        page.locator("#rtc .mm-rtc-start").click()  # it waits for the session token if the page is still loading
        page.wait_for_function("window.mmRtc.state === 'WebRTC: connected' || window.mmRtc.error !== null", timeout=60000)
        assert page.evaluate("window.mmRtc.error") is None
        page.wait_for_function("window.mmRtc.frames.length >= 20", timeout=60000)
        page.wait_for_function("window.mmRtc.faces.length >= 3", timeout=30000)  # faces are read beside the frames
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('face: present')", timeout=30000)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('voice: present')", timeout=60000)
        page.wait_for_function("document.querySelector('#transcript textarea')?.value.length > 5", timeout=90000)
        assert page.evaluate("window.mmLive.points") >= 20
        assert page.locator("#readout").inner_text().strip().startswith(("+", "-", "−"))
        frames = page.evaluate("window.mmRtc.frames.length")
        page.locator("#rtc .mm-rtc-stop").click()
        page.wait_for_function("window.mmRtc.state === 'stopped'")
        status = page.locator("#status").inner_text()  # the server's last word, shown before hanging up
        assert "camera stopped" in status and "microphone stopped" in status, status
        assert page.evaluate("window.mmRtc.lastWord") is True  # that last update came (not the page's time-out)
        page.wait_for_timeout(1500)
        assert page.evaluate("window.mmRtc.frames.length") - frames <= 3  # nothing arrives after Stop (bar what was in flight)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "webrtc.png"))
        ctx.close()


EDGE_PROBE = """async () => {
  // feeds points to the live plot right after a redraw of its figure, in one go (no timer of the
  // page can run in between), and reads the canvas over the figure after each one
  const el = document.querySelector('.mm-live-plot');
  const mark = (t, y) => ({src: 'test', t: t, pred: y, base: 0, fusion: 'weighted', any: true, sent: Date.now(),
                           shap: {text: y / 2, audio: 0, vision: 0}, w: {text: 0.5, audio: 0.3, vision: 0.2}});
  const alpha = (t, y) => {
    const fl = el._fullLayout, cv = document.querySelector('.mm-live-edge');
    const x = Math.round(fl.xaxis._offset + fl.xaxis.l2p(t)), py = Math.round(fl.yaxis._offset + fl.yaxis.l2p(y));
    return Math.max(...Array.from(cv.getContext('2d').getImageData(x - 1, py - 1, 3, 3).data).filter((_, i) => i % 4 === 3));
  };
  window.mmLive.feed({reset: true});
  const draws = window.mmLive.draws.length;
  window.mmLive.feed(mark(0.5, 0));  // the first point: the figure is redrawn at the next animation frame
  const until = Date.now() + 10000;
  while (window.mmLive.draws.length === draws) {
    if (Date.now() > until) return {error: 'the figure was not redrawn'};
    await new Promise(r => requestAnimationFrame(r));
  }
  const g = document.querySelector('.mm-live-edge').getContext('2d');
  let arcs = 0;
  const arc = g.arc.bind(g);
  g.arc = (...a) => { arcs += 1; return arc(...a); };
  const out = {steps: []};
  for (const [t, y] of [[1, 2], [2, -2], [3, 2], [200, 2]]) {
    const shown = window.mmLive.shown.length;
    arcs = 0;
    window.mmLive.feed(mark(t, y));
    out.steps.push({shown: window.mmLive.shown.length - shown, arcs: arcs, here: alpha(t, y), first: alpha(1, 2), empty: alpha(1, -2)});
  }
  out.redrawn = window.mmLive.draws.length > draws + 1;  // (none in between: the next is a second or more away)
  return out;
}"""


def test_the_live_plot_shows_each_point_at_once_and_the_figure_takes_them_in(server, tmp_path):
    """Each new point is drawn at once on the canvas over the figure, and only the new one (the
    edge is not redrawn whole for each point); a point past the figure's time axis waits for the
    figure's redraw, which takes them all in, after which the canvas lets go of them."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server["url"], wait_until="load")
        page.wait_for_function("window.mmLive !== undefined && window.mmLive.feed !== undefined && typeof Plotly !== 'undefined'", timeout=60000)
        page.wait_for_selector("#status .mm-chip", timeout=60000)  # the page's load handler ran (it resets the plot)
        out = page.evaluate(EDGE_PROBE)
        assert "error" not in out, out
        assert not out["redrawn"], out
        steps = out["steps"]
        for s in steps[:3]:
            assert s["shown"] == 1 and s["arcs"] == 1 and s["here"] > 200, out  # drawn at once, alone
            assert s["first"] > 200 and s["empty"] == 0, out  # the earlier points stay; nothing where none is
        assert steps[3]["shown"] == 0 and steps[3]["arcs"] == 0, out  # 200 s: past the axis, not drawn yet
        page.wait_for_function("document.querySelector('.mm-live-plot').data[0].x.includes(200)", timeout=10000)  # the figure's redraw
        assert page.evaluate("document.querySelector('.mm-live-plot').data[0].x") == [0.5, 1, 2, 3, 200]
        xr = page.evaluate("document.querySelector('.mm-live-plot')._fullLayout.xaxis.range")
        assert xr[0] <= 200 <= xr[1]  # the time axis followed the newest point
        browser.close()
