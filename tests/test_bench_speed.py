"""The speed benches' device and modality choices (bench/train_speed.py, bench/extract_speed.py)."""

import csv
import json
import sys

import pytest
import torch

from tests.helpers import bench_module


def run(mod, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [mod.__name__, *argv])
    return mod.main()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
@pytest.mark.parametrize("name", ["train_speed", "extract_speed"])
def test_asking_for_cuda_without_one_is_a_clear_error(name, monkeypatch, capsys, tmp_path):
    mod = bench_module(name)
    argv = ["--devices", "cuda", "--out", str(tmp_path / "x.json")] + (["--modalities", "words"] if name == "extract_speed" else [])
    with pytest.raises(SystemExit) as err:
        run(mod, argv, monkeypatch)
    assert err.value.code == 2 and "no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_extract_speed_refuses_an_unknown_modality_and_options_ray_ignores(monkeypatch, capsys, tmp_path):
    for argv, says in ((["--modalities", "words,smell"], "unknown ['smell']"), (["--modalities", " , "], "no modality named"),
                       (["--ray", "--modalities", "words"], "do not apply")):
        with pytest.raises(SystemExit) as err:
            run(bench_module("extract_speed"), [*argv, "--out", str(tmp_path / "x.json")], monkeypatch)
        assert err.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_the_device_list_of_the_speed_benches():
    from bench.machine import devices

    assert devices(" CPU , ") == ["cpu"]
    assert devices(None) == ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for bad, says in (("gpu", "unknown device 'gpu'"), ("meta", "unknown device"), (",", "no device")):
        with pytest.raises(ValueError, match=says):
            devices(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0", "cpu,cuda:1"):
            with pytest.raises(ValueError, match="no CUDA device here"):
                devices(name)


def test_extract_speed_names_a_missing_data_folder(monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as err:
        run(bench_module("extract_speed"), ["--modalities", "words", "--devices", "cpu", "--data", str(tmp_path), "--out", str(tmp_path / "x.json")], monkeypatch)
    assert "cmu-mosei-text" in str(err.value.code) and "--data" in str(err.value.code)
    assert not (tmp_path / "x.json").exists()


def test_train_speed_times_only_the_devices_and_methods_asked_for(monkeypatch, tmp_path):
    mod = bench_module("train_speed")
    asked = []
    # the parser gives two devices, as where a GPU is present: only those it gives are timed (cpu twice here)
    monkeypatch.setattr(mod, "parse_devices", lambda text: asked.append(text) or ["cpu", "cpu"])
    out = tmp_path / "speed.json"
    run(mod, ["--devices", "cpu,cuda", "--methods", "concat,tensor", "--epochs", "1", "--out", str(out)], monkeypatch)
    assert asked == ["cpu,cuda"]
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["device"], r["method"]) for r in rows if r["variant"] == "pooled") == [("cpu", "concat"), ("cpu", "concat"), ("cpu", "tensor"), ("cpu", "tensor")]
    assert {r["variant"] for r in rows} == {"seq50", "pooled"}
    assert all(r["s_per_epoch"] > 0 for r in rows)


@pytest.mark.slow
def test_extract_speed_words_alone_needs_only_transcripts(monkeypatch, tmp_path):
    """--modalities words reads cmu-mosei-text/labels.csv only (no audio, no photos) and reports a
    steady pass beside the first one."""
    folder = tmp_path / "cmu-mosei-text"
    folder.mkdir()
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["clip_id", "text"])
        w.writeheader()
        w.writerows({"clip_id": str(i), "text": f"the film number {i} was " + "rather good " * (i % 5)} for i in range(20))
    out = tmp_path / "x.json"
    run(bench_module("extract_speed"), ["--modalities", "words", "--devices", "cpu", "--data", str(tmp_path), "--n", "4", "--out", str(out)], monkeypatch)
    got = json.loads(out.read_text())
    assert [(r["modality"], r["device"]) for r in got["results"]] == [("words", "cpu")] * 2
    assert all(r["items_per_s"] > 0 and r["first_pass_items_per_s"] > 0 and r["dtype"] == "float32" for r in got["results"])
    assert [r["texts"] for r in got["results"]] == [20, 4]  # 5 x --n transcripts in batches (all 20 here), --n one at a time


def test_the_dropout_bench_times_both_ways_and_checks_they_train_the_same_model(tmp_path, capsys):
    mod = bench_module("dropout_masks")
    out = tmp_path / "dropout.json"
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--repeats", "3", "--rounds", "1", "--epochs", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert [r["shape"] for r in res["masks"]] == [list(s) for s in mod.SHAPES]
    assert all(r["f_dropout_us"] > 0 and r["mmdemo_us"] > 0 for r in res["masks"])
    assert res["training"]["same_weights"] is True and res["training"]["mmdemo_s_per_epoch"] > 0
    assert isinstance(res["fast_path"], bool) and "fast path is" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--rounds", "0", "--out", str(out)])
