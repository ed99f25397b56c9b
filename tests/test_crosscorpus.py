"""Cross-corpus metrics and label mapping, on hand-made numbers."""

import numpy as np
import pytest

from mmdemo.crosscorpus import auc, balanced_index, class_report, macro_f1, targets_met, voice_labels


def test_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # with ties
    y = rng.random(60) > 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auc(s, y) == pytest.approx(np.mean(pairs))
    assert auc(np.array([1.0, 2.0]), np.array([True, True])) != auc(np.array([1.0, 2.0]), np.array([True, True]))  # nan


def test_class_report_sees_a_constant_negative_bias():
    cls = np.array([-1] * 10 + [0] * 10 + [1] * 10)
    biased = np.full(30, -1.5)  # what the old voice head did: everyone negative
    rep = class_report(biased, cls)
    assert rep["negative_share_balanced"] == 1.0 and not rep["order_ok"]
    assert rep["auc_pos_neg"] == 0.5
    assert not any(targets_met(rep).values())
    good = np.concatenate([np.full(10, -1.2), np.linspace(-0.4, 0.4, 10), np.full(10, 1.1)])
    rep = class_report(good, cls)
    assert rep["order_ok"] and rep["auc_pos_neg"] == 1.0 and rep["macro_f1_pos_neg"] == 1.0
    assert all(targets_met(rep).values())
    assert rep["n"] == {"negative": 10, "neutral": 10, "positive": 10}


def test_macro_f1_by_hand():
    pred, truth = np.array([1, 1, -1, -1]), np.array([1, -1, -1, -1])
    # class 1: tp 1 fp 1 fn 0 -> 2/3; class -1: tp 2 fp 0 fn 1 -> 0.8
    assert macro_f1(pred, truth) == pytest.approx((2 / 3 + 0.8) / 2)


def test_balanced_index_repeats_small_groups():
    g = np.array(["a"] * 6 + ["b"] * 2 + ["c"] * 3)
    idx = balanced_index(g, seed=1)
    counts = {k: int((g[idx] == k).sum()) for k in "abc"}
    assert counts == {"a": 6, "b": 6, "c": 6}
    assert set(np.flatnonzero(g == "b")) <= set(idx)  # every original row is kept


def test_voice_labels_map_emotions_to_three_classes(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "clip_id,path,emotion,intensity,polarity,speaker,split\n"
        "a,a.wav,happy,strong,1,s1,train\nb,b.wav,calm,normal,1,s1,train\nc,c.wav,sad,normal,-1,s2,test\n"
        "d,d.wav,surprised,normal,,s2,test\ne,e.wav,neutral,,0,s3,valid\n")
    lab = voice_labels(tmp_path)
    assert set(lab) == {"a", "b", "c", "e"}  # surprised: no clear valence
    assert lab["a"].cls == 1 and lab["a"].target == pytest.approx(2.0)
    assert lab["b"].cls == 0 and lab["b"].target == 0.0  # calm is neutral, not positive
    assert lab["c"].cls == -1 and lab["c"].target == pytest.approx(-1.0) and lab["c"].split == "test"
