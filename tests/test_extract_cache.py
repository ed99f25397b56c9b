"""The extraction's resume cache: what it writes comes back, cheaply (no models)."""

import numpy as np

from mmdemo.extract import ItemFeatures, PartCache


def test_parts_come_back_item_by_item_without_holding_whole_parts(tmp_path):
    rng = np.random.default_rng(0)
    cache = PartCache(tmp_path, ("text", "audio"))
    items = []
    for part in range(3):
        batch = []
        for i in range(50):
            f = ItemFeatures(f"c{part}-{i}", transcript=f"words {i}")
            f.feats = {"text": rng.normal(size=384).astype(np.float32), "audio": None if i % 7 == 0 else rng.normal(size=88).astype(np.float32)}
            f.reasons = {"text": "", "audio": "no speech" if i % 7 == 0 else ""}
            batch.append(f)
        cache.write(batch)
        items += batch
    back = PartCache(tmp_path, ("text", "audio"))
    assert len(back.done) == 150 and back.next == 3
    for f in items:
        g = back.done[f.id]
        assert np.array_equal(g.feats["text"], f.feats["text"]) and g.transcript == f.transcript
        assert (g.feats["audio"] is None) == (f.feats["audio"] is None) and g.reasons["audio"] == f.reasons["audio"]
        # each item owns its row: a view would keep its part's whole array alive (a corpus of 22,788
        # texts took 18 GB that way when a quick run resumed from a full run's cache)
        assert g.feats["text"].base is None


def test_the_cache_key_follows_the_expression_cnn_the_face_reads_with(tmp_path):
    import pytest

    from mmdemo.extract import cache_key, run_extraction

    src, labels = tmp_path, tmp_path / "labels.csv"
    labels.write_text("clip_id,label,text\na,1,hello\n")
    w1, w2 = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    w1.write_bytes(b"weights one")
    w2.write_bytes(b"weights two")
    args = (src, labels, ("vision",), 5.0, 300, "label", "text")
    fer = cache_key(*args)
    assert cache_key(*args, None, None) == fer  # fer's CNN: the key it always had (earlier caches stay valid)
    assert len({fer, cache_key(*args, None, w1), cache_key(*args, None, w2)}) == 3
    w2.write_bytes(b"weights one")  # the same weights under another name: the same features
    assert cache_key(*args, None, w1) == cache_key(*args, None, w2)
    # words only: the face's CNN changes nothing there
    assert cache_key(src, labels, ("text",), 5.0, 300, "label", "text", None, w1) == cache_key(src, labels, ("text",), 5.0, 300, "label", "text")
    with pytest.raises(SystemExit, match="no expression CNN weights"):
        run_extraction(src, labels, modalities=("vision",), expression=tmp_path / "missing.safetensors", progress=False)
