"""bench/sensitivity.py: one setting of each chosen CMU-MOSI configuration varied, valid fold only."""

import json

import pytest

from mmdemo import trimodal
from tests.helpers import bench_module
from tests.test_trimodal import make_folder


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """A small benchmark run (synthetic folder in the release's layout): its results file."""
    tmp = tmp_path_factory.mktemp("sens")
    folder = make_folder(tmp / "f", n=200)
    out = tmp / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "late,cross_attention", "--search", "2", "--refine", "0",
                          "--select-seeds", "2", "--seeds", "1", "--epochs", "3", "--timing-epochs", "0", "--workers", "1",
                          "--no-context", "--mmsa", str(tmp / "none.json"), "--quiet"]) == 0
    return folder, out / "trimodal.json"


def test_the_probes_train_the_chosen_configuration_with_one_setting_changed_and_never_read_test(benchmark, tmp_path, monkeypatch):
    folder, results = benchmark
    res = json.loads(results.read_text())
    seen = []
    real = trimodal.run_job

    def spy(job):
        seen.append(job)
        return real(job)

    monkeypatch.setattr(trimodal, "run_job", spy)
    sens = bench_module("sensitivity")
    out = tmp_path / "s.json"
    assert sens.main(["--data", str(folder), "--results", str(results), "--workers", "1", "--no-progress", "--out", str(out),
                      "--probe", "late:unimodal_weight=0,0.5", "--probe", "late:loss=l1,huber", "--probe", "cross_attention:heads=1,2",
                      "--probe", "late:lr=0.01"]) == 0
    got = json.loads(out.read_text())
    assert not any(j.test for j in seen)
    # 7 values x 2 seeds; `late`'s chosen configuration is in two of its probes (its own-loss weight 0.5
    # and its loss l1 are the defaults it was trained with): trained once, so 6 x 2 runs
    assert got["jobs"] == 14 and got["trained"] == len(seen) == 12
    late = [j for j in seen if j.method == "late"]
    assert sorted({j.fusion.get("unimodal_weight", 0.5) for j in late}) == [0.0, 0.5]
    assert sorted(j.fusion.get("loss", "l1") for j in late) == ["huber"] * 2 + ["l1"] * 6
    assert [j.train["lr"] for j in late if "lr" in j.train and j.train["lr"] == 0.01] == [0.01, 0.01]  # a training setting goes to TrainConfig
    for j in seen:  # everything else as chosen
        chosen = res["methods"][j.method]["config"]
        assert {k: v for k, v in (j.fusion | j.train).items() if k in chosen and k != "lr"} == {k: v for k, v in chosen.items() if k != "lr"}
    assert [p["setting"] for p in got["probes"]] == ["unimodal_weight", "loss", "heads", "lr"]
    # the value the benchmark used gives its search's own valid MAE for that choice, to the bit, in every probe that has it
    assert [p["used"] for p in got["probes"]][:3] == [0.5, "l1", 2]
    assert [p["reproduces_search"] for p in got["probes"]] == [True, True, True, None]  # lr 0.01 was not the one used
    assert got["probes"][0]["valid_mae"][1] == got["probes"][1]["valid_mae"][0] == got["probes"][0]["search_valid_mae"]
    assert all(len(p["valid_mae"]) == len(p["values"]) for p in got["probes"])
    md = out.with_suffix(".md").read_text()
    assert "| `late` | `unimodal_weight` | 0.0: " in md and "0.5*: " in md and "| `late` | `loss` | l1*: " in md


def test_a_bad_probe_or_results_file_is_a_clear_error(benchmark, tmp_path, capsys):
    folder, results = benchmark
    sens = bench_module("sensitivity")
    for probe, says in (("late", "expected method:setting=value"), ("nope:heads=1", "unknown method 'nope'"),
                        ("late:colour=1", "'colour' is not a setting"), ("late:heads=two", "heads: 'two' is not a valid int"),
                        ("late:epochs=3", "is not a setting"), ("late:heads=", "no values"), ("late:dropout=1.5", "dropout"),
                        ("cross_attention:heads=3", "divisible by heads (3)"), ("concat:heads=1", "no chosen configuration of concat")):
        with pytest.raises(SystemExit) as err:
            sens.main(["--data", str(folder), "--results", str(results), "--probe", probe, "--out", str(tmp_path / "x.json")])
        assert err.value.code == 2 and says in capsys.readouterr().err, probe
    (tmp_path / "bad.json").write_text("{}")
    for argv, says in ((["--results", str(tmp_path / "bad.json")], "not a python -m mmdemo.trimodal results file"),
                       (["--results", str(tmp_path / "absent.json")], "no such file"),
                       (["--results", str(results), "--data", str(tmp_path)], "no labels.csv")):
        with pytest.raises(SystemExit) as err:
            sens.main(argv + (["--data", str(folder)] if "--data" not in argv else []) + ["--out", str(tmp_path / "x.json")])
        assert err.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
