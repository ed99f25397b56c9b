"""Contract tests, parametrized over the registry: a new method is covered with no new test code."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdemo.checkpoint import load_fusion, save_fusion
from mmdemo.contributions import explain
from mmdemo.data import FeatureDataset, Split
from mmdemo.fusion import FUSIONS, Fusion, FusionConfig, create_fusion, list_fusions
from mmdemo.fusion.late import SubnetworkFusion
from mmdemo.train import Batches, TrainConfig, predict, train_method

from tests.helpers import DIMS, make_batch, presence_patterns

METHODS = list_fusions()


def test_registry_lists_every_method_of_the_brief():
    assert set(METHODS) >= {"concat", "late", "weighted", "attention", "cross_attention", "tensor", "low_rank", "autoencoder"}
    for name, cls in FUSIONS.items():
        assert issubclass(cls, Fusion) and cls.name == name
        assert cls.__module__ and (cls.__doc__ or __import__(cls.__module__).__doc__)


def test_unknown_method_lists_choices():
    with pytest.raises(KeyError, match="concat"):
        create_fusion("nope", dims=DIMS)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kinds", [{}, {"text": "vec", "audio": "vec", "vision": "vec"}, {"audio": "vec"}], ids=["seq", "vec", "mixed"])
def test_shapes_and_range(build, name, kinds):
    model = build(name).eval()
    feats = make_batch(kinds=kinds, batch=9)
    out = model(feats, presence_patterns(model.modalities, 9))
    assert out.prediction.shape == (9,)
    assert torch.isfinite(out.prediction).all()
    assert out.prediction.abs().max() < model.cfg.out_range
    if model.has_weights:
        assert out.weights is not None and out.weights.shape == (9, len(model.modalities))
    else:
        assert out.weights is None


@pytest.mark.parametrize("name", [n for n in METHODS if FUSIONS[n].has_weights])
def test_weights_sum_to_one_over_present(build, name):
    model = build(name).eval()
    pres = presence_patterns(model.modalities, 16)
    out = model(make_batch(batch=16), pres)
    mask = torch.stack([pres[m] for m in model.modalities], dim=1)
    any_on = mask.any(dim=1)
    assert torch.allclose(out.weights[any_on].sum(dim=1), torch.ones(int(any_on.sum())), atol=1e-6)
    assert (out.weights[~mask] == 0).all()
    assert (out.weights >= 0).all()


@pytest.mark.parametrize("name", METHODS)
def test_every_parameter_gets_a_gradient(build, name):
    model = build(name).train()
    feats = make_batch(batch=16, seq=5)
    pres = presence_patterns(model.modalities, 16)
    avail = torch.ones(16, len(model.modalities), dtype=torch.bool)
    out = model(feats, pres)
    model.loss(out, torch.randn(16), feats=feats, available=avail).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} gets a zero gradient"


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_is_exact(build, name, tmp_path):
    a = build(name, seed=0).eval()
    feats = make_batch(batch=5)
    pres = presence_patterns(a.modalities, 5)
    save_fusion(a, tmp_path / name)
    b = load_fusion(tmp_path / name)
    c = build(name, seed=123).eval()
    c.load_state_dict(a.state_dict(), strict=True)
    ref = a(feats, pres).prediction
    assert torch.equal(b(feats, pres).prediction, ref)
    assert torch.equal(c(feats, pres).prediction, ref)
    # every parameter is in the state dict (a factor kept in a Python list would not be)
    names = set(b.state_dict())
    assert all(n in names for n, _ in a.named_parameters())
    assert sum(p.numel() for p in a.parameters()) > 0


@pytest.mark.parametrize("name", METHODS)
def test_absent_modalities_are_ignored(build, name):
    """Whatever sits in an absent modality's slot (noise, NaN, nothing at all) gives the same output."""
    model = build(name).eval()
    feats = make_batch(batch=4)
    off = torch.zeros(4, dtype=torch.bool)
    on = torch.ones(4, dtype=torch.bool)
    pres = {"text": on, "audio": off, "vision": on}
    ref = model(feats, pres).prediction
    noisy = dict(feats, audio=torch.randn_like(feats["audio"]) * 100)
    nan = dict(feats, audio=torch.full_like(feats["audio"], float("nan")))
    dropped = {m: x for m, x in feats.items() if m != "audio"}
    for variant in (noisy, nan):
        assert torch.allclose(model(variant, pres).prediction, ref, atol=1e-6)
    assert torch.allclose(model(dropped, {"text": on, "vision": on}).prediction, ref, atol=1e-6)
    none = model(feats, {"text": off, "audio": off, "vision": off}).prediction
    assert torch.isfinite(none).all()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dims", [{"a": 3, "b": 64}, {"w": 11, "x": 1, "y": 6, "z": 2}], ids=["two", "four"])
def test_any_modalities_with_different_dims(build, name, dims):
    model = build(name, dims=dims).eval()
    feats = make_batch(dims=dims, batch=6, kinds={list(dims)[0]: "vec"})
    out = model(feats, presence_patterns(model.modalities, 6))
    assert out.prediction.shape == (6,) and torch.isfinite(out.prediction).all()
    with pytest.raises(ValueError, match="expected"):
        model(dict(feats, **{list(dims)[1]: torch.randn(6, dims[list(dims)[1]] + 1)}))
    with pytest.raises(KeyError, match="unknown modalities"):
        model(dict(feats, extra=torch.randn(6, 2)))


@pytest.mark.parametrize("name", METHODS)
def test_rows_do_not_depend_on_the_rest_of_the_batch(build, name):
    model = build(name).eval()
    feats = make_batch(batch=7)
    pres = presence_patterns(model.modalities, 7)
    full = model(feats, pres).prediction
    for i in (0, 3, 6):
        one = model({m: x[i : i + 1] for m, x in feats.items()}, {m: p[i : i + 1] for m, p in pres.items()}).prediction
        assert torch.allclose(one, full[i : i + 1], atol=1e-5)


def test_weighted_exposes_its_global_weights(build):
    model = build("weighted")
    with torch.no_grad():
        model.theta.copy_(torch.tensor([2.0, 0.0, -1.0]))
    g = model.global_weights()
    assert list(g) == list(model.modalities)
    assert abs(sum(g.values()) - 1) < 1e-6 and g["text"] > g["audio"] > g["vision"]


def test_autoencoder_imputes_in_raw_units(build):
    model = build("autoencoder").eval()
    feats = make_batch(batch=3, kinds={"text": "vec", "audio": "vec", "vision": "vec"})
    imp = model.impute(feats, {"text": torch.ones(3, dtype=torch.bool), "audio": torch.zeros(3, dtype=torch.bool)})
    assert set(imp) == set(model.modalities)
    assert imp["audio"].shape == (3, DIMS["audio"])


def _with_stats(model, seed=1):
    """Non-trivial standardisation (as after training): zero padding would not stay zero."""
    g = torch.Generator().manual_seed(seed)
    model.set_normalization({m: (torch.randn(d, generator=g) + 2.0, torch.rand(d, generator=g) + 0.5) for m, d in model.dims.items()})
    return model


@pytest.mark.parametrize("name", METHODS)
def test_padding_is_never_read_as_data(build, name):
    """A padded sequence with its step mask gives exactly what the unpadded sequence gives, wherever
    the padding sits and whatever it holds (MMSA pads at the end with zeros, MulT at the front)."""
    model = _with_stats(build(name)).eval()
    feats = make_batch(batch=5, seq=4)
    pres = presence_patterns(model.modalities, 5)
    ref = model(feats, pres).prediction
    g = torch.Generator().manual_seed(5)
    padded, steps = {}, {}
    for i, m in enumerate(model.modalities):
        x = feats[m]
        pad = torch.zeros(x.shape[0], 3 + i, x.shape[2]) if i % 2 == 0 else torch.randn(x.shape[0], 3 + i, x.shape[2], generator=g) * 50
        front = m == "audio"
        padded[m] = torch.cat([pad, x] if front else [x, pad], dim=1)
        real = torch.ones(x.shape[:2], dtype=torch.bool)
        none = torch.zeros(x.shape[0], 3 + i, dtype=torch.bool)
        steps[m] = torch.cat([none, real] if front else [real, none], dim=1)
    out = model(padded, pres, steps).prediction
    assert torch.allclose(out, ref, atol=1e-5), (out, ref)
    e, e_ref = explain(model, padded, pres, steps), explain(model, feats, pres)
    assert torch.allclose(e.shapley, e_ref.shapley, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_a_sequence_of_padding_only_is_absent(build, name):
    model = _with_stats(build(name)).eval()
    feats = make_batch(batch=3, seq=4)
    on = torch.ones(3, dtype=torch.bool)
    steps = {"audio": torch.zeros(3, 4, dtype=torch.bool)}
    a = model(feats, {m: on for m in model.modalities}, steps).prediction
    b = model(feats, {"text": on, "audio": ~on, "vision": on}).prediction
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="step mask"):
        model(feats, None, {"audio": torch.ones(3, 5, dtype=torch.bool)})


@pytest.mark.parametrize("name", ["late", "weighted"])
def test_subnetworks_learn_from_their_real_input_when_dropout_hides_it(build, name):
    """Modality dropout hides audio from the fused prediction, but the data has it: the audio
    sub-network's own loss term must still read the real audio (not a blanked input)."""
    model = build(name).train()
    feats = {m: x.clone().requires_grad_(True) for m, x in make_batch(batch=8, seq=3).items()}
    on = torch.ones(8, dtype=torch.bool)
    shown = {"text": on, "audio": ~on, "vision": on}
    out = model(feats, shown)
    model.loss(out, torch.randn(8), feats=feats, available=torch.ones(8, 3, dtype=torch.bool)).backward()
    assert feats["audio"].grad is not None and feats["audio"].grad.abs().sum() > 0
    # ... and a modality the data does not have teaches nothing
    feats = {m: x.detach().clone().requires_grad_(True) for m, x in feats.items()}
    avail = torch.ones(8, 3, dtype=torch.bool)
    avail[:, 1] = False
    model.loss(model(feats, shown), torch.randn(8), feats=feats, available=avail).backward()
    assert feats["audio"].grad is None or feats["audio"].grad.abs().sum() == 0


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kinds", [{}, {"text": "vec", "audio": "vec", "vision": "vec"}], ids=["seq", "vec"])
def test_the_training_loss_is_the_loss_of_the_prediction_from_the_shown_modalities(build, name, kinds):
    """A method may compute a training step's loss in fewer passes (late and weighted read every
    real input once), but it must be the loss of a forward pass on the shown modalities, with the
    same gradients (eval mode: no dropout noise in either), also with padding, sequences that are
    nothing but padding, and NaN in rows the data does not have."""
    torch.manual_seed(3)
    feats = make_batch(kinds=kinds, batch=12, seq=4)
    shown_pres = presence_patterns(DIMS, 12)  # row i shows the subset i % 8 (bit j = modality j)
    shown = torch.stack([shown_pres[m] for m in DIMS], dim=1)
    avail = shown.clone()
    avail[::2] = True  # even rows: the data has every modality, dropout hid some
    avail[9] = torch.tensor([True, True, False])  # shows text, has audio too
    feats["audio"][1] = float("nan")  # row 1 has text only: what its other rows hold is never read
    feats["vision"][1] = float("nan")
    steps = None
    if not kinds:  # sequences: padding, and text that is nothing but padding where hidden (row 2) and where shown (row 5)
        steps = {m: torch.ones(12, 4, dtype=torch.bool) for m in DIMS}
        steps["text"][7, 2:] = False
        steps["text"][2] = False
        steps["text"][5] = False
    y = torch.randn(12)
    grads = []
    for how in ("forward + loss", "training_loss"):
        model = build(name, seed=0).eval()
        if how == "training_loss":
            loss = model.training_loss(feats, shown, avail, y, steps)
        else:
            out = model(feats, {m: shown[:, j] for j, m in enumerate(model.modalities)}, steps)
            loss = model.loss(out, y, feats=feats, available=avail, steps=steps)
        loss.backward()
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6) and a == a
    assert set(ga) == set(gb)
    for n in ga:
        assert torch.isfinite(ga[n]).all(), n
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-6), n


def test_an_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="l1, huber"):
        FusionConfig(loss="mse")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_with_either_loss(build, name):
    """``loss`` names the prediction's loss in every method's own loss (fused term and sub-networks):
    with every prediction within 1 of its target, huber is half the squared error, below l1."""
    torch.manual_seed(0)
    feats = make_batch(kinds={"text": "vec", "audio": "vec", "vision": "vec"}, batch=8)
    avail = torch.ones(8, len(DIMS), dtype=torch.bool)
    losses = {}
    for loss in ("l1", "huber"):
        model = build(name, seed=0, loss=loss).eval()
        out = model(feats)
        y = out.prediction.detach() + 0.5  # every prediction 0.5 off: l1 0.5, huber 0.125 per term
        value = model.loss(out, y, feats=feats, available=avail)
        value.backward()
        losses[loss] = float(value.detach())
        assert model.prediction_loss(out.prediction, y).item() == pytest.approx(0.5 if loss == "l1" else 0.125, abs=1e-5)
        if isinstance(model, SubnetworkFusion):  # the sub-networks' own term uses the same loss
            uni = out.extras["unimodal"].detach()
            expected = model.prediction_loss(out.prediction, y) + model.cfg.unimodal_weight * model.prediction_loss(uni, y[:, None].expand_as(uni))
            assert losses[loss] == pytest.approx(float(expected.detach()), abs=1e-5)
    assert losses["huber"] < losses["l1"]


def test_huber_reads_an_ambiguous_input_between_the_labels_where_l1_snaps_to_one():
    """On labels of a few values (a face's -1 / 0 / +1), l1 learns the conditional median and
    snaps an input seen with both labels to the majority's; huber learns a value in between (the
    minimum of 0.7 h(p + 1) + 0.3 h(p - 1) is -4/7): a graded reading that moves smoothly."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.01, (400, 3)).astype(np.float32)  # one input, a little noise
    y = np.where(np.arange(400) % 10 < 7, -1.0, 1.0).astype(np.float32)  # 70% negative
    sp = Split(feats={"vision": x}, present={}, labels=y, ids=np.arange(400))
    ds = FeatureDataset({"train": sp, "valid": sp, "test": sp})
    read = {}
    for loss in ("l1", "huber"):
        model, _, _ = train_method("concat", ds, FusionConfig(hidden=8, loss=loss),
                                   TrainConfig(epochs=60, patience=60, lr=1e-2, modality_dropout=0.0, device="cpu"), progress=False)
        read[loss] = float(np.mean(predict(model, Batches(sp, model.modalities, model.device))))
    assert read["l1"] < -0.9
    assert -0.8 < read["huber"] < -0.4  # the epoch kept is the one of the lowest valid MAE: a little below -4/7 at most


def test_a_checkpoint_records_its_loss_and_one_without_it_loads_as_l1(build, tmp_path):
    import json

    model = build("concat", loss="huber")
    save_fusion(model, tmp_path / "m")
    assert load_fusion(tmp_path / "m").cfg.loss == "huber"
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["config"]["loss"]  # written before the setting existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert load_fusion(tmp_path / "m").cfg.loss == "l1"
    cfg["config"]["loss"] = "hinge"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hinge"):
        load_fusion(tmp_path / "m")


@pytest.mark.parametrize("name", ["concat", "weighted"])  # without and with the method's own modality weights
def test_a_mean_of_models_reads_as_their_mean_and_saves_and_loads_strictly(build, name, tmp_path):
    import json

    from mmdemo.checkpoint import MeanOfModels

    members = [build(name, seed=s).eval() for s in range(3)]
    mean = MeanOfModels(members).eval()
    assert (mean.name, mean.dims, mean.modalities, mean.cfg) == (name, members[0].dims, members[0].modalities, members[0].cfg)
    feats = make_batch(batch=6)
    pres = presence_patterns(mean.modalities, 6)
    outs = [m(feats, pres) for m in members]
    out = mean(feats, pres)
    assert torch.allclose(out.prediction, sum(o.prediction for o in outs) / 3)
    assert not torch.allclose(outs[0].prediction, outs[1].prediction)  # the seeds differ, so the mean is not one of them
    if outs[0].weights is None:
        assert out.weights is None
    else:
        assert torch.allclose(out.weights, sum(o.weights for o in outs) / 3)
        some = torch.stack([pres[m] for m in mean.modalities], dim=1).any(dim=1).float()  # rows with a modality present
        assert torch.allclose(out.weights.sum(dim=1), some)
    save_fusion(mean, tmp_path / "m")
    back = load_fusion(tmp_path / "m")
    assert isinstance(back, MeanOfModels) and len(back.members) == 3
    assert torch.equal(back(feats, pres).prediction, out.prediction)
    # an explanation treats it like any model: exact Shapley values sum to the prediction less the
    # baseline, and (Shapley values are linear in the model) they are the mean of its members' values,
    # also where a modality is not given at all
    e = explain(back, feats, pres)
    assert torch.allclose(e.shapley.sum(dim=1), e.prediction - e.baseline, atol=1e-5)
    assert torch.allclose(e.shapley, sum(explain(m, feats, pres).shapley for m in members) / 3, atol=1e-5)
    gone = mean.modalities[-1]
    part = {m: x for m, x in feats.items() if m != gone}
    e = explain(back, part, {m: p for m, p in pres.items() if m != gone})
    assert torch.all(e.shapley[:, mean.modalities.index(gone)] == 0)
    assert torch.allclose(e.shapley, sum(explain(m, part, {k: p for k, p in pres.items() if k != gone}).shapley for m in members) / 3, atol=1e-5)
    # strict: one member fewer in the config than in the weights, or a count that is not a positive whole number
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for bad, match in ((2, "Unexpected key"), (0, "positive whole number"), ("3", "positive whole number"), (True, "positive whole number")):
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"members": bad}))
        with pytest.raises((ValueError, RuntimeError), match=match):
            load_fusion(tmp_path / "m")
    # one method, modalities and configuration only
    with pytest.raises(ValueError, match="one method"):
        MeanOfModels([members[0], build(name, seed=0, hidden=16)])
    with pytest.raises(ValueError, match="at least one"):
        MeanOfModels([])
    # the same modalities in another order would read each other's inputs once saved and loaded
    other = build(name, seed=1)
    other.modalities = tuple(reversed(other.modalities))
    with pytest.raises(ValueError, match="one order"):
        MeanOfModels([members[0], other])
    # a mean of means could not be loaded back
    with pytest.raises(TypeError, match="fusion models"):
        MeanOfModels([mean, members[0]])


def test_a_save_that_fails_half_way_leaves_the_earlier_checkpoint_whole(build, tmp_path, monkeypatch):
    from mmdemo import checkpoint

    old = build("concat", seed=0).eval()
    save_fusion(old, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def interrupted(state, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_fusion(build("concat", seed=1, hidden=16), tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # no temporary file left either
    feats = make_batch(batch=4)
    assert torch.equal(load_fusion(tmp_path / "m")(feats).prediction, old(feats).prediction)


def test_a_checkpoint_folder_is_replaced_whole(build, tmp_path, monkeypatch):
    """Weights written, then the disk fills while the metrics are written: the folder still holds
    the earlier model's weights *and* files (before, each file was replaced alone: new weights beside
    the old config); nothing is left beside it. A save that succeeds keeps files it does not own (the
    face head's folder also holds the expression CNN) and drops an earlier model's metrics it does not
    replace."""
    old = build("concat", seed=0).eval()
    folder = tmp_path / "m"
    save_fusion(old, folder, extra={"metrics.json": {"mae": 1.0}, "provenance.json": {"seed": 0}})
    (folder / "expression.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = Path.write_text

    def full_disk(self, text, *a, **kw):
        if self.name == "metrics.json":
            raise OSError("no space left on device")
        return real(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        save_fusion(build("concat", seed=1, hidden=16), folder, extra={"metrics.json": {"mae": 2.0}})
    monkeypatch.setattr(Path, "write_text", real)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    feats = make_batch(batch=4)
    assert torch.equal(load_fusion(folder)(feats).prediction, old(feats).prediction)

    new = build("concat", seed=1, hidden=16).eval()
    save_fusion(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "expression.json", "model.safetensors"]
    assert torch.equal(load_fusion(folder)(feats).prediction, new(feats).prediction)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_replacing_a_folder_follows_a_link_skips_leftovers_and_refuses_what_it_cannot_replace(build, tmp_path):
    import os

    from mmdemo.checkpoint import replace_problem, replacing_folder

    real = tmp_path / "real"
    save_fusion(build("concat", seed=0).eval(), real)
    (real / "keep.json").write_text("{}\n")
    os.chmod(real / "keep.json", 0o444)  # read-only (as git-annex leaves files): the copy is written over all the same
    (real / ".sub.new-dead").mkdir()  # a staging folder a killed save left behind
    link = tmp_path / "ckpt"
    link.symlink_to(real, target_is_directory=True)
    new = build("concat", seed=1, hidden=16).eval()
    with replacing_folder(link) as stage:
        save_fusion(new, stage / "inner")
        (stage / "keep.json").write_text('{"new": 1}\n')
    assert link.is_symlink() and link.resolve() == real.resolve()  # the link stays; the folder it names is replaced
    assert json.loads((real / "keep.json").read_text()) == {"new": 1}
    assert not (real / ".sub.new-dead").exists()
    feats = make_batch(batch=4)
    assert torch.equal(load_fusion(real / "inner")(feats).prediction, new(feats).prediction)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "real"]  # nothing left aside

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "not a folder" in replace_problem(a_file)
    with pytest.raises(OSError, match="not a folder"):
        with replacing_folder(a_file):
            pass
    assert a_file.read_text() == "x"
    if os.path.ismount("/proc"):
        assert "mount point" in replace_problem("/proc")
    assert replace_problem(tmp_path / "new" / "deeper") is None


@pytest.mark.parametrize("shape, p", [((128, 128), 0.5), ((16, 256), 0.1), ((5, 7, 3), 0.7), ((3,), 0.25)])
def test_dropout_draws_the_masks_of_f_dropout(shape, p, monkeypatch):
    """mmdemo's Dropout gives F.dropout's output and gradient and leaves the random stream where it
    does, to the bit; where this CPU's bernoulli kernel allows, without calling it."""
    import torch.nn.functional as F

    from mmdemo.fusion.base import Dropout, _rand_draws_bernoulli

    x = torch.randn(shape, requires_grad=True)
    torch.manual_seed(7)
    want = F.dropout(x, p, True)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    want_next = torch.rand(4)
    if _rand_draws_bernoulli():  # the fast path must be the one taken
        monkeypatch.setattr(F, "dropout", lambda *a, **k: pytest.fail("F.dropout called"))
    layer = Dropout(p).train()
    torch.manual_seed(7)
    got = layer(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad) and torch.equal(torch.rand(4), want_next)
    monkeypatch.undo()
    assert torch.equal(layer.eval()(x), x)  # evaluation: the input itself
    t = torch.randn(8, 6).t()  # not contiguous: nn.Dropout's own path, the same masks
    torch.manual_seed(1)
    want = F.dropout(t, p, True)
    torch.manual_seed(1)
    assert torch.equal(layer.train()(t), want)
