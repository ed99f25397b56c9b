"""Training on synthetic data with a known ground truth: text strong, audio weak, vision noise."""

import inspect
import json
import re

import numpy as np
import pytest
import torch

from mmdemo.checkpoint import load_fusion
from mmdemo.contributions import explain
from mmdemo.fusion import list_fusions
from mmdemo.synthetic import SyntheticSpec, make_synthetic
from mmdemo.train import TrainConfig, evaluate, main, mean_baseline, train_method

QUICK = TrainConfig(epochs=40, patience=6, seed=0)


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(SyntheticSpec(sizes=(600, 150, 300), seq_len=10, seed=3))


@pytest.fixture(scope="module")
def trained(synth):
    return {n: train_method(n, synth, train_cfg=QUICK, progress=False) for n in list_fusions()}


def mean_abs_shapley(model, split):
    e = explain(model, {m: torch.as_tensor(x) for m, x in split.feats.items()})
    return dict(zip(e.modalities, e.shapley.abs().mean(dim=0).tolist()))


@pytest.mark.parametrize("name", list_fusions())
def test_every_method_beats_the_mean_baseline_clearly(trained, synth, name):
    _, result, test = trained[name]
    base = mean_baseline(synth)
    assert test["mae"] < 0.6 * base["mae"], (test["mae"], base["mae"])
    assert test["corr"] > 0.8
    assert result.best_epoch >= 1 and result.history


@pytest.mark.parametrize("name", list_fusions())
def test_shapley_puts_the_informative_modality_first(trained, synth, name):
    s = mean_abs_shapley(trained[name][0], synth.splits["test"])
    assert s["text"] > s["audio"] and s["text"] > s["vision"], s


def test_weighted_recovers_the_known_order(trained, synth):
    model = trained["weighted"][0]
    theta = model.global_weights()
    assert theta["text"] > theta["audio"] > theta["vision"], theta
    s = mean_abs_shapley(model, synth.splits["test"])
    assert s["text"] > s["audio"] > s["vision"], s


@pytest.mark.parametrize("name", list_fusions())
def test_predicts_sensibly_from_any_subset(trained, synth, name):
    """Modality dropout: with text alone the model stays good, with the noise alone it falls back
    to about the mean (no worse than the baseline by much)."""
    model = trained[name][0]
    test = synth.splits["test"]
    feats = {m: torch.as_tensor(x) for m, x in test.feats.items()}
    n = len(test)
    only = lambda keep: {m: torch.full((n,), m == keep) for m in feats}  # noqa: E731
    with torch.inference_mode():
        mae_text = (model(feats, only("text")).prediction.numpy() - test.labels).__abs__().mean()
        mae_vision = (model(feats, only("vision")).prediction.numpy() - test.labels).__abs__().mean()
    base = mean_baseline(synth)["mae"]
    assert mae_text < 0.7 * base
    assert mae_vision < 1.15 * base


def test_seeded_training_is_deterministic_on_cpu(synth):
    cfg = TrainConfig(epochs=3, patience=3, seed=7, device="cpu")
    a = train_method("low_rank", synth, train_cfg=cfg, progress=False)[0].state_dict()
    b = train_method("low_rank", synth, train_cfg=cfg, progress=False)[0].state_dict()
    c = train_method("low_rank", synth, train_cfg=TrainConfig(epochs=3, patience=3, seed=8, device="cpu"), progress=False)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cli_trains_saves_and_compares(tmp_path, capsys, monkeypatch):
    data = make_synthetic(SyntheticSpec(sizes=(120, 40, 60), seq_len=0, seed=1)).save(tmp_path / "d.npz")
    assert main(["--fusion", "concat,weighted", "--data", str(data), "--out", str(tmp_path / "runs"), "--epochs", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| weighted |" in printed and "mean (baseline)" in printed
    rows = json.loads((tmp_path / "runs" / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["mean (baseline)", "concat", "weighted"]
    model = load_fusion(tmp_path / "runs" / "weighted")
    metrics = json.loads((tmp_path / "runs" / "weighted" / "metrics.json").read_text())
    from mmdemo.data import load_dataset

    again = evaluate(model, load_dataset(data).splits["test"])
    assert np.isclose(again["mae"], metrics["test"]["mae"])
    assert model.cfg.loss == "l1"  # the literature's MAE by default; --loss huber on request
    assert main(["--fusion", "concat", "--data", str(data), "--out", str(tmp_path / "huber"), "--epochs", "2", "--quiet", "--loss", "huber"]) == 0
    assert load_fusion(tmp_path / "huber" / "concat").cfg.loss == "huber"
    # a run stopped while it trains its first method leaves the last run's table with its checkpoints
    from mmdemo import train

    before = (tmp_path / "runs" / "comparison.json").read_text()

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_method", stopped)
    with pytest.raises(KeyboardInterrupt):
        main(["--fusion", "concat,weighted", "--data", str(data), "--out", str(tmp_path / "runs"), "--epochs", "3", "--quiet"])
    assert (tmp_path / "runs" / "comparison.json").read_text() == before


def test_cli_passes_every_training_setting(tmp_path):
    data = make_synthetic(SyntheticSpec(sizes=(60, 20, 20), seq_len=0, seed=2)).save(tmp_path / "d.npz")
    assert main(["--fusion", "concat", "--data", str(data), "--out", str(tmp_path / "runs"), "--epochs", "2", "--weight-decay", "0.03",
                 "--lr", "0.0003", "--batch-size", "16", "--modality-dropout", "0.4", "--patience", "5", "--seed", "7", "--device", "cpu",
                 "--hidden", "24", "--dropout", "0.35", "--loss", "huber", "--quiet"]) == 0
    prov = json.loads((tmp_path / "runs" / "concat" / "provenance.json").read_text())
    tc = prov["train_config"]
    assert {k: tc[k] for k in ("epochs", "weight_decay", "lr", "batch_size", "modality_dropout", "patience", "seed", "device")} == \
        {"epochs": 2, "weight_decay": 0.03, "lr": 0.0003, "batch_size": 16, "modality_dropout": 0.4, "patience": 5, "seed": 7, "device": "cpu"}
    assert prov["context"] is False and prov["data"] == str(data)
    fc = json.loads((tmp_path / "runs" / "concat" / "config.json").read_text())["config"]
    assert (fc["hidden"], fc["dropout"], fc["loss"]) == (24, 0.35, "huber")
    # every flag of the command line is one of those checked here (a new one must be added to this test;
    # --context's true value reaching provenance.json: tests/test_trimodal.py)
    flags = set(re.findall(r'add_argument\("--([a-z-]+)"', inspect.getsource(main)))
    assert flags == {"fusion", "data", "context", "out", "epochs", "batch-size", "lr", "patience", "modality-dropout", "weight-decay",
                     "hidden", "dropout", "loss", "seed", "device", "quiet"}


def test_cli_rejects_unknown_methods_and_bad_files(tmp_path):
    with pytest.raises(SystemExit):
        main(["--fusion", "nope", "--data", "x.npz"])
    bad = tmp_path / "bad.npz"
    bad.write_text("garbage")
    with pytest.raises(SystemExit):
        main(["--fusion", "concat", "--data", str(bad), "--out", str(tmp_path)])


@pytest.mark.parametrize("extra, says", [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--patience", "-1"], "--patience"),
    (["--hidden", "0"], "--hidden"), (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--dropout", "1.5"], "--dropout"),
    (["--modality-dropout", "-0.1"], "--modality-dropout"), (["--device", "tpu"], "unknown device"), (["--fusion", ","], "no method"),
])
def test_cli_refuses_nonsense_settings_before_training(tmp_path, capsys, extra, says):
    data = make_synthetic(SyntheticSpec(sizes=(30, 10, 10), seq_len=0, seed=1)).save(tmp_path / "d.npz")
    args = ["--fusion", "concat", "--data", str(data), "--out", str(tmp_path / "runs"), "--quiet"]
    with pytest.raises(SystemExit) as err:
        main(args + extra)  # argparse keeps the last --fusion
    assert err.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("content", [b"", b"\x80garbage", b"not a pickle at all"])
def test_cli_names_an_unreadable_pickle(tmp_path, capsys, content):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as err:
        main(["--fusion", "concat", "--data", str(bad), "--out", str(tmp_path / "runs")])
    assert err.value.code == 2 and "bad.pkl" in capsys.readouterr().err


def test_library_settings_out_of_range_are_refused_where_they_are_made():
    from mmdemo.fusion import FusionConfig

    for make, name in ((lambda: TrainConfig(epochs=0), "epochs"), (lambda: TrainConfig(lr=float("inf")), "lr"),
                       (lambda: TrainConfig(modality_dropout=1.0), "modality_dropout"), (lambda: TrainConfig(batch_size=2.5), "batch_size"),
                       (lambda: FusionConfig(hidden=0), "hidden"), (lambda: FusionConfig(dropout=-0.1), "dropout"),
                       (lambda: FusionConfig(rank=0), "rank"), (lambda: FusionConfig(out_range=0), "out_range")):
        with pytest.raises(ValueError, match=name):
            make()
    assert TrainConfig(grad_clip=0.0, weight_decay=0.0, modality_dropout=0.0).grad_clip == 0.0  # the off values stay allowed
    assert FusionConfig(dropout=0.0, recon_weight=0.0).dropout == 0.0


def test_every_cli_refuses_an_output_it_cannot_write_before_any_work(tmp_path, capsys):
    """A file where a folder goes (or a folder where a file goes) is named at once, not after an
    hour of extraction or training."""
    from mmdemo.extract import main as extract_main
    from mmdemo.personal import main as personal_main
    from mmdemo.settings import output_problem
    from mmdemo.trimodal import main as trimodal_main

    a_file = tmp_path / "taken"
    a_file.write_text("x")
    src = tmp_path / "media"
    src.mkdir()
    calls = {
        "train": lambda: main(["--fusion", "concat", "--data", str(tmp_path / "nowhere.npz"), "--out", str(a_file)]),
        "trimodal": lambda: trimodal_main(["--data", str(tmp_path / "nowhere"), "--out", str(a_file / "deeper")]),
        "extract": lambda: extract_main([str(src), "--out", str(src)]),  # a folder where the .npz goes
        "personal merge": lambda: personal_main(["merge", str(a_file), "--out", str(a_file)]),
    }
    for name, call in calls.items():
        with pytest.raises(SystemExit) as info:
            call()
        assert info.value.code == 2, name
        assert "--out" in capsys.readouterr().err, name
    assert output_problem(tmp_path / "new" / "runs", folder=True) is None and output_problem(tmp_path / "f.npz", folder=False) is None


def _reference_fit(model, data, cfg):
    """The training loop as it was before splits were prepared once: raw features at every step
    (a forward pass on the shown modalities and ``loss``; for a method with a one-pass
    ``step_loss`` of its own, ``training_loss``), ``F.dropout`` in every dropout layer (the same
    random draws, in the same order, as :func:`mmdemo.train.fit`)."""
    import copy

    import torch.nn.functional as F

    from mmdemo.fusion.base import Dropout, Fusion
    from mmdemo.train import Batches, adam, normalization_stats, predict

    for mod in model.modules():  # the plain nn.Dropout forward, whatever this CPU allows
        if isinstance(mod, Dropout):
            mod.forward = lambda x, mod=mod: F.dropout(x, mod.p, mod.training, mod.inplace)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.set_normalization(normalization_stats(data.splits["train"]))
    train = Batches(data.splits["train"], model.modalities, "cpu")
    valid = Batches(data.splits["valid"], model.modalities, "cpu")
    opt = adam(model.param_groups(lr=cfg.lr, weight_decay=cfg.weight_decay))
    params = [p for p in model.parameters() if p.requires_grad]
    best, best_state, stale, maes = float("inf"), None, 0, []
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for s in range(0, len(train), cfg.batch_size):
            feats, avail, y, steps = train.take(order[s : s + cfg.batch_size])
            drop = torch.rand(avail.shape, generator=gen) < cfg.modality_dropout
            shown = avail & ~drop
            if type(model).step_loss is Fusion.step_loss:
                out = model(feats, {m: shown[:, j] for j, m in enumerate(model.modalities)}, steps)
                loss = model.loss(out, y, feats=feats, available=avail, steps=steps)
            else:
                loss = model.training_loss(feats, shown, avail, y, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        maes.append(float(np.mean(np.abs(predict(model, valid) - data.splits["valid"].labels))))
        if maes[-1] < best - 1e-4:
            best, stale, best_state = maes[-1], 0, copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return maes


@pytest.mark.parametrize("name", list_fusions())
def test_the_training_loop_trains_the_model_of_per_step_raw_features(name):
    """``fit`` prepares each split once and its dropout layers draw their masks with ``torch.rand``
    where this CPU allows: the model it trains is the one of per-step raw features and
    ``F.dropout``, to the bit (sequences with padding, rows of nothing but padding, missing
    modalities and modality dropout included)."""
    from mmdemo.fusion import FusionConfig, create_fusion
    from mmdemo.train import fit

    data = make_synthetic(SyntheticSpec(sizes=(120, 40, 10), seq_len=6, missing=0.2, seed=5))
    rng = np.random.default_rng(0)
    for split in data.splits.values():
        for m in ("text", "audio"):
            split.steps[m] = np.arange(6)[None, :] < rng.integers(0, 7, size=len(split.labels))[:, None]
            split.feats[m][~split.steps[m]] = np.nan  # padding is never read
    cfg = TrainConfig(epochs=3, batch_size=32, modality_dropout=0.3, patience=5, seed=2, device="cpu")
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(create_fusion(name, dims=data.dims, cfg=FusionConfig(hidden=16, dropout=0.3)))
    ours = fit(models[0], data, cfg, progress=False)
    theirs = _reference_fit(models[1], data, cfg)
    assert [h["valid_mae"] for h in ours.history] == theirs
    a, b = models[0].state_dict(), models[1].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
