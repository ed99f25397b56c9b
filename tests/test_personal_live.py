"""Calibration and personal models with the real encoders: a simulated user built at test time
(photos, espeak-ng speech, known labels), live sessions, the app's handlers. Slow."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import app as studio_app
from mmdemo.calibration import NEUTRAL_SENTENCE, CalibrationError
from mmdemo.pipeline import DEFAULT_CHECKPOINTS, Engine
from mmdemo.simulate import SCRIPT, Encoders, SimulatedUser, Voice, as_read, calibrate, espeak, record
from mmdemo.smoothing import jittered_frames

from tests.media import SHARED, astronaut, need

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    e = Engine(DEFAULT_CHECKPOINTS, device="cpu")
    e.warmup()
    return e


class Biased:
    """An encoder whose raw features carry a constant offset (a person's resting face, a voice)."""

    def __init__(self, inner, bias):
        self.inner, self.bias = inner, bias

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, *args, **kwargs):
        return self._biased(self.inner.encode(*args, **kwargs))

    def encode_stream(self, *args, **kwargs):  # the live voice path
        return self._biased(self.inner.encode_stream(*args, **kwargs))

    def _biased(self, res):
        if res.present:
            res.feature = (res.feature + self.bias).astype(np.float32)
        return res


def negative_direction(engine, m: str, x: np.ndarray, drop: float) -> np.ndarray:
    """A raw-feature offset that makes the modality's own model read ``x`` about ``drop`` lower."""
    head = engine.unimodal()[m]
    read = (lambda v: (v - torch.as_tensor(engine.voice_prior.mean, dtype=torch.float32)) / torch.as_tensor(engine.voice_prior.std, dtype=torch.float32)) \
        if m == "audio" and engine.voice_prior is not None else (lambda v: v)
    v = torch.as_tensor(x, dtype=torch.float32).clone().requires_grad_(True)
    head({m: read(v)[None]}).prediction.sum().backward()
    g = v.grad.numpy()
    return (-drop * g / float(g @ g)).astype(np.float32)


def _frames(session, frames, t0, fps=10.0):
    out = []
    for i, f in enumerate(frames):
        out.append(session.push_frame(f, t=t0 + i / fps))
    return out


def _speech(session, audio, t0, chunk_s=0.5):
    n = int(chunk_s * 16000)
    ups = [session.push_audio(audio[i : i + n], 16000, t=t0 + i / 16000) for i in range(0, len(audio), n)]
    return ups, t0 + len(audio) / 16000


def test_a_biased_face_is_corrected_by_the_neutral_baseline(engine):
    frames = jittered_frames(astronaut(), seconds=1.5, fps=10, seed=1)
    probe = engine.face.encode(frames[0]).feature
    bias = negative_direction(engine, "vision", probe, drop=1.5)
    readings = {}
    for who, b in (("plain", 0.0), ("biased", bias)):
        e = copy.copy(engine)
        e.face = Biased(engine.face, b)
        s = e.session()
        before = _frames(s, frames, 0.0)[-1].unimodal["vision"]
        s.start_calibration(t=2.0)
        _frames(s, frames, 2.0)
        baseline = s.finish_calibration(t=4.0)
        assert "vision" in baseline.offsets and baseline.samples["vision"] >= 5  # the face is read up to 5 times a second
        assert "audio" not in baseline.offsets and "no speech" in baseline.skipped["audio"]  # no microphone: face only
        after = _frames(s, frames, 5.0)[-1].unimodal["vision"]
        readings[who] = (before, after, baseline.readings["vision"])
        # a moment labelled now says which offsets its features were read with (a profile moves them to its own)
        got = s.moment(seconds=1.0, t=6.5)
        assert got.present["vision"] and set(got.offsets) == set(baseline.offsets)
        np.testing.assert_array_equal(got.offsets["vision"], baseline.offsets["vision"])
    (pb, pa, _), (bb, ba, br) = readings["plain"], readings["biased"]
    assert bb < pb - 0.5, readings  # the bias shows: the resting face reads negative
    assert abs(ba - pa) < 0.1, readings  # after calibration the biased person reads as the unbiased one
    # what the UI shows: the resting face alone as read before the baseline, and after it: neutral
    assert abs(br["before"] - bb) < 0.3 and abs(br["after"]) < 0.3, br


def test_a_biased_voice_is_corrected_by_the_neutral_baseline(engine, tmp_path):
    need("espeak-ng")
    calib = espeak(NEUTRAL_SENTENCE, Voice(pitch=40, speed=150))
    talk = espeak("The weather report says it will be cloudy tomorrow with some light rain in the afternoon.", Voice(pitch=40, speed=150))
    probe = engine.voice.encode(talk[: int(2.4 * 16000)]).feature
    bias = negative_direction(engine, "audio", probe, drop=1.0)
    out = {}
    for who, b in (("plain", 0.0), ("biased", bias)):
        e = copy.copy(engine)
        e.voice = Biased(engine.voice, b)
        s = e.session(blocking_asr=True)
        ups, t = _speech(s, talk, 0.0)
        before = [u.unimodal["audio"] for u in ups if u.unimodal.get("audio") is not None]
        s.start_calibration(t=t)
        _, t = _speech(s, calib, t)
        baseline = s.finish_calibration(t=t)
        assert "audio" in baseline.offsets
        ups, _ = _speech(s, talk, t + 1.0)
        after = [u.unimodal["audio"] for u in ups if u.unimodal.get("audio") is not None]
        out[who] = (np.mean(before[:2]), np.mean(after))
    assert out["biased"][0] < out["plain"][0] - 0.3, out  # the bias shows in the first seconds
    assert abs(out["biased"][1] - out["plain"][1]) < 0.05, out  # calibrated: the same reading


def test_calibration_without_a_reference_or_without_input_says_why(engine, tmp_path):
    s = engine.session()
    with pytest.raises(CalibrationError, match="no calibration is running"):
        s.finish_calibration()
    s.start_calibration()
    with pytest.raises(CalibrationError, match="nothing to calibrate"):
        s.finish_calibration()
    assert s.baseline is None
    e = copy.copy(engine)
    e.neutral = None
    with pytest.raises(CalibrationError, match="neutral reference"):
        e.session().start_calibration()


def _photos() -> dict[int, list[np.ndarray]]:
    """Photos of one person with changing expressions: the expression photos' test people when
    the shared data is here, else the astronaut photo for every expression."""
    import csv

    from mmdemo.media import read_image

    folder = SHARED / "facial-expressions-muxspace"
    if (folder / "labels.csv").exists():
        by: dict = {}
        with open(folder / "labels.csv", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r["split"] == "test" and r["polarity"].strip():
                    by.setdefault(r["subject"], {}).setdefault(int(r["polarity"]), []).append(folder / r["path"])
        person = max((p for p in by.values() if 0 in p), key=len)
        return {k: [read_image(p) for p in v] for k, v in person.items()}
    return {k: [astronaut()] for k in (-1, 0, 1)}


def test_a_simulated_user_biased_face_is_fixed_by_the_baseline_and_by_a_personal_model(engine):
    need("espeak-ng")
    from mmdemo.personal import cross_validate

    enc = Encoders(DEFAULT_CHECKPOINTS)
    user = SimulatedUser("sim", _photos(), Voice(pitch=70, speed=175, variant="en+f2"))
    rec = record(enc, user, SCRIPT, seed=0)
    assert rec.present["vision"].all() and rec.present["audio"].all() and rec.present["text"].all()
    bias = {"vision": negative_direction(engine, "vision", rec.raw["vision"][rec.labels == 0].mean(0), drop=3.0)}
    generic = engine.fusion("weighted")
    plain = cross_validate(generic, as_read(rec, enc))
    biased = cross_validate(generic, as_read(rec, enc, bias=bias))
    assert biased["generic_mae"] > plain["generic_mae"] + 0.05, (plain, biased)  # the bias hurts the generic model
    assert biased["personal_mae"] < biased["generic_mae"], biased  # the personal model learns it (held out)
    b_plain = calibrate(enc, user, engine.neutral, seed=0)
    b_biased = calibrate(enc, user, engine.neutral, bias=bias, seed=0)
    fixed = cross_validate(generic, as_read(rec, enc, bias=bias, baseline=b_biased))
    ref = cross_validate(generic, as_read(rec, enc, baseline=b_plain))
    assert abs(fixed["generic_mae"] - ref["generic_mae"]) < 0.02, (fixed, ref)  # the baseline removes the bias


# ---------------------------------------------------------------- the app's handlers


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    studio = studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu", data_dir=tmp_path_factory.mktemp("userdata"))
    studio.warm_up()
    return studio_app.Handlers(studio, min_frame_gap_s=0.0)


def _tab(h, pid=None):
    state, *_ = h.on_load()
    pid, state, *rest = h.on_profile_load(pid, state)
    return pid, state


def test_the_calibrate_and_personalise_flow(handlers, tmp_path, monkeypatch):
    real_cv = studio_app.cross_validate
    h = handlers
    pid, s = _tab(h)
    assert len(pid) == 32
    msg, known = h.on_label(1.0, False, pid, [], s)
    assert "nothing to label" in msg and isinstance(known, type(studio_app.gr.skip()))  # no modality yet
    msg, *_ = h.on_fit(pid, s)
    assert "at least 8" in msg
    assert "start one first" in h.on_calibrate_stop(pid, s)[0]  # Stop before any calibration
    # a calibration with the camera on and no microphone
    msg, timer, s = h.on_calibrate_start(s)
    assert "Calibrating" in msg
    t0 = s.now()
    for i, f in enumerate(jittered_frames(astronaut(), seconds=1.0, fps=10, seed=0)):
        s.push_frame(f, t=t0 + 0.25 * i)  # 2.5 s of camera (the face is read at most 5 times a second)
    msg, md, s = h.on_calibrate_stop(pid, s)
    assert "saved in your profile" in msg and "face: offset from" in md and "voice: not calibrated" in md
    assert h.on_calibrate_stop(pid, s)[0] == studio_app.gr.skip()  # Stop pressed again: the message above stands
    # eight moments with different labels and words
    known = []
    texts = [t for t, _ in SCRIPT[:8]]
    for i, text in enumerate(texts):
        h.on_text(text, s)
        h.on_frame(astronaut(), s)
        msg, known = h.on_label(SCRIPT[i][1], i == 0, pid, known, s)
        assert msg.startswith("✓"), msg
    assert len(known) == 8 and known[0]["clip"] and not known[1]["clip"]  # the raw clip only where the box was ticked
    assert all(r["present"] == ["text", "vision"] for r in known)  # words and face; no microphone
    msg, pers, choice, live, readout, s = h.on_fit(pid, s)
    assert msg.startswith("✓"), msg
    assert "leave-one-out" in pers.lower() and "personal" in readout
    msg, live, readout, status, s = h.on_model_choice("generic", pid, s)
    assert "(personal)" not in readout
    # the baseline removed and measured again: the personal model must be fitted again, and a fit reads
    # every moment's face as the session now reads it (the moments were labelled under the old baseline)
    prof, old = h.studio.profile(pid), s.baseline.offsets["vision"].copy()
    as_read = prof.split(face_offset=old).feats["vision"]
    msg, md, s = h.on_baseline_reset(pid, s)
    assert msg.startswith("Baseline removed") and "(weighted) learned under another baseline: fit again" in msg
    seen = []
    monkeypatch.setattr(studio_app, "cross_validate", lambda generic, split, *a, **k: seen.append(split) or real_cv(generic, split, *a, **k))
    msg, *_ = h.on_fit(pid, s)
    assert msg.startswith("✓"), msg
    np.testing.assert_allclose(seen[0].feats["vision"], as_read + old, atol=1e-5)  # without the offset it was read with
    monkeypatch.undo()
    h.on_calibrate_start(s)
    t0 = s.now()
    for i, f in enumerate(jittered_frames(astronaut(), seconds=1.0, fps=10, seed=0)):
        s.push_frame(f, t=t0 + 0.25 * i)
    msg, md, s = h.on_calibrate_stop(pid, s)
    assert "saved in your profile" in msg and "fit again" in msg
    assert "another neutral baseline" in h.on_personal_refresh(pid, s)  # the panel says so too
    msg, pers, *_ = h.on_fit(pid, s)  # fitted again, under the new baseline
    assert msg.startswith("✓") and "another" not in pers
    # a second tab of the same browser sees the moments and the personal model
    state2, *_ = h.on_load()
    pid2, s2, _, listed, *_ = h.on_profile_load(pid, state2)
    assert pid2 == pid and len(listed) == 8 and "weighted" in s2.personal and s2.baseline is not None
    shown = studio_app.personal_md(s2, h.studio.profile(pid))  # the saved baseline is the one the model learned under
    assert shown.startswith("Personal model for **weighted** from 8 moments") and "another" not in shown and "not recorded" not in shown
    h.on_text("I am so sad today", s2)
    msg, listed = h.on_label(-2.0, False, pid, listed, s2)
    assert msg.startswith("✓") and len(listed) == 9 and "another tab" not in msg
    h.on_text("Another fine day", s)
    msg, known = h.on_label(1.0, False, pid, known, s)  # tab 1 still lists 8: one came from tab 2
    assert "1 more moment(s) came from another tab" in msg and len(known) == 10
    # export, and import into a fresh profile (another browser)
    msg, file = h.on_export(pid)
    assert msg.startswith("✓") and file["value"].endswith(".safetensors")
    other, s3 = _tab(h)
    msg, moments, base, pers, s3 = h.on_import(file["value"], other, s3)
    assert msg.startswith("✓ Imported 10 moments"), msg
    assert len(moments) == 10 and s3.baseline is not None and "weighted" in s3.personal
    # a corrupt file is refused and changes nothing
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a profile at all")
    msg, *_ = h.on_import(str(bad), other, s3)
    assert msg.startswith("⚠️ not imported") and len(h._moments(other)) == 10
    # delete one moment, then everything
    msg, moments = h.on_delete(moments[0]["clip_id"], other)
    assert msg == "Moment deleted." and len(moments) == 9
    msg, moments = h.on_delete("20260101-000000-abcdef", other)
    assert "another tab" in msg
    # delete everything while a calibration runs and an export waits for download: neither outlives it
    msg, file3 = h.on_export(other)
    assert Path(file3["value"]).exists()
    h.on_calibrate_start(s3)
    msg, moments, base, pers, s3, timer, choice, shown_file = h.on_delete_all(other, s3)
    assert moments == [] and s3.baseline is None and not s3.personal and choice["value"] == "generic"
    assert shown_file["value"] is None and shown_file["visible"] is False  # the download link goes too
    assert s3.calibration_progress() is None and not Path(file3["value"]).exists()
    assert h.on_calibrate_tick(other, s3)[0] == studio_app.gr.skip()  # the timer's next tick saves nothing
    folder = h.studio.profile(other).folder
    assert [p.name for p in folder.iterdir()] == [".lock"]  # everything gone; the empty lock file keeps other tabs safe


def test_profiles_survive_a_restart_of_the_app(tmp_path):
    """The key the browsers keep their profile ids with lives in the data folder: a restarted app
    reads the same ids (a random key per start would cut every user off their profile)."""
    a = studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu", data_dir=tmp_path)
    b = studio_app.Studio(DEFAULT_CHECKPOINTS, "cpu", data_dir=tmp_path)
    assert a.browser_secret() == b.browser_secret() and len(a.browser_secret()) >= 32
    assert (tmp_path / ".browser-secret").stat().st_mode & 0o077 == 0  # readable by the app's user only


def test_partial_metrics_of_an_imported_model_do_not_break_the_panel(handlers, tmp_path):
    from mmdemo.personal import PersonalConfig, fit_personal
    from mmdemo.profile import Profile, new_profile_id
    from tests.test_personal import moment

    from mmdemo.encoders import DIMS

    src = Profile(tmp_path, new_profile_id(), DIMS)
    for i in range(8):
        src.add(moment(seed=i), label=(i % 7) - 3)
    src.save_personal(fit_personal(handlers.studio.engine.fusion("weighted"), src.split(), PersonalConfig(steps=3)), {"moments": 8})
    path = src.export(tmp_path / "partial.safetensors")
    pid, s = _tab(handlers)
    msg, moments, base, pers, s = handlers.on_import(str(path), pid, s)
    assert msg.startswith("✓") and "Personal model for **weighted** loaded" in pers
    pid2, s2, _, listed, load_msg, pers2, _ = handlers.on_profile_load(pid, handlers.on_load()[0])
    assert load_msg == "" and len(listed) == 8 and "weighted" in s2.personal


def test_a_damaged_stored_baseline_is_reported_and_the_panels_still_show(handlers):
    """A baseline file another version wrote (an offset without the count of samples it came from)
    must not stop the page from loading: the panels show, with a message, and nothing half-loaded
    stays in the session."""
    from mmdemo.calibration import Baseline
    from tests.test_personal import _edit_info, _tamper

    from mmdemo.encoders import DIMS

    pid, s = _tab(handlers)
    prof = handlers._profile(pid)
    prof.save_baseline(Baseline({"vision": np.ones(DIMS["vision"], np.float32)}, {"vision": 12, "audio": 0}, 10.0, {}, {}))
    path = prof.folder / "baseline.safetensors"
    _tamper(path, path, _edit_info(lambda info: {k: v for k, v in info.items() if k != "samples"}))
    pid2, s2, base_md, listed, msg, pers_md, line = handlers.on_profile_load(pid, handlers.on_load()[0])
    assert pid2 == pid and msg.startswith("⚠️") and "baseline" in msg
    assert s2.baseline is None and listed == [] and isinstance(base_md, str) and isinstance(pers_md, str) and pid[:8] in line


def test_a_fit_whose_moments_were_deleted_meanwhile_is_not_saved_and_a_damaged_model_is_a_message(handlers, monkeypatch):
    """Delete my data (or one moment) in another tab while a fit runs: the model fitted on them
    must not come back. A damaged personal-model file gives a message, not a bare error; a save in
    progress is never listed as a model."""
    import app as app_module
    from mmdemo.profile import ProfileError

    h = handlers
    pid, s = _tab(h)
    for i, (text, label) in enumerate(SCRIPT[:8]):
        h.on_text(text, s)
        assert h.on_label(label, False, pid, [], s)[0].startswith("✓")
    real_fit = app_module.fit_personal

    def fit_then_delete(*args, **kw):  # the other tab's delete lands while this fit runs
        model = real_fit(*args, **kw)
        h._profile(pid).delete_all()
        return model

    monkeypatch.setattr(app_module, "fit_personal", fit_then_delete)
    msg, *_ = h.on_fit(pid, s)
    assert msg.startswith("⚠️") and "fit again" in msg
    prof = h._profile(pid)
    assert prof.personal_fusions() == [] and not (prof.folder / "personal").exists()
    monkeypatch.setattr(app_module, "fit_personal", real_fit)
    for i, (text, label) in enumerate(SCRIPT[:8]):
        h.on_text(text, s)
        h.on_label(label, False, pid, [], s)
    assert h.on_fit(pid, s)[0].startswith("✓")
    (prof.folder / "personal" / ".weighted.0123abcd").mkdir()  # another tab's save in progress
    assert prof.personal_fusions() == ["weighted"]
    weights = prof.folder / "personal" / "weighted" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged
    with pytest.raises(ProfileError, match="unreadable personal model"):
        prof.load_personal("weighted")
    s.personal.clear()
    msg, *_ = h.on_model_choice("personal", pid, s)
    assert msg.startswith("⚠️") and "unreadable" in msg
    msg, file = h.on_export(pid)
    assert msg.startswith("⚠️")
    # a new tab: the damaged model is named, the moments and the rest still load
    pid2, s2, _, listed, msg, *_ = h.on_profile_load(pid, h.on_load()[0])
    assert len(listed) == 8 and "personal model for weighted" in msg and "weighted" not in s2.personal


def test_an_import_stopped_half_way_shows_what_it_took(handlers, tmp_path, monkeypatch):
    """A full disk while the moments are written (last): the personal model and the baseline were
    taken before it, so the panels show them and the session uses them."""
    from mmdemo.calibration import Baseline
    from mmdemo.encoders import DIMS
    from mmdemo.personal import PersonalConfig, fit_personal
    from mmdemo.profile import Profile, new_profile_id
    from tests.test_personal import moment

    src = Profile(tmp_path, new_profile_id(), DIMS)
    for i in range(8):
        src.add(moment(seed=i), label=(i % 7) - 3)
    src.save_baseline(Baseline({"vision": np.ones(DIMS["vision"], np.float32)}, {"vision": 12, "audio": 0}, 10.0,
                               {"vision": {"before": -1.0, "after": 0.0}}, {"audio": "no speech during the calibration"}))
    src.save_personal(fit_personal(handlers.studio.engine.fusion("weighted"), src.split(), PersonalConfig(steps=3)), {"moments": 8})
    path = src.export(tmp_path / "me.safetensors")
    pid, s = _tab(handlers)

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Profile, "_write", full_disk)
    msg, moments, base, pers, s = handlers.on_import(str(path), pid, s)
    assert msg.startswith("⚠️ not imported") and "were imported before it" in msg
    assert moments == [] and "Neutral baseline in use" in base and "weighted" in s.personal and s.baseline is not None


def test_the_voice_calibration_takes_only_clean_speech_and_reads_as_the_session_will(engine, monkeypatch):
    """A cough (too little speech) or a clipping microphone during the calibration gives no voice
    sample; the shown readings use the speaker statistics the session restarts with."""
    import copy
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    feature = engine.voice_prior.mean + 2 * engine.voice_prior.std * rng.standard_normal(engine.voice_prior.mean.shape)
    said = iter([0.3, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])  # seconds of speech of each window read
    clipped = iter([0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])

    reads = []

    def encode(*a, **k):
        reads.append(1)
        return SimpleNamespace(present=True, feature=feature.astype(np.float32), reason="",
                               info={"speech_s": next(said), "clipped_share": next(clipped), "notes": []})

    e = copy.copy(engine)
    e.voice = copy.copy(engine.voice)
    monkeypatch.setattr(e.voice, "encode", encode)
    monkeypatch.setattr(e.voice, "encode_stream", encode)
    s = e.session("weighted")
    s.start_calibration(t=0.0)
    cal = s.calibrator
    t = 0.0
    for k in range(8 * 5):  # 0.5 s chunks: a window is read every 0.5 s once 2.4 s are heard
        t += 0.5
        s.push_audio(np.zeros(8000, np.float32), 16000, t=t)
        if cal.counts()["audio"] == 6:
            break
    assert cal.counts()["audio"] == 6 and len(reads) == 8  # 8 windows read, the cough and the clipped one left out
    baseline = s.finish_calibration(t=t)
    assert "audio" in baseline.offsets
    again = s._readings(cal, baseline)  # with the statistics as the session now holds them (restarted)
    assert again["audio"] == pytest.approx(baseline.readings["audio"])


def test_a_model_fitted_while_the_baseline_changed_is_not_saved_and_one_of_another_baseline_says_so(handlers, tmp_path, monkeypatch):
    from mmdemo.calibration import Baseline
    from mmdemo.encoders import DIMS as dims
    from mmdemo.profile import Moment, Profile, new_profile_id

    h = handlers
    pid, s = _tab(h)
    prof = h.studio.profile(pid)
    rng = np.random.default_rng(3)
    for i in range(8):
        feats = {m: rng.normal(size=d).astype(np.float32) for m, d in dims.items()}
        prof.add(Moment(feats, {m: True for m in dims}, text=f"moment {i}", seconds=5.0), label=i % 7 - 3)
    other = Baseline({"vision": np.full(dims["vision"], 0.1, np.float32)}, {"vision": 5}, 5.0)
    real_fit = studio_app.fit_personal

    def fit_while_calibrating(*a, **k):  # a calibration finishes while the model is being fitted
        s.set_baseline(other)
        return real_fit(*a, **k)

    monkeypatch.setattr(studio_app, "fit_personal", fit_while_calibrating)
    msg, *_ = h.on_fit(pid, s)
    assert "baseline changed while the model was being fitted" in msg and prof.personal_fusions() == []
    monkeypatch.undo()
    msg, pers, *_ = h.on_fit(pid, s)  # fitted under `other`: no warning in this session
    assert msg.startswith("✓") and "another neutral baseline" not in pers
    assert studio_app.refit_note(prof, other) == ""  # it learned under this one
    s.set_baseline(None)
    assert "learned under another neutral baseline than this session's" in studio_app.personal_md(s, prof)
    assert h.on_personal_refresh(pid, s) == studio_app.personal_md(s, prof)  # what the panel shows after a reset or a switch
    assert s.fusion_name in studio_app.refit_note(prof, None)
    # a model whose baseline was not recorded (fitted or exported before it was): said only when the session has one
    metrics_file = prof.folder / "personal" / s.fusion_name / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics.pop("baseline")
    metrics_file.write_text(json.dumps(metrics))
    assert "not recorded" not in studio_app.personal_md(s, prof)
    s.set_baseline(other)
    assert "The baseline it learned under was not recorded" in studio_app.personal_md(s, prof)
    metrics["baseline"] = Baseline.fingerprint(other)
    metrics_file.write_text(json.dumps(metrics))
    # importing a file with another baseline into this profile (none saved of its own): its model is to be fitted again
    src = Profile(tmp_path, new_profile_id(), dims)
    src.add(Moment({m: rng.normal(size=d).astype(np.float32) for m, d in dims.items()}, {m: True for m in dims}, seconds=5.0), label=1)
    src.save_baseline(Baseline({"vision": np.full(dims["vision"], 0.2, np.float32)}, {"vision": 5}, 5.0))
    msg, *_ = h.on_import(str(src.export(tmp_path / "src.safetensors")), pid, s)
    assert msg.startswith("✓ Imported 1 moments, the baseline") and f"{s.fusion_name} learned under another baseline" in msg, msg
    same = Profile(tmp_path, new_profile_id(), dims)  # a file with the baseline the model learned under: nothing to fit again
    same.save_baseline(other)
    assert same.import_file(prof.export(tmp_path / "mine.safetensors"))["refit"] == []
