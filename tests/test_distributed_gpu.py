"""Extraction on a Ray cluster with GPUs (mmdemo.distributed), on a CPU machine: local Ray is told
it has two GPUs, and a stand-in extractor records what each worker was given instead of loading
the encoders on CUDA. Checks the scheduling only: one worker per GPU share, each on its own GPU
with ``device="cuda"``; the encoders on a real GPU are tests/test_gpu.py's. Needs Ray (skipped
without it); marked slow (Ray starts in ~10 s)."""

from __future__ import annotations

import json

import pytest

from mmdemo.extract import PartCache

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

from tests.test_distributed import Recorder, recorded  # noqa: E402


@pytest.fixture(scope="module")
def two_gpus():
    from mmdemo.distributed import start

    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # Ray refuses two GPUs when it names fewer
        r = start(None, num_cpus=2, num_gpus=2)
        yield r
        r.shutdown()


def test_gpu_workers_get_one_gpu_each_and_run_on_cuda(tmp_path, two_gpus):
    from mmdemo.distributed import ray_extract

    items = recorded(tmp_path, 8)
    stats: dict = {}
    feats, errors = ray_extract(items, {"modalities": ("vision",), "note_dir": str(tmp_path), "item_s": 1.0}, PartCache(tmp_path / "cache", ("vision",)),
                                workers=4, gpus_per_worker=1.0, cpus_per_worker=0.5, progress=False, make=Recorder, stats=stats)
    assert not errors and set(feats) == {it.id for it in items}
    assert stats["workers"] == 2
    workers = [json.loads(p.read_text()) for p in tmp_path.glob("worker-*.json")]
    assert len(workers) == 2  # four asked for, two GPUs of one each: more would wait for a GPU forever
    assert sorted(g for n in workers for g in n["gpus"]) == ["0", "1"]  # each its own GPU
    assert all(n["device"] == "cuda" and n["visible"] == n["gpus"][0] for n in workers)  # Ray shows each worker only its GPU
    assert all(json.loads((it.path.parent / f"{it.id}.json").read_text())["device"] == "cuda" for it in items)


def test_without_a_gpu_share_workers_stay_on_the_cpu(tmp_path, two_gpus):
    from mmdemo.distributed import ray_extract

    items = recorded(tmp_path, 3)
    feats, errors = ray_extract(items, {"modalities": ("vision",)}, PartCache(tmp_path / "cache", ("vision",)), workers=2,
                                progress=False, make=Recorder)
    assert not errors and set(feats) == {it.id for it in items}
    assert all(n["device"] == "cpu" and n["gpus"] == [] for n in (json.loads((it.path.parent / f"{it.id}.json").read_text()) for it in items))
