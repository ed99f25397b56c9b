"""The real-data benchmark end to end on a small subset of ../shared/data (slow)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdemo import benchmark
from mmdemo.checkpoint import MeanOfModels, load_fusion
from mmdemo.data import FeatureDataset, Split
from mmdemo.fusion import list_fusions
from mmdemo.fusion.base import LOSSES
from mmdemo.pairing import PairingConfig, build_paired, polarity_class
from mmdemo.pipeline import Engine
from mmdemo.synthetic import SyntheticSpec, make_synthetic

from tests.media import SHARED

needs_data = pytest.mark.skipif(not (SHARED / "cmu-mosi" / "labels.csv").exists(), reason="../shared/data not present")


def test_the_face_head_is_also_scored_without_fer2013_s_copies_of_training_images(tmp_path, monkeypatch):
    import cv2

    folder = tmp_path / "fer2013-faces"
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(3)]
    rows = ["clip_id,path,emotion,polarity,split"]
    for clip, k, split in (("tr0", 0, "train"), ("tr1", 1, "train"), ("te_copy", 0, "test"), ("te_new", 2, "test"), ("te_noface", 1, "test")):
        (folder / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / split / f"{clip}.png"), imgs[k])
        rows.append(f"{clip},{split}/{clip}.png,happy,1,{split}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    # the face features hold the test images in which a face was found: the copy and the new one
    test = Split(feats={"vision": np.zeros((2, 3), np.float32)}, present={"vision": np.ones(2, bool)},
                 labels=np.array([1.0, -1.0], np.float32), ids=np.array(["te_copy", "te_new"]))
    fer = FeatureDataset({"train": test, "valid": test, "test": test}, {})
    read = []
    monkeypatch.setattr(benchmark, "Batches", lambda split, *a: split)
    monkeypatch.setattr(benchmark, "predict", lambda model, split: read.append(list(split.ids)) or np.full(len(split), -1.0))
    model = type("Model", (), {"modalities": ("vision",), "device": "cpu"})()
    rep = benchmark.fer_distinct_report(tmp_path, fer, model)
    assert read == [["te_new"]] and rep["n_test"] == 1 and rep["copies_left_out"] == 1
    assert rep["model"]["polarity3"]["accuracy"] == 1.0  # te_new (-1) read as -1
    assert benchmark.fer_distinct_report(tmp_path / "elsewhere", fer, model) is None  # no corpus there
    # the face head's choices leave FER-2013's valid copies out the same way
    paths, ids = benchmark.fer_copies(tmp_path)
    assert paths == {"test/te_copy.png", "test/te_noface.png"} and ids == {"te_copy", "te_noface"}
    less = benchmark.without_ids(fer, "valid", ids)
    assert list(less.splits["valid"].ids) == ["te_new"] and list(less.splits["test"].ids) == ["te_copy", "te_new"]
    assert benchmark.fer_copies(tmp_path / "elsewhere") == (set(), set())


def test_pairing_keeps_splits_apart_and_follows_its_probabilities():
    spec = SyntheticSpec(sizes=(3000, 300, 300), seq_len=0, dims={"text": 4, "audio": 3, "vision": 2}, signal={"text": 1.0}, seed=2)
    base = make_synthetic(spec)
    one = lambda m: FeatureDataset(  # noqa: E731
        {s: Split(feats={m: sp.feats[m]}, present={m: sp.present[m]}, labels=sp.labels,
                            ids=[f"{m}-{s}-{i}" for i in sp.ids]) for s, sp in base.splits.items()}, {"source": m})
    cfg = PairingConfig(absent={"text": 0.1, "audio": 0.2, "vision": 0.3}, disagree={"text": 0.0, "audio": 0.2, "vision": 0.0}, seed=1)
    paired = build_paired({"text": one("text"), "audio": one("audio"), "vision": one("vision")}, cfg)
    for s, sp in paired.splits.items():
        for ids in sp.ids:  # every part comes from the same split
            assert all(f"-{s}-" in part for part in ids.split("|") if part)
    tr = paired.splits["train"]
    for m, p in (("text", 0.1), ("audio", 0.2), ("vision", 0.3)):
        assert abs((~tr.present[m]).mean() - p) < 0.03
    # vision never disagrees: every vision sample has the target's polarity class
    counts = paired.meta["counts"]["train"]
    assert counts["vision"]["disagree"] == 0 and counts["audio"]["disagree"] > 0
    assert set(polarity_class(tr.labels, 0.5)) <= {-1, 0, 1}


def test_paired_rows_keep_the_transcript_of_the_words_they_hold():
    """A row whose words were swapped for a disagreeing sample stores that sample's transcript."""
    spec = SyntheticSpec(sizes=(400, 60, 60), seq_len=0, dims={"text": 4, "audio": 3, "vision": 2}, signal={"text": 1.0}, seed=4)
    base = make_synthetic(spec)
    words = FeatureDataset({s: Split(feats={"text": sp.feats["text"]}, present={"text": sp.present["text"]}, labels=sp.labels,
                                     ids=[f"w{s}{i}" for i in range(len(sp))], text=[f"transcript of w{s}{i}" for i in range(len(sp))])
                            for s, sp in base.splits.items()}, {"source": "words"})
    other = FeatureDataset({s: Split(feats={"audio": sp.feats["audio"]}, present={}, labels=sp.labels, ids=[f"a{s}{i}" for i in range(len(sp))])
                            for s, sp in base.splits.items()}, {"source": "voice"})
    cfg = PairingConfig(absent={"text": 0.1, "audio": 0.0}, disagree={"text": 0.4, "audio": 0.0}, seed=3)
    paired = build_paired({"text": words, "audio": other}, cfg)
    swapped = 0
    for sp in paired.splits.values():
        for ids, text, has in zip(sp.ids, sp.text, sp.present["text"]):
            word_id = next((p.split(":", 1)[1] for p in ids.split("|") if p.startswith("text:")), None)
            assert (word_id is None) == (not has)
            assert text == (f"transcript of {word_id}" if has else "")
        swapped += paired.meta["counts"]["train"]["text"]["disagree"]
    assert swapped > 50


@pytest.mark.slow
@needs_data
def test_quick_benchmark_writes_tables_checkpoints_and_a_model_card(tmp_path, monkeypatch):
    out = tmp_path / "results"
    assert benchmark.main(["--data", str(SHARED), "--out", str(out), "--quick", "--quiet", "--device", "cpu", "--expression-cnn", "fer"]) == 0
    md = (out / "benchmark.md").read_text()
    for section in ("Words: CMU-MOSI", "Words: CMU-MOSEI", "Voice across corpora", "Face:", "Fusion on paired examples", "What the encoders returned"):
        assert section in md
    assert "published" in md and "M-BERT" in md
    # honest comparisons: every published row says its Acc-2 convention; a MOSI-only row over seeds
    assert "Acc-2 convention" in md and "zero = negative" in md and "Like-for-like" in md
    res = json.loads((out / "benchmark.json").read_text())
    assert res["words"]["chosen"] in ("frozen", "fine-tuned")
    like = res["words"]["mosi_only"]
    assert len(like["runs"]) == len(like["seeds"]) >= 2 and set(like["mean_std"]) >= {"mae", "acc2_has0", "acc2_non0", "acc2_zero_neg"}
    # the words head learned from out-of-fold features of the train texts (never in-sample ones)
    oof = res["words"]["out_of_fold"]
    assert oof["folds"] >= 2 and len(oof["valid_mae"]) == oof["folds"] and oof["by"] == "video"
    assert "sampled" in md  # the paired-fusion table says where its "all modalities help" comes from
    assert set(res["fusion"]["methods"]) == set(list_fusions())
    ckpt = out / "checkpoints"
    card = (ckpt / "README.md").read_text()
    assert "No corpus pairs the three modalities" in card and "CC BY-NC-SA" in card
    for m in ("text", "audio", "vision"):
        assert load_fusion(ckpt / "unimodal" / m).modalities == (m,)
    for name in list_fusions():
        assert json.loads((ckpt / "fusion" / name / "metrics.json").read_text())["test"]["mae"] > 0
    # voice: every corpus held out once; the models read per-speaker z-scores or raw features, as recorded
    assert set(res["voice"]["loco"][res["voice"]["chosen"]]["corpora"]) == {"ravdess", "ased", "emospeech"}
    tried = [v["config"] for v in res["voice"]["loco"].values()]
    assert {c["norm"] for c in tried} == {"speaker", "none"} and {c["head"] for c in tried} == {"linear", "mlp"}  # both paths run
    for v in res["voice"]["loco"].values():  # statistics from one mood, reported where the features use them
        assert all(("test_one_class" in r) == (v["config"]["norm"] == "speaker") for r in v["corpora"].values())
    assert set(res["voice"]["in_corpus"]) == {"ravdess", "ased", "emospeech"} and "what the features carry at best" in md
    assert (ckpt / "voice_features.json").exists() and "ASED" in card
    assert res["voice"]["espeak"] is None or len(res["voice"]["espeak"]) >= 3  # synthetic neutral speech read (espeak-ng installed)
    # face: trained on the photos and FER-2013, read on both test sets, also without fer's in-sample probabilities
    assert "FER-2013 test images" in md and "CNN probabilities left out" in md and "*in-sample*" in md
    assert res["face"]["train_items"]["fer2013"] > 0 and {"model", "model_with_fer_probabilities", "insample_head"} <= set(res["face"]["fer_test"])
    assert res["face"]["fer_test_distinct"]["n_test"] > 0  # FER-2013 test less its copies of training images (below)
    assert set(res["face"]["valid_macro_f1"]) == {"photos", "fer2013"}  # chosen on both corpora's validation folds
    # ... and on how steady its reading of the validation people's steady-expression videos is, the loss chosen too
    assert set(res["face"]["valid_steady"]) == {"photos", "fer2013"} and all(0 <= v <= 1 for v in res["face"]["valid_steady"].values())
    assert res["face"]["head"]["loss"] in LOSSES and "steady-expression videos" in md
    assert json.loads((ckpt / "unimodal" / "vision" / "config.json").read_text())["config"]["loss"] == res["face"]["head"]["loss"]
    assert res["face"]["expression_cnn"] == "fer" and not (ckpt / "unimodal" / "vision" / "expression.safetensors").exists()
    # the live pipeline runs on what the benchmark wrote
    engine = Engine(ckpt, device="cpu")
    assert (engine.voice_prior is not None) == (res["voice"]["features"] == "speaker_z")
    assert engine.available_fusions() == list_fusions()
    up = engine.session("weighted").set_text("what a lovely day", t=0.0)
    assert up.present["text"] and abs(sum(up.shapley.values()) - (up.prediction - up.baseline)) < 1e-4
    # a rerun can take the fine-tuned text encoders of this one (not with other settings)
    with pytest.raises(SystemExit, match="fine-tuned with"):
        benchmark.main(["--data", str(SHARED), "--out", str(tmp_path / "other"), "--quick", "--quiet", "--device", "cpu",
                        "--reuse-words", str(out), "--finetune-layers", "1"])
    again = tmp_path / "again"
    # ... and this rerun, with the defaults, trains mmdemo's own expression CNN on FER-2013 train: the face feature reads with it
    neutral_fer = json.loads((ckpt / "neutral_reference.json").read_text())
    assert benchmark.main(["--data", str(SHARED), "--out", str(again), "--quick", "--quiet", "--device", "cpu", "--reuse-words", str(out),
                           "--checkpoints", str(ckpt)]) == 0
    res2 = json.loads((again / "benchmark.json").read_text())
    md2 = (again / "benchmark.md").read_text()
    shipped_cnn = ckpt / "unimodal" / "vision" / "expression.safetensors"
    assert shipped_cnn.exists() and (ckpt / "unimodal" / "vision" / "expression.json").exists()
    assert res2["face"]["expression_cnn"].startswith("mmdemo") and res2["expression"]["fer2013_test"]["n"] > 0
    assert "model_with_fer_probabilities" not in res2["face"]["fer_test"] and "expression CNN alone" in md2 and "*in-sample*" not in md2
    assert "test images that are copies of training images" in md2
    assert "copies of training images" in (ckpt / "README.md").read_text()  # the model card says what FER-2013's test holds
    assert Engine(ckpt, device="cpu").face.expression == shipped_cnn
    # the shipped face head is the mean of the heads (seeds) the validation people chose, and loads as one
    members = res2["face"]["members"]
    assert [t["members"] for t in members["tried"]] == [1, 2] and members["chosen"] in (1, 2)
    assert members["seeds"] == list(range(members["chosen"]))
    config = json.loads((ckpt / "unimodal" / "vision" / "config.json").read_text())
    assert config.get("members", 1) == members["chosen"]
    assert isinstance(load_fusion(ckpt / "unimodal" / "vision"), MeanOfModels) == (members["chosen"] > 1)
    assert res2["face"]["valid_macro_f1"] == next(t for t in members["tried"] if t["members"] == members["chosen"])["valid_macro_f1"]  # the chosen mean's numbers
    # --only face: the face stage again on that run's tables and the expression CNN it shipped; the same seed gives the same tables
    # (but for the encoders' table: the face corpora's extraction is the rerun's, its seconds and cache hits)
    def tables(text: str) -> str:
        start = text.index(benchmark.ENCODERS_SECTION)
        return text[:start] + text[text.index("\n### ", start + 1):]

    before_json = json.loads((again / "benchmark.json").read_text())
    assert benchmark.main(["--data", str(SHARED), "--out", str(again), "--quick", "--quiet", "--device", "cpu", "--only", "face",
                           "--checkpoints", str(ckpt)]) == 0
    after_md = (again / "benchmark.md").read_text()
    after_json = json.loads((again / "benchmark.json").read_text())
    assert tables(after_md) == tables(md2) and benchmark.encoder_summary(after_json["encoders"]) in after_md
    assert after_json["face"] == before_json["face"] and after_json["fusion"] == before_json["fusion"]
    assert json.loads((ckpt / "unimodal" / "vision" / "provenance.json").read_text())["generated_by"].endswith("--only face")
    # ... another seed: other heads, only the face section of the tables changes
    assert benchmark.main(["--data", str(SHARED), "--out", str(again), "--quick", "--quiet", "--device", "cpu", "--only", "face",
                           "--checkpoints", str(ckpt), "--seed", "3"]) == 0
    md3 = (again / "benchmark.md").read_text()
    cut = lambda text: (text[:text.index(benchmark.FACE_SECTION)], text[text.index(benchmark.AFTER_FACE):])  # noqa: E731
    assert cut(tables(md3)) == cut(tables(md2)) and md3 != md2 and json.loads((again / "benchmark.json").read_text())["face"]["members"]["seeds"][0] == 3
    # ... refused without an earlier full run's tables, or with another expression CNN than that run's
    with pytest.raises(SystemExit, match="no tables of an earlier full run"):
        benchmark.main(["--data", str(SHARED), "--out", str(tmp_path / "none"), "--quick", "--quiet", "--only", "face", "--checkpoints", str(ckpt)])
    with pytest.raises(SystemExit, match="not fer's"):
        benchmark.main(["--data", str(SHARED), "--out", str(again), "--quick", "--quiet", "--only", "face", "--checkpoints", str(ckpt),
                        "--expression-cnn", "fer"])
    with pytest.raises(SystemExit, match="was --quick"):
        benchmark.main(["--data", str(SHARED), "--out", str(again), "--quiet", "--only", "face", "--checkpoints", str(ckpt)])
    # the neutral face the calibration compares with is read with the same CNN: same blendshapes and pose, other expression part
    neutral_own = json.loads((ckpt / "neutral_reference.json").read_text())
    face_fer, face_own = (np.array(n["vectors"]["vision"]) for n in (neutral_fer, neutral_own))
    assert np.allclose(face_fer[:-7], face_own[:-7]) and not np.allclose(face_fer[-7:], face_own[-7:])
    # back to fer's CNN: the shipped CNN goes, so the live face reads with fer's again
    assert benchmark.main(["--data", str(SHARED), "--out", str(tmp_path / "fer"), "--quick", "--quiet", "--device", "cpu",
                           "--reuse-words", str(out), "--checkpoints", str(ckpt), "--expression-cnn", "fer"]) == 0
    assert not shipped_cnn.exists() and not (ckpt / "unimodal" / "vision" / "expression.json").exists()
    assert Engine(ckpt, device="cpu").face.expression is None
    # --only face on a run that read expressions with fer's CNN: refused with mmdemo's CNN or without that run's checkpoints; done with
    # fer's, here made to ship a mean of heads: its FER-2013 table shows one of them alone beside it, and the model card says so
    fer_run = tmp_path / "fer"
    only = ["--data", str(SHARED), "--out", str(fer_run), "--quick", "--quiet", "--device", "cpu", "--only", "face"]
    with pytest.raises(SystemExit, match="pass --expression-cnn fer"):
        benchmark.main([*only, "--checkpoints", str(ckpt)])
    with pytest.raises(SystemExit, match="no checkpoints of a full run"):
        benchmark.main([*only, "--checkpoints", str(tmp_path / "elsewhere"), "--expression-cnn", "fer"])
    with monkeypatch.context() as mp:
        mp.setattr(benchmark, "QUICK_FACE_MEMBERS", (2,))
        assert benchmark.main([*only, "--checkpoints", str(ckpt), "--expression-cnn", "fer"]) == 0
    face_fer = json.loads((fer_run / "benchmark.json").read_text())["face"]
    assert face_fer["members"]["chosen"] == 2 and "one_head" in face_fer["fer_test"]
    assert isinstance(load_fusion(ckpt / "unimodal" / "vision"), MeanOfModels)
    fer_md = (fer_run / "benchmark.md").read_text()
    assert "one of those heads alone (seed 0), CNN probabilities left out" in fer_md and "*in-sample*" in fer_md
    assert "the mean of 2 heads of one configuration, trained with seeds 0, 1" in (ckpt / "README.md").read_text()
    # the voice head it replaced is read on the same test speakers, beside the new one
    assert set(res2["voice"]["before"]) == {"ravdess", "ased", "emospeech"} and "shipped before this run" in (again / "benchmark.md").read_text()
    assert res2["voice"]["before_from"]  # which checkpoints the "before" columns read (--before DIR, else the replaced ones)
    assert res2["words"]["finetune"]["reused_from"] == out.name and res2["words"]["mosi_only"]["runs"] == like["runs"]
    assert all((again / "words_oof" / f"fold{f}" / "encoder.safetensors").exists() for f in range(oof["folds"]))  # reusable in turn
    # a run stopped after its words (no benchmark.json yet) keeps its fine-tuning: words.json is written before the rest
    partial = tmp_path / "partial"
    shutil.copytree(again / "words_finetuned", partial / "words_finetuned")
    shutil.copytree(again / "words_oof", partial / "words_oof")
    shutil.copyfile(again / benchmark.WORDS_DONE, partial / benchmark.WORDS_DONE)
    ftcfg = benchmark.FinetuneConfig(epochs=1, seed=0, device="cpu")
    kept = benchmark.reused_words(partial, ftcfg, oof["folds"])
    assert kept["mosi_only"]["runs"] == like["runs"] and kept["finetune"] == res2["words"]["finetune"]
    # the expression CNN of a run can be taken again (same settings only): same file shipped, its numbers carried over
    from mmdemo.expression import ExpressionConfig

    with pytest.raises(SystemExit, match="trained with"):
        benchmark.reused_expression(again, ExpressionConfig(width=16, epochs=1))
    with pytest.raises(SystemExit, match="no expression CNN"):
        benchmark.reused_expression(tmp_path / "fer", ExpressionConfig(width=8, epochs=1))
    third = tmp_path / "third"
    assert benchmark.main(["--data", str(SHARED), "--out", str(third), "--quick", "--quiet", "--device", "cpu", "--reuse-words", str(out),
                           "--checkpoints", str(ckpt), "--expression-cnn", "own", "--reuse-expression", str(again)]) == 0
    res3 = json.loads((third / "benchmark.json").read_text())
    assert res3["expression"]["reused_from"] == again.name and res3["expression"]["fer2013_test"] == res2["expression"]["fer2013_test"]
    assert shipped_cnn.read_bytes() == (again / "expression" / "expression.safetensors").read_bytes()
    assert res3["face"]["model"] == res2["face"]["model"]  # the same CNN gives the same face features, so the same face head


def test_out_of_fold_words_features_never_come_from_a_model_that_saw_the_text(tmp_path, monkeypatch):
    """Stacking without leakage: every train text is embedded by an encoder fine-tuned without it
    (and without any other segment of its video)."""
    import numpy as np

    from mmdemo import benchmark as bm

    n = 90
    videos = {f"c{i}": f"v{i % 13}" for i in range(n)}
    tr = Split(feats={"text": np.zeros((n, 4), np.float32)}, present={"text": np.arange(n) != 5}, labels=np.zeros(n),
               ids=[f"c{i}" for i in range(n)], text=[f"text {i}" for i in range(n)])
    va = Split(feats={"text": np.zeros((3, 4), np.float32)}, present={}, labels=np.zeros(3), ids=["a", "b", "c"], text=["x", "y", "z"])
    words = FeatureDataset({"train": tr, "valid": va, "test": va}, {})
    trained_on: dict[str, set] = {}

    def fake_finetune(texts, labels, vt, vl, cfg, progress=True):
        return {"overlay": {"k": set(texts)}, "valid_mae": 1.0, "seconds": 0.0}

    def fake_save(overlay, folder, meta):
        trained_on[str(folder)] = overlay["k"]
        return folder

    class FakeEncoder:
        def __init__(self, device=None, overlay=None):
            self.seen = trained_on[str(overlay)]

        def encode_batch(self, texts):
            assert not set(texts) & self.seen, "a text was embedded by a model fine-tuned on it"
            vid = {videos[f"c{t.split()[1]}"] for t in texts}
            assert not any(videos[f"c{t.split()[1]}"] in vid for t in self.seen), "a video spans fit and held-out texts"
            return np.ones((len(texts), 4), np.float32), [""] * len(texts)

    monkeypatch.setattr(bm, "finetune", fake_finetune)
    monkeypatch.setattr(bm, "save_overlay", fake_save)
    monkeypatch.setattr(bm, "WordsEncoder", FakeEncoder)
    feats, info = bm.out_of_fold_features(words, videos, 3, None, tmp_path, "cpu", False)
    assert info["folds"] == 3 and len(trained_on) == 3
    assert (feats[tr.present["text"]] == 1).all() and (feats[5] == 0).all()  # every present text got its out-of-fold feature
    folds = bm.fold_of([videos[i] for i in tr.ids], 3)
    assert set(folds) == {0, 1, 2} and list(folds) == list(bm.fold_of([videos[i] for i in tr.ids], 3))


def test_out_of_fold_reuse_fine_tunes_only_the_folds_an_earlier_run_does_not_have(tmp_path, monkeypatch):
    """--reuse-words with an out-of-fold encoder missing (a run stopped in the middle, or one deleted):
    the folds that are there are only embedded again, the missing one is fine-tuned, and the record says which is which."""
    from mmdemo import benchmark as bm

    n = 60
    videos = {f"c{i}": f"v{i % 9}" for i in range(n)}
    tr = Split(feats={"text": np.zeros((n, 4), np.float32)}, present={"text": np.ones(n, bool)}, labels=np.zeros(n),
               ids=[f"c{i}" for i in range(n)], text=[f"text {i}" for i in range(n)])
    va = Split(feats={"text": np.zeros((3, 4), np.float32)}, present={}, labels=np.zeros(3), ids=["a", "b", "c"], text=["x", "y", "z"])
    words = FeatureDataset({"train": tr, "valid": va, "test": va}, {})
    earlier = tmp_path / "earlier"
    for f in (0, 2):  # fold 1's encoder is not there
        (earlier / "words_oof" / f"fold{f}").mkdir(parents=True)
        (earlier / "words_oof" / f"fold{f}" / "encoder.safetensors").write_bytes(f"fold {f}".encode())
    (earlier / "words_finetuned").mkdir()
    (earlier / "words_finetuned" / "encoder.safetensors").write_bytes(b"main")
    cfg = bm.FinetuneConfig(epochs=1)
    folds = bm.fold_of([videos[i] for i in tr.ids], 3)
    fit = [int((folds != f).sum()) for f in range(3)]
    (earlier / bm.WORDS_DONE).write_text(json.dumps({"words": {
        "finetune": {"config": bm.jsonable(dataclasses.asdict(cfg))}, "mosi_only": None,
        "out_of_fold": {"folds": 3, "by": "video", "valid_mae": [0.5, 0.6, 0.7], "train_texts": fit, "seconds": 99.0, "seconds_this_run": 5.0}}}))
    reuse = bm.reused_words(earlier, cfg, 3)
    assert reuse["oof_folds"] == [0, 2]
    tuned = []

    def fake_finetune(texts, labels, vt, vl, c, progress=True):
        tuned.append(len(texts))
        return {"overlay": {}, "valid_mae": 0.25, "seconds": 3.0}

    def fake_save(overlay, folder, meta):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "encoder.safetensors").write_bytes(b"new")
        return Path(folder) / "encoder.safetensors"

    class FakeEncoder:  # embeds with a value that says which encoder file it read
        def __init__(self, device=None, overlay=None):
            self.value = {b"fold 0": 10.0, b"fold 2": 12.0, b"new": 7.0}[Path(overlay).read_bytes()]

        def encode_batch(self, texts):
            return np.full((len(texts), 4), self.value, np.float32), [""] * len(texts)

    monkeypatch.setattr(bm, "finetune", fake_finetune)
    monkeypatch.setattr(bm, "save_overlay", fake_save)
    monkeypatch.setattr(bm, "WordsEncoder", FakeEncoder)
    out = tmp_path / "out"
    seen = []
    feats, info = bm.out_of_fold_features(words, videos, 3, cfg, out, "cpu", False, reuse, on_fold=lambda i: seen.append(dict(i)))
    folds = bm.fold_of([videos[i] for i in tr.ids], 3)
    assert len(tuned) == 1 and len(seen) == 1  # one fold fine-tuned, and reported when done (words.json is written then)
    assert (feats[:, 0] == np.array([10.0, 7.0, 12.0])[folds]).all()  # each fold embedded by its own encoder
    assert info["reused_folds"] == [0, 2] and info["reused_from"] == earlier.name
    assert info["valid_mae"] == [0.5, 0.25, 0.7] and info["train_texts"][1] == tuned[0]
    assert info["seconds"] == 99.0 and info["seconds_this_run"] == 3.0
    assert [(out / "words_oof" / f"fold{f}" / "encoder.safetensors").read_bytes() for f in range(3)] == [b"fold 0", b"new", b"fold 2"]
    # this run's folder, reused in turn, re-does nothing and does not claim the time its source spent
    (out / "words_finetuned").mkdir()
    (out / "words_finetuned" / "encoder.safetensors").write_bytes(b"main")
    (out / bm.WORDS_DONE).write_text(json.dumps({"words": {"finetune": {"config": bm.jsonable(dataclasses.asdict(cfg))}, "out_of_fold": info}}))
    _, info2 = bm.out_of_fold_features(words, videos, 3, cfg, tmp_path / "out2", "cpu", False, bm.reused_words(out, cfg, 3))
    assert len(tuned) == 1 and info2["reused_folds"] == [0, 1, 2] and "seconds_this_run" not in info2 and info2["valid_mae"] == [0.5, 0.25, 0.7]
    # a fold of other texts (other data, or --quick) is refused, not mixed in
    bad = dict(info, train_texts=[fit[0] + 1, fit[1], fit[2]])
    (out / bm.WORDS_DONE).write_text(json.dumps({"words": {"finetune": {"config": bm.jsonable(dataclasses.asdict(cfg))}, "out_of_fold": bad}}))
    with pytest.raises(SystemExit, match="other data"):
        bm.out_of_fold_features(words, videos, 3, cfg, tmp_path / "out3", "cpu", False, bm.reused_words(out, cfg, 3))
    # without the main encoder, nothing is reused
    (earlier / "words_finetuned" / "encoder.safetensors").unlink()
    with pytest.raises(SystemExit, match="missing"):
        bm.reused_words(earlier, cfg, 3)


def test_reuse_expression_refuses_what_this_run_would_not_have_trained(tmp_path):
    from mmdemo import benchmark as bm
    from mmdemo.expression import ExpressionConfig, ExpressionNet, save_expression

    cfg = ExpressionConfig(width=8, epochs=1)
    save_expression(ExpressionNet(cfg.width, cfg.dropout), tmp_path / "run" / "expression", cfg, {"limit": 40, "fer2013_test": {"n": 40}})
    got = bm.reused_expression(tmp_path / "run", cfg, 40)
    assert got["result"]["fer2013_test"] == {"n": 40} and got["dir"] == tmp_path / "run" / "expression"
    with pytest.raises(SystemExit, match="at most 40 images"):  # a quick run's CNN for a full run
        bm.reused_expression(tmp_path / "run", cfg, None)
    with pytest.raises(SystemExit, match="trained with"):
        bm.reused_expression(tmp_path / "run", ExpressionConfig(width=16, epochs=1), 40)
    (tmp_path / "run" / "expression" / "expression.safetensors").write_bytes(b"\x00" * 64)  # damaged: refused, not a traceback
    with pytest.raises(SystemExit, match="no expression CNN"):
        bm.reused_expression(tmp_path / "run", cfg, 40)
    with pytest.raises(SystemExit, match="no expression CNN"):
        bm.reused_expression(tmp_path / "nothing", cfg, 40)


@pytest.mark.parametrize("extra, says", [
    (["--mosi-seeds", "-1"], "--mosi-seeds"),
    (["--finetune-epochs", "0"], "--finetune-epochs=0"),
    (["--finetune-layers", "0"], "--finetune-layers=0"),
    (["--finetune-layers", "7"], "--finetune-layers=7"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--out", "FILE"], "--out:"),
    (["--checkpoints", "FILE"], "--checkpoints:"),
    (["--before", "FILE"], "no readable voice head there"),
    (["--before", ".", "--only", "face"], "--before goes with a full run"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, extra, says):
    (tmp_path / "FILE").write_text("a file, not a folder")
    argv = ["--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"), "--quiet"]
    argv += [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    with pytest.raises(SystemExit) as e:
        benchmark.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "missing" not in err  # refused for itself, not for the data


def test_finetune_settings_out_of_range_are_refused_where_they_are_made():
    with pytest.raises(ValueError, match="epochs=0.*train_layers=0"):
        benchmark.FinetuneConfig(train_layers=0, epochs=0)
    for layers in (2.0, True, 7):
        with pytest.raises(ValueError, match="train_layers"):
            benchmark.FinetuneConfig(train_layers=layers)
