"""The extraction's resume cache: what it writes comes back, cheaply (no models)."""

import numpy as np

from mmdemo.extract import DIMS, ItemFeatures, PartCache


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


class CountingExtractor:
    """A stand-in for the encoders: words read the text, voice the media file's bytes; counts calls."""

    modalities = ("text", "audio")

    def __init__(self):
        self.read, self.encoded = [], []
        outer = self

        class Words:
            def encode_batch(self, texts):
                outer.encoded += list(texts)
                return [np.full(DIMS["text"], len(t), np.float32) for t in texts], ["" for _ in texts]

        self.words = Words()

    def media(self, item):
        from mmdemo.extract import ItemFeatures
        from mmdemo.media import MediaError

        self.read.append(item.id)
        data = item.path.read_bytes()
        if data.startswith(b"broken"):
            raise MediaError(f"{item.path}: cannot decode")
        return ItemFeatures(item.id, feats={"audio": np.full(DIMS["audio"], len(data), np.float32)}, reasons={"audio": ""})


def test_a_cached_clip_whose_transcript_or_file_changed_is_extracted_again(tmp_path):
    from mmdemo.extract import Item, extract

    media = tmp_path / "media"
    media.mkdir()
    for k in range(3):
        (media / f"c{k}.wav").write_bytes(b"x" * (10 + k))
    items = [Item(f"c{k}", 0.0, media / f"c{k}.wav", f"text {k}", "train", f"c{k}") for k in range(3)]
    ex = CountingExtractor()
    feats, errors = extract(items, ex, PartCache(tmp_path / "cache", ex.modalities), progress=False)
    assert not errors and ex.read == ["c0", "c1", "c2"]

    # unchanged: nothing is read again
    ex = CountingExtractor()
    again, _ = extract(items, ex, PartCache(tmp_path / "cache", ex.modalities), progress=False)
    assert ex.read == [] and all(np.array_equal(again[i].feats["text"], feats[i].feats["text"]) for i in again)

    # an edited transcript and a replaced media file: those two are redone, and their new features come back
    items[0] = Item("c0", 0.0, media / "c0.wav", "a much longer transcript than before", "train", "c0")
    (media / "c1.wav").write_bytes(b"y" * 40)
    ex = CountingExtractor()
    new, errors = extract(items, ex, PartCache(tmp_path / "cache", ex.modalities), progress=False)
    assert sorted(ex.read) == ["c0", "c1"] and not errors
    assert new["c0"].feats["text"][0] == len("a much longer transcript than before") and new["c1"].feats["audio"][0] == 40
    assert np.array_equal(new["c2"].feats["audio"], feats["c2"].feats["audio"])
    ex = CountingExtractor()
    assert extract(items, ex, PartCache(tmp_path / "cache", ex.modalities), progress=False)[0]["c1"].feats["audio"][0] == 40 and ex.read == []

    # a changed file that no longer reads is this run's error, not its old features
    (media / "c2.wav").write_bytes(b"broken file")
    ex = CountingExtractor()
    last, errors = extract(items, ex, PartCache(tmp_path / "cache", ex.modalities), progress=False)
    assert "c2" not in last and [e["id"] for e in errors] == ["c2"]


def test_parts_of_an_older_version_without_fingerprints_are_redone(tmp_path):
    from mmdemo.extract import Item, extract

    (tmp_path / "a.wav").write_bytes(b"abc")
    (tmp_path / "cache").mkdir()
    np.savez(tmp_path / "cache" / "part-00000.npz", ids=np.array(["a"]), transcript=np.array(["old"]),
             **{"feat/text": np.zeros((1, DIMS["text"]), np.float32), "present/text": np.array([True]), "reason/text": np.array([""]),
                "feat/audio": np.zeros((1, DIMS["audio"]), np.float32), "present/audio": np.array([True]), "reason/audio": np.array([""])})
    ex = CountingExtractor()
    cache = PartCache(tmp_path / "cache", ex.modalities)
    assert cache.done["a"].fingerprint == ""
    feats, _ = extract([Item("a", 0.0, tmp_path / "a.wav", "hello", "train", "a")], ex, cache, progress=False)
    assert ex.read == ["a"] and feats["a"].feats["audio"][0] == 3


def test_when_every_clip_fails_the_message_says_why(tmp_path, monkeypatch):
    import pytest

    from mmdemo import extract as ex

    class Failing(CountingExtractor):
        def __init__(self, **kwargs):
            super().__init__()

    monkeypatch.setattr(ex, "Extractor", Failing)
    for k in range(7):
        (tmp_path / f"c{k}.wav").write_bytes(b"broken")
    (tmp_path / "labels.csv").write_text("clip_id,label,path\n" + "".join(f"c{k},1,c{k}.wav\n" for k in range(7)))
    with pytest.raises(SystemExit, match=r"nothing to write \(c0: .*cannot decode.*; and 2 more\)"):
        ex.run_extraction(tmp_path, tmp_path / "labels.csv", modalities=("audio",), cache=tmp_path / "cache", progress=False)


def test_the_words_overlay_may_be_the_folder_the_app_reads_and_a_missing_one_is_named(tmp_path, monkeypatch):
    import pytest

    from mmdemo import extract as ex

    made = []

    class Recording(CountingExtractor):
        def __init__(self, **kwargs):
            super().__init__()
            made.append(kwargs)

    monkeypatch.setattr(ex, "Extractor", Recording)
    (tmp_path / "a.wav").write_bytes(b"abc")
    (tmp_path / "labels.csv").write_text("clip_id,label,path,text\na,1,a.wav,hello\n")
    words = tmp_path / "words"
    words.mkdir()
    (words / "encoder.safetensors").write_bytes(b"layers")
    ds, _, _ = ex.run_extraction(tmp_path, tmp_path / "labels.csv", modalities=("text", "audio"), cache=tmp_path / "cache",
                                 words_overlay=words, progress=False)
    assert made[-1]["words_overlay"] == words / "encoder.safetensors" and ds.meta["words_overlay"] == str(words / "encoder.safetensors")
    for gone in (tmp_path / "nowhere", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(SystemExit, match=f"{gone.name}: no fine-tuned words layers"):
            ex.run_extraction(tmp_path, tmp_path / "labels.csv", modalities=("text",), cache=tmp_path / "cache", words_overlay=gone, progress=False)


def test_limit_per_split_without_a_split_column_limits_each_split_the_rows_will_get(tmp_path):
    from collections import Counter

    from mmdemo.data import split_by_group
    from mmdemo.extract import read_items

    (tmp_path / "labels.csv").write_text("clip_id,label,text,speaker\n" + "".join(f"c{k},1,words {k},s{k // 2}\n" for k in range(60)))
    items, _ = read_items(tmp_path, tmp_path / "labels.csv", limit_per_split=4)
    got = Counter(str(split_by_group([it.group], valid=0.1, test=0.2)[0]) for it in items)
    assert got == {"train": 4, "valid": 4, "test": 4}
    assert [it.id for it in items] == sorted((it.id for it in items), key=lambda i: int(i[1:]))  # the first rows of each, in order
