import pickle

import numpy as np
import pytest

from mmdemo.data import FeatureDataset, Split, load_dataset, split_by_group
from mmdemo.synthetic import SyntheticSpec, make_synthetic


def test_npz_round_trip(tmp_path):
    ds = make_synthetic(SyntheticSpec(sizes=(20, 5, 7), seq_len=3, missing=0.2, seed=1))
    ds.splits["test"].text = np.array([f"clip {i} — ünïcode" for i in range(7)])
    path = ds.save(tmp_path / "d.npz")
    back = load_dataset(path)
    assert back.dims == ds.dims and back.meta == ds.meta
    for s in ("train", "valid", "test"):
        a, b = ds.splits[s], back.splits[s]
        assert np.array_equal(a.labels, b.labels) and list(a.ids) == list(b.ids)
        for m in ds.modalities:
            assert np.array_equal(a.feats[m], b.feats[m]) and np.array_equal(a.present[m], b.present[m])
    assert back.splits["test"].text[0].endswith("ünïcode")
    assert not (tmp_path / "d.npz.tmp.npz").exists()


@pytest.mark.parametrize("seq_len", [0, 3], ids=["vectors", "sequences"])
def test_a_saved_dataset_with_nan_in_a_present_row_is_refused_and_in_an_absent_row_or_padding_is_not(tmp_path, seq_len):
    ds = make_synthetic(SyntheticSpec(sizes=(20, 5, 7), seq_len=seq_len, missing=0.0, seed=1))
    tr = ds.splits["train"]
    tr.present["audio"][3] = False
    tr.feats["audio"][3] = np.nan  # absent: its values are never read
    if seq_len:
        tr.steps.setdefault("vision", np.ones(tr.feats["vision"].shape[:2], bool))
        tr.steps["vision"][4, -1] = False
        tr.feats["vision"][4, -1] = np.inf  # padding: not data
    load_dataset(ds.save(tmp_path / "ok.npz"))
    empty = make_synthetic(SyntheticSpec(sizes=(4, 2, 2), seq_len=seq_len, seed=1))
    empty.splits["test"] = empty.splits["test"].subset(np.zeros(2, bool))  # a split without rows (extract's test split, say)
    assert len(load_dataset(empty.save(tmp_path / "empty.npz")).splits["test"]) == 0
    tr.feats["text"][5, ..., 0] = np.nan
    with pytest.raises(ValueError, match=r"train/text: 1 present row\(s\) with NaN or inf \(first: " + str(tr.ids[5])):
        load_dataset(ds.save(tmp_path / "bad.npz"))


def _mosi_like(n, rng, *, mmsa):
    d = {
        "text": rng.normal(size=(n, 50, 300)).astype(np.float32),
        "audio": rng.normal(size=(n, 50, 74)).astype(np.float32),
        "vision": rng.normal(size=(n, 50, 35)).astype(np.float32),
    }
    d["audio"][0, 0, 0] = -np.inf  # as in MulT's MOSI release
    labels = rng.uniform(-3, 3, size=n).astype(np.float32)
    if mmsa:
        d["regression_labels"] = labels
        d["raw_text"] = np.array([f"sentence {i}" for i in range(n)])
        d["id"] = np.array([f"vid$_${i}" for i in range(n)])
    else:
        d["labels"] = labels.reshape(n, 1, 1)
        d["id"] = np.array([[b"vid", str(i).encode()] for i in range(n)])
    return d


@pytest.mark.parametrize("mmsa", [False, True], ids=["MulT", "MMSA"])
def test_mosi_pickle_layout_loads(tmp_path, mmsa):
    rng = np.random.default_rng(0)
    raw = {s: _mosi_like(n, rng, mmsa=mmsa) for s, n in (("train", 12), ("valid", 4), ("test", 6))}
    path = tmp_path / "mosi_data.pkl"
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(path)
    assert ds.dims == {"text": 300, "audio": 74, "vision": 35}
    tr = ds.splits["train"]
    assert tr.feats["text"].shape == (12, 50, 300)
    assert np.isfinite(tr.feats["audio"]).all() and tr.feats["audio"][0, 0, 0] == 0
    assert np.allclose(tr.labels, raw["train"]["regression_labels" if mmsa else "labels"].reshape(-1))
    assert tr.ids[1] == ("vid$_$1" if mmsa else "vid_1")
    assert (tr.text is not None) == mmsa


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        load_dataset(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="meta"):
        load_dataset(other)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"train": {}}))
    with pytest.raises(ValueError, match="splits"):
        load_dataset(bad)


def test_split_validation():
    with pytest.raises(ValueError, match="expected"):
        Split(feats={"a": np.zeros((3, 2, 2, 2))}, present={}, labels=np.zeros(3), ids=["1", "2", "3"])
    with pytest.raises(ValueError, match="NaN"):
        Split(feats={"a": np.zeros((2, 2))}, present={}, labels=np.array([0, np.nan]), ids=["1", "2"])
    ok = Split(feats={"a": np.zeros((2, 2))}, present={}, labels=np.zeros(2), ids=["1", "2"])
    with pytest.raises(ValueError, match="missing"):
        FeatureDataset({"train": ok, "test": ok})


def test_split_by_group_keeps_groups_together():
    groups = [f"speaker{i % 40}" for i in range(400)]
    split = split_by_group(groups)
    for g in set(groups):
        assert len({s for s, gg in zip(split, groups) if gg == g}) == 1
    assert set(split) == {"train", "valid", "test"}
    assert list(split_by_group(groups)) == list(split)  # deterministic


def test_mmsa_lengths_and_text_mask_become_step_masks(tmp_path):
    """MMSA's unaligned releases pad audio/vision at the end and give their lengths; the text mask
    is row 1 of text_bert. The loader must keep them (zero padding is not data)."""
    rng = np.random.default_rng(1)
    n, t = 6, 8
    d = {"text": rng.normal(size=(n, t, 5)).astype(np.float32), "audio": rng.normal(size=(n, t, 3)).astype(np.float32),
         "vision": rng.normal(size=(n, t, 2)).astype(np.float32), "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
         "audio_lengths": np.array([8, 5, 1, 3, 8, 2]), "vision_lengths": [4, 4, 0, 8, 1, 2]}
    for i, length in enumerate(d["audio_lengths"]):
        d["audio"][i, length:] = 0
    for i, length in enumerate(d["vision_lengths"]):
        d["vision"][i, length:] = 0
    tl = [3, 8, 5, 1, 2, 7]
    bert = np.zeros((n, 3, t), np.float32)
    for i, length in enumerate(tl):
        bert[i, 1, :length] = 1
        d["text"][i, length:] = 0
    d["text_bert"] = bert
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps({s: d for s in ("train", "valid", "test")}))
    sp = load_dataset(path).splits["train"]
    assert sp.steps["audio"].sum(axis=1).tolist() == [8, 5, 1, 3, 8, 2]
    assert sp.steps["vision"].sum(axis=1).tolist() == [4, 4, 0, 8, 1, 2]
    assert sp.steps["text"].sum(axis=1).tolist() == tl
    assert not sp.steps["audio"][1, 5:].any() and sp.steps["audio"][1, :5].all()  # the first L steps are real
    # a sample with no real vision step is absent for training and scoring
    from mmdemo.train import Batches

    from mmdemo.fusion import create_fusion

    model = create_fusion("concat", dims={"text": 5, "audio": 3, "vision": 2})
    b = Batches(sp, model.modalities, "cpu")
    feats, avail, _, steps = b.take(np.arange(n))
    _, mask, _ = model.complete_inputs(feats, {m: avail[:, j] for j, m in enumerate(model.modalities)}, steps)
    assert mask[:, 2].tolist() == [True, True, False, True, True, True]


def test_mult_zero_padding_is_inferred_and_saved(tmp_path):
    """MulT's pickles give no lengths: their zero padding (at the front) is recognised, and the
    masks survive a round trip through the .npz format."""
    rng = np.random.default_rng(2)
    raw = {s: _mosi_like(4, rng, mmsa=False) for s in ("train", "valid", "test")}
    for s in raw:
        raw[s]["vision"][:, :10] = 0  # 10 padding steps in front
        raw[s]["text"][0, :49] = 0
    path = tmp_path / "mosi_data.pkl"
    path.write_bytes(pickle.dumps(raw))
    ds = load_dataset(path)
    tr = ds.splits["train"]
    assert tr.steps["vision"].sum(axis=1).tolist() == [40] * 4 and not tr.steps["vision"][:, :10].any()
    assert tr.steps["text"][0].sum() == 1
    back = load_dataset(ds.save(tmp_path / "d.npz"))
    for s in ("train", "valid", "test"):
        for m in ("text", "audio", "vision"):
            assert np.array_equal(back.splits[s].steps[m], ds.splits[s].steps[m])
    sub = tr.subset(np.array([True, False, True, False]))
    assert sub.steps["vision"].shape == (2, 50)


def test_normalisation_statistics_skip_padding():
    from mmdemo.train import normalization_stats

    x = np.zeros((3, 5, 2), np.float32)
    x[:, :2] = [[1.0, 10.0], [3.0, 30.0]]  # two real steps per sample, then zero padding
    steps = np.zeros((3, 5), bool)
    steps[:, :2] = True
    sp = Split(feats={"a": x}, present={"a": np.array([True, True, False])}, labels=np.zeros(3), ids=["1", "2", "3"], steps={"a": steps})
    mean, std = normalization_stats(sp)["a"]
    assert np.allclose(mean.numpy(), [2.0, 20.0]) and np.allclose(std.numpy(), [1.0, 10.0])
    with pytest.raises(ValueError, match="step mask"):
        Split(feats={"a": x}, present={}, labels=np.zeros(3), ids=["1", "2", "3"], steps={"a": steps[:, :4]})


@pytest.mark.parametrize("argv, says", [
    (["--seq-len", "-2"], "--seq-len=-2"),
    (["--sizes", "10", "0", "5"], "--sizes=(10, 0, 5)"),
    (["--sizes", "-1", "3", "5"], "--sizes=(-1, 3, 5)"),
    (["--missing", "1.5"], "--missing=1.5"),
])
def test_the_synthetic_command_refuses_nonsense_before_writing(tmp_path, capsys, argv, says):
    from mmdemo.synthetic import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "d.npz"), *argv])
    assert e.value.code == 2 and says in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_synthetic_command_refuses_an_output_it_cannot_write(tmp_path, capsys):
    from mmdemo.synthetic import main

    (tmp_path / "adir").mkdir()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "adir"), "--sizes", "4", "2", "2"])
    assert "--out" in capsys.readouterr().err and list(tmp_path.iterdir()) == [tmp_path / "adir"]
    main(["--out", str(tmp_path / "d.npz"), "--sizes", "4", "2", "2", "--seq-len", "0"])
    assert load_dataset(tmp_path / "d.npz").splits["valid"].labels.shape == (2,)


def test_synthetic_settings_out_of_range_are_refused_where_they_are_made():
    with pytest.raises(ValueError, match="nuisance=-1.*missing=-0.1"):
        SyntheticSpec(missing=-0.1, nuisance=-1)
    for bad in (2.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"seq_len={bad!r}"):
            SyntheticSpec(seq_len=bad)
