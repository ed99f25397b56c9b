"""The CUDA paths: training, the benchmark, extraction and a live session on the GPU (marked gpu;
skipped without CUDA: CI never needs one). Run them where a GPU exists: ``python -m pytest -m gpu``.

Each test also runs the CPU path and compares: the GPU must give the same answers (up to floating
point), not merely run."""

import csv

import numpy as np
import pytest
import torch

from mmdemo.contributions import explain
from mmdemo.synthetic import SyntheticSpec, make_synthetic
from mmdemo.train import TrainConfig, evaluate, mean_baseline, train_method

from tests.media import SHARED, astronaut, espeak, speech_16k

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_training_and_explaining_on_cuda(tmp_path):
    from mmdemo.checkpoint import load_fusion, save_fusion

    data = make_synthetic(SyntheticSpec(sizes=(600, 150, 300), seq_len=10, seed=3))
    for name in ("weighted", "cross_attention", "autoencoder"):
        model, res, test = train_method(name, data, train_cfg=TrainConfig(epochs=20, patience=5, device="cuda"), progress=False)
        assert model.device.type == "cuda"
        assert test["mae"] < 0.7 * mean_baseline(data)["mae"]
        split = data.splits["test"]
        # CPU tensors in, a CUDA model: moved, not a crash (the benchmark's explain() did this)
        e = explain(model, {m: torch.as_tensor(x) for m, x in split.feats.items()})
        assert e.shapley.shape == (len(split), 3)
        assert torch.allclose(e.shapley.sum(dim=1).cpu(), (e.prediction - e.baseline).cpu(), atol=1e-4)
        save_fusion(model, tmp_path / name)
        back = load_fusion(tmp_path / name, device="cpu")
        assert abs(evaluate(back, split)["mae"] - test["mae"]) < 1e-4  # the checkpoint means the same on the CPU


@pytest.mark.skipif(not (SHARED / "cmu-mosi" / "labels.csv").exists(), reason="../shared/data not present")
def test_quick_benchmark_on_cuda(tmp_path):
    from mmdemo import benchmark
    from mmdemo.checkpoint import load_fusion
    from mmdemo.fusion import list_fusions

    out = tmp_path / "results"
    assert benchmark.main(["--data", str(SHARED), "--out", str(out), "--quick", "--quiet", "--device", "cuda"]) == 0
    for name in list_fusions():
        assert load_fusion(out / "checkpoints" / "fusion" / name).modalities == ("text", "audio", "vision")


def test_extraction_on_cuda_matches_the_cpu(tmp_path):
    import cv2

    from mmdemo.extract import run_extraction

    src = tmp_path / "media"
    src.mkdir()
    espeak(src / "talk.wav", "I really liked this film, the story was great")
    cv2.imwrite(str(src / "face.jpg"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    rows = [{"clip_id": "talk", "label": "1.5", "text": "", "split": "train"},
            {"clip_id": "face", "label": "2", "text": "", "split": "valid"},
            {"clip_id": "words", "label": "-1", "text": "a dull and tiring movie", "split": "test"}]
    with open(src / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    got = {}
    for device in ("cpu", "cuda"):
        ds, summary, errors = run_extraction(src, src / "labels.csv", device=device, cache=tmp_path / f"cache-{device}", progress=False)
        assert not errors
        got[device] = ds
    for s in ("train", "valid", "test"):
        a, b = got["cpu"].splits[s], got["cuda"].splits[s]
        for m in a.feats:
            assert np.array_equal(a.present[m], b.present[m])
            if m == "text":
                cos = (a.feats[m] * b.feats[m]).sum(axis=1)[a.present[m]]
                assert np.all(cos > 0.9999), cos
            else:
                assert np.allclose(a.feats[m], b.feats[m], atol=1e-5)  # face and voice run on the CPU either way


def test_a_live_session_on_cuda_matches_the_cpu(tmp_path):
    from mmdemo.pipeline import Engine

    x = speech_16k(tmp_path)
    ups = {}
    for device in ("cpu", "cuda"):
        engine = Engine(device=device)
        s = engine.session("weighted", blocking_asr=True)
        s.set_text("what a lovely day", t=0.0)
        for i in range(0, len(x), 8000):
            s.push_audio(x[i : i + 8000], 16000, t=i / 16000)
            s.push_frame(astronaut(), t=i / 16000)
        ups[device] = s.flush(t=len(x) / 16000)
        assert engine.fusion("weighted").device.type == device
    a, b = ups["cpu"], ups["cuda"]
    assert a.present == b.present and all(a.present.values())
    assert abs(a.prediction - b.prediction) < 1e-3
    assert all(abs(a.shapley[m] - b.shapley[m]) < 1e-3 for m in a.shapley)


def test_text_model_on_cuda_reads_like_on_the_cpu():
    """Train = serve: the heads learned on fp32 CPU features; CUDA runs fp32 by default (fp16 only
    on request), and both stay within a measured distance of the CPU."""
    from mmdemo.encoders.words import MiniLM

    texts = ["I loved it", "the plot was thin and the acting wooden", "an average film " * 40]
    cpu = MiniLM(device="cpu").embed(texts)
    fp32 = MiniLM(device="cuda")
    assert fp32.dtype == "float32"
    cos32 = (cpu * fp32.embed(texts)).sum(axis=1)
    cos16 = (cpu * MiniLM(device="cuda", dtype="float16").embed(texts)).sum(axis=1)
    print(f"cosine to CPU fp32: CUDA fp32 {cos32.min():.7f}, CUDA fp16 {cos16.min():.7f}")
    assert np.all(cos32 > 0.99999) and np.all(cos16 > 0.9995)


def test_a_personal_model_on_cuda_matches_the_cpu():
    """The app fits a personal model on the device its fusion runs on: the held-out error (every fold
    at once, through torch.func.vmap) and the fit must say on CUDA what they say on the CPU."""
    from mmdemo import MODALITIES
    from mmdemo.checkpoint import load_fusion
    from mmdemo.data import Split
    from mmdemo.personal import PersonalConfig, cross_validate, fit_personal, predict
    from mmdemo.encoders import DIMS
    from mmdemo.pipeline import DEFAULT_CHECKPOINTS

    rng = np.random.default_rng(0)
    feats = {m: rng.normal(size=(16, DIMS[m])).astype(np.float32) for m in MODALITIES}
    present = {m: rng.random(16) > 0.2 for m in MODALITIES}
    labels = np.clip(rng.normal(-1.0, 1.0, 16), -3, 3).astype(np.float32)  # a person the model reads too high
    sp = Split(feats=feats, present=present, labels=labels, ids=np.arange(16))
    cfg = PersonalConfig(steps=20)  # few steps: CPU and CUDA round differently, and the difference grows with each
    got = {}
    for device in ("cpu", "cuda"):
        generic = load_fusion(DEFAULT_CHECKPOINTS / "fusion" / "weighted", device=device)
        r = cross_validate(generic, sp, cfg)
        model = fit_personal(generic, sp, cfg)
        assert next(model.parameters()).device.type == device
        got[device] = (r, predict(model, sp))
    (rc, pc), (rg, pg) = got["cpu"], got["cuda"]
    assert rc["personal_mae"] < rc["generic_mae"]  # the fits learned something: not a comparison of two untouched models
    assert abs(rc["personal_mae"] - rg["personal_mae"]) < 2e-3 and abs(rc["generic_mae"] - rg["generic_mae"]) < 1e-4
    np.testing.assert_allclose(pc, pg, atol=2e-3)
