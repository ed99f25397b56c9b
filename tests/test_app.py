"""The app without a browser: its handlers on bad input, its API through gradio_client (slow:
real models and the shipped checkpoints)."""

import json
import logging
import os
import tracemalloc

import cv2
import gradio as gr
import numpy as np
import pytest
import soundfile as sf

import app as studio_app
from mmdemo.fusion import list_fusions
from mmdemo.pipeline import DEFAULT_CHECKPOINTS

from tests.helpers import free_port
from tests.media import astronaut, espeak, speech_16k, video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio():
    s = studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu")
    s.warm_up()
    assert s.error is None and s.fusions
    return s


@pytest.fixture(scope="module")
def handlers(studio):
    return studio_app.Handlers(studio, min_frame_gap_s=0.0)


def test_frames_faster_than_the_gap_are_skipped(studio):
    gated = studio_app.Handlers(studio, min_frame_gap_s=60.0)
    state, *_ = gated.on_load()
    first = gated.on_frame(astronaut(), state)
    second = gated.on_frame(astronaut(), state)
    assert json.loads(first[1])["src"] == "frame" and first[4] is state
    assert all(isinstance(o, type(gr.skip())) for o in second[:4]) and second[4] is state
    other, *_ = gated.on_load()  # the gap is per session
    assert json.loads(gated.on_frame(astronaut(), other)[1])["src"] == "frame"


@pytest.fixture
def quiet_log(caplog):
    """Handlers must not log errors (unhandled exceptions) for bad input."""
    caplog.set_level(logging.WARNING)
    yield caplog
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_every_registered_method_ships_a_checkpoint(studio):
    assert studio.fusions == list_fusions()
    for name in studio.fusions:
        assert studio.metrics[name].get("test"), f"{name}: no test metrics in its checkpoint"


def test_no_camera_or_microphone_yet(handlers, quiet_log):
    state, *_ = handlers.on_load()
    out = handlers.on_frame(None, state)
    assert "no camera frame" in out[0] and "camera not started" in out[3]
    out = handlers.on_audio(None, state)
    assert "microphone not started" in out[2]


def test_black_frames_and_several_faces(handlers, quiet_log):
    state, *_ = handlers.on_load()
    out = handlers.on_frame(np.zeros((480, 640, 3), np.uint8), state)
    assert "black frames" in out[3]
    head = astronaut()[20:260, 110:350]
    canvas = np.full((480, 900, 3), 90, np.uint8)
    canvas[20:420, 480:880] = cv2.resize(head, (400, 400))
    canvas[40:340, 20:320] = cv2.resize(head, (300, 300))
    out = handlers.on_frame(canvas, state)
    assert "2 faces in view" in out[3] and "face: present" in out[3]
    assert out[0].startswith("<img") and "base64" in out[0]


def test_odd_frames_do_not_break_the_stream(handlers, quiet_log):
    state, *_ = handlers.on_load()
    for frame in (np.zeros((2, 2, 3), np.uint8), np.zeros((10, 10)), np.full((480, 640, 4), 255, np.uint8), "not an image"):
        out = handlers.on_frame(frame, state)
        assert isinstance(out[3], str)
    assert handlers.on_frame(astronaut(), state)[4] is state


def _chunk_file(tmp_path, data, sr, name="chunk.wav"):
    path = tmp_path / name
    sf.write(str(path), data, sr, subtype="PCM_16")
    return str(path)


def test_silent_and_clipping_microphone(handlers, tmp_path, quiet_log):
    state, *_ = handlers.on_load()
    out = handlers.on_audio((48000, np.zeros(24000, np.int16)), state)
    assert "silence" in out[2]
    speech = speech_16k(tmp_path)
    loud = np.clip(speech * 40, -1, 1)
    for i in range(0, len(loud) - 8000, 8000):
        out = handlers.on_audio((16000, (loud[i : i + 8000] * 32767).astype(np.int16)), state)
    assert "clipping" in out[2]


def test_wrong_sample_rate_and_broken_chunks(handlers, tmp_path, quiet_log):
    state, *_ = handlers.on_load()
    assert "sample rate" in handlers.on_audio((0, np.zeros(100, np.int16)), state)[2]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    out = handlers.on_audio(str(bad), state)
    assert "audio skipped" in out[2]


def test_huge_and_emoji_text(handlers, quiet_log):
    state, *_ = handlers.on_load()
    out = handlers.on_text("😀🎉👍", state)
    assert "only symbols or emoji" in out[2]
    out = handlers.on_text("great " * 2000, state)
    assert "words: present" in out[2] and ("cut" in out[2] or "first 256 tokens" in out[2])
    out = handlers.on_text("", state)
    assert "no text" in out[2]


def test_switching_method_mid_session(handlers, quiet_log):
    state, *_ = handlers.on_load()
    handlers.on_text("I love this so much", state)
    for name in list_fusions():
        feed, readout, status, info, state = handlers.on_fusion(name, state)
        assert f'"fusion": "{name}"' in feed and name in info
    assert len(state.history) >= len(list_fusions())


def test_tab_that_stops_sending_frames(handlers, quiet_log):
    state, *_ = handlers.on_load()
    handlers.on_frame(astronaut(), state)
    state.t0 -= 10  # ten seconds later, no frame came
    out = handlers.on_text("hello there", state)
    assert "no camera frames arriving" in out[2]


def test_chunk_files_are_removed_and_memory_stays_flat(studio, tmp_path, monkeypatch, quiet_log):
    """A long simulated session through the handlers: chunk files do not pile up in Gradio's temp
    folder (here removed as soon as they are unused, max age 0), and memory does not grow with the
    number of updates."""
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    handlers = studio_app.Handlers(studio, min_frame_gap_s=0.0, chunks=studio_app.ChunkSweeper(max_age_s=0.0))
    state, *_ = handlers.on_load()
    speech = (speech_16k(tmp_path) * 32767).astype(np.int16)
    frame = np.full((240, 320, 3), 100, np.uint8)

    def run(n):
        for i in range(n):
            sub = cache / f"h{i}"
            sub.mkdir(parents=True, exist_ok=True)
            j = (i * 8000) % (len(speech) - 8000)
            handlers.on_audio(_chunk_file(sub, speech[j : j + 8000], 16000), state)
            handlers.on_frame(frame, state)

    tracemalloc.start()
    run(350)  # warm up: history, buffers and caches fill to their bounds (700 updates > history)
    before = tracemalloc.get_traced_memory()[0]
    run(300)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert not list(cache.rglob("*.wav")), "chunk files were left behind"
    assert len(state.history) == state.history.maxlen and len(state.asr_waiting) <= 2
    assert grown < 3_000_000, f"memory grew by {grown} bytes over 600 more updates"


def test_sessions_sharing_a_chunk_file_both_read_it(handlers, tmp_path, monkeypatch, quiet_log):
    """Gradio stores uploads by content hash: two sessions sending the same chunk (silence, say) get
    the same path. Reading it in one session must not take it from the other."""
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    shared = cache / "0123abcd"
    shared.mkdir(parents=True)
    path = _chunk_file(shared, np.zeros(24000, np.int16), 48000, name="audio.wav")
    a, *_ = handlers.on_load()
    b, *_ = handlers.on_load()
    for state in (a, b, a):
        out = handlers.on_audio(path, state)
        assert "audio skipped" not in out[2] and "silence" in out[2], out[2]


def test_a_failing_microphone_stop_is_reported(handlers, quiet_log):
    class Broken:
        def stop_audio(self):
            raise RuntimeError("device vanished")

    state = Broken()
    feed, status, back = handlers.on_audio_stop(state)
    assert "device vanished" in status and back is state


def test_analyse_uploads(studio, tmp_path, quiet_log):
    outputs = tmp_path / "clip-outputs"
    handlers = studio_app.Handlers(studio, min_frame_gap_s=0.0, clips=studio_app.ClipOutputs(outputs, max_age_s=0.0))
    wav = espeak(tmp_path / "s.wav")
    clip = video(tmp_path / "talk.mp4", audio=wav, seconds=4.0)
    summary, fig, csv_path, json_path = handlers.on_analyse(str(clip), "weighted", 5)
    assert "updates with **weighted**" in summary and "transcript" in summary
    assert fig is not None and os.path.getsize(csv_path) > 0
    lines = open(csv_path).read().splitlines()
    assert lines[0].startswith("t,fusion,prediction") and len(lines) > 20
    mute = video(tmp_path / "mute.mp4", seconds=2.0)
    summary, *_ = handlers.on_analyse(str(mute), "concat", 5)
    assert "no audio track" in summary
    assert len(list(outputs.glob("clip-*"))) == 1  # the first analysis's folder was cleaned (max age 0)
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    summary, fig, *_ = handlers.on_analyse(str(junk), "weighted", 5)
    assert summary.startswith("⚠️") and fig is None
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert handlers.on_analyse(str(text), "weighted", 5)[0].startswith("⚠️")
    assert handlers.on_analyse(None, "weighted", 5)[0].startswith("Upload")
    # a sound file with a header and no samples: nothing to analyse, and the message says why
    import soundfile as sf

    sf.write(tmp_path / "silent.wav", np.zeros(0, np.float32), 16000)
    summary = handlers.on_analyse(str(tmp_path / "silent.wav"), "weighted", 5)[0]
    assert summary.startswith("⚠️ nothing could be analysed") and "audio" in summary.split("\n", 1)[1]


def test_every_fusion_menu_starts_on_the_live_sessions_method(studio):
    demo = studio_app.build(studio)
    menus = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "fusion method"]
    assert len(menus) == 2  # the live tab and the clip analysis
    session = studio.engine.session()
    try:
        assert {m.value for m in menus} == {studio.engine.default_fusion()} == {session.fusion_name}
    finally:
        session.close()
    info = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "method-info")
    assert studio.engine.default_fusion() in info.value


@pytest.fixture(scope="module")
def served(studio):
    demo = studio_app.build(studio)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **studio_app.LAUNCH)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_through_gradio_client(served, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    fusions = client.predict(api_name="/fusions")
    assert set(fusions) == set(list_fusions()) and all("mae" in v for v in fusions.values())
    good = client.predict("I absolutely loved it, what a wonderful and moving film", "weighted", api_name="/predict")
    bad = client.predict("This was awful, boring and a complete waste of my time", "weighted", api_name="/predict")
    assert good["present"]["text"] and good["prediction"] > bad["prediction"]
    assert good["prediction"] > 0.5 and bad["prediction"] < -0.5  # the trained words model, through the fusion
    for name in ("../fusion/weighted", "/etc", "nope", "weighted/../tensor"):  # names come from the network
        with pytest.raises(Exception, match="unknown fusion method"):
            client.predict("fine", name, api_name="/predict")
    assert abs(sum(good["shapley"].values()) - (good["prediction"] - good["baseline"])) < 1e-4
    wav = espeak(tmp_path / "s.wav", "I am so happy today")
    clip = video(tmp_path / "c.mp4", audio=wav, seconds=2.5)
    summary, _fig, csv_file, json_file = client.predict(handle_file(str(clip)), "tensor", 5, api_name="/analyse")
    assert "tensor" in summary and os.path.exists(csv_file) and os.path.exists(json_file)


@pytest.mark.parametrize("argv, env, says", [
    (["--device", "tpu"], {}, "--device (or MMDEMO_DEVICE): unknown device 'tpu'"),
    ([], {"MMDEMO_DEVICE": "gpu0"}, "unknown device 'gpu0'"),
    ([], {"MMDEMO_TRANSPORT": "carrier-pigeon"}, "choose from"),
    (["--checkpoints", "no/such/folder"], {}, "no/such/folder: no such folder"),
    ([], {"MMDEMO_PORT": "eighty"}, "invalid int value: 'eighty'"),
])
def test_bad_settings_stop_the_app_with_a_message_before_any_model_loads(monkeypatch, capsys, argv, env, says):
    monkeypatch.setattr(studio_app, "Studio", lambda *a, **k: pytest.fail("the studio started with a bad setting"))
    for k in ("MMDEMO_DEVICE", "MMDEMO_TRANSPORT", "MMDEMO_PORT", "GRADIO_SERVER_PORT", "MMDEMO_CHECKPOINTS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        studio_app.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err
