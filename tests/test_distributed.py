"""Extraction on local Ray (mmdemo.distributed): the same output as the single-process path, and
bad input (a corrupt file, a worker that dies, a file that hangs) reported and skipped. Needs Ray
(requirements-ray.txt; CI installs it); skipped without it. Marked slow: Ray starts in ~10 s and
each worker loads the encoders."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mmdemo.data import load_dataset
from mmdemo.encoders import DIMS
from mmdemo.extract import Extractor, Item, ItemFeatures, PartCache
from mmdemo.extract import main as extract_main

from tests.media import astronaut, espeak, video

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


class Troubled(Extractor):
    """An extractor whose worker dies on "crash" and hangs on "hang" (as a broken native decoder would)."""

    def media(self, item):
        if item.id == "crash":
            os._exit(1)
        if item.id == "hang":
            time.sleep(3600)
        if item.id == "bug":
            raise TypeError("a bug, not a broken file")
        return super().media(item)


class Recorder:
    """Stands in for Extractor: notes its device and Ray's GPU ids when it starts (in ``note_dir``)
    and with each item (beside the item's file)."""

    def __init__(self, modalities=("vision",), *, device=None, note_dir=None, item_s=0.0, **_):
        self.device, self.item_s = device, item_s
        self.gpus = [str(g) for g in ray.get_gpu_ids()]
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if note_dir:
            (Path(note_dir) / f"worker-{os.getpid()}.json").write_text(json.dumps(self.note()))

    def note(self) -> dict:
        return {"pid": os.getpid(), "device": self.device, "gpus": self.gpus, "visible": self.visible}

    def media(self, item: Item) -> ItemFeatures:
        time.sleep(self.item_s)  # long enough for every worker to start and take some
        (item.path.parent / f"{item.id}.json").write_text(json.dumps(self.note()))
        return ItemFeatures(item.id, feats={"vision": np.full(DIMS["vision"], float(len(item.id)), np.float32)}, reasons={"vision": ""})


def recorded(tmp_path, n):
    """``n`` stand-in items for :class:`Recorder` (each notes what its worker had beside its file)."""
    (tmp_path / "in").mkdir()
    out = []
    for i in range(n):
        p = tmp_path / "in" / f"c{i}.jpg"
        p.write_bytes(b"stand-in")
        out.append(Item(f"c{i}", 0.0, p, None, "train", f"s{i}"))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import cv2

    src = tmp_path_factory.mktemp("corpus")
    wav = espeak(src / "speech.wav")
    rows = []
    for i in range(3):
        video(src / f"talk{i}.mp4", audio=wav, seconds=3.0)
        rows.append({"clip_id": f"talk{i}", "label": str(1.0 - i), "speaker": f"s{i}", "text": ""})
    cv2.imwrite(str(src / "photo.jpg"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    rows.append({"clip_id": "photo", "label": "2", "speaker": "s3", "text": ""})
    (src / "broken.mp4").write_bytes(b"this is not a video")
    rows.append({"clip_id": "broken", "label": "1", "speaker": "s4", "text": ""})
    rows.append({"clip_id": "said", "label": "-1", "speaker": "s5", "text": "what a dreadful afternoon"})
    with open(src / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["clip_id", "label", "speaker", "text"])
        w.writeheader()
        w.writerows(rows)
    return src


@pytest.fixture(scope="module")
def local_ray():
    from mmdemo.distributed import start

    if ray.is_initialized():
        ray.shutdown()
    r = start(None, num_cpus=2, num_gpus=0)  # none, even on a machine with a GPU: the tests expect CPU workers
    yield r
    r.shutdown()


def _arrays(path):
    ds = load_dataset(path)
    out = {}
    for s, sp in ds.splits.items():
        for k, cid in enumerate(sp.ids):
            out[cid] = (s, float(sp.labels[k]), sp.text[k], {m: (bool(sp.present[m][k]), sp.feats[m][k]) for m in ds.modalities})
    return out


def test_ray_extraction_equals_the_single_process_one(corpus, tmp_path, local_ray):
    base = [str(corpus), "--quiet", "--valid", "0.2", "--test", "0.2"]
    assert extract_main(base + ["--out", str(tmp_path / "one.npz"), "--cache", str(tmp_path / "c1")]) == 0
    assert extract_main(base + ["--out", str(tmp_path / "ray.npz"), "--cache", str(tmp_path / "c2"), "--ray", "--workers", "2"]) == 0
    one, dist = _arrays(tmp_path / "one.npz"), _arrays(tmp_path / "ray.npz")
    assert set(one) == set(dist) == {"talk0", "talk1", "talk2", "photo", "said"}
    for cid in one:
        s1, y1, t1, f1 = one[cid]
        s2, y2, t2, f2 = dist[cid]
        assert (s1, y1, t1) == (s2, y2, t2), cid
        for m in f1:
            assert f1[m][0] == f2[m][0], (cid, m)
            np.testing.assert_allclose(f1[m][1], f2[m][1], rtol=1e-4, atol=1e-5, err_msg=f"{cid} {m}")
    errors = json.loads((tmp_path / "ray.errors.json").read_text())
    assert [e["id"] for e in errors] == ["broken"]
    # the resume cache is the same format: the single-process path resumes a Ray run
    out = tmp_path / "again.npz"
    assert extract_main(base + ["--out", str(out), "--cache", str(tmp_path / "c2")]) == 0
    assert set(_arrays(out)) == set(one)


def test_a_dying_worker_and_a_hanging_file_are_reported_and_skipped(corpus, tmp_path, local_ray):
    from mmdemo.distributed import ray_extract
    from mmdemo.extract import PartCache, read_items

    extra = corpus.parent / (corpus.name + "-troubled")
    extra.mkdir(exist_ok=True)
    for name in ("talk0.mp4", "photo.jpg"):
        (extra / name).write_bytes((corpus / name).read_bytes())
    with open(extra / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip_id", "label", "path", "text"])
        w.writerows([["talk0", "1", "talk0.mp4", ""], ["crash", "0", "talk0.mp4", ""], ["hang", "0", "photo.jpg", ""],
                     ["photo", "2", "photo.jpg", ""]])
    items, _ = read_items(extra, extra / "labels.csv")
    cache = PartCache(tmp_path / "cache", ("text", "audio", "vision"))
    feats, errors = ray_extract(items, {"modalities": ("text", "audio", "vision")}, cache, workers=2, item_timeout_s=20,
                                chunk=2, progress=False, make=Troubled)
    assert set(feats) == {"talk0", "photo"}
    why = {e["id"]: e["error"] for e in errors}
    assert set(why) == {"crash", "hang"}
    assert "died" in why["crash"] and "timed out" in why["hang"]
    again = PartCache(tmp_path / "cache", ("text", "audio", "vision"))  # the cache holds exactly the finished items
    assert set(again.done) == {"talk0", "photo"}


def test_a_bug_in_a_worker_stops_the_run_and_keeps_what_finished(corpus, tmp_path, local_ray):
    """As without Ray: an exception that is not a media error stops the run (it is not a broken
    file to report); what finished before is in the cache."""
    from mmdemo.distributed import ray_extract
    from mmdemo.extract import Item, PartCache

    items = [Item("photo", 2.0, corpus / "photo.jpg", None, "train", "a"), Item("bug", 0.0, corpus / "photo.jpg", None, "train", "b")]
    cache = PartCache(tmp_path / "cache", ("vision",))
    with pytest.raises(TypeError, match="a bug"):
        ray_extract(items, {"modalities": ("vision",)}, cache, workers=1, chunk=1, progress=False, make=Troubled)
    assert set(PartCache(tmp_path / "cache", ("vision",)).done) == {"photo"}


def test_a_gpu_share_on_a_cluster_without_gpus_runs_on_the_cpu(tmp_path, local_ray):
    from mmdemo.distributed import ray_extract

    items = recorded(tmp_path, 3)
    feats, errors = ray_extract(items, {"modalities": ("vision",)}, PartCache(tmp_path / "cache", ("vision",)), workers=2,
                                gpus_per_worker=1.0, progress=False, make=Recorder)
    assert not errors and set(feats) == {it.id for it in items}
    notes = [json.loads((it.path.parent / f"{it.id}.json").read_text()) for it in items]
    assert all(n["device"] == "cpu" and n["gpus"] == [] for n in notes)


class SlowToLoad(Recorder):
    """A stand-in whose models take longer to load than an item may take."""

    def warmup(self):
        time.sleep(3.0)
        self.warm = True

    def media(self, item):
        if not getattr(self, "warm", False):
            raise TypeError("an item reached a worker before its models were loaded")
        return super().media(item)


def test_workers_load_their_models_before_the_item_time_limit_starts(tmp_path, local_ray):
    from mmdemo.distributed import ray_extract

    items = recorded(tmp_path, 3)
    feats, errors = ray_extract(items, {"modalities": ("vision",)}, PartCache(tmp_path / "cache", ("vision",)), workers=1,
                                item_timeout_s=2.0, progress=False, make=SlowToLoad)
    assert not errors and set(feats) == {it.id for it in items}
