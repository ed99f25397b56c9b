"""bench/voice_features.py: the closed-form heads, the feature agreement rule and the choice of a
configuration (made-up data), and one small run on the real voice corpora (slow; skipped without
../shared/data)."""

import json

import numpy as np
import pytest

from tests.helpers import bench_module
from tests.media import SHARED


@pytest.fixture(scope="module")
def vf():
    return bench_module("voice_features")


def test_the_ridge_path_equals_the_weighted_ridge_solved_directly(vf):
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(size=(40, 5)), rng.normal(size=40), rng.uniform(0.2, 3, 40)
    for alpha, (b, c) in zip((0.5, 50.0), vf.ridge_path(x, y, w, (0.5, 50.0))):
        w1 = w / w.sum() * len(w)
        xa = np.hstack([x, np.ones((40, 1))])
        reg = alpha * np.eye(6)
        reg[5, 5] = 0  # the intercept is not shrunk
        direct = np.linalg.solve(xa.T @ (w1[:, None] * xa) + reg, xa.T @ (w1 * y))
        np.testing.assert_allclose(b, direct[:5], atol=1e-8)
        assert c == pytest.approx(direct[5], abs=1e-8)


def test_every_corpus_and_class_weighs_the_same(vf):
    corpus = np.array(["a"] * 6 + ["b"] * 2)
    cls = np.array([1, 1, 1, 1, -1, -1, 1, -1])
    w = vf.balanced_weights(corpus, cls)
    for k in {("a", 1), ("a", -1), ("b", 1), ("b", -1)}:
        m = (corpus == k[0]) & (cls == k[1])
        assert w[m].sum() == pytest.approx(1.0)


def test_only_features_that_carry_valence_the_same_way_in_every_training_corpus_are_kept(vf):
    rng = np.random.default_rng(1)
    cls = np.repeat([1, -1], 200)
    def corpus(sign_of_second):
        z = rng.normal(size=(400, 3))
        z[:, 0] += 1.0 * cls  # the same in both corpora
        z[:, 1] += sign_of_second * 1.0 * cls  # opposite in the second corpus
        return {"z": z, "cls": cls}  # column 2: no effect anywhere
    keep = vf.agreeing([corpus(+1), corpus(-1)], slice(0, 3), 0.3)
    assert keep.tolist() == [True, False, False]
    assert vf.agreeing([corpus(+1), corpus(-1)], slice(0, 3), None).all()


def test_per_speaker_z_scores_remove_each_speaker_s_baseline(vf):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 4))
    speaker = np.repeat(["s1", "s2", "s3"], 20)
    x[speaker == "s2"] += 50.0  # a louder microphone
    z = vf.per_speaker_z(x, speaker)
    for s in ("s1", "s2", "s3"):
        np.testing.assert_allclose(z[speaker == s].mean(0), 0, atol=1e-9)
        np.testing.assert_allclose(z[speaker == s].std(0), 1, atol=1e-6)


def test_a_configuration_is_chosen_by_its_worst_held_out_corpus_then_the_mean(vf):
    scores = {"good_on_average": {"a": (0.95, 0, None), "b": (0.55, 0, None)},
              "even": {"a": (0.70, 0, None), "b": (0.68, 0, None)},
              "even_lower_mean": {"a": (0.68, 0, None), "b": (0.68, 0, None)}}
    assert vf.choose(scores, list(scores)) == "even"
    scores["unmeasurable"] = {"a": (float("nan"), 0, None), "b": (0.99, 0, None)}  # a class missing on a: counts as 0
    assert vf.choose(scores, list(scores)) == "even"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "emospeech-in-the-wild" / "labels.csv").exists(), reason="../shared/data not present")
def test_a_small_run_on_the_real_voice_corpora_writes_its_tables(vf, tmp_path):
    assert vf.main(["--data", str(SHARED), "--limit", "150", "--workers", "1", "--out", str(tmp_path), "--quiet"]) == 0
    res = json.loads((tmp_path / "voice_features.json").read_text())
    assert set(res["corpora"]) == {"ravdess", "ased", "emospeech"}
    for route in res["routes"].values():
        assert set(route["test"]) == set(res["corpora"])
    assert all(0.0 <= v <= 1.0 for v in res["chosen"]["test"].values())  # finite: every split holds every class
    assert (tmp_path / "voice_features.md").read_text().startswith("## Voice features across corpora")
    assert len(list((tmp_path / "voice_features").glob("*.npz"))) == 3  # each corpus's features cached under --out


def _corpus(vf, name, rng, *, speakers=6, per=24, cue=1.0):
    """A made-up corpus in the bench's layout: both feature sets, a valence cue in a few columns."""
    cls = np.tile([-1, 0, 1], speakers * per // 3)
    spk = np.repeat([f"{name}{k}" for k in range(speakers)], per)
    split = np.where(np.repeat(np.arange(speakers), per) < speakers - 2, "train", np.where(np.repeat(np.arange(speakers), per) == speakers - 2, "valid", "test"))
    z = rng.normal(size=(len(cls), vf.EGEMAPS_DIM + vf.COMPARE_DIM))
    z[:, :3] += cue * cls[:, None]  # eGeMAPS columns
    z[:, vf.EGEMAPS_DIM : vf.EGEMAPS_DIM + 3] += cue * cls[:, None]  # ComParE columns
    return {"name": name, "z": z, "cls": cls, "target": 1.5 * cls, "speaker": spk, "split": split}


def test_the_choice_never_reads_the_held_out_test_speakers_labels(vf):
    rng = np.random.default_rng(3)
    corpora = [_corpus(vf, n, rng) for n in ("a", "b", "c")]
    res = vf.loco(corpora)
    chosen = vf.choose(res, list(res))
    for c in corpora:  # the cue carries across corpora: held out, the test speakers read well
        assert res[chosen][c["name"]][1] > 0.9
    shuffled = [dict(c) for c in corpora]
    for c in shuffled:  # every corpus's test labels, classes and targets alike
        test = np.flatnonzero(c["split"] == "test")
        order = rng.permutation(test)
        c["cls"], c["target"] = c["cls"].copy(), c["target"].copy()
        c["cls"][test], c["target"][test] = c["cls"][order], c["target"][order]
    again = vf.loco(shuffled)
    for k in res:  # every selection number is the same, so the choice is too
        for n in res[k]:
            assert again[k][n][0] == res[k][n][0], (k, n)
    assert vf.choose(again, list(again)) == chosen
    assert min(again[chosen][c["name"]][1] for c in shuffled) < 0.8  # while the test scores did change


def test_a_small_sample_keeps_every_split_and_class(vf):
    from mmdemo.crosscorpus import ClipLabel

    labels = {f"{s}{c}{k}": ClipLabel(c, 1.5 * c, f"p{k}", s) for s in ("train", "valid", "test") for c in (-1, 0, 1) for k in range(40)}
    ids = vf.sample(sorted(labels), labels, 45)
    assert len(ids) == 45 and len(set(ids)) == 45
    assert {(labels[i].split, labels[i].cls) for i in ids} == {(s, c) for s in ("train", "valid", "test") for c in (-1, 0, 1)}
    assert vf.sample(sorted(labels), labels, None) == sorted(labels)
    assert vf.sample(sorted(labels), labels, 45) == ids  # seeded


def test_the_speaker_interval_holds_the_auc_and_widens_with_fewer_speakers(vf):
    """Speakers differ (each reads valence with an effect of their own): drawing speakers, not
    clips, is what makes a few speakers' AUC uncertain."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        cls = np.tile([-1, 1], 200)
        many, few = np.repeat(np.arange(40), 10), np.repeat(np.arange(4), 100)
        for speaker in (many, few):
            effect = rng.uniform(-0.5, 1.5, speaker.max() + 1)[speaker]
            pred = cls * effect + rng.normal(size=400)
            point = vf.pos_neg_auc(pred, cls)
            lo, hi = vf.speaker_interval(pred, cls, speaker, n=300, seed=seed)
            lo_c, hi_c = vf.speaker_interval(pred, cls, np.arange(400), n=300, seed=seed)  # each clip its own "speaker"
            assert lo <= point <= hi
            if speaker is few:
                assert hi - lo > hi_c - lo_c, seed  # wider than drawing clips
