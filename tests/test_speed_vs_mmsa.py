"""bench/speed_vs_mmsa.py: mmdemo and MMSA timed in alternating turns of one run (MMSA faked here:
it is never installed with mmdemo)."""

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import bench_module
from tests.test_trimodal import make_folder


@pytest.fixture(scope="module")
def bench():
    return bench_module("speed_vs_mmsa")


def fake_mmsa(tmp_path: Path, log: Path, *, fail: bool = False) -> Path:
    """A stand-in for MMSA's Python: writes what bench/mmsa_reference.py writes, with s/epoch 10, 20, ...
    on its 1st, 2nd, ... call, and logs each call."""
    script = tmp_path / "mmsa-python"
    names = {"lf_dnn": "LF-DNN", "tfn": "TFN", "lmf": "LMF", "mfn": "MFN"}
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[2:]
opt = dict(zip(args[::2], args[1::2]))
log = {str(log)!r}
calls = sum(1 for line in open(log) if line.startswith("mmsa")) + 1 if __import__("os").path.exists(log) else 1
open(log, "a").write("mmsa " + opt["--models"] + "\\n")
if {fail!r}:
    sys.stderr.write("MMSA: something broke\\n"); sys.exit(1)
names = {names!r}
json.dump({{"env": {{}}, "models": {{names[k]: [{{"seed": int(opt["--seeds"]), "s_per_epoch": 10.0 * calls, "gflop_per_step": 0.5}}]
                                   for k in opt["--models"].split(",")}}}},
          open(opt["--out"], "w"))
""")
    script.chmod(0o755)
    return script


def results_file(tmp_path: Path) -> Path:
    config = {"hidden": 16, "dropout": 0.1, "lr": 1e-3, "weight_decay": 1e-4, "modality_dropout": 0.0, "patience": 10}
    res = {"methods": {"concat": {"config": config | {"batch_size": 16}}, "tensor": {"config": config | {"batch_size": 32}}}, "words": None}
    path = tmp_path / "trimodal.json"
    path.write_text(json.dumps(res))
    return path


def test_turns_alternate_and_each_ratio_compares_one_round(bench, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", n=120)
    log = tmp_path / "log"
    timed = iter([1.0, 2.0, 4.0, 5.0, 8.0, 10.0])  # concat own, concat at LF-DNN's batch, tensor (TFN's batch is its own), per round

    def time_mmdemo(ds, method, config, epochs, seed):
        assert epochs == 2 and seed == 1111 and ds.dims == {"text": 12, "audio": 7, "vision": 9}
        with open(log, "a") as f:
            f.write(f"mmdemo {method} {config['batch_size']}\n")
        return next(timed)

    monkeypatch.setattr(bench, "time_mmdemo", time_mmdemo)
    out = tmp_path / "out" / "speed.json"
    assert bench.main(["--mmsa-python", str(fake_mmsa(tmp_path, log)), "--data", str(folder), "--results", str(results_file(tmp_path)),
                       "--rounds", "2", "--epochs", "2", "--out", str(out)]) == 0
    turns = log.read_text().split("\n")[:-1]
    # round 1: MMSA first, round 2: mmdemo first; MMSA runs the counterparts only, in one call per round
    assert turns == ["mmsa lf_dnn,tfn", "mmdemo concat 16", "mmdemo concat 128", "mmdemo tensor 32",
                     "mmdemo concat 16", "mmdemo concat 128", "mmdemo tensor 32", "mmsa lf_dnn,tfn"]
    res = json.loads(out.read_text())
    assert res["mmsa"]["LF-DNN"]["s_per_epoch"] == [10.0, 20.0] and res["mmsa"]["TFN"]["batch_size"] == 32
    concat, tensor = res["methods"]["concat"], res["methods"]["tensor"]
    assert concat["peer"] == "LF-DNN" and tensor["peer"] == "TFN"
    assert concat["own"]["s_per_epoch"] == [1.0, 5.0] and concat["peer_batch"]["s_per_epoch"] == [2.0, 8.0]
    # ratios are per round: 10/2 and 20/8, not a ratio of medians
    assert concat["peer_batch"]["ratio_min"] == pytest.approx(2.5) and concat["peer_batch"]["ratio_max"] == pytest.approx(5.0)
    assert concat["peer_batch"]["ratio"] == pytest.approx(3.75)
    assert tensor["peer_batch"]["s_per_epoch"] == tensor["own"]["s_per_epoch"] == [4.0, 10.0]
    md = out.with_suffix(".md").read_text()
    assert "| `concat` | MMSA LF-DNN" in md and "2 rounds" in md and "in some rounds" in md  # 3x in round 1 only
    # the arithmetic of a step, counted on both sides at the counterpart's batch size
    assert res["mmsa"]["LF-DNN"]["gflop_per_step"] == 0.5 and "batch 128, 0.500 GFLOP per step" in md
    config = json.loads(results_file(tmp_path).read_text())["methods"]["concat"]["config"]
    assert concat["gflop_per_step"] == bench.gflop_per_step(res["dims"], "concat", config, 128) > 0
    assert f"| {concat['gflop_per_step']:.3f} |" in md


def test_a_failing_mmsa_and_a_wrong_results_file_are_named(bench, tmp_path):
    folder = make_folder(tmp_path / "f", n=120)
    log = tmp_path / "log"
    with pytest.raises(SystemExit, match="(?s)MMSA run failed.*something broke"):
        bench.main(["--mmsa-python", str(fake_mmsa(tmp_path, log, fail=True)), "--data", str(folder), "--results", str(results_file(tmp_path)),
                    "--rounds", "1", "--epochs", "1", "--out", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()
    own_words = json.loads(results_file(tmp_path).read_text()) | {"words": {"format": "mmdemo-words/1"}}
    (tmp_path / "words" / "trimodal.json").parent.mkdir()
    (tmp_path / "words" / "trimodal.json").write_text(json.dumps(own_words))
    with pytest.raises(SystemExit) as e:  # made with --words mosei, its features not beside it: said, not timed on other features
        bench.main(["--mmsa-python", str(fake_mmsa(tmp_path, log)), "--data", str(folder), "--results", str(tmp_path / "words" / "trimodal.json")])
    assert e.value.code == 2
    (tmp_path / "bad.json").write_text("{}")
    for results, mmsa in ((tmp_path / "bad.json", fake_mmsa(tmp_path, log)), (results_file(tmp_path), tmp_path / "no-such-python")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--mmsa-python", str(mmsa), "--data", str(folder), "--results", str(results), "--out", str(tmp_path / "o.json")])
        assert e.value.code == 2


def test_one_real_timing_of_a_configuration(bench, tmp_path, monkeypatch):
    from mmdemo import train
    from mmdemo.trimodal import load_source

    runs = []
    real_fit = train.fit

    def spy(model, data, cfg, **kw):
        runs.append((model.name, cfg, real_fit(model, data, cfg, **kw)))
        return runs[-1][2]

    monkeypatch.setattr(train, "fit", spy)
    ds = load_source(str(make_folder(tmp_path / "f", n=120)))
    config = {"hidden": 8, "dropout": 0.1, "lr": 1e-3, "weight_decay": 1e-4, "modality_dropout": 0.0, "batch_size": 32, "patience": 1}
    s = bench.time_mmdemo(ds, "concat", config, 3, 0)
    (name, cfg, res), = runs
    assert name == "concat" and cfg.batch_size == 32 and cfg.device == "cpu"
    assert res.epochs_run == 3 and s == pytest.approx(res.seconds / 3)  # patience is lifted: every epoch runs


def test_the_arithmetic_of_a_step_is_counted_per_sample_and_grows_with_the_network(bench):
    dims = {"text": 12, "audio": 7, "vision": 9}
    config = {"hidden": 16, "dropout": 0.1, "lr": 1e-3, "weight_decay": 1e-4, "modality_dropout": 0.0, "batch_size": 16, "patience": 10}
    for method in ("concat", "cross_attention", "autoencoder"):
        one = bench.gflop_per_step(dims, method, config, 32)
        assert one > 0 and bench.gflop_per_step(dims, method, config, 64) == pytest.approx(2 * one)  # every product is per sample
    assert bench.gflop_per_step(dims, "concat", config | {"hidden": 32}, 32) > bench.gflop_per_step(dims, "concat", config, 32)
    # forward and backward: more than twice a forward pass alone (the first layers need no input gradient)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmdemo.fusion import FusionConfig, create_fusion

    model = create_fusion("concat", dims=dims, cfg=FusionConfig(hidden=16, dropout=0.1))
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model({m: torch.randn(32, d) for m, d in dims.items()})
    assert 2 * forward.get_total_flops() < bench.gflop_per_step(dims, "concat", config, 32) * 1e9 < 3 * forward.get_total_flops() + 1
    # a transformer block per modality does more than concat's MLPs at the same width
    assert bench.gflop_per_step(dims, "cross_attention", config, 32) > bench.gflop_per_step(dims, "concat", config, 32)
    old = {"results": "r.json", "rounds": 1, "epochs": 1, "seconds": 1.0, "words": None,
           "env": {"cpu": "c", "cpus": 2, "date": "d"}, "mmsa": {"LF-DNN": {"median": 0.1}},
           "methods": {"concat": {"peer": "LF-DNN", "batch_size": 16, "own": {"median": 0.1, "ratio": 1.0, "ratio_min": 1.0, "ratio_max": 1.0},
                                  "peer_batch": {"median": 0.1, "ratio": 1.0, "ratio_min": 1.0, "ratio_max": 1.0}}}}
    row = next(line for line in bench.markdown(old).splitlines() if line.startswith("| `concat`"))  # a file from before the count
    assert row.endswith("| ✗ | – |") and "GFLOP per step)" not in row


def test_mmsa_reference_counts_a_step_of_mmsa_the_way_mmdemo_is_counted():
    """bench/mmsa_reference.py's count of one MMSA training step (MMSA itself is never installed here:
    a model with MMSA's call signature, batch layout, BatchNorm and text LSTM stands in)."""
    import torch

    ref = bench_module("mmsa_reference")

    class Stand(torch.nn.Module):  # MMSA's AMIO: model(text, audio, vision) -> {"M": (B, 1)}
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(7)
            self.rnn = torch.nn.LSTM(12, 5, batch_first=True)
            self.fc = torch.nn.Linear(5 + 7 + 9, 1)

        def forward(self, text, audio, vision):
            h = self.rnn(text)[1][0][0]  # the last hidden state, as MMSA's TextSubNet
            return {"M": self.fc(torch.cat([h, self.norm(audio[:, 0]), vision[:, 0]], dim=-1))}

    b = 8
    batch = {"text": torch.randn(b, 1, 12), "audio": torch.randn(b, 1, 7), "vision": torch.randn(b, 1, 9), "labels": {"M": torch.randn(b)}}
    model = Stand().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gflop = ref.step_gflop(model, [batch], torch.nn.L1Loss())
    # forward: the LSTM's gates 2 B 4h (12 + h) and the head 2 B 21; backward: the LSTM's weight gradients
    # (as much again: neither its input nor its zero start needs one) and the head's weight and input
    # gradients (twice its forward: the LSTM below it learns)
    lstm, head = 2 * b * 4 * 5 * (12 + 5), 2 * b * 21
    assert gflop * 1e9 == pytest.approx(2 * lstm + 3 * head)
    # the model is left as trained: BatchNorm statistics, weights, no gradients, its mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
