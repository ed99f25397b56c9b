"""Cross-corpus metrics and label mapping, on hand-made numbers."""

import numpy as np
import pytest

from mmdemo.crosscorpus import auc, balanced_index, class_report, targets_met, voice_labels
from mmdemo.metrics import macro_f1


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
    assert macro_f1(truth, pred) == pytest.approx((2 / 3 + 0.8) / 2)


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


def test_selection_score_handles_missing_classes():
    from mmdemo.crosscorpus import selection_score

    cls = np.array([-1] * 10 + [1] * 10)  # no neutral clips
    perfect = class_report(np.concatenate([np.full(10, -1.0), np.full(10, 1.0)]), cls)
    assert perfect["mean"]["neutral"] is None
    assert selection_score({"a": {"select": perfect}}) == pytest.approx(1.0)  # no neutral: no penalty, not a crash
    only_pos = class_report(np.ones(5), np.ones(5, int))  # no negative clip: AUC and share cannot be measured
    assert np.isnan(only_pos["auc_pos_neg"])
    score = selection_score({"a": {"select": only_pos}})
    assert np.isfinite(score) and score < selection_score({"a": {"select": perfect}})


def _corpus(name, rng, shift, n_spk=6, per=12):
    from mmdemo.crosscorpus import TARGET, Corpus

    cls = np.tile(np.array([-1, 0, 1]), n_spk * per // 3)
    spk = np.repeat([f"{name}{k}" for k in range(n_spk)], per)
    base = rng.normal(0, 3, (n_spk, 6))[np.repeat(np.arange(n_spk), per)]  # each speaker's own baseline
    x = base + shift + rng.normal(0, 0.3, (len(cls), 6))
    x[:, 0] += 1.0 * cls  # the valence cue, the same in every corpus
    split = np.where(np.repeat(np.arange(n_spk), per) < n_spk - 2, "train", np.where(np.repeat(np.arange(n_spk), per) == n_spk - 2, "valid", "test"))
    return Corpus(name, x.astype(np.float32), cls, (TARGET * cls).astype(np.float32), spk, split, np.array([f"{name}-{i}" for i in range(len(cls))]))


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_leave_one_corpus_out_finds_a_shared_cue_under_speaker_and_corpus_shifts(head):
    from mmdemo.crosscorpus import VoiceConfig, leave_one_corpus_out
    from mmdemo.train import TrainConfig

    rng = np.random.default_rng(0)
    corpora = [_corpus(n, rng, s) for n, s in (("a", 0.0), ("b", 5.0), ("c", -4.0))]
    tcfg = TrainConfig(epochs=30, patience=30, batch_size=64, lr=1e-2, modality_dropout=0.0)
    res = leave_one_corpus_out(corpora, VoiceConfig("speaker", hidden=16, dropout=0.0, head=head), tcfg)
    for name, r in res.items():
        assert r["test"]["auc_pos_neg"] > 0.9, (name, r["test"])
        assert r["test"]["order_ok"]
        assert set(r["test_one_class"]) == {"negative", "neutral", "positive"}
    # statistics from one mood shift the readings: a speaker heard only in positive clips reads
    # every clip lower than one heard only in negative clips (the cost the one-class rows show)
    for name, r in res.items():
        one = r["test_one_class"]
        assert one["positive"]["mean"]["neutral"] < one["negative"]["mean"]["neutral"], name


def test_the_linear_head_is_a_head_not_a_fusion_method(tmp_path):
    import torch

    from mmdemo.checkpoint import load_fusion, save_fusion
    from mmdemo.fusion import HEADS, create_fusion, list_fusions

    from mmdemo.fusion import FUSIONS, register

    assert "linear" in HEADS and "linear" not in list_fusions()
    with pytest.raises(ValueError, match="registered twice"):  # a fusion method cannot take a head's name
        register("linear")(type("Other", (HEADS["linear"],), {}))
    assert "linear" not in FUSIONS and HEADS["linear"].__name__ == "LinearHead"
    with pytest.raises(KeyError, match="unimodal heads: linear"):
        create_fusion("nope", dims={"audio": 2})
    model = create_fusion("linear", dims={"audio": 4, "vision": 3})
    x = {"audio": torch.randn(5, 4), "vision": torch.randn(5, 2, 3)}
    present = {"audio": torch.tensor([True, True, False, True, True]), "vision": torch.ones(5, dtype=torch.bool)}
    model.eval()
    out = model(x, present)
    assert out.prediction.shape == (5,) and out.weights is None
    x2 = dict(x, audio=x["audio"].clone())
    x2["audio"][2] += 100.0  # an absent modality's values are never read
    assert torch.allclose(model(x2, present).prediction, out.prediction)
    save_fusion(model, tmp_path / "m")
    again = load_fusion(tmp_path / "m")
    assert torch.allclose(again(x, present).prediction, out.prediction)


def test_the_before_columns_read_the_head_in_the_folder_named(tmp_path, monkeypatch):
    """``benchmark --before DIR``: the "head before" columns read DIR's voice head (with DIR's own
    normalisation: raw features when DIR has no per-speaker statistics), not the head the run trains."""
    import torch

    from mmdemo import crosscorpus
    from mmdemo.checkpoint import save_fusion
    from mmdemo.crosscorpus import VoiceConfig, previous_voice_head, voice_stage
    from mmdemo.fusion import create_fusion
    from mmdemo.train import TrainConfig

    monkeypatch.setattr(crosscorpus, "espeak_readings", lambda *a, **k: None)  # no speech synthesis here
    rng = np.random.default_rng(0)
    corpora = [_corpus(n, rng, s) for n, s in (("a", 0.0), ("b", 5.0), ("c", -4.0))]
    old = create_fusion("linear", dims={"audio": 6})
    with torch.no_grad():
        for p in old.parameters():
            p.zero_()
        old.set_normalization({"audio": (torch.zeros(6), torch.ones(6))})
        list(old.parameters())[-2][0, 1] = 0.05  # reads feature 1 as it comes (raw: each corpus and speaker at its own level)
        list(old.parameters())[-1].fill_(0.8)  # and a bias
    save_fusion(old, tmp_path / "OLD" / "unimodal" / "audio")
    assert previous_voice_head(tmp_path / "nothing") is None
    before = previous_voice_head(tmp_path / "OLD")
    assert before[1].norm == "none"  # no voice_features.json there: the old head read raw features
    tcfg = TrainConfig(epochs=20, patience=20, batch_size=64, lr=1e-2, modality_dropout=0.0)
    res = voice_stage(corpora, tcfg, grid=[VoiceConfig("speaker", hidden=16, dropout=0.0, head="linear")], before=before)
    old.eval()
    for c in corpora:
        test = c.subset(c.split == "test")
        with torch.no_grad():  # what the old head says of the raw features, computed here
            expected = old({"audio": torch.as_tensor(test.x)}).prediction.numpy()
        for k, name in ((-1, "negative"), (0, "neutral"), (1, "positive")):
            assert res["before"][c.name]["mean"][name] == pytest.approx(float(expected[test.cls == k].mean()), abs=1e-5)
        assert res["test_in_corpus"][c.name]["auc_pos_neg"] > 0.9  # the new head is another model
