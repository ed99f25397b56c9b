"""eGeMAPS on a stream: openSMILE's frame-level descriptors once per sample, the functionals in numpy."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from mmdemo.audio import resample
from mmdemo.encoders.egemaps import FEATURE_NAMES, FRAME_NAMES, HOP, EgemapsStream, frames_once, functionals
from mmdemo.encoders.voice import FRAME, VoiceEncoder, speech_probs, speech_span
from tests.media import speech_16k

LEVELS = ("gemapsv01b_lld_single_logF0_smo", "gemapsv01b_loudness_smo", "egemapsv02_lldSetNoF0AndLoudnessZ_smo",
          "egemapsv02_lldSetNoF0AndLoudnessNz_smo", "egemapsv02_lldSetSpectralNz_smo", "egemapsv02_lldSetSpectralZ_smo",
          "egemapsv02_energyRMS")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> list[np.ndarray]:
    tmp = tmp_path_factory.mktemp("eg")
    texts = ["I think this is a really good idea.", "No, that is terrible and I hate it!", "Well, maybe."]
    return [speech_16k(tmp, t) for t in texts]


def _opensmile(feature_level):
    import opensmile

    conf = os.path.join(os.path.dirname(opensmile.__file__), "core", "config", "egemaps", "v02", "eGeMAPSv02.conf")
    return opensmile.Smile(feature_set=conf if isinstance(feature_level, str) else opensmile.FeatureSet.eGeMAPSv02, feature_level=feature_level)


def test_the_names_are_opensmiles():
    import opensmile

    assert tuple(_opensmile(opensmile.FeatureLevel.Functionals).feature_names) == FEATURE_NAMES
    assert len(FRAME_NAMES) == 36 and VoiceEncoder().feature_names() == list(FEATURE_NAMES)


def test_functionals_reproduce_opensmile_from_its_own_frames(sentences):
    """Given the frame-level contours openSMILE's functionals read (dumped from its own eGeMAPSv02
    pipeline), the numpy functionals give openSMILE's 88 values. openSMILE's functionals read each
    level at the end of input, when a level may still hold back its last few frames (look-ahead):
    per level, one of the lengths N..N-6 must match every value of that level exactly."""
    import opensmile

    noise = (np.random.default_rng(0).standard_normal(30000) * 0.05).astype(np.float32)
    ref_smile = _opensmile(opensmile.FeatureLevel.Functionals)
    for x in [*sentences, noise]:
        ref = ref_smile.process_signal(x, 16000).to_numpy().reshape(-1).astype(np.float32)
        levels = {}
        for lvl in LEVELS:
            d = _opensmile(lvl).process_signal(x, 16000)
            levels[lvl] = {c: d[c].to_numpy(np.float32) for c in d.columns}
        base = {c: v for cols in levels.values() for c, v in cols.items()}
        assert set(base) == set(FRAME_NAMES)
        err = np.full(len(FEATURE_NAMES), np.inf)
        for cols in levels.values():
            for cut in range(7):
                frames = dict(base) | {c: v[: len(v) - cut] for c, v in cols.items()}
                err = np.minimum(err, np.abs(functionals(frames) - ref) / np.maximum(np.abs(ref), 1e-6))
        worst = int(np.argmax(err))
        assert err[worst] < 1e-5, f"{FEATURE_NAMES[worst]}: relative error {err[worst]}"


def test_functionals_refuse_bad_shapes_and_too_few_frames():
    with pytest.raises(ValueError):
        functionals(np.zeros((10, 35), np.float32))
    assert np.isnan(functionals(np.zeros((4, 36), np.float32))).all()
    silent = functionals(np.zeros((50, 36), np.float32))  # all zero: openSMILE's outputs are 0 (Leq: its -120 dB floor)
    assert np.isfinite(silent).all() and silent[-1] == pytest.approx(-120.0)


def test_the_stream_gives_the_same_frames_however_the_audio_is_chunked(sentences):
    x = np.concatenate([sentences[0], np.zeros(8000, np.float32), sentences[1]])
    whole = frames_once(x)
    s = EgemapsStream(keep_s=len(x) / 16000 + 1)
    rng = np.random.default_rng(1)
    i = 0
    while i < len(x):
        n = int(rng.integers(100, 9000))
        s.push(x[i : i + n])
        i += n
    s.close()
    got = s.frames.buf[: s.done]
    assert got.shape == whole.shape and len(got) > 0.9 * len(x) / HOP
    np.testing.assert_array_equal(got, whole)


def test_the_stream_keeps_only_its_last_seconds_and_its_thread_ends():
    x = (np.random.default_rng(2).standard_normal(16000 * 20) * 0.05).astype(np.float32)
    before = {t.ident for t in threading.enumerate()}
    s = EgemapsStream(keep_s=3.0)
    for i in range(0, len(x), 8000):  # 20 s through a 6 s input ring and 3 s of kept frames
        s.push(x[i : i + 8000])
    s.settle(timeout=5)
    assert s.done >= len(x) // HOP - 2 * s.LAG_FRAMES
    assert len(s.window(0, 16000)) == 0  # long gone
    last = s.window(len(x) - 2 * 16000, len(x))
    assert 150 <= len(last) <= 200  # ~2 s of 10 ms frames, less the look-ahead
    s.close()
    s.close()  # twice is fine
    s.push(x[:1000])  # after close: ignored
    del s
    # a stream nobody closed ends its thread when collected
    t = EgemapsStream()
    t.push(x[:16000])
    del t
    gc.collect()
    deadline = time.monotonic() + 5
    while any(th.name == "mmdemo-egemaps" and th.ident not in before for th in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [th for th in threading.enumerate() if th.name == "mmdemo-egemaps" and th.ident not in before]


@pytest.mark.parametrize("left", ["open", "dropped"])
def test_a_process_that_exits_with_a_stream_running_exits_cleanly(left):
    # openSMILE's thread calls back into Python; at interpreter exit a daemon thread that does
    # so is ended inside C++ and the process aborted ("FATAL: exception not rethrown", rc -6)
    script = textwrap.dedent(f"""
        import gc
        import numpy as np
        from mmdemo.encoders.egemaps import EgemapsStream
        s = EgemapsStream()
        x = (np.random.default_rng(0).standard_normal(16000 * 30) * 0.1).astype(np.float32)
        for i in range(0, len(x), 8000):  # 30 s in pieces: openSMILE has frames left to hand back at exit
            s.push(x[i : i + 8000])
        if {left == "dropped"}:
            del s
            gc.collect()
        print("exiting")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 0 and "exiting" in proc.stdout, proc.stderr[-2000:]


def _voice_model():
    from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine

    engine = Engine(DEFAULT_CHECKPOINTS, device="cpu")
    uni = engine.unimodal().get("audio")
    if uni is None:
        pytest.skip("no shipped voice model")
    return engine, uni


@pytest.mark.slow
def test_streamed_windows_stay_within_tolerance_of_one_shot_windows(sentences):
    """encode_stream (the live path) vs encode (openSMILE over the window) on the windows of a
    stream of speech with pauses: the same presence, and the voice model's answer within the
    stated tolerance (the frames at a window's edges saw the audio around it)."""
    engine, uni = _voice_model()
    session = engine.session("weighted")
    x = np.concatenate([np.concatenate([s, np.zeros(6000, np.float32)]) for s in sentences * 2])
    x = x[: len(x) // FRAME * FRAME]
    probs = speech_probs(x)
    enc = VoiceEncoder()
    stream = EgemapsStream(keep_s=5)
    w, pos, d, d_long = int(2.4 * 16000), 0, [], []
    try:
        for end in range(w, len(x), 8000):
            stream.push(x[pos:end])
            pos = end
            win, p = x[end - w : end], probs[(end - w) // FRAME : end // FRAME]
            one, live = enc.encode(win, p), enc.encode_stream(win, p, stream, end - w)
            assert one.present == live.present
            if one.present:
                a, b = speech_span(p)
                assert live.info["frames"] >= (b - a) // HOP - 2 * stream.LAG_FRAMES
                fa, fb = (torch.as_tensor(session._voice_feature(r))[None] for r in (one, live))
                with torch.inference_mode():
                    d.append(abs(float(uni({"audio": fa}).prediction) - float(uni({"audio": fb}).prediction)))
                if b - a >= 16000:  # a second of speech or more: openSMILE's cold start at the segment's edges matters less
                    d_long.append(d[-1])
    finally:
        stream.close()
    assert len(d) >= 5 and len(d_long) >= 3
    assert np.mean(d) < 0.15, np.mean(d)
    assert np.max(d_long) < 0.6, np.max(d_long)


@pytest.mark.slow
def test_a_session_reads_the_voice_from_its_stream_within_tolerance(speech48_long):
    """The pipeline with voice_stream (default) vs openSMILE per window: fused prediction and the
    voice's contribution within the stated tolerance on average (single windows of short
    utterances differ more: there openSMILE's cold start at the segment's edges weighs most);
    the stream ends with the microphone."""
    from mmdemo.pipeline import PipelineConfig, Session

    engine, _ = _voice_model()
    runs = {}
    for stream in (False, True):
        e = copy.copy(engine)
        e.config = replace(PipelineConfig(), voice_stream=stream)
        s = Session(e, "weighted", blocking_asr=True)
        ups = [s.push_audio(speech48_long[i : i + 24000], 48000, t=i / 48000) for i in range(0, len(speech48_long), 24000)]
        assert (s.egemaps is not None) == stream
        s.stop_audio()
        assert s.egemaps is None
        s.close()
        runs[stream] = ups
    both = [(a, b) for a, b in zip(runs[False], runs[True]) if a.present["audio"] or b.present["audio"]]
    assert len(both) >= 5 and all(a.present["audio"] == b.present["audio"] for a, b in both)
    dp = [abs(a.prediction - b.prediction) for a, b in both]
    ds = [abs(a.shapley["audio"] - b.shapley["audio"]) for a, b in both]
    assert np.mean(dp) < 0.25 and np.mean(ds) < 0.15, (np.mean(dp), np.mean(ds))


@pytest.fixture(scope="module")
def speech48_long(sentences):
    pad = np.zeros(8000, np.float32)
    x = np.concatenate([pad, *[np.concatenate([s, pad]) for s in sentences * 2]])
    return (resample(x, 16000, 48000) * 32767).astype(np.int16)
