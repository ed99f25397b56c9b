"""The streaming pipeline with the real encoders (slow)."""

import copy
import threading

import numpy as np
import pytest
import torch

from mmdemo.audio import resample
from mmdemo.checkpoint import save_fusion
from mmdemo.encoders import DIMS
from mmdemo.fusion import create_fusion, list_fusions
from mmdemo.pipeline import Engine, PipelineConfig, Session

from tests.media import SENTENCE, astronaut, speech_16k, wer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for n in list_fusions():
        torch.manual_seed(0)
        save_fusion(create_fusion(n, dims=DIMS), root / "fusion" / n)
    for m, d in DIMS.items():
        save_fusion(create_fusion("concat", dims={m: d}), root / "unimodal" / m)
    return root


@pytest.fixture(scope="module")
def engine(checkpoints):
    return Engine(checkpoints, device="cpu", config=PipelineConfig(history=500))  # 1,300 updates fill it


@pytest.fixture(scope="module")
def speech48(tmp_path_factory):
    x = speech_16k(tmp_path_factory.mktemp("sp"))
    pad = np.zeros(16000, np.float32)
    return (resample(np.concatenate([pad, x, pad, pad]), 16000, 48000) * 32767).astype(np.int16)


def feed(session, audio48, frame, *, hop=0.1, t0=0.0):
    """Interleave 100 ms audio chunks and frames like the browser does; returns the last update."""
    n, t, up = int(48000 * hop), t0, None
    for i in range(0, len(audio48), n):
        session.push_audio(audio48[i : i + n], 48000, t=t)
        up = session.push_frame(frame, t=t)
        t += hop
    return up, t


def test_live_session_end_to_end(engine, speech48):
    s = engine.session("weighted")
    up, t = feed(s, speech48, astronaut())
    assert up.present["vision"] and up.face_box is not None and up.face_expression == "happy"
    assert set(up.timings_ms) >= {"fusion", "total"}  # "face" too when this frame was read (at most 5 a second)
    s.wait_for_transcripts()
    up = s.update(t)
    assert wer(SENTENCE, up.transcript) < 0.25, up.transcript
    assert up.present["text"] and up.words_text == up.transcript
    # the contributions are exact Shapley values of this update
    assert sum(up.shapley.values()) == pytest.approx(up.prediction - up.baseline, abs=1e-5)
    assert abs(sum(up.weights.values()) - 1) < 1e-5
    assert -3 < up.prediction < 3
    # each present modality's own model speaks too
    assert all(up.unimodal[m] is not None for m in up.present if up.present[m])
    assert set(up.row()) >= {"t", "prediction", "shapley_text", "alone_vision"}


def test_reasons_for_absent_modalities(engine):
    s = engine.session("concat")
    up = s.update(0.0)
    assert not up.any_present
    assert up.reasons == {"text": "no text (type or speak)", "audio": "microphone not started", "vision": "camera not started"}
    up = s.push_frame(np.zeros((480, 640, 3), np.uint8), t=0.1)
    assert up.reasons["vision"] == "the camera delivers black frames"
    up = s.push_audio(np.zeros(48000, np.int16), 48000, t=1.2)
    assert up.reasons["audio"].startswith("silence")
    up = s.set_text("🙂🙂🙂", t=1.3)
    assert "emoji" in up.reasons["text"]
    up = s.set_text("x" * 20000, t=1.4)
    assert up.present["text"] and any("cut" in n for n in up.notes)
    s.push_frame(astronaut(), t=2.0)
    assert s.update(2.2).present["vision"]
    assert not s.update(5.0).present["vision"]  # the camera stopped sending frames
    assert s.update(5.0).reasons["vision"] == "no camera frames arriving"


def test_bad_audio_does_not_break_the_session(engine, speech48):
    s = engine.session()
    for chunk, rate in (
        (speech48[:4800], 0),  # wrong sample rate
        (np.zeros((0,), np.int16), 48000),  # empty
        (np.full(4800, np.nan, np.float32), 48000),  # NaN
        (np.stack([speech48[:4410], speech48[:4410]], axis=1), 44100),  # stereo at another rate
        (speech48[:800].astype(np.float64) / 32768, 8000),
    ):
        up = s.push_audio(chunk, rate, t=0.5)
        assert np.isfinite(up.prediction)
    assert any("sample rate" in n for n in s.push_audio(speech48[:10], 1, t=0.6).notes)


def test_switching_method_keeps_history_and_features(engine, speech48):
    s = engine.session("weighted")
    feed(s, speech48[: 48000 * 2], astronaut())
    n = len(s.history)
    up = s.set_fusion("tensor")
    assert up.fusion == "tensor" and up.weights is None
    assert len(s.history) == n + 1 and s.history[0].fusion == "weighted"
    assert s.features["vision"] is not None  # the face read before the switch is still there
    with pytest.raises(KeyError, match="available"):
        s.set_fusion("nope")


def test_cost_and_memory_stay_flat_over_a_long_session(engine, speech48):
    """A minute of input at 10 frames/s + 10 audio chunks/s: buffers and history keep their size."""
    s = engine.session("concat")
    frame = np.full((120, 160, 3), 128, np.uint8)  # no face: cheap, this test is about the buffers
    loop = np.concatenate([speech48, speech48])
    t = 0.0
    sizes = []
    for _ in range(4):  # 4 x ~16 s of speech and frames: 1,300 updates, more than the history holds
        _, t = feed(s, loop, frame, t0=t)
        sizes.append((len(s.history), s.ring.size, len(s.probs), len(s.utterance), len(s.spoken), len(s.transcript)))
    assert len(s.history) == engine.config.history
    assert len({x[1] for x in sizes}) == 1 and max(x[2] for x in sizes) == s.probs.maxlen
    assert max(x[3] for x in sizes) <= engine.config.utterance_max_s * 16000 / 512 + 20
    assert len(s.spoken) <= engine.config.spoken_keep
    s.wait_for_transcripts()
    assert len(s.update(t).transcript) <= engine.config.transcript_chars


def test_long_utterances_are_cut_and_transcribed(engine, speech48):
    s = engine.session()
    steady = np.concatenate([speech48[48000 : 48000 * 4]] * 8)  # ~24 s without a pause
    feed(s, steady, astronaut())
    assert s.asr_running is not None or s.asr_waiting or s.spoken  # cut at utterance_max_s, not kept growing


def test_sessions_do_not_see_each_other(engine, speech48):
    a, b = engine.session("weighted"), engine.session("weighted")
    errors = []

    def run(session, frame, text):
        try:
            session.set_text(text, t=0.0)
            feed(session, speech48[: 48000 * 2], frame)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    ta = threading.Thread(target=run, args=(a, astronaut(), "I love it"))
    tb = threading.Thread(target=run, args=(b, np.zeros((240, 320, 3), np.uint8), ""))
    ta.start(), tb.start(), ta.join(), tb.join()
    assert not errors
    ua, ub = a.update(2.0), b.update(2.0)
    assert ua.present["vision"] and not ub.present["vision"]
    assert ua.typed_text == "I love it" and ub.typed_text == ""
    assert ub.face_box is None


def test_engine_without_checkpoints_says_so(tmp_path):
    eng = Engine(tmp_path, device="cpu")
    assert eng.available_fusions() == []
    with pytest.raises(RuntimeError, match="no fusion models"):
        eng.session()


def test_notes_do_not_pile_up_over_a_session(engine):
    """The "long text" note is about the current words: said once, however often they are re-read."""
    s = engine.session("concat")
    s.set_text("great " * 400, t=0.0)
    for k in range(8):  # eight utterances transcribed one after another: the words are re-embedded each time
        s.spoken.append((0.5 * k, f"and then number {k}"))
        up = s.update(0.5 * k + 0.1)
    assert sum("long text" in n for n in up.notes) == 1, up.notes
    up = s.set_text("short", t=5.0)
    assert not any("long text" in n for n in up.notes)
    s.asr_note = (5.0, "speech recognition failed for one utterance")
    assert any("failed" in n for n in s.update(6.0).notes)
    assert not any("failed" in n for n in s.update(5.0 + engine.config.asr_note_s + 1).notes)  # shown for a while, not forever


def test_utterances_keep_their_preroll(engine, speech48, monkeypatch):
    """Whisper must hear the audio just before the VAD's onset (it triggers late): the utterance
    starts preroll_s before the first speech frame, with 0.5 s chunks as the browser sends."""
    from mmdemo.encoders.voice import FRAME, speech_probs

    heard = []
    monkeypatch.setattr(engine.transcriber, "transcribe", lambda audio: heard.append(np.array(audio)) or "")
    x16 = resample(speech48.astype(np.float32) / 32768, 48000, 16000)
    x16 = np.concatenate([np.zeros(13000, np.float32), x16])  # onset in the middle of a chunk
    s = engine.session("concat", blocking_asr=True)
    for i in range(0, len(x16), 8000):
        s.push_audio(x16[i : i + 8000], 16000, t=i / 16000)
    s.flush(t=len(x16) / 16000)
    assert heard, "no utterance was transcribed"
    onset = int(np.flatnonzero(speech_probs(x16) >= engine.config.speech_threshold)[0]) * FRAME
    pre = int(round(engine.config.preroll_s * 16000))
    assert onset > pre
    assert np.array_equal(heard[0][: pre + FRAME], x16[onset - pre : onset + FRAME])


def test_voice_waits_for_the_window_it_learned_from(engine, speech48):
    """At session start the voice model is not shown a 0.5 s window: it learned from 2.4 s."""
    s = engine.session("concat")
    x = speech48[48000:]  # speech from the first sample
    up = None
    for k in range(4):  # 2 s of speech in 0.5 s chunks
        up = s.push_audio(x[k * 24000 : (k + 1) * 24000], 48000, t=0.5 * k)
        assert not up.present["audio"] and "warming up" in up.reasons["audio"], up.reasons
    for k in range(4, 6):
        up = s.push_audio(x[k * 24000 : (k + 1) * 24000], 48000, t=0.5 * k)
    assert up.present["audio"], up.reasons
    assert up.audio_level_dbfs > -60  # speech
    assert s.stop_audio(t=3.0).audio_level_dbfs == -100.0  # no microphone: no level shown
    up = s.push_audio(x[:24000], 48000, t=3.5)
    assert "warming up" in up.reasons["audio"]  # a new microphone stream starts over


def test_clip_analysis_releases_its_video_reader_on_errors(engine, tmp_path, monkeypatch):
    """A failure in the middle of a clip must not leave the decoder open until garbage collection."""
    import cv2

    from mmdemo import clip, media
    from tests.media import video

    opened = []
    real_capture = cv2.VideoCapture

    class Tracked:
        """Wraps a reader (OpenCV's classes must not be subclassed in Python: freeing such an
        instance corrupts the heap)."""

        def __init__(self, *a):
            self.capture = real_capture(*a)
            self.released = False
            opened.append(self)

        def __getattr__(self, name):
            return getattr(self.capture, name)

        def release(self):
            self.released = True
            self.capture.release()

    monkeypatch.setattr(media.cv2, "VideoCapture", Tracked)
    path = video(tmp_path / "c.mp4", seconds=2.0)
    calls = {"n": 0}
    real = type(engine.session()).push_frame

    def failing(self, frame, t=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("encoder crashed")
        return real(self, frame, t)

    monkeypatch.setattr(type(engine.session()), "push_frame", failing)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        try:
            clip.analyse_clip(engine, path, fusion="concat", fps=5)
        except RuntimeError:
            assert opened and all(c.released for c in opened)  # released before the error left analyse_clip
            raise


def test_the_face_signal_is_smoothed_over_time_and_restarts_after_a_gap(engine):
    """A person holding still (a photo with webcam jitter): the smoothed face-alone prediction
    strays less from its mean than frame-by-frame readings; a new face after a gap starts afresh."""
    from dataclasses import replace

    from mmdemo.smoothing import face_stability, jittered_frames
    from tests.media import astronaut

    frames = jittered_frames(astronaut(), seconds=3.0, fps=10, seed=3, shift_px=6, noise=8, light=0.15)
    raw = face_stability(engine, frames, 10, config=replace(engine.config, face_smooth_s=0.0, face_label_margin=0.0))
    smooth = face_stability(engine, frames, 10)
    assert smooth["with_face"] == raw["with_face"] > 20
    assert smooth["max_from_mean"] < 0.8 * raw["max_from_mean"], (smooth, raw)
    assert smooth["label_changes_per_s"] <= raw["label_changes_per_s"]
    s = engine.session("concat")
    s.push_frame(frames[0], t=0.0)
    first = s.features["vision"][0].copy()
    s.push_frame(np.zeros_like(frames[0]), t=0.8)  # one read without the face after a slow read: kept
    assert s.face_smoother.value is not None
    for k in range(9, 15):
        s.push_frame(np.zeros_like(frames[0]), t=k / 10)  # the face is lost ...
    assert s.face_smoother.value is None  # ... for longer than the gap: the average starts again
    s.push_frame(frames[5], t=1.5)
    np.testing.assert_allclose(s.features["vision"][0], engine.face.encode(frames[5]).feature, rtol=1e-5)
    assert not np.allclose(s.features["vision"][0], first)
    s.push_frame(frames[6], t=2.3)  # the next face read 0.8 s later (a loaded CPU): the average carries on
    assert not s.face_smoother.restarted
    s.push_frame(frames[7], t=2.3 + engine.config.camera_timeout_s + 0.1)  # no frame for longer than the camera's timeout
    assert s.face_smoother.restarted


def test_the_face_replay_reads_what_a_live_session_reads(engine):
    """mmdemo.smoothing.replay_face (what the benchmark chooses the face head's steadiness with,
    without reading the frames again) gives the face-alone readings of a live session with the
    shipped settings, frame for frame, also across frames without a face."""
    import torch

    from mmdemo.smoothing import jittered_frames, replay_face
    from tests.media import astronaut

    frames = jittered_frames(astronaut(), seconds=3.0, fps=10, seed=5, shift_px=6, noise=8, light=0.15)
    for k in (11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27):  # the face lost briefly, then for longer than the gap
        frames[k] = np.zeros_like(frames[k])
    session, live = engine.session("concat"), []
    for k, frame in enumerate(frames):
        up = session.push_frame(frame, t=k / 10)
        if up.present.get("vision") and up.face_expression is not None:
            live.append(up.unimodal["vision"])
    feats = [r.feature if r.present else None for r in map(engine.face.encode, frames)]
    cfg = engine.config
    seen = replay_face(feats, 10, tau_s=cfg.face_smooth_s, interval_s=cfg.face_interval_s, gap_s=cfg.face_ttl_s)
    head = engine.unimodal()["vision"]
    with torch.inference_mode():
        replayed = head({"vision": torch.as_tensor(np.stack(seen))}).prediction.numpy()
    assert 10 < len(live) < len(frames) - 8
    np.testing.assert_allclose(replayed, live, atol=1e-5)


def test_per_session_voice_statistics_learn_only_from_clean_speech(engine, speech48, monkeypatch):
    """With voice models that read per-speaker z-scores, each session keeps its own statistics:
    silence, a clipping microphone and noise never update them; speech does, at most once per
    window of new audio; a new session starts from the population prior."""
    from mmdemo.speaker import Prior

    rng = np.random.default_rng(0)
    monkeypatch.setattr(engine, "voice_prior", Prior(rng.normal(0, 1, 88), np.full(88, 50.0)))
    monkeypatch.setattr(engine, "voice_norm", {})
    s = engine.session("concat")
    assert s.speaker_norm is not None and s.speaker_norm.n == 0
    chunk = 24000  # 0.5 s at 48 kHz
    t = 0.0
    for x in (np.zeros(48000 * 4, np.int16), (rng.normal(0, 3000, 48000 * 4)).astype(np.int16)):  # silence, then noise
        for i in range(0, len(x), chunk):
            s.push_audio(x[i : i + chunk], 48000, t=t)
            t += 0.5
    assert s.speaker_norm.n == 0
    clipped = np.clip(speech48.astype(np.int32) * 40, -32768, 32767).astype(np.int16)  # a microphone at full scale
    for i in range(0, len(clipped), chunk):
        s.push_audio(clipped[i : i + chunk], 48000, t=t)
        t += 0.5
    assert s.speaker_norm.n == 0
    heard, learning = 0.0, False
    for _ in range(2):
        for i in range(0, len(speech48), chunk):
            up = s.push_audio(speech48[i : i + chunk], 48000, t=t)
            learning |= any("still learning this speaker" in n for n in up.notes)  # a few windows: mostly the prior still
            t += 0.5
            heard += 0.5
    assert 1 <= s.speaker_norm.n <= heard / engine.config.voice_window_s
    assert learning
    z = s.features["audio"][0]
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 100  # z-scores, not raw eGeMAPS values
    assert engine.session("concat").speaker_norm.n == 0  # a new session never inherits them
    s.stop_audio(t=t)
    assert s.speaker_norm.n == 0  # nor a new microphone stream (another microphone, or another person)


def test_updates_report_the_cpu_time_of_each_stage(engine, speech48):
    s = engine.session("weighted", blocking_asr=True)  # speech recognition in line: its CPU is reported too
    ups = []
    n, t = 4800, 0.0
    for i in range(0, len(speech48), n):
        ups.append(s.push_audio(speech48[i : i + n], 48000, t=t))
        ups.append(s.push_frame(astronaut(), t=t))
        t += 0.1
    ups.append(s.flush(t))
    frames = [u for u in ups if "face" in u.cpu_ms]
    assert frames and all(u.cpu_ms["face"] > 0 and u.cpu_ms["total"] >= u.cpu_ms["face"] for u in frames)
    assert any("voice" in u.cpu_ms for u in ups) and all(u.cpu_ms["fusion"] > 0 for u in ups)
    asr = [u.cpu_ms["asr"] for u in ups if "asr" in u.cpu_ms]
    assert asr and min(asr) > 0
    for u in ups:  # the total is the update's own stages; speech recognition is reported beside it
        assert u.cpu_ms["total"] == pytest.approx(sum(v for k, v in u.cpu_ms.items() if k not in ("total", "asr")))


def test_an_update_that_changed_nothing_reuses_the_answer_and_gives_the_same_one(engine, speech48, monkeypatch):
    import mmdemo.pipeline as pl

    calls = []
    real = pl.explain
    monkeypatch.setattr(pl, "explain", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = engine.session("weighted")
    s.set_text("what a lovely day", t=0.0)
    n = len(calls)
    first = s.update(t=0.1)
    again = s.update(t=0.2)  # nothing new: no model runs
    assert len(calls) == n and again.prediction == first.prediction and again.shapley == first.shapley
    s.push_frame(astronaut(), t=0.3)  # a new face feature: the models run
    assert len(calls) == n + 1
    s.set_fusion("concat")  # another model: they run again, and the answer is that model's
    fresh = engine.session("concat")
    fresh.set_text("what a lovely day", t=0.0)
    fresh.push_frame(astronaut(), t=0.3)
    assert s.update(t=0.31).prediction == pytest.approx(fresh.update(t=0.31).prediction, abs=1e-6)


def _run(engine, config, frames, audio48, fps=10.0):
    """Frames at ``fps`` and 0.5 s audio chunks through a session with ``config``; the updates."""
    e = copy.copy(engine)
    e.config = config
    s = Session(e, "weighted", blocking_asr=True)
    ups, n = [], 24000
    for i, f in enumerate(frames):
        t = i / fps
        if i % int(fps * 0.5) == 0:
            k = int(i / fps * 48000)
            s.push_audio(audio48[k : k + n], 48000, t=t)
        ups.append(s.push_frame(f, t=t))
    return ups


def test_reading_the_face_five_times_a_second_stays_within_tolerance(speech48):
    """face_interval_s: frames between two face reads only update. The fused prediction and the
    contributions of the shipped models stay close to reading every frame (the face feature is a
    ~1 s moving average)."""
    from dataclasses import replace

    from mmdemo.pipeline import DEFAULT_CHECKPOINTS
    from mmdemo.smoothing import jittered_frames

    engine = Engine(DEFAULT_CHECKPOINTS, device="cpu")
    frames = jittered_frames(astronaut(), seconds=len(speech48) / 48000, fps=10, seed=3)
    every = _run(engine, replace(PipelineConfig(), face_interval_s=0.0), frames, speech48)
    fewer = _run(engine, replace(PipelineConfig(), face_interval_s=0.2), frames, speech48)
    assert len(every) == len(fewer)  # an update per frame either way
    skipped = [u for u in fewer if "face" not in u.timings_ms]
    assert len(skipped) >= 0.4 * len(fewer)  # about every other frame skips the face models
    both = [(a, b) for a, b in zip(every, fewer) if a.present["vision"] and b.present["vision"]]
    assert len(both) > 0.9 * len(every)
    dp = np.array([abs(a.prediction - b.prediction) for a, b in both])
    ds = np.array([abs(a.shapley[m] - b.shapley[m]) for a, b in both for m in a.shapley])
    assert dp.mean() < 0.05 and dp.max() < 0.2, (dp.mean(), dp.max())
    assert ds.mean() < 0.05 and ds.max() < 0.2, (ds.mean(), ds.max())


def test_a_face_read_apart_from_the_frames(engine, monkeypatch):
    """push_frame(read_face=False) never waits for the face models; read_face=True reads even
    within face_interval_s, and its update never goes back in time; a read that finishes after the
    camera stopped is dropped."""
    s = engine.session("concat")
    reads = []
    real = engine.face.encode
    monkeypatch.setattr(engine.face, "encode", lambda f: reads.append(1) or real(f))
    face = astronaut()
    up = s.push_frame(face, t=0.0, read_face=False)
    assert reads == [] and "face" not in up.timings_ms and not up.present["vision"]
    assert s.last_frame_t == 0.0 and s.face_due(0.05)  # the camera is alive; no face read yet
    s.set_text("fine", t=0.3)  # a later update (as audio chunks and frames are, while a face is read)
    assert s.push_frame(face, t=0.05, read_face=False).t == 0.3  # a frame's update apart never goes back either
    up = s.push_frame(face, t=0.1, read_face=True)
    assert reads == [1] and up.present["vision"] and "face" in up.timings_ms
    assert up.t == 0.3 and s.features["vision"][1] == 0.3  # the update at the newest time; the face seen when read
    assert s.recent["vision"][-1][0] == 0.1  # what a labelled moment takes: at its frame's time
    assert [u.t for u in s.history] == sorted(u.t for u in s.history)
    assert not s.face_due(0.2) and s.face_due(0.31)  # read 0.1 s ago: not due within face_interval_s
    s.push_frame(face, t=0.2, read_face=True)  # asked for: read even so
    assert len(reads) == 2
    assert s.push_frame(face, t=0.25).timings_ms.get("face") is None and len(reads) == 2  # the interval rule (read_face None)
    # a read across a stop: the camera stopped while the models read its frame
    gate, entered = threading.Event(), threading.Event()

    def slow(f):
        entered.set()
        gate.wait(10)
        return real(f)

    monkeypatch.setattr(engine.face, "encode", slow)
    out = []
    worker = threading.Thread(target=lambda: out.append(s.push_frame(face, t=0.4, read_face=True)))
    worker.start()
    assert entered.wait(10)
    s.stop_camera(t=0.45)
    gate.set()
    worker.join(10)
    assert out == [None] and s.features["vision"] is None and s.face_box is None  # dropped: no update to send
    assert s.last_frame_t is None  # nothing of the stopped camera came back
    # a frame that came before a stop whose read starts after it (queued): dropped as well
    monkeypatch.setattr(engine.face, "encode", real)
    runs = s.camera_runs
    s.stop_camera(t=0.5)
    assert s.push_frame(face, t=0.48, read_face=True, camera=runs) is None and s.features["vision"] is None
    assert s.push_frame(face, t=0.6, read_face=True, camera=s.camera_runs).present["vision"]  # the camera's next frames are read


def test_pipeline_settings_from_the_command_line():
    from mmdemo.pipeline import config_with

    c = config_with(["face_interval_s=0", "voice_stream=false", "torch_threads=none", "history=100", "face_apart=false"])
    assert (c.face_interval_s, c.voice_stream, c.torch_threads, c.history, c.face_apart) == (0.0, False, None, 100, False)
    assert config_with([]) == PipelineConfig()
    for bad in ("nope=1", "face_interval_s", "voice_stream=maybe", "history=1.5", "face_smooth_s=fast",
                # parsed, but out of range: each used to break every session or silently drop speech
                "voice_window_s=0", "moment_s=0", "history=-1", "face_smooth_s=-1", "max_pending_asr=0", "max_text_chars=-5",
                "face_label_margin=1", "speech_threshold=nan", "torch_threads=0"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            config_with([bad])


def test_a_closed_session_frees_its_voice_stream_and_live_models_use_one_thread(engine, speech48):
    import gc

    s = engine.session("weighted")
    for i in range(0, 48000 * 3, 24000):
        s.push_audio(speech48[i : i + 24000], 48000, t=i / 48000)
    assert s.egemaps is not None and s.egemaps.done > 100
    stream = s.egemaps
    s.close()
    assert s.egemaps is None and not stream._thread.is_alive()  # its openSMILE thread ended
    s.push_audio(speech48[:24000], 48000, t=4.0)  # audio after close: a new stream starts, with the audio the session holds
    assert s.egemaps is not None and s.egemaps.written == s.samples_in - s.egemaps_start >= 2.4 * 16000
    del s
    gc.collect()
    threads = torch.get_num_threads()
    try:
        Engine(device="cpu", config=PipelineConfig(torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_voice_goes_on_when_the_openSMILE_stream_fails(engine, speech48, monkeypatch, caplog):
    import mmdemo.pipeline as pipeline

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("no openSMILE today")

    monkeypatch.setattr(pipeline, "EgemapsStream", Broken)
    s = engine.session("weighted")
    ups = [s.push_audio(speech48[i : i + 24000], 48000, t=i / 48000) for i in range(0, len(speech48), 24000)]
    assert s.egemaps is None and s.egemaps_failed
    assert any(u.present["audio"] for u in ups)  # read window by window instead
    assert sum("openSMILE stream failed" in r.message for r in caplog.records) == 1  # said once


def _vfr_copy(src, dst):
    """``src`` re-encoded keeping 3 frames of every 10 at their own times (a variable frame rate, as
    phones and browser recordings have)."""
    import subprocess

    from tests.media import need

    need("ffmpeg")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", r"select='lt(mod(n\,10)\,3)'", "-vsync", "vfr",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(dst)], check=True, capture_output=True)
    return dst


def test_video_frames_keep_their_own_times(tmp_path):
    from mmdemo.media import iter_frames

    from tests.media import video

    cfr = video(tmp_path / "cfr.mp4", seconds=3.0, size=160)  # 25 frames a second
    ts = [t for t, _ in iter_frames(cfr, fps=5)]
    assert len(ts) == 15 and np.allclose(np.diff(ts), 0.2, atol=0.021) and ts[0] == 0.0
    assert len(list(iter_frames(cfr, fps=0))) == 75  # every frame
    vfr = _vfr_copy(cfr, tmp_path / "vfr.mp4")  # 23 frames over the same 3 s
    ts = [t for t, _ in iter_frames(vfr, fps=5)]
    assert ts[-1] > 2.5, ts  # the last frames are read at their own times, not at 23 / nominal rate
    assert all(b > a for a, b in zip(ts, ts[1:]))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="fps"):
            next(iter_frames(cfr, fps=bad))
    with pytest.raises(ValueError, match="max_frames"):
        next(iter_frames(cfr, max_frames=0))


def test_clip_analysis_options_and_its_last_row(engine, tmp_path):
    from mmdemo.clip import analyse_clip

    from tests.media import espeak, video

    clip = video(tmp_path / "talk.mp4", audio=espeak(tmp_path / "s.wav"), seconds=3.0, size=320)
    for name, value in (("hop", 0.0), ("hop", -0.5), ("fps", 0.0), ("max_seconds", 0.0), ("fps", float("nan"))):
        with pytest.raises(ValueError, match=name):  # refused at once (a zero hop used to loop forever)
            analyse_clip(engine, clip, fusion="concat", **{name: value})
    res = analyse_clip(engine, clip, fusion="concat", fps=5, hop=0.5)
    with_face = [u.present["vision"] for u in res.updates]
    assert all(with_face[-3:]), with_face  # a face seen to the clip's end is still there at its last row
    from mmdemo.audio import SAMPLE_RATE
    from mmdemo.media import read_audio

    assert res.updates[-1].t == pytest.approx(len(read_audio(clip)) / SAMPLE_RATE, abs=0.05)  # at the end, not one hop past it
    # each audio chunk is stamped at its end, as live: no row runs ahead of the frames read so far
    times = [u.t for u in res.updates]
    assert times == sorted(times)
    # the transcript: each utterance once, in the row where it was transcribed, and all of them in the JSON
    rows = res.rows()
    assert res.transcript and " ".join(r["said"] for r in rows if r["said"]) == res.transcript and "transcript" not in rows[0]
    import json

    assert json.loads(res.to_json(tmp_path / "r.json").read_text())["transcript"] == res.transcript


def test_text_that_is_not_valid_unicode_does_not_break_the_session(engine):
    s = engine.session("concat")
    up = s.set_text("bad \ud800 movie", t=0.0)  # a lone surrogate, as JSON "\\ud800" decodes
    assert up.present["text"] and any("replaced" in n for n in up.notes)
    s.push_frame(astronaut(), t=0.1)  # the session goes on
    assert s.set_text("a good movie", t=0.2).present["text"]
    with pytest.raises(TypeError, match="string"):
        s.set_text(b"bytes", t=0.3)


def test_an_audio_only_mp4_is_analysed_as_sound(engine, tmp_path):
    import subprocess

    from mmdemo.clip import analyse_clip

    from tests.media import espeak, need

    need("ffmpeg")
    mp4 = tmp_path / "voice memo.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(espeak(tmp_path / "s.wav")), "-vn", "-c:a", "aac", str(mp4)], check=True, capture_output=True)
    res = analyse_clip(engine, mp4, fusion="concat")
    assert any("no readable video frames" in n for n in res.notes)
    assert res.updates and not any(u.present["vision"] for u in res.updates) and any(u.present["audio"] for u in res.updates)


def test_a_voice_reading_stamped_in_the_future_does_not_stay_present(engine, speech48):
    """A library caller whose clock jumps an hour ahead once, then comes back: the reading from 'the
    future' is not kept as fresh, and the voice is read again at once rather than an hour later."""
    s = engine.session("weighted")
    n = 4800
    chunks = [speech48[i : i + n] for i in range(0, len(speech48) - n, n)]
    t = 0.0
    for c in chunks[:40]:
        up = s.push_audio(c, 48000, t=t)
        t += 0.1
    assert up.present["audio"]
    # a frame's update is stamped before its face is read, and the voice may be read meanwhile: a
    # reading a little later than the update's time is present
    assert s.update(t - 0.1 - 0.03).present["audio"]
    s.push_audio(chunks[40], 48000, t=t + 3600)  # one chunk stamped an hour ahead
    silence = np.zeros(n, np.int16)
    for _ in range(60):  # then 6 s of silence at the right time: the voice goes absent as usual
        t += 0.1
        up = s.push_audio(silence, 48000, t=t)
    assert not up.present["audio"]
    s.close()


def test_a_failed_transcription_in_clip_analysis_is_one_failed_utterance(engine, monkeypatch):
    """Clip analysis transcribes in line (blocking_asr): a failure there is noted, as live, and the
    analysis goes on with the next utterance."""
    said = iter([RuntimeError("CUDA error: an illegal memory access"), "the second one"])

    def transcribe(audio):
        out = next(said)
        if isinstance(out, Exception):
            raise out
        return out

    monkeypatch.setattr(engine.transcriber, "transcribe", transcribe)
    s = engine.session("concat", blocking_asr=True)
    s.asr_waiting.append((1.0, np.zeros(16000, np.float32)))
    s._pump_asr()
    assert s.asr_note == (1.0, "speech recognition failed for one utterance") and s.transcript == ""
    s.asr_waiting.append((3.0, np.zeros(16000, np.float32)))
    s._pump_asr()
    assert s.transcript == "the second one" and s.asr_running is None


def test_notes_about_a_stopped_microphone_or_camera_go_with_it(engine):
    s = engine.session("concat")
    s.notes["audio"] = ["still learning this speaker (10% of its statistics from your speech)"]
    s.clip_note = ["the microphone is clipping (3.0% of samples at full scale)"]
    s.input_note = ["a chunk at 0 Hz"]
    s.notes["vision"] = ["2 faces in view: reading the largest"]
    up = s.update(1.0)
    assert sum(n.startswith(("voice:", "face:")) for n in up.notes) == 4, up.notes
    up = s.stop_audio(t=2.0)
    assert not any(n.startswith("voice:") for n in up.notes) and up.reasons["audio"] == "microphone stopped"
    assert any("2 faces" in n for n in up.notes)
    up = s.stop_camera(t=3.0)
    assert not any("faces" in n for n in up.notes)
    # over HTTP a camera is never stopped: its frames stop arriving
    s.notes["vision"] = ["2 faces in view: reading the largest"]
    s.last_frame_t = 3.0
    assert any("2 faces" in n for n in s.update(3.1).notes)
    up = s.update(3.0 + engine.config.camera_timeout_s + 1)
    assert up.reasons["vision"] == "no camera frames arriving" and not any("faces" in n for n in up.notes)


def test_a_clip_longer_than_the_limit_is_cut_there_says_so_and_its_progress_counts_to_the_limit(engine, tmp_path, monkeypatch):
    from mmdemo import clip as clip_module
    from mmdemo.clip import analyse_clip

    from tests.media import espeak, video

    for name, audio in (("talk", espeak(tmp_path / "s.wav")), ("mute", None)):
        clip = video(tmp_path / f"{name}.mp4", audio=audio, seconds=3.0, size=160)
        seen = []
        res = analyse_clip(engine, clip, fusion="concat", fps=5, max_seconds=1.5, progress=seen.append)
        assert "only the first 1.5 s were analysed" in res.notes, res.notes
        assert max(u.t for u in res.updates) <= 1.5 + 1e-6
        assert seen[0] < 0.5 and seen == sorted(seen) and seen[-2] > 0.6 and seen[-1] == 1.0, seen  # not stuck at 100% from the first frame
        short = analyse_clip(engine, clip, fusion="concat", fps=5)
        assert not any("only the first" in n for n in short.notes)
        exact = analyse_clip(engine, clip, fusion="concat", fps=5, max_seconds=3.0)  # as long as the limit: nothing was cut
        assert not any("only the first" in n for n in exact.notes), exact.notes
    # without ffprobe (no container length): a silent video cut by the frame reader's limit still says so
    monkeypatch.setattr(clip_module, "duration_s", lambda path: None)
    res = analyse_clip(engine, tmp_path / "mute.mp4", fusion="concat", fps=5, max_seconds=1.5)
    assert "only the first 1.5 s were analysed" in res.notes


def test_a_clip_without_a_known_extension_is_read_by_what_it_holds(engine, tmp_path):
    import shutil

    from mmdemo.clip import analyse_clip
    from mmdemo.media import MediaError, kind_of

    from tests.media import espeak, video

    clip = video(tmp_path / "talk.mp4", audio=espeak(tmp_path / "s.wav"), seconds=3.0, size=160)
    bare = tmp_path / "recording"  # a phone's or a tool's export without an extension
    shutil.copy(clip, bare)
    sound = tmp_path / "voice-memo.dat"
    shutil.copy(tmp_path / "s.wav", sound)
    assert kind_of(bare) == "unknown" and kind_of(bare, probe=True) == "video" and kind_of(sound, probe=True) == "audio"
    res = analyse_clip(engine, bare, fusion="concat", fps=5)
    assert any(u.present["vision"] for u in res.updates) and res.transcript  # its face and its speech were read
    cover = tmp_path / "audiobook.m4b"  # sound with a cover picture: not a video
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "s.wav"), "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1",
                    "-map", "0", "-map", "1", "-c:a", "aac", "-c:v", "png", "-disposition:v", "attached_pic", str(cover)], check=True)
    assert kind_of(cover, probe=True) == "audio"
    text = tmp_path / "notes.dat"
    text.write_text("not media at all")
    with pytest.raises(MediaError, match="not a video or audio file"):
        analyse_clip(engine, text, fusion="concat")


def test_another_sample_rate_is_another_microphone(engine, speech48):
    """A stream whose rate changes came from another device: its audio and speaker statistics start
    afresh, so no voice window mixes the two microphones."""
    s = engine.session("concat")
    for k in range(8):  # 4 s of speech at 48 kHz
        s.push_audio(speech48[48000 + k * 24000 : 48000 + (k + 1) * 24000], 48000, t=0.5 * k)
    assert s.ring.filled == s.ring.size and s.probs
    before = s.speaker_norm.speaker_share if s.speaker_norm is not None else None
    up = s.push_audio(np.zeros(8000, np.float32), 16000, t=4.5)
    assert s.ring.filled <= 8000 and not up.present["audio"]  # only the new microphone's half second (whole VAD frames) and "warming up" in up.reasons["audio"]
    if before is not None:
        assert s.speaker_norm.speaker_share == 0.0
