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
