"""Calibration, labelled moments, personal models, profiles (fast: no pretrained models)."""

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdemo import MODALITIES
from mmdemo.calibration import Baseline, CalibrationError, Calibrator, NeutralReference
from mmdemo.checkpoint import load_fusion
from mmdemo.data import load_dataset
from mmdemo.encoders import DIMS
from mmdemo.fusion import list_fusions
from mmdemo.personal import (PersonalConfig, PersonalError, _held_out_batched, check_moments, cross_validate, fit_personal, folds, merge,
                             predict)
from mmdemo.pipeline import DEFAULT_CHECKPOINTS
from mmdemo.profile import Moment, Profile, ProfileError, data_root, new_profile_id, read_profile_file

from tests.helpers import bench_module

RNG = np.random.default_rng(0)


def moment(present=("text", "audio", "vision"), seed=0, text="hello") -> Moment:
    rng = np.random.default_rng(seed)
    feats = {m: rng.normal(size=DIMS[m]).astype(np.float32) for m in MODALITIES}
    return Moment(feats, {m: m in present for m in MODALITIES}, text=text, seconds=5.0)


@pytest.fixture
def profile(tmp_path) -> Profile:
    return Profile(tmp_path, new_profile_id(), DIMS)


@pytest.fixture(scope="module")
def generic():
    return load_fusion(DEFAULT_CHECKPOINTS / "fusion" / "weighted")


# ---------------------------------------------------------------- the store


def test_moments_are_stored_in_the_project_dataset_format(profile):
    ids = [profile.add(moment(seed=i), label=i - 1.5) for i in range(3)]
    profile.add(moment(present=("text",), seed=9), label=2)
    rows = profile.moments()
    assert [r["clip_id"] for r in rows[:3]] == ids and rows[3]["present"] == ["text"]
    ds = load_dataset(profile.dataset_folder)  # what python -m mmdemo.train --data reads
    tr = ds.splits["train"]
    assert len(tr) == 4 and list(tr.labels) == [-1.5, -0.5, 0.5, 2.0]
    assert tr.present["vision"].tolist() == [True, True, True, False]
    np.testing.assert_allclose(tr.feats["audio"][1], moment(seed=1).features["audio"], rtol=1e-6)
    assert (profile.dataset_folder / "labels.csv").read_text().splitlines()[0].startswith("clip_id,label,split,text,video_id")
    assert profile.id not in (profile.dataset_folder / "labels.csv").read_text()  # the person is a hash, not the id


def test_a_write_that_fails_half_way_leaves_the_previous_moments_whole(profile, monkeypatch):
    profile.add(moment(seed=1), label=1)
    before = profile.split()
    calls = []
    real = np.save

    def flaky(f, x, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second of the four files: a full disk, say
            raise OSError(28, "No space left on device")
        return real(f, x, **kw)

    monkeypatch.setattr(np, "save", flaky)
    with pytest.raises(OSError):
        profile.add(moment(seed=2), label=2)
    monkeypatch.setattr(np, "save", real)
    after = profile.split()
    assert len(after) == 1 and after.ids[0] == before.ids[0]
    np.testing.assert_array_equal(after.feats["text"], before.feats["text"])
    assert len(list(profile.folder.glob("moments-*"))) == 1  # the half-written generation is gone
    profile.add(moment(seed=3), label=-1)  # and the profile goes on
    assert len(profile.moments()) == 2


def test_bad_moments_are_refused_with_a_reason_and_nothing_is_written(profile):
    with pytest.raises(ProfileError, match="nothing to label"):
        profile.add(moment(present=()), label=1)
    for bad in (3.5, -4, float("nan"), "lots"):
        with pytest.raises(ProfileError, match="-3 to \\+3"):
            profile.add(moment(), label=bad)
    broken = moment()
    broken.features["audio"] = np.full(DIMS["audio"], np.nan, np.float32)
    with pytest.raises(ProfileError, match="voice"):
        profile.add(broken, label=0)
    assert profile.moments() == []


def test_the_raw_clip_is_kept_only_when_asked(profile):
    m = moment()
    m.audio = np.zeros(16000, np.float32)
    m.frame = np.zeros((48, 64, 3), np.uint8)
    a = profile.add(m, label=1)
    b = profile.add(m, label=1, keep_clip=True)
    rows = {r["clip_id"]: r for r in profile.moments()}
    assert rows[a]["clip"] == "" and not (profile.folder / "clips" / a).exists()
    assert (profile.folder / rows[b]["clip"] / "audio.wav").exists() and (profile.folder / rows[b]["clip"] / "frame.jpg").exists()
    profile.delete(b)
    assert not (profile.folder / "clips" / b).exists() and [r["clip_id"] for r in profile.moments()] == [a]


def test_two_tabs_of_one_person_lose_nothing(tmp_path):
    pid = new_profile_id()
    tabs = [Profile(tmp_path, pid, DIMS) for _ in range(2)]
    errors = []

    def work(tab, k):
        try:
            for i in range(8):
                tab.add(moment(seed=100 * k + i), label=k)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t, k)) for k, t in enumerate(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = tabs[0].moments()
    assert len(rows) == 16 and sorted(r["label"] for r in rows) == [0.0] * 8 + [1.0] * 8
    tabs[0].delete(rows[0]["clip_id"])
    with pytest.raises(ProfileError, match="another tab"):
        tabs[1].delete(rows[0]["clip_id"])
    assert len(tabs[1].moments()) == 15


def test_profile_ids_and_data_folders_are_checked(tmp_path):
    for bad in ("../etc", "abc", "0" * 31 + "g", None):
        with pytest.raises(ProfileError):
            Profile(tmp_path, bad, DIMS)
    with pytest.raises(ProfileError, match="project"):
        data_root(Path(__file__).resolve().parents[1] / "userdata")
    with pytest.raises(ProfileError, match="inside"):
        data_root(tmp_path / "cache" / "x", forbidden=(tmp_path / "cache",))
    assert data_root(tmp_path / "ok") == (tmp_path / "ok").resolve()


# ---------------------------------------------------------------- export and import


def _full_profile(profile, generic) -> Profile:
    for i in range(10):
        profile.add(moment(seed=i), label=(i % 7) - 3)
    profile.save_baseline(Baseline({"vision": np.ones(DIMS["vision"], np.float32)}, {"vision": 12, "audio": 0}, 10.0,
                                   {"vision": {"before": -1.0, "after": 0.0}}, {"audio": "no speech during the calibration"}))
    model = fit_personal(generic, profile.split(), PersonalConfig(steps=5))
    profile.save_personal(model, {"moments": 10})
    return profile


def test_a_profile_exports_to_one_file_and_imports_whole(profile, generic, tmp_path):
    _full_profile(profile, generic)
    path = profile.export(tmp_path / "me.safetensors")
    other = Profile(tmp_path / "other", new_profile_id(), DIMS)
    got = other.import_file(path)
    assert got == {"moments_added": 10, "moments_skipped": 0, "baseline": True, "personal": ["weighted"], "kept": [], "left_out": [], "refit": []}
    assert profile.id not in path.read_bytes().decode("latin-1")  # the file never carries the id that opens the profile
    np.testing.assert_array_equal(other.split().feats["text"], profile.split().feats["text"])
    assert [r["label"] for r in other.moments()] == [r["label"] for r in profile.moments()]
    b = other.load_baseline()
    np.testing.assert_array_equal(b.offsets["vision"], np.ones(DIMS["vision"]))
    assert b.skipped == {"audio": "no speech during the calibration"} and b.readings["vision"]["before"] == -1.0
    sp = profile.split()
    np.testing.assert_allclose(predict(other.load_personal("weighted")[0], sp), predict(profile.load_personal("weighted")[0], sp), atol=1e-6)
    again = other.import_file(path)  # the same file twice: nothing doubles, this profile's own models stay
    assert again["moments_added"] == 0 and again["moments_skipped"] == 10 and len(other.moments()) == 10
    assert again["baseline"] is False and again["personal"] == [] and again["kept"] == ["baseline", "weighted"]
    # a profile with a baseline of its own takes the personal model, learned under the file's: to be fitted again
    own = Profile(tmp_path / "own", new_profile_id(), DIMS)
    own.save_baseline(Baseline({"vision": np.zeros(DIMS["vision"], np.float32)}, {"vision": 3}, 5.0))
    got = own.import_file(path)
    assert got["personal"] == ["weighted"] and got["kept"] == ["baseline"] and got["refit"] == ["weighted"]
    assert Profile(tmp_path / "none", new_profile_id(), DIMS).import_file(path)["refit"] == []  # took the file's baseline with it
    # a profile whose own model learned without a baseline takes the file's baseline: its own model is to be fitted again
    bare = Profile(tmp_path / "bare", new_profile_id(), DIMS)
    bare.save_personal(fit_personal(generic, profile.split(), PersonalConfig(steps=2)), {"moments": 10})
    got = bare.import_file(path)
    assert got["baseline"] is True and got["personal"] == [] and got["refit"] == ["weighted"]


def test_a_profile_written_before_a_setting_existed_imports_with_its_default(profile, generic, tmp_path):
    """A personal model's settings must be the installation's; a setting added since (``loss``) is
    absent from older files and means its default there."""
    good = _full_profile(profile, generic).export(tmp_path / "good.safetensors")

    def drop_loss(info):
        cfg = dict(info["personal"]["weighted"]["config"])
        assert cfg.pop("loss") == "l1"
        return info | {"personal": {"weighted": info["personal"]["weighted"] | {"config": cfg}}}

    old = _tamper(good, tmp_path / "old.safetensors", _edit_info(drop_loss))
    other = Profile(tmp_path / "other", new_profile_id(), DIMS)
    assert other.import_file(old)["personal"] == ["weighted"]


def _tamper(path: Path, out: Path, fn) -> Path:
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + n])
    fn(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    out.write_bytes(struct.pack("<Q", len(h)) + h + blob[8 + n :])
    return out


def _edit_info(fn):
    def f(h):
        info = json.loads(h["__metadata__"]["info"])
        h["__metadata__"]["info"] = json.dumps(fn(info))
    return f


TYPE_CASES = {
    "info is a list": lambda info: [info],
    "personal is a string": lambda info: info | {"personal": "weighted"},
    "a personal entry is a number": lambda info: info | {"personal": {"weighted": 3}},
    "baseline is a list": lambda info: info | {"baseline": [1, 2]},
    # another version's baseline: an offset without the count of samples it came from, a reading without its value after
    "a baseline offset without its samples": lambda info: info | {"baseline": {k: v for k, v in info["baseline"].items() if k != "samples"}},
    "a baseline reading half given": lambda info: info | {"baseline": info["baseline"] | {"readings": {"vision": {"before": -1.0}}}},
    "moments are not objects": lambda info: info | {"moments": ["x"] * len(info["moments"])},
    "an empty baseline": lambda info: info | {"baseline": info["baseline"]},  # with its offsets removed below
}

# a personal model this installation would not build as it is described: left out, the rest imported
OTHER_MODELS = {
    "a setting of the wrong type": lambda info: info | {"personal": {"weighted": info["personal"]["weighted"] | {
        "config": info["personal"]["weighted"]["config"] | {"hidden": "big"}}}},
    "a huge model": lambda info: info | {"personal": {"weighted": info["personal"]["weighted"] | {
        "config": info["personal"]["weighted"]["config"] | {"tensor_dim": 1000, "hidden": 4096}}}},
    "an unknown loss": lambda info: info | {"personal": {"weighted": info["personal"]["weighted"] | {
        "config": info["personal"]["weighted"]["config"] | {"loss": "hinge"}}}},
    "a method of another version": lambda info: info | {"personal": {"evil": info["personal"]["weighted"]}},
}


@pytest.mark.parametrize("case", list(OTHER_MODELS))
def test_a_personal_model_for_other_settings_is_left_out_and_the_rest_comes_in(profile, generic, tmp_path, case):
    good = _full_profile(profile, generic).export(tmp_path / "good.safetensors")

    def rename_tensors(h):
        _edit_info(OTHER_MODELS[case])(h)
        if case == "a method of another version":
            for k in [k for k in h if k.startswith("personal/weighted/")]:
                h[k.replace("personal/weighted/", "personal/evil/")] = h.pop(k)

    other = _tamper(good, tmp_path / "other.safetensors", rename_tensors)
    target = Profile(tmp_path / "target", new_profile_id(), DIMS)
    got = target.import_file(other)
    assert got["moments_added"] == 10 and got["baseline"] and got["personal"] == [] and len(got["left_out"]) == 1
    assert ("does not know" if case == "a method of another version" else "other settings") in got["left_out"][0]
    assert target.personal_fusions() == [] and len(target.moments()) == 10


@pytest.mark.parametrize("case", ["garbage", "empty", "pickle", "foreign safetensors", "wrong format", "wrong dims",
                                  "bad label", "extra tensor", "truncated", *TYPE_CASES])
def test_a_corrupt_or_foreign_profile_is_refused_and_nothing_changes(profile, generic, tmp_path, case):
    import pickle

    from safetensors.numpy import save_file

    good = _full_profile(profile, generic).export(tmp_path / "good.safetensors")
    bad = tmp_path / f"{case}.safetensors"
    if case == "garbage":
        bad.write_bytes(b"\x00\xff" * 500)
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "pickle":
        bad.write_bytes(pickle.dumps({"moments": [1, 2, 3]}))
    elif case == "foreign safetensors":
        save_file({"weight": np.zeros((2, 2), np.float32)}, str(bad))
    elif case == "wrong format":
        _tamper(good, bad, lambda h: h["__metadata__"].update(format="something-else/1"))
    elif case == "wrong dims":
        def f(h):
            info = json.loads(h["__metadata__"]["info"])
            info["dims"]["audio"] = 25
            h["__metadata__"]["info"] = json.dumps(info)
        _tamper(good, bad, f)
    elif case in ("bad label", "extra tensor"):
        from safetensors.torch import load_file, save_file as save_t

        tensors = load_file(str(good))
        meta = json.loads(good.read_bytes()[8 : 8 + struct.unpack("<Q", good.read_bytes()[:8])[0]])["__metadata__"]
        if case == "bad label":
            tensors["moments/labels"][0] = 7.0
        else:
            tensors["sneaky"] = torch.zeros(3)
        save_t(tensors, str(bad), metadata=meta)
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:-200])
    elif case == "an empty baseline":
        def f(h):
            for k in [k for k in h if k.startswith("baseline/")]:
                del h[k]
        _tamper(good, bad, f)
    elif case in TYPE_CASES:
        _tamper(good, bad, _edit_info(TYPE_CASES[case]))
    target = Profile(tmp_path / "target", new_profile_id(), DIMS)
    target.add(moment(seed=77), label=1)
    with pytest.raises(ProfileError):
        target.import_file(bad)
    assert len(target.moments()) == 1 and target.load_baseline() is None and target.personal_fusions() == []


def test_any_text_a_moment_holds_reads_back_and_keeps_the_profile_whole(profile, generic, tmp_path):
    """A bare carriage return would end a CSV row (the profile would then read as damaged), a lone
    surrogate cannot be written as UTF-8, other control characters mean nothing: typed or imported,
    the moments stay readable, one row each."""
    profile.add(moment(seed=1, text="first line\rsecond line\r\nthird"), label=1)
    profile.add(moment(seed=2, text="bad \ud800 ok\x00\x1b 👩\u200d💻\u2028end"), label=-1)
    rows = profile.moments()
    assert [r["text"] for r in rows] == ["first line\nsecond line\nthird", "bad ? ok 👩\u200d💻\u2028end"]
    good = _full_profile(profile, generic).export(tmp_path / "good.safetensors")

    def odd_texts(info):
        moments = [dict(m) for m in info["moments"]]
        moments[0]["text"], moments[1]["created"], moments[2]["text"] = "a\rb", "2026\r01", "lone \ud800"
        return info | {"moments": moments}

    odd = _tamper(good, tmp_path / "odd.safetensors", _edit_info(odd_texts))
    other = Profile(tmp_path / "other", new_profile_id(), DIMS)
    assert other.import_file(odd)["moments_added"] == len(rows) + 10
    texts = [r["text"] for r in other.moments()]
    assert len(texts) == len(rows) + 10 and "a\nb" in texts and "lone ?" in texts
    assert len(other.split()) == len(texts)  # features and rows still line up
    assert other.load_baseline() is not None


def test_imported_metrics_keep_known_keys_and_types_only():
    from mmdemo.profile import clean_metrics

    assert clean_metrics({"moments": 10}) == {"moments": 10}
    assert clean_metrics({"moments": "ten", "scheme": 3, "generic_mae": float("nan"), "personal_mae": 0.5, "evil": 1}) == {"personal_mae": 0.5}
    assert clean_metrics([1, 2]) == {}


def test_read_profile_file_checks_shapes_against_the_encoders(profile, generic, tmp_path):
    path = _full_profile(profile, generic).export(tmp_path / "p.safetensors")
    with pytest.raises(ProfileError, match="feature sizes"):
        read_profile_file(path, dict(DIMS, vision=10))


# ---------------------------------------------------------------- calibration


def test_calibration_offsets_are_medians_against_the_reference():
    ref = NeutralReference({"vision": np.zeros(4, np.float32), "audio": np.ones(3, np.float32)})
    cal = Calibrator(ref, t0=1.0)
    for k in range(7):
        cal.add("vision", np.array([1, 2, 3, 4], np.float32) + (100 if k == 0 else 0))  # one outlier frame
    cal.add("vision", np.full(4, np.nan, np.float32))  # ignored
    b = cal.finish(11.0)
    np.testing.assert_allclose(b.offsets["vision"], [1, 2, 3, 4])
    assert "audio" not in b.offsets and "no speech" in b.skipped["audio"] and b.seconds == 10.0
    np.testing.assert_allclose(b.apply("vision", np.array([1, 2, 3, 4], np.float32)), 0)
    np.testing.assert_array_equal(b.apply("audio", np.ones(3)), np.ones(3))  # no offset: unchanged
    assert any("not calibrated" in line for line in b.describe())


def test_a_calibration_with_nothing_seen_is_refused():
    ref = NeutralReference({"vision": np.zeros(4, np.float32), "audio": np.zeros(3, np.float32)})
    cal = Calibrator(ref)
    cal.add("vision", np.ones(4))  # one frame is not enough
    with pytest.raises(CalibrationError, match="face.*only 1.*voice: no speech"):
        cal.finish(10.0)


def test_the_shipped_neutral_reference_matches_the_encoders(tmp_path):
    ref = NeutralReference.load(DEFAULT_CHECKPOINTS, dims=DIMS)
    assert ref is not None and set(ref.vectors) == {"vision", "audio"}
    (tmp_path / "neutral_reference.json").write_text(json.dumps({"format": "mmdemo-neutral/1", "vectors": {"audio": [1.0, 2.0]}}))
    with pytest.raises(ValueError, match="encoder gives"):
        NeutralReference.load(tmp_path, dims=DIMS)
    (tmp_path / "neutral_reference.json").write_text("{nope")
    with pytest.raises(ValueError, match="unreadable"):
        NeutralReference.load(tmp_path)


# ---------------------------------------------------------------- personal models


def _user(generic, n, offset, noise=0.2, seed=0):
    """Moments whose true label is the generic model's answer + ``offset`` (a person the model
    reads ``offset`` too low) + noise."""
    from mmdemo.data import Split

    rng = np.random.default_rng(seed)
    feats = {m: rng.normal(size=(n, DIMS[m])).astype(np.float32) for m in MODALITIES}
    sp = Split(feats=feats, present={}, labels=np.zeros(n, np.float32), ids=np.arange(n))
    y = np.clip(predict(generic, sp) + offset + rng.normal(0, noise, n), -3, 3)
    return Split(feats=feats, present={}, labels=y, ids=np.arange(n))


def test_too_few_or_identical_moments_give_a_clear_error(generic):
    with pytest.raises(PersonalError, match="at least 8"):
        check_moments(_user(generic, 5, 0.0))
    sp = _user(generic, 10, 0.0)
    sp.labels[:] = 1.0
    with pytest.raises(PersonalError, match="every moment is labelled \\+1"):
        cross_validate(generic, sp)


@pytest.mark.parametrize("name", list_fusions())
def test_the_folds_trained_together_match_the_folds_trained_one_by_one(name):
    """cross_validate trains every fold at once (weights stacked, the model mapped over them): each
    held-out moment must get what a personal model fitted on the other moments alone says of it
    (over a few steps: the float rounding of the two paths drifts apart over many)."""
    generic = load_fusion(DEFAULT_CHECKPOINTS / "fusion" / name)
    sp = _user(generic, 12, offset=-1.0, seed=3)
    rng = np.random.default_rng(4)
    sp.present.update({m: rng.random(12) > 0.25 for m in MODALITIES})  # some moments lack one modality or two
    # 10 steps: with the squared error and a strong pull, concat's two paths were 2e-6 apart after 5
    # steps, 8e-6 after 10 and 5e-4 after 20 (the rounding grows step by step)
    for cfg in (PersonalConfig(steps=10, loss="mse"), PersonalConfig(steps=10, loss="l1"), PersonalConfig(steps=10, loo_max=4),
                PersonalConfig(steps=10, bias_anchor=1.0), PersonalConfig(steps=10, anchor=1.0, bias_anchor=0.0)):
        held, scheme = folds(len(sp), cfg)
        assert (len(held), scheme) == ((12, "leave-one-out") if cfg.loo_max > 12 else (10, "10-fold"))
        together = _held_out_batched(generic, sp, held, cfg)
        alone = np.zeros(12, np.float32)
        for t in held:
            alone[t] = predict(fit_personal(generic, sp, cfg, np.setdiff1d(np.arange(12), t)), sp, t)
        np.testing.assert_allclose(together, alone, atol=2e-4, err_msg=str(cfg))
        assert np.abs(alone - predict(generic, sp)).max() > 1e-2  # the fits moved: the comparison is not of two untouched models


def test_the_held_out_error_falls_back_to_one_fit_per_fold_and_reports_progress(generic, monkeypatch, caplog):
    import mmdemo.personal as personal

    sp = _user(generic, 12, offset=-1.0, seed=3)
    steps = []
    together = cross_validate(generic, sp, progress=lambda i, n: steps.append((i, n)))
    assert steps[0] == (0, PersonalConfig().steps) and steps[-1] == (PersonalConfig().steps,) * 2 and len(steps) > 3
    assert "one by one" not in caplog.text

    def cannot_map(*a, **k):
        raise NotImplementedError()  # a RuntimeError without a message, as an unmappable operation may raise

    monkeypatch.setattr(personal, "_held_out_batched", cannot_map)
    seen = []
    alone = cross_validate(generic, sp, progress=lambda i, n: seen.append((i, n)))
    assert "held-out folds trained one by one" in caplog.text
    assert seen[-1] == (12, 12)
    assert alone["personal_mae"] == pytest.approx(together["personal_mae"], abs=0.03)  # the default settings, both paths
    assert alone["generic_mae"] == together["generic_mae"]


def test_the_absolute_error_loss_learns_the_bias_too_and_an_unknown_loss_is_refused(generic):
    with pytest.raises(ValueError, match="unknown personal loss 'huberish'"):
        PersonalConfig(loss="huberish")
    biased = _user(generic, 12, offset=-1.5, seed=2)
    l1 = cross_validate(generic, biased, PersonalConfig(loss="l1"))
    assert l1["personal_mae"] < 0.6 * l1["generic_mae"], l1
    mse = cross_validate(generic, biased, PersonalConfig(loss="mse"))
    assert l1["personal_mae"] != mse["personal_mae"]  # the setting reaches the fit


def test_the_pull_on_biases_has_its_own_strength(generic):
    """bias_anchor scales the pull toward the shipped weights on bias vectors only: under a pull too
    strong for anything to move, a free bias (0) still learns, a pulled one (1) does not."""
    from mmdemo.personal import is_bias

    with pytest.raises(ValueError, match="bias_anchor"):
        PersonalConfig(bias_anchor=-1.0)
    with pytest.raises(ValueError, match="bias_anchor"):
        PersonalConfig(bias_anchor=float("nan"))
    with pytest.raises(ValueError, match="anchor"):
        PersonalConfig(anchor=-1.0)
    assert is_bias("heads.text.0.bias") and is_bias("bias") and is_bias("blocks.0.attn.in_proj_bias")
    assert not is_bias("heads.text.0.weight") and not is_bias("bias_scale") and not is_bias("bias.weight")
    for name in list_fusions():  # every method's bias vectors, whatever their layer calls them
        for key, p in load_fusion(DEFAULT_CHECKPOINTS / "fusion" / name).named_parameters():
            assert is_bias(key) == ("bias" in key.rsplit(".", 1)[-1] and p.dim() == 1), (name, key)
    sp = _user(generic, 12, offset=-1.5, seed=2)
    start = dict(generic.named_parameters())

    def moved(cfg):
        fit = dict(fit_personal(generic, sp, cfg).named_parameters())
        step = {k: float((fit[k] - start[k]).detach().abs().max()) for k in fit}
        return max(v for k, v in step.items() if is_bias(k)), max(v for k, v in step.items() if not is_bias(k))

    free_b, free_w = moved(PersonalConfig(anchor=1e4, bias_anchor=0.0))
    held_b, held_w = moved(PersonalConfig(anchor=1e4, bias_anchor=1.0))
    assert free_b > 10 * held_b and free_b > 1e-3, (free_b, held_b)
    assert free_w < 1e-3 and held_w < 1e-3
    bias_only = cross_validate(generic, sp, PersonalConfig(anchor=1e4, bias_anchor=0.0))
    assert bias_only["personal_mae"] < 0.7 * bias_only["generic_mae"], bias_only  # the biases alone take part of a person's offset (0.61x measured)


def test_the_held_out_error_records_the_fit_settings_and_a_profile_keeps_them(generic):
    from mmdemo.profile import clean_metrics

    r = cross_validate(generic, _user(generic, 8, offset=-1.0), PersonalConfig(steps=5, anchor=2.0, bias_anchor=0.5, loss="l1"))
    assert (r["fit_steps"], r["fit_anchor"], r["fit_bias_anchor"], r["fit_loss"]) == (5, 2.0, 0.5, "l1")
    kept = clean_metrics(r | {"fit_anchor": "two", "fit_loss": 7})  # from a file: wrong types are dropped, the rest kept
    assert kept["fit_steps"] == 5 and kept["fit_bias_anchor"] == 0.5 and "fit_anchor" not in kept and "fit_loss" not in kept


def test_the_personal_model_learns_a_persons_bias_and_leaves_the_generic_model_alone(generic):
    before = {k: v.clone() for k, v in generic.state_dict().items()}
    biased = _user(generic, 16, offset=-1.5)
    r = cross_validate(generic, biased)
    assert r["scheme"] == "leave-one-out" and r["moments"] == 16
    assert r["personal_mae"] < 0.6 * r["generic_mae"], r  # held out: each moment predicted by a model that never saw it
    assert all(torch.equal(before[k], v) for k, v in generic.state_dict().items())
    fair = cross_validate(generic, _user(generic, 16, offset=0.0, seed=1))
    assert fair["personal_mae"] <= 1.05 * fair["generic_mae"] + 0.05, fair  # the pull toward the generic weights


def test_folds_are_leave_one_out_then_ten_fold():
    held, scheme = folds(12)
    assert scheme == "leave-one-out" and len(held) == 12
    held, scheme = folds(100)
    assert scheme == "10-fold" and len(held) == 10
    assert sorted(np.concatenate(held).tolist()) == list(range(100))


# ---------------------------------------------------------------- many people -> one corpus


def _people(tmp_path, n: int, per: int, *, folders: bool = False) -> list:
    """Profiles of ``n`` people with ``per`` labelled moments each: exported files (every other
    one a profile folder with ``folders``)."""
    out = []
    for k in range(n):
        p = Profile(tmp_path / "root", new_profile_id(), DIMS)
        for i in range(per):
            p.add(moment(seed=10 * k + i), label=i % 7 - 3)
        out.append(p.folder if folders and k % 2 == 0 else p.export(tmp_path / f"person{k}.safetensors"))
    return out


def test_profiles_of_many_people_merge_into_a_person_independent_folder(tmp_path, generic):
    files = _people(tmp_path, 5, 4, folders=True)
    summary = merge(files, tmp_path / "merged")
    assert summary["people"] == 5 and summary["moments"] == 20 and all(summary["people_per_split"][s] >= 1 for s in ("train", "valid", "test"))
    ds = load_dataset(tmp_path / "merged")
    seen = {}
    for s, sp in ds.splits.items():
        for vid in {i.split("-")[0] for i in sp.ids}:
            assert seen.setdefault(vid, s) == s, "a person spans two splits"
    with pytest.raises(PersonalError, match="at least 3 people"):
        merge(files[:2], tmp_path / "two")
    with pytest.raises(PersonalError, match="twice"):
        merge([files[1], files[1], files[2]], tmp_path / "dup")
    # a moment imported into another person's profile would put it in two people's splits
    carrier = Profile(tmp_path / "root", new_profile_id(), DIMS)
    carrier.add(moment(seed=99), label=0)
    carrier.import_file(files[1])
    with pytest.raises(PersonalError, match="profiles of two people"):
        merge([files[1], carrier.folder, files[2], files[3]], tmp_path / "mixed")
    # a broken or missing file among many: the message names it
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage garbage")
    for bad in (junk, tmp_path / "gone.safetensors"):
        with pytest.raises(PersonalError, match=bad.name):
            merge([files[0], bad, files[2]], tmp_path / "broken")


def test_merged_faces_are_without_any_person_s_baseline_from_files_and_folders(tmp_path):
    sources, raw = [], {}
    for k in range(4):
        p = Profile(tmp_path / "root", new_profile_id(), DIMS)
        for i in range(3):
            m = moment(seed=50 + 10 * k + i)
            raw_face = m.features["vision"].copy()
            m.features["vision"] = raw_face - 0.5 * k  # read under a baseline of 0.5 k
            m.offsets = _offsets(0.5 * k)
            raw[p.add(m, label=i - 1)] = raw_face
        sources.append(p.folder if k % 2 else p.export(tmp_path / f"p{k}.safetensors"))
    merge(sources, tmp_path / "merged")
    ds = load_dataset(tmp_path / "merged")
    checked = 0
    for sp in ds.splits.values():
        for i, clip in enumerate(sp.ids):
            key = next(c for c in raw if clip.endswith(c))
            np.testing.assert_allclose(sp.feats["vision"][i], raw[key], atol=1e-6)
            checked += 1
    assert checked == 12


def test_a_copied_profile_folder_merges_as_its_person_and_a_renamed_or_empty_one_is_named(tmp_path, caplog):
    import shutil

    files = _people(tmp_path, 4, 3, folders=True)
    original = Profile(tmp_path / "root", files[0].name, DIMS)
    copy = tmp_path / "elsewhere" / files[0].name
    shutil.copytree(files[0], copy, symlinks=True)  # cp -r keeps the moments link as a link
    summary = merge([copy, *files[1:]], tmp_path / "merged")
    assert summary["people"] == 4 and summary["moments"] == 12  # the copy's moments, not an empty profile
    labels = (tmp_path / "merged" / "labels.csv").read_text()
    assert labels.count(original.person) == 3
    # a copy that followed the link (scp -r, a zip, copytree's default): moments/ is a folder of its own
    deep = tmp_path / "deep" / files[0].name
    shutil.copytree(files[0], deep)
    assert not (deep / "moments").is_symlink()
    assert merge([deep, *files[1:]], tmp_path / "merged-deep")["moments"] == 12
    # and such a profile, written to, becomes a profile of generations again, its moments kept
    p = Profile.at(deep, DIMS)
    p.add(moment(seed=123), label=2)
    assert len(p.moments()) == 4 and (deep / "moments").is_symlink()
    assert [g.name for g in deep.glob("moments-*")] == [(deep / "moments").resolve().name]
    (deep / "moments").unlink()  # as if a write stopped between setting a copied folder aside and linking the new generation
    assert len(p.moments()) == 4
    renamed = tmp_path / "carol"
    shutil.copytree(files[0], renamed, symlinks=True)
    with pytest.raises(PersonalError, match="carol.*rename it back"):
        merge([renamed, *files[1:]], tmp_path / "renamed")
    empty = Profile(tmp_path / "root", new_profile_id(), DIMS)
    empty.add(moment(seed=5), label=1)
    empty.delete(empty.moments()[0]["clip_id"])
    summary = merge([*files, empty.folder], tmp_path / "with-empty")
    assert summary["people"] == 4 and summary["without_moments"] == [str(empty.folder)]
    assert "no labelled moments in" in caplog.text and str(empty.folder) in caplog.text


def test_the_merge_and_train_command_line(tmp_path, capsys):
    from mmdemo.personal import main

    files = [str(f) for f in _people(tmp_path, 4, 6)]
    assert main(["merge", *files, "--out", str(tmp_path / "m")]) == 0
    assert "merged 4 people, 24 moments" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "m"), "--out", str(tmp_path / "runs")]) == 0
    from mmdemo.fusion import list_fusions

    for name in list_fusions():
        assert (tmp_path / "runs" / name / "model.safetensors").exists()
    with pytest.raises(SystemExit):
        main(["merge", files[0], "--out", str(tmp_path / "x")])


def test_the_benchmark_searches_every_setting_it_is_given():
    import argparse
    bench = bench_module("personal")
    cfgs = bench.grid((0.5, 2.0), (25, 50, 150), (1e-3, 1e-2), (1.0, 0.0))
    assert len(cfgs) == 2 * 3 * 2 * 2 * len({c.loss for c in cfgs}) and len(set(cfgs)) == len(cfgs)
    assert {(c.anchor, c.steps, c.lr, c.bias_anchor) for c in cfgs} == {
        (a, s, lr, b) for a in (0.5, 2.0) for s in (25, 50, 150) for lr in (1e-3, 1e-2) for b in (1.0, 0.0)}
    assert {c.bias_anchor for c in bench.grid()} == set(bench.BIAS_ANCHORS) and {c.anchor for c in bench.grid()} == set(bench.ANCHORS)
    assert {c.lr for c in bench.grid()} == {bench.PersonalConfig().lr}  # without --lrs: the default learning rate only
    default = bench.PersonalConfig()
    assert default.steps in bench.STEPS and default.anchor in bench.ANCHORS and default.lr in bench.LRS  # the defaults were among the searched
    assert default.bias_anchor in bench.BIAS_ANCHORS
    steps = bench.numbers(int)
    assert steps("25, 50,150") == (25, 50, 150)
    for bad in ("", "0,50", "-1", "a", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            steps(bad)
    rates = bench.numbers(float)
    assert rates("0.003,0.01") == (0.003, 0.01)
    for bad in ("nan", "inf", "0.01,nan", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            rates(bad)
    fractions = bench.numbers(float, zero=True)  # --bias-anchors: 0 lets the biases move freely
    assert fractions("1,0.1,0") == (1.0, 0.1, 0.0)
    for bad in ("-0.1", "nan", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            fractions(bad)


def test_the_benchmark_s_validation_users_speak_valid_sentences_and_its_test_users_test_ones(tmp_path):
    bench = bench_module("personal")
    (tmp_path / "cmu-mosi").mkdir()
    (tmp_path / "cmu-mosi" / "labels.csv").write_text(
        "clip_id,label,text,split\na,1.5,it was really very good,valid\nb,-2,too short,valid\n"
        "c,-1,i did not like it at all,test\nd,0.5,the plot was fine overall,train\n")
    assert bench.mosi_sentences(tmp_path, "valid") == [("it was really very good", 1.5)]  # four words or more
    assert bench.mosi_sentences(tmp_path, "test") == [("i did not like it at all", -1.0)]


def test_a_personal_model_save_that_fails_keeps_the_earlier_model(profile, generic, monkeypatch):
    import os

    from mmdemo import profile as profile_module

    for i in range(8):
        profile.add(moment(seed=i), label=(i % 7) - 3)
    first = fit_personal(generic, profile.split(), PersonalConfig(steps=2))
    profile.save_personal(first, {"moments": 8})
    real_replace = os.replace

    def failing(src, dst):  # setting the old model aside works; putting the new one in place fails (a full disk, say)
        if Path(src).name.startswith(".weighted.") and not Path(src).name.startswith(".weighted.old"):
            raise OSError("no space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(profile_module.os, "replace", failing)
    with pytest.raises(OSError):
        profile.save_personal(fit_personal(generic, profile.split(), PersonalConfig(steps=20)), {"moments": 8})
    monkeypatch.setattr(profile_module.os, "replace", real_replace)
    back, metrics = profile.load_personal("weighted")
    sp = profile.split()
    np.testing.assert_allclose(predict(back, sp), predict(first, sp), atol=1e-6)
    assert [p.name for p in (profile.folder / "personal").iterdir()] == ["weighted"]  # nothing left aside


def test_an_import_that_stops_half_way_says_what_it_took(profile, generic, tmp_path, monkeypatch):
    path = _full_profile(profile, generic).export(tmp_path / "me.safetensors")
    target = Profile(tmp_path / "target", new_profile_id(), DIMS)
    target.add(moment(seed=77), label=1)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target, "_write", full_disk)  # the moments are written last
    with pytest.raises(ProfileError, match="No space left.*the personal weighted model, the baseline were imported before it"):
        target.import_file(path)
    assert len(target.moments()) == 1 and target.load_baseline() is not None and target.personal_fusions() == ["weighted"]
    # a damaged baseline of its own: refused before anything is written
    damaged = Profile(tmp_path / "damaged", new_profile_id(), DIMS)
    damaged.add(moment(seed=78), label=1)
    (damaged.folder / "baseline.safetensors").write_bytes(b"garbage")
    with pytest.raises(ProfileError, match="unreadable baseline"):
        damaged.import_file(path)
    assert len(damaged.moments()) == 1 and damaged.personal_fusions() == []


def test_a_raw_clip_that_cannot_be_written_leaves_no_orphan_and_a_failed_delete_keeps_its_clip(profile, monkeypatch):
    import soundfile as sf

    m = moment(seed=1)
    m.audio, m.frame = np.zeros(16000, np.float32), np.zeros((32, 32, 3), np.uint8)
    kept = profile.add(m, label=1, keep_clip=True)
    assert (profile.folder / "clips" / kept / "audio.wav").exists()

    def full(*a, **k):
        raise sf.LibsndfileError(0, "Error writing to file")

    monkeypatch.setattr(sf, "write", full)
    with pytest.raises(ProfileError, match="raw clip could not be saved"):
        profile.add(m, label=2, keep_clip=True)
    assert [p.name for p in (profile.folder / "clips").iterdir()] == [kept] and len(profile.moments()) == 1
    monkeypatch.undo()

    def failing_write(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profile, "_write", failing_write)
    with pytest.raises(OSError):
        profile.delete(kept)
    assert (profile.folder / "clips" / kept / "audio.wav").exists() and profile.moments()[0]["clip"]


def test_ids_with_a_trailing_newline_or_other_digits_are_not_ids(tmp_path):
    from mmdemo.profile import PROFILE_CLIP, PROFILE_ID

    pid = new_profile_id()
    assert PROFILE_ID.match(pid) and not PROFILE_ID.match(pid + "\n")
    with pytest.raises(ProfileError):
        Profile(tmp_path, pid + "\n", DIMS)
    assert PROFILE_CLIP.match("20260101-120000-abcdef") and not PROFILE_CLIP.match("20260101-120000-abcdef\n")
    assert not PROFILE_CLIP.match("٢٠٢٦٠١٠١-120000-abcdef")  # Arabic-Indic digits are \\d, not [0-9]


def test_an_export_import_would_refuse_is_refused_at_export(profile, monkeypatch):
    from mmdemo import profile as pm

    for i in range(3):
        profile.add(moment(seed=i, text="Ж" * 2000), label=0)  # Cyrillic: 2 bytes a character as UTF-8, 12 as "\\uXXXX" escaped twice
    path = profile.export(profile.folder.parent / "ok.safetensors")
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert header < 3 * 2000 * 6  # written as UTF-8, not as escapes
    monkeypatch.setattr(pm, "MAX_HEADER_BYTES", 2**20 + 10_000)
    with pytest.raises(ProfileError, match="too long to export"):
        profile.export(profile.folder.parent / "big.safetensors")


def _baseline(offset) -> Baseline:
    return Baseline({"vision": np.full(DIMS["vision"], offset, np.float32)}, {"vision": 10}, 10.0)


def _offsets(value) -> dict:
    return {"vision": np.full(DIMS["vision"], value, np.float32)}


def test_each_moment_keeps_its_face_offset_and_reads_under_any_baseline(profile):
    raw = moment(seed=1)  # what the face encoder gave
    under = moment(seed=1)
    under.features["vision"] = raw.features["vision"] - 0.5  # the same face read with a baseline of 0.5
    under.offsets = _offsets(0.5)
    profile.add(raw, label=1)
    profile.add(under, label=1)
    profile.add(moment(present=("text", "audio"), seed=2), label=-1)  # no face: its row stays all zero
    got = profile.split()  # without a baseline: as the encoder gave both
    np.testing.assert_allclose(got.feats["vision"][0], raw.features["vision"], atol=1e-6)
    np.testing.assert_allclose(got.feats["vision"][1], raw.features["vision"], atol=1e-6)
    assert not got.feats["vision"][2].any() and list(got.present["vision"]) == [True, True, False]
    later = profile.split(face_offset=_offsets(-1.0)["vision"])  # a session under another baseline
    np.testing.assert_allclose(later.feats["vision"][:2], np.stack([raw.features["vision"] + 1.0] * 2), atol=1e-6)
    for m in ("text", "audio"):  # words have no offset; voice z-scores are given as read
        np.testing.assert_array_equal(later.feats[m], got.feats[m])
    # nothing is moved on disk when the baseline changes, and a damaged baseline blocks neither labelling nor a reset
    (profile.folder / "baseline.safetensors").write_bytes(b"garbage")
    profile.add(moment(seed=3), label=0)
    profile.save_baseline(None)
    profile.save_baseline(_baseline(0.25))
    assert len(profile.moments()) == 4
    np.testing.assert_allclose(profile.split().feats["vision"][1], raw.features["vision"], atol=1e-6)


def test_moments_of_unknown_offset_are_given_as_stored(profile):
    """A moments folder written before the offsets were recorded: its rows are used as they are."""
    profile.add(moment(seed=4), label=2)
    (profile._current() / "vision_offset.npy").unlink()
    stored = np.load(profile._current() / "vision.npy")
    np.testing.assert_array_equal(profile.split(face_offset=_offsets(0.5)["vision"]).feats["vision"], stored)
    profile.add(moment(seed=5), label=0)  # the next write records the new row's offset, not the old row's
    off = np.load(profile._current() / "vision_offset.npy")
    assert np.isnan(off[0]).all() and not off[1].any()


def _rewrite(path: Path, out: Path, fn, fmt: str | None = None) -> Path:
    """The profile file at ``path`` with its tensors changed by ``fn`` (and another format)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    fn(tensors)
    save_file(tensors, str(out), metadata=meta | ({"format": fmt} if fmt else {}))
    return out


def test_an_export_keeps_each_moment_s_face_offset_and_a_version_1_file_still_imports(profile, tmp_path):
    m = moment(seed=6)
    m.offsets = _offsets(0.5)
    profile.add(m, label=1)
    path = profile.export(tmp_path / "me.safetensors")
    other = Profile(tmp_path / "other", new_profile_id(), DIMS)
    other.save_baseline(_baseline(-0.25))  # its own baseline: the moment still reads as it was read
    assert other.import_file(path)["moments_added"] == 1
    np.testing.assert_allclose(other.split().feats["vision"][0], m.features["vision"] + 0.5, atol=1e-6)

    old = _rewrite(path, tmp_path / "v1.safetensors", lambda t: t.pop("moments/vision_offset"), fmt="mmdemo-profile/1")
    third = Profile(tmp_path / "third", new_profile_id(), DIMS)
    assert third.import_file(old)["moments_added"] == 1
    np.testing.assert_allclose(third.split(face_offset=_offsets(3.0)["vision"]).feats["vision"][0], m.features["vision"], atol=1e-6)

    def partly_known(tensors):
        tensors["moments/vision_offset"][0, 0] = float("nan")
    with pytest.raises(ProfileError, match="face offsets"):
        third.import_file(_rewrite(path, tmp_path / "bad.safetensors", partly_known))
    with pytest.raises(ProfileError, match="made by a newer mmdemo"):
        third.import_file(_rewrite(path, tmp_path / "v3.safetensors", lambda t: None, fmt="mmdemo-profile/3"))
    with pytest.raises(ProfileError, match="face offsets are missing"):  # a /2 file must carry them
        third.import_file(_rewrite(path, tmp_path / "v2bare.safetensors", lambda t: t.pop("moments/vision_offset")))
    with pytest.raises(ProfileError, match="which format 'mmdemo-profile/1' does not have"):
        third.import_file(_rewrite(path, tmp_path / "v1extra.safetensors", lambda t: None, fmt="mmdemo-profile/1"))

    def huge(tensors):
        tensors["moments/vision_offset"][0] = 3e38
    with pytest.raises(ProfileError, match="implausible"):
        third.import_file(_rewrite(path, tmp_path / "huge.safetensors", huge))
    assert len(third.moments()) == 1  # nothing of the refused files came in


def test_a_damaged_offsets_file_makes_those_offsets_unknown_and_keeps_the_moments(profile, tmp_path):
    m = moment(seed=8)
    m.offsets = _offsets(0.5)
    profile.add(m, label=1)
    profile.add(moment(seed=9), label=-1)
    path = profile._current() / "vision_offset.npy"
    off = np.load(path)
    off[1, 0] = np.inf  # one bad row: only that one is unknown
    np.save(path, off)
    got = profile.split().feats["vision"]
    np.testing.assert_allclose(got[0], m.features["vision"] + 0.5, atol=1e-6)
    assert np.isnan(profile._read()[1]["vision_offset"][1]).all()
    np.save(path, np.zeros((5, 3), np.float32))  # the wrong shape: every offset unknown, the moments still there
    assert len(profile.moments()) == 2
    np.testing.assert_array_equal(profile.split().feats["vision"][0], m.features["vision"])
    profile.export(tmp_path / "out.safetensors")  # what export writes, import takes
    assert Profile(tmp_path / "again", new_profile_id(), DIMS).import_file(tmp_path / "out.safetensors")["moments_added"] == 2
