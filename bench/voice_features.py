"""Can richer voice features reach the cross-corpus target? eGeMAPS against openSMILE's ComParE-2016.

The voice target (positive-vs-negative AUC >= 0.70 on every corpus held out from training) is missed
by the shipped head on RAVDESS and EmoSpeech. This benchmark asks whether the features are what
limits it. For each clip of the three voice corpora it takes the speech span the live voice encoder
takes (Silero VAD) and computes two feature sets on it: eGeMAPS (88 functionals, what the app uses)
and ComParE-2016 (6,373 functionals, the largest set openSMILE ships). Features are z-scored per
speaker (over all of the speaker's clips). Linear heads are closed-form ridge regressions onto the
sentiment targets of :mod:`mmdemo.crosscorpus` (negative / neutral / positive: -1.5 / 0 / +1.5,
RAVDESS's scaled by its intensity), each corpus x class weighted equally. Routes:

- each feature set alone, at 6 ridge strengths;
- each set restricted to the features whose positive-vs-negative effect (Cohen's d) has the same
  sign in both training corpora and |d| above 0.1 / 0.2 / 0.3 in each (features that carry valence
  the same way in two corpora are more likely to carry it in a third);
- eGeMAPS and ComParE together (the sum of the two heads' standardised predictions).

Leave-one-corpus-out: a head learns from the other two corpora (their train and valid speakers:
no corpus's test speakers ever teach or choose) and reads the held-out corpus. A configuration is
chosen on the held-out corpora's train + valid speakers (the highest AUC on the worst corpus, then
the highest mean); their test speakers are read for the chosen configurations, with a 95% interval
over their speakers drawn with replacement. Beside it: the same routes trained *within* each corpus
(train speakers; the configuration chosen on its valid speakers; test speakers read), what the
features carry at best there, with eGeMAPS alone beside them; and, as bounds and not estimates,
the best AUC of any configuration on each corpus's test speakers and on all of its speakers (all of
them are held out in leave-one-corpus-out).

    python bench/voice_features.py [--data ../shared/data] [--workers 2] [--limit N]

About 4 min on 2 cores the first time (the features are cached in bench/results/voice_features/, or under --out);
prints the tables and writes bench/results/voice_features.json and voice_features.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdemo.crosscorpus import VOICE_CORPORA, auc, class_report, voice_labels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
ALPHAS = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
THRESHOLDS = (None, 0.1, 0.2, 0.3)  # None: every feature
SETS = ("egemaps", "compare")
NAMES = {"egemaps": "eGeMAPS (88)", "compare": "ComParE-2016 (6,373)", "both": "eGeMAPS + ComParE"}
EGEMAPS_DIM, COMPARE_DIM = 88, 6373
FEATURES_VERSION = 1  # part of the feature cache's key: raise it when clip_features changes
BOOTSTRAP = 1000  # speaker-bootstrap resamples of a test AUC's 95% interval


# ----------------------------------------------------------------------------- features

_SMILE: dict = {}


def clip_features(path: str) -> tuple[np.ndarray | None, str]:
    """(ComParE + eGeMAPS functionals of the clip's speech span, "") or (None, why not)."""
    import opensmile

    from mmdemo.encoders.voice import VoiceEncoder, speech_span
    from mmdemo.media import MediaError, read_audio

    if not _SMILE:
        _SMILE["enc"] = VoiceEncoder()
        _SMILE["compare"] = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016, feature_level=opensmile.FeatureLevel.Functionals)
        _SMILE["egemaps"] = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    try:
        audio = read_audio(path)
    except (MediaError, OSError) as err:
        return None, f"unreadable: {err}"
    if audio is None:
        return None, "no audio"
    try:  # one clip that breaks the voice detector or openSMILE is left out, not the run
        enc = _SMILE["enc"]
        reason, _, probs = enc.check(audio)
        if reason:
            return None, reason
        a, b = speech_span(probs, enc.threshold)
        seg = audio[a:b]
        c = _SMILE["compare"].process_signal(seg, 16000).to_numpy(dtype=np.float32).reshape(-1)
        e = _SMILE["egemaps"].process_signal(seg, 16000).to_numpy(dtype=np.float32).reshape(-1)
    except Exception as err:  # noqa: BLE001
        return None, f"{type(err).__name__}: {err}"
    return np.concatenate([e, c]), ""


def sample(ids: list[str], labels: dict, limit: int | None, seed: int = 0) -> list[str]:
    """All ``ids``, or about ``limit`` of them drawn (seeded) in equal numbers from every split x
    class, so that a small run still has each class in each split."""
    if not limit or limit >= len(ids):
        return ids
    groups: dict = {}
    for i in ids:
        groups.setdefault((labels[i].split, labels[i].cls), []).append(i)
    rng = np.random.default_rng(seed)
    per = max(1, limit // len(groups))
    return sorted(j for g in groups.values() for j in rng.choice(g, min(per, len(g)), replace=False))


def corpus_features(data: Path, name: str, *, workers: int, limit: int | None, cache_dir: Path = OUT, progress: bool = True) -> dict:
    """The labelled clips of one corpus with both feature sets (cached under ``cache_dir``, keyed by
    the clips, their labels, openSMILE's version, the voice detector's threshold and this file's
    feature version)."""
    import csv

    import opensmile
    from tqdm.auto import tqdm

    from mmdemo.encoders.voice import VoiceEncoder

    folder = data / VOICE_CORPORA[name]["folder"]
    labels = voice_labels(folder)
    with open(folder / "labels.csv", encoding="utf-8") as f:
        paths = {r["clip_id"]: str(folder / r["path"]) for r in csv.DictReader(f) if r["clip_id"] in labels}
    ids = sample(sorted(paths), labels, limit)
    key = hashlib.sha256("|".join([(folder / "labels.csv").read_text(encoding="utf-8"), ",".join(ids), opensmile.__version__,
                                   str(VoiceEncoder().threshold), str(FEATURES_VERSION)]).encode()).hexdigest()[:16]
    cache = cache_dir / "voice_features" / f"{name}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        x, kept = z["x"], list(z["ids"])
    else:
        todo = [paths[i] for i in ids]
        if workers > 1:
            with Pool(workers) as pool:
                got = list(tqdm(pool.imap(clip_features, todo, chunksize=8), total=len(ids), desc=f"features {name}", disable=not progress))
        else:
            got = [clip_features(p) for p in tqdm(todo, desc=f"features {name}", disable=not progress)]
        kept = [i for i, (v, _) in zip(ids, got) if v is not None and np.isfinite(v).all()]
        x = np.stack([v for v, _ in got if v is not None and np.isfinite(v).all()]) if kept else np.zeros((0, EGEMAPS_DIM + COMPARE_DIM), np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".partial.npz")
        np.savez(tmp, x=x, ids=np.array(kept))
        tmp.replace(cache)  # a run stopped while writing leaves no half a cache
        for old in cache.parent.glob(f"{name}-*.npz"):  # features of this corpus made another way are stale
            if old != cache:
                old.unlink(missing_ok=True)
    lab = [labels[i] for i in kept]
    return {"name": name, "raw": x, "ids": np.array(kept), "cls": np.array([c.cls for c in lab]),
            "target": np.array([c.target for c in lab]), "speaker": np.array([c.speaker for c in lab]),
            "split": np.array([c.split for c in lab]), "clips": len(ids)}


def per_speaker_z(x: np.ndarray, speaker: np.ndarray, clip: float = 10.0) -> np.ndarray:
    """Each speaker's features minus their mean over the speaker's std (floored at 1e-3 of the
    corpus's std, so a near-constant feature does not explode), clipped to ±``clip``."""
    x = x.astype(np.float64)
    z = np.zeros_like(x)
    floor = 1e-3 * x.std(axis=0) + 1e-9
    for s in np.unique(speaker):
        i = speaker == s
        z[i] = (x[i] - x[i].mean(axis=0)) / np.maximum(x[i].std(axis=0), floor)
    return np.clip(z, -clip, clip)


# ----------------------------------------------------------------------------- heads


def ridge_path(x: np.ndarray, y: np.ndarray, w: np.ndarray, alphas) -> list[tuple[np.ndarray, float]]:
    """Weighted ridge regression ((coef, intercept) for each alpha) from one SVD: minimises
    sum_i w_i (y_i - x_i b - c)^2 + alpha |b|^2, the intercept unpenalised."""
    w = w / w.sum() * len(w)
    mx = (w[:, None] * x).sum(0) / w.sum()
    my = float((w * y).sum() / w.sum())
    sw = np.sqrt(w)[:, None]
    u, s, vt = np.linalg.svd(sw * (x - mx), full_matrices=False)
    uy = u.T @ (sw[:, 0] * (y - my))
    out = []
    for a in alphas:
        b = vt.T @ (s / (s**2 + a) * uy)
        out.append((b, my - float(mx @ b)))
    return out


def balanced_weights(corpus: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Every corpus x class group weighs the same in all."""
    w = np.zeros(len(cls))
    groups = list(zip(corpus, cls))
    keys = sorted(set(groups))
    for k in keys:
        m = np.array([g == k for g in groups])
        w[m] = 1.0 / m.sum()
    return w


def effect_sizes(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Cohen's d of positive vs negative clips, per feature."""
    p, q = z[cls > 0], z[cls < 0]
    return (p.mean(0) - q.mean(0)) / np.sqrt(0.5 * (p.var(0) + q.var(0)) + 1e-12)


def agreeing(train: list[dict], cols: slice, t: float | None) -> np.ndarray:
    """Columns (within ``cols``) whose effect has the same sign in every training corpus and |d| > t in each."""
    d = np.stack([effect_sizes(c["z"][:, cols], c["cls"]) for c in train])
    if t is None:
        return np.ones(d.shape[1], bool)
    return (np.sign(d) == np.sign(d[0])).all(0) & (np.abs(d).min(0) > t)


COLS = {"egemaps": slice(0, EGEMAPS_DIM), "compare": slice(EGEMAPS_DIM, EGEMAPS_DIM + COMPARE_DIM)}


def head_scores(train: list[dict], rows: list[np.ndarray], reads: list[tuple[dict, np.ndarray]], fset: str, t: float | None) -> dict:
    """Train on ``rows`` of ``train`` corpora with feature set ``fset`` (selection threshold ``t``);
    the predictions of ``reads`` (corpus, rows) for every alpha: {alpha: [pred per read]} (empty when
    fewer than 2 features agree)."""
    sel = agreeing([{"z": c["z"][r], "cls": c["cls"][r]} for c, r in zip(train, rows)], COLS[fset], t)
    if sel.sum() < 2:
        return {}
    x = np.concatenate([c["z"][r][:, COLS[fset]][:, sel] for c, r in zip(train, rows)])
    y = np.concatenate([c["target"][r] for c, r in zip(train, rows)])
    w = balanced_weights(np.concatenate([[c["name"]] * int(np.asarray(r).sum()) for c, r in zip(train, rows)]),
                         np.concatenate([c["cls"][r] for c, r in zip(train, rows)]))
    out = {}
    for a, (b, c0) in zip(ALPHAS, ridge_path(x, y, w, ALPHAS)):
        out[a] = [c["z"][r][:, COLS[fset]][:, sel] @ b + c0 for c, r in reads]
        p = x @ b
        # the spread of its predictions where it learned, weighted as it learned
        out[("train_std", a)] = float(np.sqrt(np.sum(w * (p - np.sum(w * p) / w.sum()) ** 2) / w.sum())) + 1e-12
    out["features"] = int(sel.sum())
    return out


def configurations(preds: dict) -> dict:
    """Every configuration's predictions: single sets {(set, t, alpha)} and the sums of an eGeMAPS
    and a ComParE head's standardised predictions {("both", (t1, a1), (t2, a2))}."""
    conf, scale = {}, {}
    for (fset, t), by_alpha in preds.items():
        for a in ALPHAS:
            if a in by_alpha:
                conf[(fset, t, a)], scale[(fset, t, a)] = by_alpha[a], by_alpha[("train_std", a)]
    for (t1, a1), (t2, a2) in itertools.product(itertools.product((None,), ALPHAS), itertools.product((None, 0.1, 0.2), ALPHAS)):
        p1, p2 = conf.get(("egemaps", t1, a1)), conf.get(("compare", t2, a2))
        if p1 is None or p2 is None:
            continue
        # each head's predictions over their spread on its own training rows (never on the rows read)
        s1, s2 = scale[("egemaps", t1, a1)], scale[("compare", t2, a2)]
        conf[("both", (t1, a1), (t2, a2))] = [u / s1 + v / s2 for u, v in zip(p1, p2)]
    return conf


def route_of(key) -> str:
    return key[0]


def describe(key) -> str:
    if key[0] == "both":
        (_, a1), (t2, a2) = key[1], key[2]
        return f"eGeMAPS ridge {a1:g} + ComParE{'' if t2 is None else f' (d > {t2})'} ridge {a2:g}"
    fset, t, a = key
    return f"{NAMES[fset].split(' (')[0]}{'' if t is None else f', agreeing (d > {t})'}, ridge {a:g}"


def pos_neg_auc(pred: np.ndarray, cls: np.ndarray) -> float:
    m = cls != 0
    return auc(pred[m], cls[m] > 0)


def speaker_interval(pred: np.ndarray, cls: np.ndarray, speaker: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% interval of the positive-vs-negative AUC over speakers drawn with replacement (the test
    speakers are few: 4 RAVDESS actors, 7 ASED and 9 EmoSpeech speakers)."""
    rng = np.random.default_rng(seed)
    spk = np.unique(speaker)
    rows = {s: np.flatnonzero(speaker == s) for s in spk}
    vals = []
    for _ in range(n):
        idx = np.concatenate([rows[s] for s in rng.choice(spk, len(spk), replace=True)])
        v = pos_neg_auc(pred[idx], cls[idx])
        if np.isfinite(v):
            vals.append(v)
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if vals else (float("nan"), float("nan"))


# ----------------------------------------------------------------------------- the two protocols


def loco(corpora: list[dict]) -> dict:
    """Leave-one-corpus-out, heads trained on the other corpora's train + valid speakers: {config:
    {held-out name: (AUC on its train+valid speakers, AUC on its test speakers, predictions on its
    test speakers, AUC on all its speakers)}}."""
    out: dict = {}
    for held in corpora:
        train = [c for c in corpora if c is not held]
        sel_rows, test_rows = held["split"] != "test", held["split"] == "test"
        preds = {}
        for fset, t in itertools.product(SETS, THRESHOLDS):
            preds[(fset, t)] = head_scores(train, [c["split"] != "test" for c in train],  # no corpus's test speakers ever teach
                                           [(held, sel_rows), (held, test_rows)], fset, t)
        for key, (p_sel, p_test) in configurations(preds).items():
            p_all = np.empty(len(held["cls"]))
            p_all[sel_rows], p_all[test_rows] = p_sel, p_test
            out.setdefault(key, {})[held["name"]] = (pos_neg_auc(p_sel, held["cls"][sel_rows]), pos_neg_auc(p_test, held["cls"][test_rows]), p_test,
                                                     pos_neg_auc(p_all, held["cls"]))
    return out


def within(corpus: dict) -> dict:
    """Within one corpus: {config: (AUC on its valid speakers, AUC on its test speakers)}."""
    tr, va, te = (corpus["split"] == s for s in ("train", "valid", "test"))
    preds = {(fset, t): head_scores([corpus], [tr], [(corpus, va), (corpus, te)], fset, t) for fset, t in itertools.product(SETS, THRESHOLDS)}
    return {k: (pos_neg_auc(pv, corpus["cls"][va]), pos_neg_auc(pt, corpus["cls"][te])) for k, (pv, pt) in configurations(preds).items()}


def choose(scores: dict, keys) -> object:
    """The configuration with the highest selection AUC on the worst held-out corpus, then the
    highest mean (an AUC that cannot be measured, a class missing, counts as 0)."""
    def rank(k):
        v = np.nan_to_num([s[0] for s in scores[k].values()], nan=0.0)
        return (float(v.min()), float(v.mean()))
    return max(keys, key=rank)


def run(args) -> dict:
    data = Path(args.data)
    start = time.perf_counter()
    corpora = []
    for name in VOICE_CORPORA:
        c = corpus_features(data, name, workers=args.workers, limit=args.limit, cache_dir=args.out, progress=not args.quiet)
        keep = np.isin(c["split"], ("train", "valid", "test"))
        c = {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v) for k, v in c.items()}
        c["z"] = per_speaker_z(c["raw"], c["speaker"])
        corpora.append(c)
    names = [c["name"] for c in corpora]
    res_loco = loco(corpora)
    routes = {}
    for r in ("egemaps", "compare", "both"):
        keys = [k for k in res_loco if route_of(k) == r and len(res_loco[k]) == len(names)]
        for variant, ks in (("all", [k for k in keys if r == "both" or k[1] is None]), ("agreeing", [k for k in keys if r != "both" and k[1] is not None])):
            if not ks:
                continue
            k = choose(res_loco, ks)
            routes[f"{r}/{variant}"] = {"config": describe(k), "configurations": len(ks),
                                        "select": {n: res_loco[k][n][0] for n in names}, "test": {n: res_loco[k][n][1] for n in names},
                                        "report": {n: class_report(res_loco[k][n][2], corpora[i]["cls"][corpora[i]["split"] == "test"]) for i, n in enumerate(names)}}
    complete = [k for k in res_loco if len(res_loco[k]) == len(names)]
    best = choose(res_loco, complete)
    test_of = {c["name"]: c["split"] == "test" for c in corpora}
    interval = {c["name"]: speaker_interval(res_loco[best][c["name"]][2], c["cls"][test_of[c["name"]]], c["speaker"][test_of[c["name"]]])
                for c in corpora}
    def best_at(n: str, j: int) -> dict:
        k = max(complete, key=lambda k: np.nan_to_num(res_loco[k][n][j], nan=0.0))
        return {"auc": float(res_loco[k][n][j]), "config": describe(k)}

    bound = {n: best_at(n, 1) for n in names}
    bound_all = {n: best_at(n, 3) for n in names}
    both_bound = float(np.nanmax([min(res_loco[k][n][1] for n in names) for k in complete]))
    inside = {}
    for c in corpora:
        w = within(c)
        # (a route that keeps features agreeing across training corpora has one corpus here: its features' |d| above t)
        for label, ks in (("all", list(w)), ("egemaps", [k for k in w if k[0] == "egemaps" and k[1] is None])):
            k = max(ks, key=lambda k: np.nan_to_num(w[k][0], nan=0.0))
            inside.setdefault(c["name"], {})[label] = {"config": describe(k), "valid": w[k][0], "test": w[k][1],
                                                       "bound": float(np.nanmax([w[j][1] for j in ks]))}
    return {"corpora": {c["name"]: {"clips": c["clips"], "with_speech": len(c["cls"]), "title": VOICE_CORPORA[c["name"]]["title"]} for c in corpora},
            "configurations": len(complete), "routes": routes,
            "chosen": {"config": describe(best), "select": {n: res_loco[best][n][0] for n in names}, "test": {n: res_loco[best][n][1] for n in names},
                       "test_interval": interval},
            "test_bound": bound, "all_speakers_bound": bound_all, "test_bound_all_corpora": both_bound, "within": inside,
            "seconds": time.perf_counter() - start, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d")}


def markdown(res: dict) -> str:
    names = list(res["corpora"])
    head = " / ".join(res["corpora"][n]["title"].split(" (")[0] for n in names)
    lines = ["## Voice features across corpora: eGeMAPS against ComParE-2016 (`python bench/voice_features.py`)", "",
             f"{res['date']}, {res['machine']}, {res['seconds'] / 60:.1f} min. Clips with speech: "
             + ", ".join(f"{res['corpora'][n]['title'].split(' (')[0]} {res['corpora'][n]['with_speech']} of {res['corpora'][n]['clips']}" for n in names)
             + ". Positive-vs-negative AUC; leave-one-corpus-out (a head learns from the other corpora's train + valid speakers and never"
             " sees the held-out one); each route's configuration chosen on the held-out corpora's train + valid speakers (the worst corpus"
             " first), their test speakers read for it.", "",
             f"| route | configurations | chosen | AUC, selection speakers: {head} | AUC, test speakers: {head} | every test AUC >= 0.70 |",
             "|---|---|---|---|---|---|"]
    for r, v in res["routes"].items():
        fset, variant = r.split("/")
        name = NAMES[fset] + (", features agreeing in both training corpora" if variant == "agreeing" else "")
        lines.append(f"| {name} | {v['configurations']} | {v['config']} | " + " / ".join(f"{v['select'][n]:.2f}" for n in names)
                     + " | " + " / ".join(f"{v['test'][n]:.2f}" for n in names) + f" | {'yes' if min(v['test'].values()) >= 0.70 else 'no'} |")
    ch = res["chosen"]
    lines += ["", f"Chosen over all {res['configurations']} configurations: {ch['config']} (selection "
              + " / ".join(f"{ch['select'][n]:.2f}" for n in names) + "; test " + " / ".join(
                  f"{ch['test'][n]:.2f} [{ch['test_interval'][n][0]:.2f}, {ch['test_interval'][n][1]:.2f}]" for n in names)
              + "; in brackets the 95% interval over the test speakers drawn with replacement).",
              "", "Bounds, not estimates (each the best of every configuration, chosen by looking at what it scores): on each corpus's test speakers "
              + " / ".join(f"{res['test_bound'][n]['auc']:.2f} ({res['test_bound'][n]['config']})" for n in names)
              + "; on all of each corpus's speakers (every one of them held out) "
              + " / ".join(f"{res['all_speakers_bound'][n]['auc']:.2f} ({res['all_speakers_bound'][n]['config']})" for n in names)
              + f"; one configuration on the worst corpus's test speakers: {res['test_bound_all_corpora']:.2f}.", "",
              "Within each corpus (its train speakers; the configuration chosen on its valid speakers):", "",
              "| corpus | features | chosen | AUC valid | AUC test | best test AUC of any configuration (a bound) |", "|---|---|---|---|---|---|"]
    for n in names:
        for label, title in (("all", "any route"), ("egemaps", "eGeMAPS alone")):
            w = res["within"][n][label]
            lines.append(f"| {res['corpora'][n]['title']} | {title} | {w['config']} | {w['valid']:.2f} | {w['test']:.2f} | {w['bound']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="about N clips of each corpus, as many of every split x class (a quick check)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    missing = [c["folder"] for c in VOICE_CORPORA.values() if not (Path(args.data) / c["folder"] / "labels.csv").exists()]
    if missing:
        raise SystemExit(f"--data {args.data}: no {', '.join(missing)} (the voice corpora of ../shared/data)")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    (args.out / "voice_features.json").write_text(json.dumps(res, indent=1, default=float))
    (args.out / "voice_features.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
