"""The feature-dataset file: per split, per-modality arrays, presence masks, labels, ids, raw text.

On disk it is one ``.npz`` (loaded with ``allow_pickle=False``: nothing in it can run code):
``{split}/feat/{modality}`` float32 (N, D) or (N, T, D), ``{split}/present/{modality}`` bool (N,),
``{split}/labels`` float32 (N,), ``{split}/ids`` str (N,), optionally ``{split}/text`` str (N,) and,
for a sequence modality with padding, ``{split}/steps/{modality}`` bool (N, T) (True = a real time
step), optionally ``{split}/groups`` str (N,) (the recording, e.g. the video, each row comes from),
and ``meta`` (a JSON string). Splits are ``train``, ``valid``, ``test``.

The processed CMU-MOSI/MOSEI pickles of the MulT and MMSA releases (per split: 'text', 'audio',
'vision', 'labels' or 'regression_labels', 'id', optional 'raw_text', 'audio_lengths',
'vision_lengths', 'text_bert') load directly with :func:`load_dataset` or
:meth:`FeatureDataset.from_mosi_pickle`; their padding becomes step masks, so it is never read as
data (see :func:`step_masks_from_pickle`). A folder with ``labels.csv`` and one ``<modality>.npy``
per modality (``../shared/data/cmu-mosi-trimodal-features/``) loads with
:meth:`FeatureDataset.from_folder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def warn_scale(labels: np.ndarray, where) -> None:
    """A warning when labels leave the CMU-MOSI scale (-3 .. +3) that the models, metrics (Acc-7 clips
    to it) and plots assume: another scale (1-5, 0-100) trains, but its numbers mean something else."""
    if len(labels) and (labels.min() < -3 or labels.max() > 3):
        log.warning("%s: labels from %g to %g, outside the CMU-MOSI scale -3 .. +3 that mmdemo's models, metrics and plots "
                    "assume; rescale them (for example (x - 3) * 1.5 for a 1-5 scale)", where, labels.min(), labels.max())

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    feats: dict[str, np.ndarray]  # modality -> (N, D) or (N, T, D) float32
    present: dict[str, np.ndarray]  # modality -> (N,) bool
    labels: np.ndarray  # (N,) float32 on the -3..+3 scale
    ids: np.ndarray  # (N,) str
    text: np.ndarray | None = None  # (N,) str, raw transcript when known
    steps: dict[str, np.ndarray] = field(default_factory=dict)  # sequence modality -> (N, T) bool, True = real step
    groups: np.ndarray | None = None  # (N,) str, the recording each row comes from (a video's id) when known

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(n)
        self.ids = np.asarray(self.ids).astype(str)
        if self.text is not None:
            self.text = np.asarray(self.text).astype(str)
        if self.groups is not None:
            self.groups = np.asarray(self.groups).astype(str)
        for m, x in self.feats.items():
            x = np.asarray(x, dtype=np.float32)
            if x.ndim not in (2, 3) or len(x) != n:
                raise ValueError(f"modality {m!r}: expected ({n}, D) or ({n}, T, D), got {x.shape}")
            self.feats[m] = x
            p = self.present.get(m)
            self.present[m] = np.ones(n, bool) if p is None else np.asarray(p, dtype=bool).reshape(n)
        extra = set(self.present) - set(self.feats)
        if extra:
            raise ValueError(f"presence given for unknown modalities {sorted(extra)}")
        self.steps = dict(self.steps or {})
        for m, s in self.steps.items():
            if m not in self.feats or self.feats[m].ndim != 3:
                raise ValueError(f"step mask given for {m!r}, which is not a sequence modality")
            s = np.asarray(s, dtype=bool)
            if s.shape != self.feats[m].shape[:2]:
                raise ValueError(f"{m}: step mask of shape {s.shape}, expected {self.feats[m].shape[:2]}")
            self.steps[m] = s
        for name, arr in (("ids", self.ids), ("text", self.text), ("groups", self.groups)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries for {n} labels")
        if not np.all(np.isfinite(self.labels)):
            raise ValueError("labels contain NaN or inf")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> Split:
        return Split(
            feats={m: x[index] for m, x in self.feats.items()},
            present={m: p[index] for m, p in self.present.items()},
            labels=self.labels[index],
            ids=self.ids[index],
            text=None if self.text is None else self.text[index],
            steps={m: s[index] for m, s in self.steps.items()},
            groups=None if self.groups is None else self.groups[index],
        )


@dataclass
class FeatureDataset:
    splits: dict[str, Split]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset needs splits {SPLITS}; missing {missing}")
        ref = self.splits["train"]
        for name, sp in self.splits.items():
            if set(sp.feats) != set(ref.feats):
                raise ValueError(f"split {name!r} has modalities {sorted(sp.feats)}, train has {sorted(ref.feats)}")
            for m, x in sp.feats.items():
                if x.shape[-1] != ref.feats[m].shape[-1]:
                    raise ValueError(f"{m}: feature size {x.shape[-1]} in {name!r} but {ref.feats[m].shape[-1]} in train")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.splits["train"].feats)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[-1]) for m, x in self.splits["train"].feats.items()}

    def describe(self) -> str:
        sizes = "/".join(str(len(self.splits[s])) for s in SPLITS)
        shapes = ", ".join(f"{m} {tuple(x.shape[1:])}" for m, x in self.splits["train"].feats.items())
        return f"{sizes} samples (train/valid/test); {shapes}"

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(self.meta))}
        for s, sp in self.splits.items():
            for m, x in sp.feats.items():
                arrays[f"{s}/feat/{m}"] = x
                arrays[f"{s}/present/{m}"] = sp.present[m]
            for m, st in sp.steps.items():
                arrays[f"{s}/steps/{m}"] = st
            arrays[f"{s}/labels"] = sp.labels
            arrays[f"{s}/ids"] = sp.ids
            if sp.text is not None:
                arrays[f"{s}/text"] = sp.text
            if sp.groups is not None:
                arrays[f"{s}/groups"] = sp.groups
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureDataset:
        path = Path(path)
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable feature-dataset .npz ({err})") from err
        with z:
            keys = set(z.files)
            if "meta" not in keys:
                raise ValueError(f"{path}: not a feature-dataset file (no 'meta' entry)")
            splits = {}
            for s in SPLITS:
                mods = sorted(k.split("/")[2] for k in keys if k.startswith(f"{s}/feat/"))
                if f"{s}/labels" not in keys:
                    raise ValueError(f"{path}: split {s!r} is missing")
                splits[s] = Split(
                    feats={m: z[f"{s}/feat/{m}"] for m in mods},
                    present={m: z[f"{s}/present/{m}"] for m in mods if f"{s}/present/{m}" in keys},
                    labels=z[f"{s}/labels"],
                    ids=z[f"{s}/ids"],
                    text=z[f"{s}/text"] if f"{s}/text" in keys else None,
                    steps={m: z[f"{s}/steps/{m}"] for m in mods if f"{s}/steps/{m}" in keys},
                    groups=z[f"{s}/groups"] if f"{s}/groups" in keys else None,
                )
                for m, x in splits[s].feats.items():  # as a folder's: a present row (or real step) that is not finite is an error
                    real = splits[s].steps[m] if m in splits[s].steps else np.ones(x.shape[:-1], bool)
                    steps_bad = ~np.isfinite(x).all(axis=-1) & real  # (N,) or (N, T)
                    bad = splits[s].present[m] & (steps_bad.any(axis=1) if steps_bad.ndim == 2 else steps_bad)
                    if bad.any():
                        raise ValueError(f"{path}: {s}/{m}: {int(bad.sum())} present row(s) with NaN or inf (first: {splits[s].ids[int(np.argmax(bad))]})")
            return cls(splits, json.loads(str(z["meta"])))

    @classmethod
    def from_folder(cls, folder: str | Path) -> FeatureDataset:
        """A folder of row-aligned arrays: ``labels.csv`` (``clip_id``, ``label``, ``split`` and
        optionally ``text``, ``video_id``) and one ``<modality>.npy`` (N, D) per modality, row i of
        each array being row i of the CSV (``../shared/data/cmu-mosi-trimodal-features/``). The split
        is the one the CSV gives. A row whose features are not finite is an error (never silently
        zeroed); an all-zero row counts as that modality missing."""
        import csv

        folder = Path(folder)
        csv_path = folder / "labels.csv"
        if not csv_path.exists():
            raise FileNotFoundError(f"{folder}: no labels.csv (a feature folder needs labels.csv and <modality>.npy files)")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"{csv_path}: no rows")
        missing = {"clip_id", "label", "split"} - set(rows[0])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
        # a row with more fields than the header, or without one of the three it needs (optional columns may be left off at the end)
        short = next((i for i, r in enumerate(rows) if None in r or any(r[k] is None for k in ("clip_id", "label", "split"))), None)
        if short is not None:
            raise ValueError(f"{csv_path}: row {short + 2} has {'more' if None in rows[short] else 'fewer'} fields than the header")
        arrays = {}
        for m in ("text", "audio", "vision"):
            f = folder / f"{m}.npy"
            if f.exists():
                x = np.load(f, allow_pickle=False)
                if x.ndim != 2 or len(x) != len(rows):
                    raise ValueError(f"{f}: shape {x.shape}, expected ({len(rows)}, D) rows aligned with labels.csv "
                                     "(one vector per row; sequences go in a .npz with step masks)")
                bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if bad.any():
                    raise ValueError(f"{f}: {int(bad.sum())} row(s) with NaN or inf (first: {rows[int(np.argmax(bad))]['clip_id']})")
                arrays[m] = x.astype(np.float32)
        if not arrays:
            raise ValueError(f"{folder}: no text.npy, audio.npy or vision.npy")
        try:
            labels = np.array([float(r["label"]) for r in rows], np.float32)
        except ValueError as err:
            raise ValueError(f"{csv_path}: a label is not a number ({err})") from None
        if not np.isfinite(labels).all():
            raise ValueError(f"{csv_path}: label of {rows[int(np.argmax(~np.isfinite(labels)))]['clip_id']} is not finite")
        warn_scale(labels, csv_path)
        split = np.array([r["split"].strip() for r in rows])
        unknown = set(split) - set(SPLITS)
        if unknown:
            raise ValueError(f"{csv_path}: unknown split value(s) {sorted(unknown)}; use {', '.join(SPLITS)}")
        ids = np.array([r["clip_id"] for r in rows])
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if (ids == i).sum() > 1)
            raise ValueError(f"{csv_path}: clip_id {dup!r} appears more than once")
        text = np.array([r.get("text") or "" for r in rows])
        groups = None
        if "video_id" in rows[0]:
            groups = np.array([(r["video_id"] or "").strip() for r in rows])
            if (groups == "").any():
                raise ValueError(f"{csv_path}: clip {rows[int(np.argmax(groups == ''))]['clip_id']} has no video_id "
                                 "(give every row its video, or leave the column out)")
        splits = {}
        for name in SPLITS:
            k = split == name
            splits[name] = Split(feats={m: x[k] for m, x in arrays.items()},
                                 present={m: np.abs(x[k]).sum(axis=1) > 0 for m, x in arrays.items()},
                                 labels=labels[k], ids=ids[k], text=text[k], groups=None if groups is None else groups[k])
        meta = {"source": folder.name}
        if "video_id" in rows[0]:
            meta["videos"] = len({r["video_id"] for r in rows})
        return cls(splits, meta)

    @classmethod
    def from_mosi_pickle(cls, path: str | Path) -> FeatureDataset:
        """The processed CMU-MOSI/MOSEI pickle of the MulT / MMSA releases.

        Pickle can run code when loaded: only open files from a source you trust."""
        path = Path(path)
        with open(path, "rb") as fh:
            raw = pickle.load(fh)  # noqa: S301 - the released format is a pickle
        if not isinstance(raw, dict) or not all(s in raw for s in SPLITS):
            raise ValueError(f"{path}: expected a dict with splits {SPLITS}")
        splits = {}
        for s in SPLITS:
            d = raw[s]
            label_key = "regression_labels" if "regression_labels" in d else "labels"
            if label_key not in d:
                raise ValueError(f"{path}: split {s!r} has no 'labels' or 'regression_labels'")
            labels = np.asarray(d[label_key], dtype=np.float32).reshape(len(d[label_key]), -1)[:, 0]
            feats = {}
            for m in ("text", "audio", "vision"):
                if m not in d:
                    continue
                x = np.asarray(d[m], dtype=np.float32)
                bad = ~np.isfinite(x)
                if bad.any():  # MulT's MOSI audio holds -inf; the release code sets it to 0
                    log.warning("%s/%s: %d non-finite values set to 0", s, m, int(bad.sum()))
                    x = np.where(bad, 0.0, x).astype(np.float32)
                feats[m] = x
            ids = d.get("id")
            ids = [str(i) for i in range(len(labels))] if ids is None else [_id_str(i) for i in ids]
            text = d.get("raw_text")
            steps, how = step_masks_from_pickle(d, feats)
            for m, h in how.items():
                log.info("%s/%s: padding from %s (%d of %d steps are real)", s, m, h, int(steps[m].sum()), steps[m].size)
            splits[s] = Split(feats=feats, present={}, labels=labels, ids=ids, text=None if text is None else list(text), steps=steps)
        return cls(splits, {"source": str(path.name), "format": "mosi-pickle"})


def step_masks_from_pickle(d: dict, feats: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-step masks (N, T) of the sequence modalities of one split of a MulT/MMSA pickle, and
    where each came from.

    - ``audio_lengths`` / ``vision_lengths`` (MMSA's unaligned releases): the first L steps are real,
      the rest is zero padding (MMSA packs the sequences with these lengths).
    - text with ``text_bert`` (N, 3, T) of the same length: its attention mask (row 1).
    - otherwise (MulT's releases, aligned data): a step whose features are all zero is padding
      (those releases pad with zeros, at the front).
    """
    steps, how = {}, {}
    for m, x in feats.items():
        if x.ndim != 3:
            continue
        n, t = x.shape[:2]
        lengths = d.get(f"{m}_lengths")
        bert = d.get("text_bert") if m == "text" else None
        if lengths is not None:
            lengths = np.asarray(lengths).reshape(-1).astype(np.int64)
            if len(lengths) != n:
                raise ValueError(f"{m}_lengths has {len(lengths)} entries for {n} samples")
            steps[m] = np.arange(t)[None, :] < np.clip(lengths, 0, t)[:, None]
            how[m] = f"{m}_lengths"
        elif bert is not None and np.asarray(bert).shape == (n, 3, t):
            steps[m] = np.asarray(bert)[:, 1, :] > 0
            how[m] = "text_bert's attention mask"
        else:
            steps[m] = np.any(x != 0, axis=2)
            how[m] = "all-zero steps"
    return steps, how


def _id_str(i) -> str:
    if isinstance(i, bytes):
        return i.decode("utf-8", "replace")
    if isinstance(i, (list, tuple, np.ndarray)):
        return "_".join(_id_str(v) for v in np.asarray(i).reshape(-1))
    return str(i)


def load_dataset(path: str | Path) -> FeatureDataset:
    """A feature-dataset ``.npz``, a MulT/MMSA ``.pkl``, or a folder of row-aligned arrays
    (:meth:`FeatureDataset.from_folder`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such dataset file: {path}")
    if path.is_dir():
        return FeatureDataset.from_folder(path)
    if path.suffix in (".pkl", ".pickle"):
        return FeatureDataset.from_mosi_pickle(path)
    return FeatureDataset.load(path)


def with_context(ds: FeatureDataset) -> FeatureDataset:
    """Each row's vector features followed by the mean of its recording's rows in its split
    (``groups``: the segments of one video), per modality over the rows where that modality is
    present (zeros where it is present in none; such a row is absent anyway): the context
    of the neighbouring utterances that bc-LSTM (Poria et al., ACL 2017) reads, given to any fusion
    method as twice as many features. Labels are never read. A recording's mean includes the row
    itself, so a single-segment video gets its own features as context."""
    out = {}
    for name, sp in ds.splits.items():
        if sp.groups is None:
            raise ValueError(f"split {name!r} has no groups (video ids): context needs to know which rows come from one recording")
        seq = [m for m, x in sp.feats.items() if x.ndim != 2]
        if seq:
            raise ValueError(f"context is built for vector features; {', '.join(seq)} are sequences")
        _, inv = np.unique(sp.groups, return_inverse=True)
        feats = {}
        for m, x in sp.feats.items():
            w = sp.present[m].astype(np.float64)
            total = np.zeros((inv.max() + 1 if len(inv) else 0, x.shape[1]))
            count = np.zeros(len(total))
            np.add.at(total, inv, np.where(w[:, None] > 0, x, 0.0))  # an absent row may hold anything
            np.add.at(count, inv, w)
            mean = total / np.maximum(count, 1.0)[:, None]
            feats[m] = np.concatenate([x, mean[inv].astype(np.float32)], axis=1)
        out[name] = Split(feats=feats, present=dict(sp.present), labels=sp.labels, ids=sp.ids, text=sp.text, groups=sp.groups)
    return FeatureDataset(out, dict(ds.meta) | {"context": "the mean of each recording's rows"})


def split_by_group(groups, *, valid: float = 0.1, test: float = 0.2, salt: str = "mmdemo") -> np.ndarray:
    """Deterministic group-independent split (e.g. by speaker): a hash of the group id decides,
    so one speaker never spans two splits and adding clips never moves existing ones."""
    out = []
    for g in groups:
        u = int(hashlib.md5(f"{salt}:{g}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out.append("test" if u < test else "valid" if u < test + valid else "train")
    return np.asarray(out)


def copies_of_train(folder: str | Path, *, labels_csv: str = "labels.csv") -> set[str]:
    """The ``path`` of every valid or test image of an image corpus folder (``labels.csv`` with
    ``path`` and ``split``) whose decoded pixels equal those of some train image. FER-2013's
    challenge splits hold such copies (288 test and 280 valid images): scored as held out, they are
    read by models that learned from them. Unreadable images are left out of the comparison."""
    import csv

    import cv2

    folder = Path(folder)
    with open(folder / labels_csv, encoding="utf-8") as f:
        rows = [(r["path"], r["split"]) for r in csv.DictReader(f)]

    def digest(path: str) -> bytes | None:
        img = cv2.imdecode(np.fromfile(str(folder / path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            return None
        return hashlib.sha1(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).digest()

    train = {d for p, s in rows if s == "train" and (d := digest(p)) is not None}
    return {p for p, s in rows if s in ("valid", "test") and digest(p) in train}
