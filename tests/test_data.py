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
