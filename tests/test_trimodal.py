"""The loader of row-aligned feature folders and the real-paired-data benchmark (mmdemo.trimodal)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mmdemo import trimodal
from mmdemo.data import FeatureDataset, Split, load_dataset, with_context
from mmdemo.fusion import FusionConfig
from mmdemo.train import TrainConfig
from mmdemo.train import main as train_main

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mosi-trimodal-features"


def make_folder(folder: Path, n: int = 240, seed: int = 0, *, dims=None) -> Path:
    """A small folder in the layout of cmu-mosi-trimodal-features: words carry the label, voice a
    little of it, face nothing."""
    dims = dims or {"text": 12, "audio": 7, "vision": 9}
    rng = np.random.default_rng(seed)
    y = np.clip(rng.normal(0, 1.4, n), -3, 3)
    folder.mkdir(parents=True, exist_ok=True)
    x = {m: rng.normal(0, 1, (n, d)).astype(np.float32) for m, d in dims.items()}
    x["text"][:, 0] += y
    x["audio"][:, 0] += 0.3 * y
    for m, a in x.items():
        np.save(folder / f"{m}.npy", a)
    videos = np.arange(n) // 8
    split = np.where(videos % 5 == 0, "test", np.where(videos % 5 == 1, "valid", "train"))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "video_id", "label", "split", "text"])
        for i in range(n):
            w.writerow([f"v{videos[i]}_{i}", f"v{videos[i]}", f"{y[i]:.4f}", split[i], f"segment {i}"])
    return folder


def record_jobs(monkeypatch) -> list:
    """Every job the benchmark runs, with what it returned, in the order run (workers=1)."""
    read = []
    real_run_job = trimodal.run_job

    def spy(job):
        out = real_run_job(job)
        read.append((job, out))
        return out

    monkeypatch.setattr(trimodal, "run_job", spy)
    return read


def record_stages(monkeypatch) -> dict:
    """The jobs of each stage of the benchmark, by the name it shows in its progress bar."""
    stages = {}
    real_run_all = trimodal.run_all

    def spy(jobs, data, workers, desc, progress, words=None):
        stages.setdefault(desc, []).extend(jobs)
        return real_run_all(jobs, data, workers, desc, progress, words)

    monkeypatch.setattr(trimodal, "run_all", spy)
    return stages


def test_a_feature_folder_loads_with_its_own_split(tmp_path):
    folder = make_folder(tmp_path / "f")
    a = np.load(folder / "audio.npy")
    a[3] = 0.0  # an all-zero row: that modality is missing there
    np.save(folder / "audio.npy", a)
    ds = load_dataset(folder)
    assert isinstance(ds, FeatureDataset) and ds.dims == {"text": 12, "audio": 7, "vision": 9}
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    for s in ("train", "valid", "test"):
        want = [r["clip_id"] for r in rows if r["split"] == s]
        assert list(ds.splits[s].ids) == want  # the CSV's split and order, row i of every array = row i of the CSV
    i = [r["clip_id"] for r in rows].index(rows[3]["clip_id"])
    sp = ds.splits[rows[i]["split"]]
    k = list(sp.ids).index(rows[i]["clip_id"])
    assert not sp.present["audio"][k] and sp.present["text"][k]
    np.testing.assert_allclose(sp.feats["text"][k], np.load(folder / "text.npy")[i])
    assert float(sp.labels[k]) == pytest.approx(float(rows[i]["label"]), abs=1e-4)


def set_cell(path: Path, row: int, column: str, value: str) -> None:
    rows = list(csv.DictReader(open(path)))
    rows[row][column] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cut_row(path: Path, row: int, fields: int) -> None:
    """Keep only the first ``fields`` fields of data row ``row`` (0: the first after the header)."""
    lines = path.read_text().splitlines()
    lines[row + 1] = ",".join(lines[row + 1].split(",")[:fields])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda f: np.save(f / "text.npy", np.load(f / "text.npy")[:-1]), "rows aligned"),
    (lambda f: np.save(f / "vision.npy", np.where(np.arange(240)[:, None] == 5, np.nan, np.load(f / "vision.npy"))), "NaN"),
    (lambda f: (f / "labels.csv").write_text((f / "labels.csv").read_text().replace(",valid,", ",dev,")), "unknown split"),
    (lambda f: (f / "labels.csv").unlink(), "labels.csv"),
    (lambda f: [(f / f"{m}.npy").unlink() for m in ("text", "audio", "vision")], "no text.npy"),
    (lambda f: (f / "labels.csv").write_text("clip_id,label\na,1\n"), "split"),
    (lambda f: set_cell(f / "labels.csv", 0, "label", "nan"), "not finite"),
    (lambda f: set_cell(f / "labels.csv", 1, "clip_id", "v0_0"), "more than once"),
    (lambda f: np.save(f / "audio.npy", np.zeros((240, 3, 7), np.float32)), "one vector per row"),
    # a row with a field too few or too many (a hand-edited file): its line number, not a traceback
    (lambda f: cut_row(f / "labels.csv", 5, 2), r"row 7 has fewer fields"),  # line 7 of the file: clip_id and video_id only, no label, no split
    (lambda f: (f / "labels.csv").write_text((f / "labels.csv").read_text().replace(",valid,", ",valid,,,,,,", 1)), r"row \d+ has more fields"),
])
def test_a_broken_feature_folder_says_what_is_wrong(tmp_path, damage, message):
    folder = make_folder(tmp_path / "f")
    damage(folder)
    with pytest.raises((ValueError, OSError), match=message):
        load_dataset(folder)


def test_a_spreadsheets_csv_loads_and_another_label_scale_is_warned_of(tmp_path, caplog):
    folder = make_folder(tmp_path / "f")
    text = (folder / "labels.csv").read_text()
    (folder / "labels.csv").write_text("\ufeff" + text, encoding="utf-8")  # "CSV UTF-8" of a spreadsheet: a byte-order mark first
    with caplog.at_level("WARNING", logger="mmdemo.data"):
        ds = load_dataset(folder)
    assert len(ds.splits["train"]) > 0 and "outside the CMU-MOSI scale" not in caplog.text
    cut_row(folder / "labels.csv", 3, 4)  # a row that leaves its optional text off the end still loads
    assert sum(len(sp) for sp in load_dataset(folder).splits.values()) == 240
    set_cell(folder / "labels.csv", 0, "label", "5")  # a 1-5 scale, say
    with caplog.at_level("WARNING", logger="mmdemo.data"):
        load_dataset(folder)
    assert "outside the CMU-MOSI scale" in caplog.text


def test_the_train_cli_reads_a_feature_folder(tmp_path, capsys):
    folder = make_folder(tmp_path / "f")
    assert train_main(["--fusion", "concat", "--data", str(folder), "--out", str(tmp_path / "runs"), "--epochs", "3", "--quiet"]) == 0
    assert (tmp_path / "runs" / "concat" / "config.json").exists() and "1" in capsys.readouterr().out


def test_configurations_start_with_the_defaults_and_never_repeat():
    cs = trimodal.configurations(12, seed=0)
    assert len(cs) == 12 and cs[0]["hidden"] == FusionConfig().hidden and cs[0]["lr"] == TrainConfig().lr
    assert len({json.dumps(c, sort_keys=True) for c in cs}) == 12
    assert all(c[k] in v for c in cs[1:] for k, v in trimodal.SEARCH.items())
    assert trimodal.configurations(12, seed=0) == cs  # the same search every run


def test_neighbours_step_one_setting_at_a_time():
    c = {k: v[1] for k, v in trimodal.SEARCH.items()}
    ns = trimodal.neighbours(c)
    for n in ns:
        changed = [k for k in c if n[k] != c[k]]
        assert len(changed) == 1
        grid = trimodal.SEARCH[changed[0]]
        assert abs(grid.index(n[changed[0]]) - grid.index(c[changed[0]])) == 1
    # every setting moved both ways where the grid allows (patience has two values: one way)
    assert len(ns) == sum(min(2, len(v) - 1) for v in trimodal.SEARCH.values())
    # at an edge: one way only; off the grid (a default): the grid values on either side
    edge = c | {"hidden": trimodal.SEARCH["hidden"][-1], "lr": 2e-3}
    moved = {(k, n[k]) for n in trimodal.neighbours(edge) for k in c if n[k] != edge[k]}
    assert ("hidden", trimodal.SEARCH["hidden"][-2]) in moved and not any(k == "hidden" and v > edge["hidden"] for k, v in moved)
    assert {v for k, v in moved if k == "lr"} == {1e-3, 3e-3}


def test_a_method_searches_its_own_width_beside_the_shared_settings():
    """`tensor` and `low_rank` also search their own width-like setting; every other method gets the
    draws of the shared settings alone, the same as before those settings were added."""
    shared = trimodal.configurations(16, seed=0)
    for m in ("concat", "weighted", "cross_attention"):
        assert trimodal.configurations(16, seed=0, method=m) == shared
    for m, key, default in (("tensor", "tensor_dim", FusionConfig().tensor_dim), ("low_rank", "rank", FusionConfig().rank)):
        cs = trimodal.configurations(16, seed=0, method=m)
        grid = trimodal.METHOD_SEARCH[m][key]
        assert [{k: c[k] for k in trimodal.SEARCH} for c in cs] == shared  # the shared settings' draws: every method's
        assert cs[0] == shared[0] | {key: default}  # the defaults first
        assert all(c[key] in grid for c in cs[1:]) and len({c[key] for c in cs}) > 1
        assert len({json.dumps(c, sort_keys=True) for c in cs}) == 16
        near = trimodal.neighbours(cs[1], trimodal.search_space(m))
        assert {n[key] for n in near} - {cs[1][key]}  # the local search steps along it too
        fusion, train = trimodal.split_config(cs[1], epochs=5, seed=0)
        assert fusion[key] == cs[1][key] and key not in train
        assert getattr(FusionConfig(**fusion), key) == cs[1][key]


def test_the_search_outcome_counts_a_methods_own_settings():
    """A local search stopped by its limit is told apart from one that settled, along a method's
    own setting too; a results file from before methods had settings of their own reads as before."""
    own = {"tensor_dim": [4, 8, 12, 16]}
    best = {k: v[1] for k, v in trimodal.SEARCH.items()} | {"tensor_dim": 8}
    space = trimodal.SEARCH | {k: tuple(v) for k, v in own.items()}
    near = trimodal.neighbours(best, space)
    assert {n["tensor_dim"] for n in near} == {4, 8, 12}
    search = ([{"config": trimodal.configurations(1)[0] | {"tensor_dim": 12}, "valid_mae": 0.7, "stage": 0}]
              + [{"config": n, "valid_mae": 0.8, "stage": 1} for n in near]
              + [{"config": best, "valid_mae": 0.5, "stage": 2}])
    assert not trimodal.search_outcome({"search": search}, 2, own)["at_limit"]  # every neighbour tried: settled
    untried = [r for r in search if r["config"] != best | {"tensor_dim": 12}]  # one step along tensor_dim left
    assert trimodal.search_outcome({"search": untried}, 2, own)["at_limit"]
    old = [dict(r, config={k: v for k, v in r["config"].items() if k != "tensor_dim"}) for r in search[:1]]
    assert trimodal.search_outcome({"search": old}, 2)["where"] == "the defaults"


def test_the_results_of_a_run_with_own_settings_render_them(tmp_path):
    """The chosen-configurations table gets a column of each method's own settings, the edges line and
    the search space name them, and the shared configuration says it keeps them at their defaults;
    a results file from before reads as before (no such column)."""
    folder = make_folder(tmp_path / "f", n=200)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat,tensor", "--search", "2", "--refine", "0",
                          "--select-seeds", "1", "--seeds", "1", "--epochs", "3", "--timing-epochs", "0", "--workers", "1", "--no-context",
                          "--mmsa", str(tmp_path / "none.json"), "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    assert res["method_search_space"] == {"tensor": {"tensor_dim": list(trimodal.METHOD_SEARCH["tensor"]["tensor_dim"])}}
    assert "tensor_dim" in res["methods"]["tensor"]["config"] and "tensor_dim" not in res["methods"]["concat"]["config"]
    md = (out / "trimodal.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `tensor` |") and "tensor_dim" in line)
    assert f"tensor_dim {res['methods']['tensor']['config']['tensor_dim']:g}" in row
    assert "| its own settings |" in md and "`tensor` also tensor_dim [4, 8, 12, 16]" in md and "of the methods' own settings:" in md
    assert "`tensor`'s tensor_dim) stay at their defaults" in md
    del res["method_search_space"]
    for r in res["methods"].values():
        r["config"].pop("tensor_dim", None)
        for x in r["search"]:
            x["config"].pop("tensor_dim", None)
    assert "its own settings" not in trimodal.markdown(res)


def test_the_shared_configuration_reuses_a_method_with_own_settings_only_at_their_defaults(tmp_path, monkeypatch):
    """In the one configuration for every method, `tensor` keeps tensor_dim at its default: its runs
    are reused only where its own choice or its defaults are that configuration with that default."""
    folder = make_folder(tmp_path / "f", n=200)
    stages = record_stages(monkeypatch)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "tensor", "--search", "1", "--refine", "0",
                          "--select-seeds", "1", "--seeds", "1", "--epochs", "3", "--timing-epochs", "0", "--workers", "1", "--no-context",
                          "--mmsa", str(tmp_path / "none.json"), "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    # one method, the defaults only: its choice is the defaults, tensor_dim 12 included, and is reused
    assert res["methods"]["tensor"]["config"]["tensor_dim"] == FusionConfig().tensor_dim
    assert res["shared"]["reused"] == {"tensor": "chosen"} and not stages.get("one configuration for all")
    fusion, _ = trimodal.split_config(res["methods"]["tensor"]["config"] | {"tensor_dim": 4}, epochs=3, seed=0)
    assert fusion["tensor_dim"] == 4
    with pytest.raises(KeyError):  # the shared settings are never left out silently
        trimodal.split_config({k: v for k, v in res["methods"]["tensor"]["config"].items() if k != "hidden"}, epochs=3, seed=0)


def test_the_shared_configuration_takes_what_most_methods_chose():
    base = {k: v[0] for k, v in trimodal.SEARCH.items()}
    chosen = [base | {"hidden": 128, "lr": 3e-4}, base | {"hidden": 128, "lr": 1e-3}, base | {"hidden": 64, "lr": 3e-4}, base | {"lr": 1e-3}]
    shared = trimodal.shared_config(chosen)
    assert shared["hidden"] == 128 and shared["dropout"] == base["dropout"]
    assert shared["lr"] == 3e-4  # a tie (two and two): the tied value seen first
    assert set(shared) == set(trimodal.SEARCH)
    # the most common value, not always a majority; a tie goes to the value seen first, not the first config's
    widths = [base | {"hidden": h} for h in (32, 64, 64, 128, 128)]
    assert trimodal.shared_config(widths)["hidden"] == 64
    assert trimodal.shared_config([base | {"hidden": h} for h in (32, 64, 128, 256)])["hidden"] == 32


def test_the_search_outcome_says_where_the_best_was_found_and_whether_the_limit_stopped_it():
    grid = {k: v[1] for k, v in trimodal.SEARCH.items()}
    default = {k: v[0] for k, v in trimodal.SEARCH.items()} | {"lr": 2e-3}
    step = trimodal.neighbours(grid)[0]
    search = [{"config": default, "valid_mae": 0.7, "stage": 0}, {"config": grid, "valid_mae": 0.6, "stage": 0}]
    assert trimodal.search_outcome({"search": search[:1]}, 0)["where"] == "the defaults"
    o = trimodal.search_outcome({"search": search}, 0)
    assert o["where"] == "the random draws" and not o["at_limit"] and o["tried"] == 2  # no local search ran: no limit to stop at
    moved = search + [{"config": step, "valid_mae": 0.5, "stage": 1}]
    o = trimodal.search_outcome({"search": moved}, 1)
    assert o["where"] == "local round 1" and o["at_limit"] and o["best"] == 0.5 and o["best_first"] == 0.6
    settled = search + [{"config": n, "valid_mae": 0.65, "stage": 1} for n in trimodal.neighbours(grid)]
    o = trimodal.search_outcome({"search": settled}, 2)
    assert o["where"] == "the random draws" and not o["at_limit"]  # its neighbourhood tried, the best did not move
    # the best found in the last allowed round, but every one of its neighbours already tried: nothing left to move to
    last = {k: v[min(2, len(v) - 1)] for k, v in trimodal.SEARCH.items()}
    tried = search + [{"config": last, "valid_mae": 0.4, "stage": 2}] + [{"config": n, "valid_mae": 0.7, "stage": 1} for n in trimodal.neighbours(last)]
    o = trimodal.search_outcome({"search": tried}, 2)
    assert o["where"] == "local round 2" and not o["at_limit"]
    assert trimodal.search_outcome({"search": tried[:-1]}, 2)["at_limit"]  # one neighbour untried: stopped by the limit


def test_a_seed_with_a_constant_prediction_is_counted_not_averaged_as_nan():
    runs = [{"test": {"mae": 0.9, "corr": 0.6}, "valid": {"mae": 0.5}, "s_per_epoch": 0.1, "epochs": 10},
            {"test": {"mae": 1.3, "corr": float("nan")}, "valid": {"mae": 0.7}, "s_per_epoch": 0.1, "epochs": 2}]
    s = trimodal.summary(runs)
    assert s["mae"][0] == pytest.approx(1.1) and s["corr"] == (pytest.approx(0.6), 0.0)
    assert s["undefined"] == {"corr": 1} and s["n_seeds"] == 2
    assert "1 of 2 seeds undefined" in trimodal._pm(s, "corr") and "undefined" not in trimodal._pm(s, "mae")
    assert "includes 1 of 2 seeds with a constant prediction" in trimodal._pm(s, "mae", constant_note=True)
    assert trimodal._pm(trimodal.summary(runs[:1]), "mae", constant_note=True) == "0.900 ± 0.000"
    none = trimodal.summary([runs[1]])
    assert trimodal._pm(none, "corr") == "undefined"


def test_the_local_search_moves_from_the_best_draw_and_never_reads_test(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", n=200)
    read = record_jobs(monkeypatch)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat", "--search", "2", "--refine", "2", "--select-seeds", "1",
                          "--seeds", "1", "--epochs", "4", "--timing-epochs", "0", "--no-context", "--workers", "1", "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    search = res["methods"]["concat"]["search"]
    draws = [r for r in search if r["stage"] == 0]
    assert len(draws) == 2
    # round 1: every neighbour of the best draw, nothing else
    best0 = min(draws, key=lambda r: r["valid_mae"])["config"]
    round1 = [r["config"] for r in search if r["stage"] == 1]
    assert round1 == [n for n in trimodal.neighbours(best0) if n not in [d["config"] for d in draws]]
    # round 2 only if round 1 moved the best, and then around the new best
    best1 = min((r for r in search if r["stage"] <= 1), key=lambda r: r["valid_mae"])["config"]
    round2 = [r["config"] for r in search if r["stage"] == 2]
    if best1 == best0:
        assert not round2
    else:
        assert round2 and all(c in trimodal.neighbours(best1) for c in round2)
    assert len({json.dumps(r["config"], sort_keys=True) for r in search}) == len(search)  # nothing trained twice
    assert res["methods"]["concat"]["config"] == min(search, key=lambda r: r["valid_mae"])["config"]
    assert all(not j.test for j, _ in read[:len(search)])  # the search never reads the test fold
    md = (out / "trimodal.md").read_text()
    assert "round(s) of local search" in md and "configurations tried" in md
    top = min(search, key=lambda r: r["valid_mae"])
    at_limit = top["stage"] == 2 and any(n not in [r["config"] for r in search] for n in trimodal.neighbours(top["config"]))
    assert ("(stopped at the --refine limit)" in md) == at_limit  # what the table says follows the search it ran
    # the tables again from the JSON, no training: the same text
    n = len(read)
    assert trimodal.main(["--render", str(out / "trimodal.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert (tmp_path / "again" / "trimodal.md").read_text() == md and len(read) == n


def test_render_names_a_file_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    top = {"best": "concat", "seeds": [1], "ablations": {}, "env": dict.fromkeys(trimodal.ENV_KEYS, 1), "data": "x", "configurations": 1,
           "select_seeds": [0], "max_epochs": 2, "mean_baseline": {}}
    summary = dict.fromkeys(trimodal.SUMMARY_KEYS, 0.5)
    for text, says in (("{not json", "cannot read it"), ("[]", "not a JSON object"), (json.dumps({"methods": {}}), "missing keys: best, seeds"),
                       (json.dumps(top | {"methods": {}}), "methods: not a non-empty object"),
                       (json.dumps(top | {"env": {}, "methods": {}}), "env lacks"),
                       (json.dumps(top | {"methods": {"concat": {"chosen": {}}}}), "'concat': missing keys: default, config, search"),
                       (json.dumps(top | {"methods": {"concat": dict.fromkeys(trimodal.METHOD_KEYS, {})}}), "'concat', chosen: missing keys: mae"),
                       (json.dumps(top | {"methods": {"concat": dict.fromkeys(trimodal.METHOD_KEYS, summary)}, "best": "tensor"}), "'tensor' is not among"),
                       (json.dumps(top | {"methods": {"concat": dict.fromkeys(trimodal.METHOD_KEYS, summary)}, "best": [1]}), "is not among")):
        bad.write_text(text)
        with pytest.raises(SystemExit) as err:
            trimodal.main(["--render", str(bad), "--out", str(tmp_path / "o")])
        msg = capsys.readouterr().err
        assert err.value.code == 2 and says in msg and str(bad) in msg
    with pytest.raises(SystemExit):
        trimodal.main(["--render", str(tmp_path / "absent.json"), "--out", str(tmp_path / "o")])
    assert "cannot read it" in capsys.readouterr().err
    assert not (tmp_path / "o" / "trimodal.md").exists()


def test_render_says_undefined_where_no_seed_defined_a_metric(tmp_path):
    folder = make_folder(tmp_path / "f", n=200)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat", "--search", "1", "--refine", "0", "--select-seeds", "1",
                          "--seeds", "1", "--epochs", "2", "--timing-epochs", "0", "--workers", "1", "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    assert res["context"] and res["ablations"]
    # as JSON stores a mean no seed defined (every seed predicted a constant): null
    for s in [res["ablations"]["text"], res["context"]["methods"]["concat"], res["methods"]["concat"]["chosen"]]:
        s["corr"] = [None, None]
    res["ablations"]["audio"]["mae"] = [None, None]
    (out / "broken.json").write_text(json.dumps(res))
    assert trimodal.main(["--render", str(out / "broken.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    md = (tmp_path / "again" / "trimodal.md").read_text()
    assert "nan" not in md.lower() and "undefined" in md
    context = next(line for line in md.splitlines() if "Best with context on valid" in line)
    assert "Corr undefined (≥ 0.66 ✗)" in context
    # every seed of the chosen configuration without a defined MAE either: the tables and sentences still render
    res["methods"]["concat"]["chosen"]["mae"] = [None, None]
    res["context"]["methods"]["concat"]["mae"] = [None, None]
    for s in res["ablations"].values():
        s["mae"] = [None, None]
    (out / "broken.json").write_text(json.dumps(res))
    assert trimodal.main(["--render", str(out / "broken.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    md = (tmp_path / "again" / "trimodal.md").read_text()
    assert "nan" not in md.lower() and "test MAE undefined" in md and "mean change undefined" in md
    assert "No seed defined the MAE" in md


@pytest.mark.parametrize("damage", [
    lambda r: r["env"].update(seconds="long"),
    lambda r: r["methods"]["concat"]["chosen"].pop("abs_shapley", None) or r["methods"]["concat"]["chosen"].update(mae="low"),
    lambda r: r["methods"]["concat"].update(search=None),
    lambda r: r.update(ablations=[1, 2]),
], ids=["a string of seconds", "a string MAE", "no search", "ablations as a list"])
def test_render_refuses_the_right_keys_with_values_of_the_wrong_kind(tmp_path, capsys, damage):
    folder = make_folder(tmp_path / "f", n=200)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat", "--search", "1", "--refine", "0", "--select-seeds", "1",
                          "--seeds", "1", "--epochs", "2", "--timing-epochs", "0", "--workers", "1", "--no-context", "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    damage(res)
    (out / "odd.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit) as err:
        trimodal.main(["--render", str(out / "odd.json"), "--out", str(tmp_path / "again"), "--quiet"])
    assert err.value.code == 2 and "not a trimodal.json this command wrote" in capsys.readouterr().err
    assert not (tmp_path / "again" / "trimodal.md").exists()


def test_the_benchmark_chooses_on_valid_and_reports_seeds_ablations_and_readings(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", n=320)
    read = record_jobs(monkeypatch)
    stages = record_stages(monkeypatch)
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat,weighted", "--search", "3", "--refine", "0",
                          "--select-seeds", "1", "--seeds", "1,2", "--epochs", "30", "--timing-epochs", "4", "--workers", "1", "--mmsa", str(tmp_path / "none.json"), "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    md = (out / "trimodal.md").read_text()
    timing = [(j, o) for j, o in read if j.train["epochs"] == 4]
    search = [(j, o) for j, o in read if not j.test and j.train["epochs"] != 4]
    assert len(search) == 2 * 3  # 2 methods x 3 configurations x 1 seed, then every other job is a reported run
    assert all("test" not in o and not j.readings for j, o in search)  # the search never reads the test fold
    assert all(j.seed in (1, 2) and "test" in o for j, o in read if j.test)  # reported runs: the given seeds, test read
    for m in ("concat", "weighted"):
        r = res["methods"][m]
        best_valid = min(x["valid_mae"] for x in r["search"])
        assert [x for x in r["search"] if x["config"] == r["config"]][0]["valid_mae"] == best_valid  # chosen on valid
        assert len(r["runs"]) == 2 and {"mae", "corr", "acc2_non0"} <= set(r["chosen"])
        assert set(r["chosen"]["abs_shapley"]) == {"text", "audio", "vision"}
    # words carry the label here, face nothing: the readings and the ablations must say so
    w = res["methods"]["weighted"]["chosen"]
    assert w["abs_shapley"]["text"] > w["abs_shapley"]["vision"] and w["weights"]["text"] > w["weights"]["vision"]
    ab = res["ablations"]
    assert set(ab) == {"text", "audio", "vision", "text+audio", "text+vision", "audio+vision"}
    assert ab["text"]["mae"][0] < ab["vision"]["mae"][0] and ab["text"]["corr"][0] > 0.5
    best = res["methods"][res["best"]]["chosen"]
    assert best["corr"][0] > 0.5 and best["mae"][0] < res["mean_baseline"]["mae"]
    for section in ("beside MMSA", "Ablations", "What each method says", "Chosen configurations", "reference, not this run", "With video context"):
        assert section in md
    # one configuration for all: what most methods chose, every method, the given seeds; with two
    # methods every setting agrees or ties, and a tie goes to the first method: concat reuses its runs
    sh = res["shared"]
    assert sh["config"] == trimodal.shared_config([res["methods"][m]["config"] for m in ("concat", "weighted")]) == res["methods"]["concat"]["config"]
    assert sh["reused"]["concat"] == "chosen"
    assert sh["methods"]["concat"]["mae"] == res["methods"]["concat"]["chosen"]["mae"]
    want_f, want_t = trimodal.split_config(sh["config"], epochs=30, seed=0)
    shared_jobs = [(j.method, j.seed) for j in stages.get("one configuration for all", [])]
    assert all(j.test and j.fusion == want_f and {k: v for k, v in j.train.items() if k != "seed"} == {k: v for k, v in want_t.items() if k != "seed"}
               for j in stages.get("one configuration for all", []))
    defaults = trimodal.configurations(1)[0]
    if sh["config"] in (res["methods"]["weighted"]["config"], defaults):
        assert "weighted" in sh["reused"] and ("weighted", 1) not in shared_jobs
    else:  # trained once per seed for weighted, never again for concat
        assert "weighted" not in sh["reused"] and sorted(shared_jobs) == [("weighted", 1), ("weighted", 2)]
    assert set(sh["methods"]) == {"concat", "weighted"} and all(0 < r["valid_mae"] and r["mae"][0] > 0 for r in sh["methods"].values())
    assert "One configuration for every method" in md and "Reused runs: `concat` (its own choice)" in md
    # video context: every method at its chosen configuration and the best on words alone, the given seeds
    ctx = [(j, o) for j, o in read if j.context]
    assert len(ctx) == (2 + 1) * 2 and all(j.test and j.seed in (1, 2) for j, _ in ctx)
    assert all(j.fusion == split_fusion(res["methods"][j.method]["config"]) for j, _ in ctx)
    assert set(res["context"]["methods"]) == {"concat", "weighted"} and res["context"]["words_alone"]["mae"][0] > 0
    # speed: each chosen configuration timed alone for the given epochs (no early stop), never reading test;
    # the speed ratio divides by that time
    alone = timing[:4]  # run first, one at a time; then the same at MMSA's batch size where the chosen one differs
    peer_batch = timing[4:]
    assert [(j.method, j.seed) for j, _ in alone] == [("concat", 1), ("concat", 2), ("weighted", 1), ("weighted", 2)]
    assert all(j.train["batch_size"] == c_batch(res, j.method) for j, _ in alone)  # the chosen configuration
    lf_dnn = trimodal.MMSA_BATCH["LF-DNN"]
    assert [(j.method, j.seed) for j, _ in peer_batch] == [(m, sd) for m in ("concat", "weighted") if c_batch(res, m) != lf_dnn for sd in (1, 2)]
    assert all(j.train["batch_size"] == lf_dnn for j, _ in peer_batch)  # the counterpart's batch size
    for j, o in timing:
        assert not j.test and "test" not in o and o["epochs"] == 4 and j.train["patience"] == 4
        assert j.fusion == split_fusion(res["methods"][j.method]["config"])
        assert {k: v for k, v in j.train.items() if k not in ("epochs", "patience", "seed", "device", "batch_size")} == \
            {k: v for k, v in res["methods"][j.method]["config"].items() if k not in trimodal.FUSION_KEYS + ("patience", "batch_size")}
    for m in ("concat", "weighted"):
        c = res["methods"][m]["chosen"]
        for key, runs in (("s_per_epoch_alone", alone), ("s_per_epoch_peer_batch", peer_batch if c_batch(res, m) != lf_dnn else alone)):
            assert c[key] == pytest.approx(float(np.median([o["s_per_epoch"] for j, o in runs if j.method == m])))
        peer = res["targets"][m]["peer"]
        assert peer == "LF-DNN"
        assert res["targets"][m]["speedup"] == pytest.approx(trimodal.MMSA[peer]["s_per_epoch"] / c["s_per_epoch_alone"])
        assert res["targets"][m]["speedup_peer_batch"] == pytest.approx(trimodal.MMSA[peer]["s_per_epoch"] / c["s_per_epoch_peer_batch"])
    assert "timed alone" in md
    for m in ("concat", "weighted"):  # the first table shows the time measured alone
        assert f"| mmdemo `{m}`" in md and f"| {res['methods'][m]['chosen']['s_per_epoch_alone']:.3f} |" in md.split(f"| mmdemo `{m}`")[1].split("\n")[0] + "|"


def c_batch(res: dict, m: str) -> int:
    return res["methods"][m]["config"]["batch_size"]


def split_fusion(config: dict) -> dict:
    return {k: config[k] for k in trimodal.FUSION_KEYS if k in config}


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "labels.csv").exists(), reason="../shared/data/cmu-mosi-trimodal-features not present")
def test_quick_benchmark_on_the_real_folder(tmp_path):
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(REAL), "--out", str(out), "--quick", "--methods", "concat,weighted,tensor", "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    assert res["data"].startswith("1206/241/752")  # the release's split, as given
    assert set(res["targets"]) == {"concat", "weighted", "tensor", "best"} and res["targets"]["tensor"]["peer"] == "TFN"
    assert "Quick run" in (out / "trimodal.md").read_text()


def test_context_is_the_mean_of_each_video_over_the_rows_where_a_modality_is_present(tmp_path):
    folder = make_folder(tmp_path / "f")
    a = np.load(folder / "audio.npy")
    a[3] = 0.0  # absent there: it must not pull its video's mean toward zero
    np.save(folder / "audio.npy", a)
    ds = load_dataset(folder)
    ctx = with_context(ds)
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    raw = {m: np.load(folder / f"{m}.npy") for m in ("text", "audio", "vision")}
    video = np.array([r["video_id"] for r in rows])
    for s, sp in ctx.splits.items():
        assert ctx.dims == {m: 2 * d for m, d in ds.dims.items()}
        np.testing.assert_array_equal(sp.labels, ds.splits[s].labels)  # labels untouched
        np.testing.assert_array_equal(sp.feats["text"][:, :12], ds.splits[s].feats["text"])  # own features first
        for k, cid in enumerate(sp.ids):
            i = [r["clip_id"] for r in rows].index(cid)
            for m in ("text", "audio"):
                same = (video == video[i]) & (np.abs(raw[m]).sum(axis=1) > 0)
                np.testing.assert_allclose(sp.feats[m][k, raw[m].shape[1]:], raw[m][same].mean(axis=0), atol=1e-5)
            assert sp.present["audio"][k] == ds.splits[s].present["audio"][k]
    # a video where a modality is present in no row: zeros there (those rows are absent anyway)
    sp = ds.splits["train"]
    none = sp.groups == sp.groups[0]
    sp.present["vision"][none] = False
    sp.feats["vision"][none] = np.nan
    c = with_context(ds).splits["train"]
    assert (c.feats["vision"][none, 9:] == 0).all() and np.isfinite(c.feats["vision"][~none]).all()
    assert not c.present["vision"][none].any()
    # the video ids survive a save and a load; a dataset without them cannot have context
    path = ds.save(tmp_path / "d.npz")
    np.testing.assert_array_equal(load_dataset(path).splits["test"].groups, ds.splits["test"].groups)
    bare = FeatureDataset({s: Split(feats=dict(sp.feats), present=dict(sp.present), labels=sp.labels, ids=sp.ids) for s, sp in ds.splits.items()})
    with pytest.raises(ValueError, match="no groups"):
        with_context(bare)
    seq = FeatureDataset({s: Split(feats={"text": np.zeros((len(sp), 4, 3), np.float32)}, present={}, labels=sp.labels, ids=sp.ids,
                                   groups=sp.groups) for s, sp in ds.splits.items()})
    with pytest.raises(ValueError, match="sequences"):
        with_context(seq)


def test_a_feature_folder_with_a_row_without_its_video_says_so(tmp_path):
    folder = make_folder(tmp_path / "f")
    set_cell(folder / "labels.csv", 4, "video_id", "")
    with pytest.raises(ValueError, match="no video_id"):
        load_dataset(folder)


def test_context_helps_when_sentiment_is_a_property_of_the_video(tmp_path):
    """Each video has a sentiment of its own and every segment's words show it only faintly: the
    video's mean shows it clearly, so a model given the context must do better on unseen videos."""
    rng = np.random.default_rng(1)
    n = 480
    videos = np.arange(n) // 8
    mood = rng.normal(0, 1.5, videos.max() + 1)
    y = np.clip(mood[videos] + rng.normal(0, 0.3, n), -3, 3)
    x = rng.normal(0, 1, (n, 6)).astype(np.float32)
    x[:, 0] += 0.5 * mood[videos]
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "text.npy", x)
    split = np.where(videos % 5 == 0, "test", np.where(videos % 5 == 1, "valid", "train"))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "video_id", "label", "split"])
        w.writerows([f"c{i}", f"v{videos[i]}", f"{y[i]:.4f}", split[i]] for i in range(n))
    mae = {}
    for flag in ([], ["--context"]):
        out = tmp_path / ("ctx" if flag else "plain")
        assert train_main(["--fusion", "concat", "--data", str(folder), "--out", str(out), "--epochs", "60", "--quiet"] + flag) == 0
        row = [r for r in json.loads((out / "comparison.json").read_text()) if r["method"] == "concat"][0]
        mae[bool(flag)] = row["test"]["mae"]
    assert mae[True] < 0.8 * mae[False], mae
    provenance = json.loads((tmp_path / "ctx" / "concat" / "provenance.json").read_text())
    assert provenance["context"] is True


def test_the_train_cli_says_when_a_dataset_has_no_videos_for_context(tmp_path, capsys):
    ds = load_dataset(make_folder(tmp_path / "f"))
    bare = FeatureDataset({s: Split(feats=dict(sp.feats), present=dict(sp.present), labels=sp.labels, ids=sp.ids) for s, sp in ds.splits.items()})
    path = bare.save(tmp_path / "bare.npz")
    with pytest.raises(SystemExit):
        train_main(["--fusion", "concat", "--data", str(path), "--context", "--out", str(tmp_path / "runs"), "--quiet"])
    assert "no groups" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_chosen_configuration_with_mmsas_batch_size_is_timed_once(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", n=160)
    default_batch = TrainConfig().batch_size  # one configuration searched: the defaults are chosen
    monkeypatch.setitem(trimodal.MMSA_BATCH, "LF-DNN", default_batch)  # concat's counterpart: the same batch size
    monkeypatch.setitem(trimodal.MMSA_BATCH, "TFN", default_batch // 2)
    monkeypatch.setitem(trimodal.COUNTERPART, "weighted", "TFN")  # weighted's: another one
    passes = []
    real_run_all = trimodal.run_all
    monkeypatch.setattr(trimodal, "run_all", lambda jobs, data, workers, desc, progress, words=None:
                        passes.append((desc, workers, list(jobs))) or real_run_all(jobs, data, workers, desc, progress, words))
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat,weighted", "--search", "1", "--refine", "0", "--select-seeds", "1",
                          "--seeds", "1", "--epochs", "3", "--timing-epochs", "2", "--workers", "2", "--no-context",
                          "--mmsa", str(tmp_path / "none.json"), "--quiet"]) == 0
    assert [w for _, w, _ in passes[:-1]] == [2] * (len(passes) - 1) and passes[-1][:2] == ("timing (one run at a time)", 1)  # alone, last
    res = json.loads((out / "trimodal.json").read_text())
    timing = [(j.method, j.train["batch_size"]) for j in passes[-1][2]]
    assert all(j.train["epochs"] == j.train["patience"] == 2 and not j.test for j in passes[-1][2])
    assert timing == [("concat", default_batch), ("weighted", default_batch), ("weighted", default_batch // 2)]
    c, w = res["methods"]["concat"]["chosen"], res["methods"]["weighted"]["chosen"]
    assert c["s_per_epoch_peer_batch"] == c["s_per_epoch_alone"] > 0  # timed once, used for both
    assert w["s_per_epoch_peer_batch"] != w["s_per_epoch_alone"]
    assert res["targets"]["concat"]["speedup_peer_batch"] == pytest.approx(res["targets"]["concat"]["speedup"])
    assert res["targets"]["weighted"]["speedup_peer_batch"] == pytest.approx(trimodal.MMSA["TFN"]["s_per_epoch"] / w["s_per_epoch_peer_batch"])


def test_without_the_timing_pass_and_with_mmsa_timed_on_another_cpu_the_ratios_say_so(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "f", n=160)
    read = record_jobs(monkeypatch)
    mmsa = tmp_path / "mmsa_reference.json"
    mmsa.write_text(json.dumps({"env": {"cpu": "Some Other CPU", "mmsa": "2.2.1", "torch": "2.13.0", "date": "2026-01-01"},
                                "models": {"LF-DNN": [{"seed": 1111, "test": {"MAE": 0.93, "Corr": 0.62}, "epochs": 10, "s_per_epoch": 99.0}]}}))
    out = tmp_path / "out"
    assert trimodal.main(["--data", str(folder), "--out", str(out), "--methods", "concat", "--search", "1", "--refine", "0", "--select-seeds", "1",
                          "--seeds", "1", "--epochs", "3", "--timing-epochs", "0", "--workers", "1", "--no-context",
                          "--mmsa", str(mmsa), "--quiet"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    md = (out / "trimodal.md").read_text()
    assert len(read) == 1 + 2 + 6 and all(j.train["epochs"] == 3 for j, _ in read)  # search, chosen + defaults, ablations: nothing timed alone
    c = res["methods"]["concat"]["chosen"]
    assert "s_per_epoch_alone" not in c and "speedup_peer_batch" not in res["targets"]["concat"]
    # another CPU's MMSA timing is not used: the data README's, across machines
    assert res["targets"]["concat"]["speedup"] == pytest.approx(trimodal.MMSA["LF-DNN"]["s_per_epoch"] / c["s_per_epoch"])
    assert not res["targets"]["concat"]["speed_measured_here"]
    assert "(across machines) | - |" in md and "last ran on Some Other CPU" in md and "shared the cores" in md
    # the same file from this run's CPU and day is used, in the ratios and in the table; without a CPU, or from another day, not
    same = res | {"mmsa_here": {**res["mmsa_here"], "env": {**res["mmsa_here"]["env"], "cpu": res["env"]["cpu"], "date": res["env"]["date"]}}}
    assert trimodal.mmsa_here(same) and trimodal.targets(same)["concat"]["speed_measured_here"]
    assert trimodal.targets(same)["concat"]["speedup"] == pytest.approx(99.0 / c["s_per_epoch"])
    assert "99.000 (timed here)" in trimodal.markdown(same)
    for env in ({"cpu": None}, {"date": "2025-01-01"}):
        assert trimodal.mmsa_here(same | {"mmsa_here": {**same["mmsa_here"], "env": {**same["mmsa_here"]["env"], **env}}}) is None


def test_the_benchmark_names_a_broken_data_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("clip_id,label\nx,not a number\n")
    for folder in (empty, bad):
        with pytest.raises(SystemExit) as err:
            trimodal.main(["--data", str(folder), "--out", str(tmp_path / "out"), "--quiet"])
        assert err.value.code == 2 and f"--data {folder}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def make_mosei(folder: Path) -> Path:
    """A tiny folder in the layout of cmu-mosei-text: praise labelled positive, complaints negative."""
    folder.mkdir(parents=True, exist_ok=True)
    good = ["I loved it", "a wonderful film", "great acting and a great story", "it was brilliant", "truly excellent"]
    bad = ["I hated it", "a terrible film", "boring and far too long", "it was awful", "truly dreadful"]
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "video_id", "segment", "label", "text", "speaker", "split"])
        for k in range(4):
            for i, (g, b) in enumerate(zip(good, bad)):
                split = "valid" if k == 3 else "train"
                w.writerow([f"m{k}_{i}g", f"m{k}", f"{i}g", "2.0", g, f"s{k}", split])
                w.writerow([f"m{k}_{i}b", f"m{k}", f"{i}b", "-2.0", b, f"s{k}", split])
    return folder


@pytest.mark.slow
def test_mmdemos_own_words_feature_replaces_the_release_one_and_is_reused(tmp_path, monkeypatch):
    """--words mosei: MiniLM fine-tuned on MOSEI transcripts only (never the folder's), then each
    segment's transcript encoded in its row; a segment without a transcript has words missing; a
    second run reuses the features; features made for another folder are refused."""
    from mmdemo.text_model import FinetuneConfig

    data = make_folder(tmp_path / "data", n=40)
    set_cell(data / "labels.csv", 3, "text", "")
    mosei, out = make_mosei(tmp_path / "mosei"), tmp_path / "out"
    cfg = FinetuneConfig(device="cpu", epochs=1, batch_size=8)
    import mmdemo.text_model as text_model

    real_finetune, seen = text_model.finetune, []

    def spy(train_texts, train_y, valid_texts, valid_y, *a, **kw):
        seen.extend(list(train_texts) + list(valid_texts))
        return real_finetune(train_texts, train_y, valid_texts, valid_y, *a, **kw)

    monkeypatch.setattr(text_model, "finetune", spy)
    rec = trimodal.mosei_words(data, mosei, out, cfg, progress=False)
    assert rec["mosei_train"] == 30 and rec["mosei_valid"] == 10 and not rec.get("reused")
    mosei_texts = {r["text"] for r in csv.DictReader(open(mosei / "labels.csv"))}
    assert len(seen) == 40 and set(seen) <= mosei_texts  # fine-tuned on MOSEI's transcripts alone
    segments = list(csv.DictReader(open(data / "labels.csv")))
    ids = [r["clip_id"] for r in segments]
    assert rec["ids"] == ids and list(rec["absent"]) == [ids[3]]
    feats = np.load(out / trimodal.WORDS_DIR / "text.npy")
    assert feats.shape == (40, 384) and not feats[3].any()
    assert np.allclose(np.linalg.norm(feats[[0, 1, 2, 4]], axis=1), 1.0, atol=1e-4)  # the live feature: L2-normalised
    from mmdemo.encoders.words import MiniLM

    tuned = MiniLM(device="cpu", overlay=out / trimodal.WORDS_DIR / "encoder.safetensors")
    for i in (0, 17, 39):  # row i is transcript i, read by the fine-tuned encoder
        np.testing.assert_allclose(feats[i], tuned.embed([segments[i]["text"]])[0], atol=1e-5)

    ds = trimodal.load_source(str(data), str(out / trimodal.WORDS_DIR))
    assert ds.dims == {"text": 384, "audio": 7, "vision": 9}
    for sp in ds.splits.values():
        rows = [ids.index(i) for i in sp.ids]
        assert np.array_equal(sp.feats["text"], feats[rows])
        assert np.array_equal(sp.present["text"], np.array([r != 3 for r in rows]))
    release = load_dataset(data)
    assert np.array_equal(ds.splits["test"].feats["audio"], release.splits["test"].feats["audio"])  # voice and face as released

    def no_finetuning(*a, **kw):
        raise AssertionError("fine-tuned again")

    monkeypatch.setattr("mmdemo.text_model.finetune", no_finetuning)
    assert trimodal.mosei_words(data, mosei, out, cfg, progress=False)["reused"]
    npy = out / trimodal.WORDS_DIR / "text.npy"
    kept = npy.read_bytes()
    np.save(npy, feats[:20])  # a run stopped while writing the features
    with pytest.raises(ValueError, match="not the one words.json describes"):
        trimodal.load_source(str(data), str(out / trimodal.WORDS_DIR))
    npy.write_bytes(kept)
    with pytest.raises(ValueError, match="another folder"):
        trimodal.load_source(str(make_folder(tmp_path / "other", n=48, seed=1)), str(out / trimodal.WORDS_DIR))
    for changed in (lambda: trimodal.mosei_words(data, mosei, out, FinetuneConfig(device="cpu", epochs=1, batch_size=8, seed=1), progress=False),
                    lambda: trimodal.mosei_words(data, mosei, out, cfg, progress=False, limit=5)):
        with pytest.raises(AssertionError, match="fine-tuned again"):  # other settings: never the cached features
            changed()
    assert not (out / trimodal.WORDS_DIR / "words.json").exists()  # and nothing reusable is left by a stopped run


@pytest.mark.slow
def test_the_cli_with_mmdemos_words_says_the_mmsa_rows_are_not_like_for_like(tmp_path, capsys):
    data, mosei, out = make_folder(tmp_path / "data", n=40), make_mosei(tmp_path / "mosei"), tmp_path / "out"
    assert trimodal.main(["--data", str(data), "--words", "mosei", "--mosei", str(mosei), "--out", str(out), "--quick", "--quiet",
                          "--methods", "concat", "--no-context", "--timing-epochs", "0"]) == 0
    res = json.loads((out / "trimodal.json").read_text())
    assert res["words"]["dim"] == 384 and res["words"]["mosei_train"] == 30 and res["words"]["config"]["epochs"] == 1
    md = (out / "trimodal.md").read_text()
    assert "not like-for-like" in md and "--words mosei" in md
    with pytest.raises(SystemExit):
        trimodal.main(["--data", str(data), "--words", "mosei", "--mosei", str(tmp_path / "nowhere"), "--out", str(out)])
    assert "no labels.csv" in capsys.readouterr().err
    bad = make_mosei(tmp_path / "bad")
    set_cell(bad / "labels.csv", 2, "label", "positive")
    with pytest.raises(SystemExit):
        trimodal.main(["--data", str(data), "--words", "mosei", "--mosei", str(bad), "--out", str(tmp_path / "o2"), "--quick"])
    err = capsys.readouterr().err
    assert "'positive'" in err and "is not a number" in err
    no_text = make_folder(tmp_path / "no-text", n=40)
    rows = list(csv.DictReader(open(no_text / "labels.csv")))
    with open(no_text / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "video_id", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(SystemExit):
        trimodal.main(["--data", str(no_text), "--words", "mosei", "--mosei", str(mosei), "--out", str(tmp_path / "o3"), "--quick"])
    assert "no transcripts" in capsys.readouterr().err


def test_a_wrong_method_name_is_refused_before_the_words_encoder_is_fine_tuned(tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path / "f", n=80)
    monkeypatch.setattr(trimodal, "mosei_words", lambda *a, **k: pytest.fail("fine-tuned before the methods were checked"))
    mosei = tmp_path / "mosei"
    mosei.mkdir()
    (mosei / "labels.csv").write_text("clip_id,label,split,text\n")
    for spec in ("concatt", ",", "concat,tensr"):
        with pytest.raises(SystemExit) as e:
            trimodal.main(["--data", str(folder), "--out", str(tmp_path / "o"), "--methods", spec, "--words", "mosei", "--mosei", str(mosei), "--quiet"])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method(s) ['concatt']" in err and "names no method" in err and "['tensr']" in err
    assert trimodal.chosen_methods("concat, tensor,") == ["concat", "tensor"]
