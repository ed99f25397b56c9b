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
                      "--probe", "late:unimodal_weight=0,0.5", "--probe", "cross_attention:heads=1,2",
                      "--probe", "late:lr=0.01"]) == 0
    got = json.loads(out.read_text())
    assert not any(j.test for j in seen)
    # 5 values x 2 seeds, each distinct job trained once
    assert len(seen) == len({json.dumps(j.fusion | j.train | {"m": j.method}, sort_keys=True) for j in seen}) == 10
    late = [j for j in seen if j.method == "late"]
    assert sorted({j.fusion["unimodal_weight"] for j in late if "unimodal_weight" in j.fusion}) == [0.0, 0.5]
    assert [j.train["lr"] for j in late if "unimodal_weight" not in j.fusion] == [0.01, 0.01]  # a training setting goes to TrainConfig
    for j in seen:  # everything else as chosen
        chosen = res["methods"][j.method]["config"]
        assert {k: v for k, v in (j.fusion | j.train).items() if k in chosen and k not in ("lr",)} == {k: v for k, v in chosen.items() if k != "lr"}
    assert [p["setting"] for p in got["probes"]] == ["unimodal_weight", "heads", "lr"]
    # the value the benchmark used gives its search's own valid MAE for that choice, to the bit
    assert got["probes"][0]["used"] == 0.5 and got["probes"][0]["reproduces_search"] is True
    assert got["probes"][1]["used"] == 2 and got["probes"][1]["reproduces_search"] is True
    assert got["probes"][2]["reproduces_search"] is None  # the value used is not among those probed
    assert all(len(p["valid_mae"]) == len(p["values"]) for p in got["probes"])
    md = out.with_suffix(".md").read_text()
    assert "| `late` | `unimodal_weight` | 0.0: " in md and "0.5*: " in md


def test_a_bad_probe_or_results_file_is_a_clear_error(benchmark, tmp_path, capsys):
    folder, results = benchmark
    sens = bench_module("sensitivity")
    for probe, says in (("late", "expected method:setting=value"), ("nope:heads=1", "unknown method 'nope'"),
                        ("late:colour=1", "'colour' is not a setting"), ("late:heads=two", "heads: 'two' is not a valid int"),
                        ("late:epochs=3", "is not a setting"), ("late:heads=", "no values"), ("late:dropout=1.5", "dropout")):
        with pytest.raises(SystemExit) as err:
            sens.main(["--data", str(folder), "--results", str(results), "--probe", probe, "--out", str(tmp_path / "x.json")])
        assert err.value.code == 2 and says in capsys.readouterr().err, probe
    (tmp_path / "bad.json").write_text("{}")
    for argv, says in ((["--results", str(tmp_path / "bad.json")], "not a python -m mmdemo.trimodal results file"),
                       (["--results", str(results), "--data", str(tmp_path)], "no labels.csv")):
        with pytest.raises(SystemExit) as err:
            sens.main(argv + (["--data", str(folder)] if "--data" not in argv else []) + ["--out", str(tmp_path / "x.json")])
        assert err.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
