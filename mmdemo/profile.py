"""A person's profile: labelled moments, their neutral baseline and their personal models, on disk.

Where: ``<data root>/profiles/<profile id>/`` with the data root ``$MMDEMO_DATA_DIR``, else
``$XDG_DATA_HOME/mmdemo``, else ``~/.local/share/mmdemo`` (never inside the project or Gradio's
cache: :func:`data_root` refuses those). A profile id is 32 random hex digits; nothing lists the
profiles of a server, so one user never sees another's unless a profile file is exported and
imported on purpose.

The moments are kept in the project's feature-folder format (what
:meth:`mmdemo.data.FeatureDataset.from_folder` and ``python -m mmdemo.train --data`` read):

    moments/      a link to the current generation folder, which holds
        labels.csv    clip_id, label, split, text, video_id (= the person), created, seconds, clip
        text.npy audio.npy vision.npy   (N, D) float32, row i = row i of labels.csv; an all-zero
                      row = the modality was absent in that moment
        vision_offset.npy   (N, D) float32: the face offset each row was read with
    clips/<clip_id>/audio.wav, frame.jpg   only when the user ticked "keep the raw clip"
    baseline.safetensors                   the neutral-baseline offsets (+ what was measured)
    personal/<fusion>/                     personal models (a checkpoint folder each)

Each moment's face feature is stored as read, with the baseline's face offset it was read with
(``vision_offset.npy`` beside the features: zeros for none; rows of a generation written before this
file existed, imported from a ``/1`` file, or whose recorded offset is damaged count as unknown).
The face offset is a constant taken off the face feature, so :meth:`Profile.split` gives every face feature exactly as it reads under the offset
asked for (a personal model is fitted under the baseline its session reads with, whatever baseline
each moment was labelled under); rows of unknown offset are given as stored. The voice features are
per-speaker z-scores against statistics that started from the population's and took in the
session's clean speech after the offset came off: a constant offset is diluted there, not taken off
(about 4/(4 + n) of it is left after n windows), and they are given as read.

Every change happens under an exclusive file lock and writes a new generation folder, then switches
the ``moments`` link to it in one atomic step: two tabs (or two processes) of one person append and
delete without losing each other's moments, and a crash or a full disk half-way leaves the previous
generation whole. The person in ``video_id`` and in exports is a one-way hash of the profile id:
an exported file never carries the id that opens the profile.

A profile exports to one ``.safetensors`` file: moments, baseline and personal models as tensors,
everything else as JSON in the file's metadata (format ``mmdemo-profile/2``; ``/1`` files, written
before the moments' face offsets were, still import with those offsets unknown); importing checks the
format, every key and shape against this installation's encoders, the labels and the values before
anything is written. Never pickle. Raw clips are not exported (features only).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import DISPLAY_NAMES, MODALITIES
from .calibration import MAX_FACE_OFFSET, Baseline, plausible_face_offset

FORMAT = "mmdemo-profile/2"  # /2: with each moment's face offset; /1 files (without) still import, their offsets unknown
READ_FORMATS = ("mmdemo-profile/1", FORMAT)
log = logging.getLogger(__name__)
PROFILE_ID = re.compile(r"^[0-9a-f]{32}\Z")  # \Z: "$" would let a trailing newline through
COLUMNS = ("clip_id", "label", "split", "text", "video_id", "created", "seconds", "clip")
MAX_MOMENTS = 5000
MAX_PROFILE_BYTES = 64 * 2**20  # an imported profile file larger than this is refused
MAX_TEXT = 2000  # characters of a moment's words kept in labels.csv
MAX_HEADER_BYTES = 16 * 2**20  # the JSON header of a profile file (moments' texts, descriptions) that import reads
OFFSET = "vision_offset"  # beside the moments: (N, D) the face offset each row was read with (NaN rows: not recorded)


def stored_text(value, limit: int = MAX_TEXT) -> str:
    """A moment's text (or a short field) as labels.csv keeps it: valid Unicode (a lone surrogate,
    from JSON's "\\ud800", becomes '?'), line breaks as "\\n" (a bare carriage return would end a
    CSV row), no other control characters, at most ``limit`` characters."""
    text = str(value).encode("utf-8", "replace").decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")[:limit]


REPO = Path(__file__).resolve().parents[1]


class ProfileError(ValueError):
    """A profile operation that cannot be done (bad file, unknown moment, ...): the message says why."""


@dataclass
class Moment:
    """The last few seconds of a session as one example: features as the models read them."""

    features: dict[str, np.ndarray]  # modality -> (D,) (zeros when absent)
    present: dict[str, bool]
    text: str = ""
    seconds: float = 0.0
    audio: np.ndarray | None = None  # 16 kHz mono float, only kept with the user's consent
    frame: np.ndarray | None = None  # RGB uint8, the last frame of the moment
    offsets: dict[str, np.ndarray] = field(default_factory=dict)  # the baseline offsets the features were read with (none: {})

    @property
    def any_present(self) -> bool:
        return any(self.present.values())


def new_profile_id() -> str:
    return secrets.token_hex(16)


def data_root(root: str | Path | None = None, *, forbidden: tuple[Path, ...] = ()) -> Path:
    """Where profiles live (see the module docstring). A root inside the project or inside a
    ``forbidden`` folder (Gradio's cache) is refused: user data must not end up in either."""
    if root is None:
        root = os.environ.get("MMDEMO_DATA_DIR") or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mmdemo"
    root = Path(root).expanduser().resolve()
    for bad, what in [(REPO, "the project folder")] + [(Path(f).resolve(), str(f)) for f in forbidden]:
        if root == bad or bad in root.parents:
            raise ProfileError(f"user data must not be stored inside {what} ({root}); set MMDEMO_DATA_DIR elsewhere")
    return root


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Profile:
    """One person's folder. Thread- and process-safe (file lock); ``dims`` are the encoders' sizes."""

    def __init__(self, root: str | Path, profile_id: str, dims: dict[str, int]):
        if not isinstance(profile_id, str) or not PROFILE_ID.match(profile_id):
            raise ProfileError("not a profile id (32 hex digits)")
        self.id = profile_id
        # who the moments are of, in files that leave this folder (labels.csv's video_id, exports): a
        # one-way hash of the id, so an exported file never carries the id that opens the profile
        self.person = hashlib.sha256(f"mmdemo-person:{profile_id}".encode()).hexdigest()[:16]
        self.dims = {m: int(dims[m]) for m in MODALITIES}
        self.folder = Path(root) / "profiles" / profile_id

    @classmethod
    def at(cls, folder: str | Path, dims: dict[str, int]) -> Profile:
        """The profile in ``folder`` wherever it lies (a copy of an app's ``profiles/<id>/`` folder):
        its name must still be the 32-hex id the app gave it (who the moments are of comes from it)."""
        folder = Path(folder)
        try:
            prof = cls(folder.parent, folder.name, dims)
        except ProfileError:
            raise ProfileError(f"{folder}: a profile folder keeps the name the app gave it (32 hex digits, its id); "
                               f"this one is named {folder.name!r}: rename it back, or export the profile from the app and merge the file") from None
        prof.folder = folder
        return prof

    # ------------------------------------------------------------------ locking and reading
    @contextlib.contextmanager
    def locked(self):
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def dataset_folder(self) -> Path:
        """The moments as a feature folder (``python -m mmdemo.train --data`` reads it, each face as
        read, under its own offset; ``python -m mmdemo.personal merge`` gives them without any)."""
        return self.folder / "moments"

    def _current(self) -> Path | None:
        link = self.dataset_folder
        if link.is_symlink():
            return link.resolve() if link.resolve().is_dir() else None
        if link.is_dir():  # a copy that followed the link (scp -r, zip, shutil.copytree): the folder itself
            return link if (link / "labels.csv").exists() else None
        # no moments/ at all: the newest whole generation, if a write that was turning a copied folder
        # into a generation (below) stopped between its two steps; none after delete_all
        gens = [g for g in self.folder.glob("moments-*") if (g / "labels.csv").exists()]
        return max(gens, key=lambda g: g.stat().st_mtime_ns) if gens else None

    def _read(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        d = self._current()
        if d is None:
            return [], self._empty()
        with open(d / "labels.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        arrays = {}
        for m, dim in self.dims.items():
            x = np.load(d / f"{m}.npy", allow_pickle=False)
            if x.shape != (len(rows), dim):
                raise ProfileError(f"{d}: {m}.npy has shape {x.shape}, expected ({len(rows)}, {dim}); the profile is damaged")
            arrays[m] = x.astype(np.float32)
        arrays[OFFSET] = self._read_offsets(d, len(rows))
        return rows, arrays

    def _read_offsets(self, d: Path, n: int) -> np.ndarray:
        """The face offset of each row; rows whose offset is not known (a generation written before
        they were recorded, a damaged file, a row not all finite or implausibly large) are NaN rows:
        used as stored, never blocking the moments themselves."""
        unknown = np.full((n, self.dims["vision"]), np.nan, np.float32)
        path = d / f"{OFFSET}.npy"
        if not path.exists():
            return unknown
        try:
            off = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            log.warning("%s unreadable (%s): those moments' face offsets count as unknown", path, err)
            return unknown
        if off.shape != unknown.shape:
            log.warning("%s has shape %s, expected %s: those moments' face offsets count as unknown", path, off.shape, unknown.shape)
            return unknown
        off[~plausible_face_offset(off)] = np.nan
        return off

    def _empty(self) -> dict[str, np.ndarray]:
        return {m: np.zeros((0, dim), np.float32) for m, dim in self.dims.items()} | {OFFSET: np.zeros((0, self.dims["vision"]), np.float32)}

    def _write(self, rows: list[dict], arrays: dict[str, np.ndarray]) -> None:
        """A new generation of the files in a folder of its own, then one atomic switch of the
        ``moments`` link: a crash or a full disk half-way leaves the previous generation whole."""
        new = self.folder / f"moments-{secrets.token_hex(6)}"
        new.mkdir(mode=0o700)
        try:
            for m, x in arrays.items():
                _atomic_write(new / f"{m}.npy", lambda f, x=x: np.save(f, np.asarray(x, np.float32), allow_pickle=False))
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")  # texts come through stored_text: no bare "\r" to split a row
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in COLUMNS})
            _atomic_write(new / "labels.csv", lambda f: f.write(buf.getvalue().encode("utf-8")))
            tmp = self.folder / f".moments-{secrets.token_hex(6)}"
            os.symlink(new.name, tmp)
            if self.dataset_folder.is_dir() and not self.dataset_folder.is_symlink():  # a copied folder: set aside as a generation, removed below
                os.replace(self.dataset_folder, self.folder / f"moments-{secrets.token_hex(6)}")
            os.replace(tmp, self.dataset_folder)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        for old in self.folder.glob("moments-*"):  # earlier generations (and any a crash left behind)
            if old != new:
                shutil.rmtree(old, ignore_errors=True)

    def _rows_and_arrays(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        if self._current() is None:
            return [], self._empty()
        with self.locked():
            return self._read()

    @staticmethod
    def _listing(rows: list[dict], arrays: dict[str, np.ndarray]) -> list[dict]:
        return [dict(r, label=float(r["label"]), present=[m for m in MODALITIES if np.any(arrays[m][i] != 0)]) for i, r in enumerate(rows)]

    @staticmethod
    def _as_split(rows: list[dict], arrays: dict[str, np.ndarray], face_offset: np.ndarray | None = None):
        from .data import Split

        present = {m: np.any(arrays[m] != 0, axis=1) for m in MODALITIES}
        return Split(feats=read_under(arrays, face_offset), present=present, labels=np.array([float(r["label"]) for r in rows], np.float32),
                     ids=np.array([r["clip_id"] for r in rows]), text=np.array([r["text"] for r in rows]))

    def moments(self) -> list[dict]:
        """The labelled moments, oldest first: one dict per moment (labels.csv's columns, label as
        float, ``present`` as a list of modalities)."""
        return self._listing(*self._rows_and_arrays())

    def split(self, face_offset: np.ndarray | None = None):
        """All moments as one :class:`mmdemo.data.Split` (presence from the all-zero rows), the face
        features as they read with the baseline face offset ``face_offset`` (None: no baseline),
        whatever offset each was labelled with (see the module's docstring)."""
        return self._as_split(*self._rows_and_arrays(), face_offset=face_offset)

    def __len__(self) -> int:
        return len(self.moments())

    # ------------------------------------------------------------------ changes
    def add(self, moment: Moment, label: float, *, keep_clip: bool = False) -> str:
        """Store one labelled moment; returns its id. Raw audio/frame are written only with ``keep_clip``."""
        if not moment.any_present:
            raise ProfileError("nothing to label: no face, voice or words in the last seconds")
        try:
            label = float(label)
        except (TypeError, ValueError):
            raise ProfileError("the label must be a number from -3 to +3") from None
        if not np.isfinite(label) or not -3.0 <= label <= 3.0:
            raise ProfileError("the label must be a number from -3 to +3")
        feats = {}
        for m, d in self.dims.items():
            x = np.asarray(moment.features.get(m, np.zeros(d)), np.float32).reshape(-1)
            if not moment.present.get(m):
                x = np.zeros(d, np.float32)
            if x.shape != (d,) or not np.all(np.isfinite(x)):
                raise ProfileError(f"{DISPLAY_NAMES[m]}: feature of shape {x.shape}, expected ({d},) finite values")
            feats[m] = x
        off = moment.offsets.get("vision")
        feats[OFFSET] = np.zeros(self.dims["vision"], np.float32) if off is None else np.asarray(off, np.float32).reshape(-1)
        if feats[OFFSET].shape != (self.dims["vision"],) or not plausible_face_offset(feats[OFFSET]):
            raise ProfileError(f"the face offset has shape {feats[OFFSET].shape}; expected ({self.dims['vision']},) finite values of at most ±{MAX_FACE_OFFSET:g}")
        clip_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        with self.locked():
            rows, arrays = self._read()
            if len(rows) >= MAX_MOMENTS:
                raise ProfileError(f"this profile already holds {MAX_MOMENTS} moments; delete some first")
            try:
                clip = ""
                if keep_clip and (moment.audio is not None or moment.frame is not None):
                    clip = self._write_clip(clip_id, moment)
                rows.append({"clip_id": clip_id, "label": f"{label:g}", "split": "train", "text": stored_text(moment.text),
                             "video_id": self.person, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "seconds": f"{moment.seconds:.1f}", "clip": clip})
                self._write(rows, {m: np.concatenate([arrays[m], feats[m][None]]) for m in arrays})
            except BaseException:
                shutil.rmtree(self.folder / "clips" / clip_id, ignore_errors=True)  # no clip without its moment
                raise
        return clip_id

    def _write_clip(self, clip_id: str, moment: Moment) -> str:
        import cv2
        import soundfile as sf

        folder = self.folder / "clips" / clip_id
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if moment.audio is not None and len(moment.audio):
                sf.write(str(folder / "audio.wav"), np.asarray(moment.audio, np.float32), 16000, subtype="PCM_16")
        except (RuntimeError, sf.LibsndfileError) as err:  # a full disk, as libsndfile says it
            raise ProfileError(f"the raw clip could not be saved ({err}); the moment was not stored") from None
        if moment.frame is not None and not cv2.imwrite(str(folder / "frame.jpg"), cv2.cvtColor(np.asarray(moment.frame, np.uint8), cv2.COLOR_RGB2BGR)):
            raise ProfileError("the raw clip's picture could not be saved (a full disk?); the moment was not stored")
        return str(folder.relative_to(self.folder))

    def delete(self, clip_id: str) -> None:
        """Remove one moment (and its raw clip). An unknown id (deleted meanwhile in another tab) raises."""
        with self.locked():
            rows, arrays = self._read()
            keep = [i for i, r in enumerate(rows) if r["clip_id"] != clip_id]
            if len(keep) == len(rows):
                raise ProfileError(f"no moment {str(clip_id)[:40]!r} in this profile (deleted already, perhaps in another tab)")
            self._write([rows[i] for i in keep], {m: arrays[m][keep] for m in arrays})
            if PROFILE_CLIP.match(clip_id):  # after the moment is gone: a failed write keeps its clip with it
                shutil.rmtree(self.folder / "clips" / clip_id, ignore_errors=True)

    def delete_all(self) -> None:
        """Everything of this profile, from disk, under the lock (a tab writing at the same moment
        waits, then starts an empty profile). Only the empty lock file stays: removing it would let
        a tab that is waiting on it and a new one write at the same time."""
        if not self.folder.exists():
            return
        with self.locked():
            for p in self.folder.iterdir():
                if p.name != ".lock":
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    # ------------------------------------------------------------------ baseline and personal models
    def save_baseline(self, baseline: Baseline | None) -> None:
        with self.locked():
            self._save_baseline(baseline)

    def _save_baseline(self, baseline: Baseline | None) -> None:
        """:meth:`save_baseline`, with the lock held by the caller."""
        from safetensors.numpy import save

        path = self.folder / "baseline.safetensors"
        if baseline is None:
            path.unlink(missing_ok=True)
            return
        blob = save({m: x for m, x in baseline.offsets.items()}, metadata={"format": FORMAT, "info": json.dumps(baseline.to_json())})
        _atomic_write(path, lambda f: f.write(blob))

    def load_baseline(self) -> Baseline | None:
        from safetensors.numpy import load

        path = self.folder / "baseline.safetensors"
        if not path.exists():
            return None
        data = path.read_bytes()
        try:
            meta = _metadata(data)
            return Baseline.from_parts(load(data), json.loads(meta.get("info", "{}")), self.dims)
        except Exception as err:  # noqa: BLE001 - a damaged file is reported, never half-used
            raise ProfileError(f"{path}: unreadable baseline ({err})") from None

    def generation(self) -> str | None:
        """Which writing of the moments is current (None: no moments): every add, delete or import
        makes a new one, so a model fitted on one generation can tell that the moments changed."""
        current = self._current()
        return None if current is None else current.name

    def save_personal(self, model, metrics: dict, *, generation: str | None | bool = False) -> None:
        """Store the personal model of its method. With ``generation`` (what :meth:`generation` said
        when its moments were read), refused if the moments changed meanwhile: deleted in another tab
        (or all of the profile's data), they must not come back as a model fitted on them."""
        with self.locked():
            if generation is not False and self.generation() != generation:
                raise ProfileError("the moments changed while the model was being fitted (added or deleted, perhaps in another tab); "
                                   "it was not saved: fit again")
            self._save_personal(model, metrics)

    def _save_personal(self, model, metrics: dict) -> None:
        """:meth:`save_personal` without the generation check, with the lock held by the caller."""
        from .checkpoint import save_fusion

        # replaced whole: a reader finds one whole model or none; a save that fails leaves the earlier
        # one (staging and set-aside folders are dot-folders, never listed)
        save_fusion(model, self.folder / "personal" / model.name, extra={"metrics.json": metrics})

    def load_personal(self, fusion: str):
        """(model, metrics) of the personal model for ``fusion``, or None. A damaged or foreign one
        raises :class:`ProfileError` (never half-used)."""
        from .checkpoint import load_fusion

        folder = self.folder / "personal" / fusion
        if not (folder / "config.json").exists():
            return None
        try:
            model = load_fusion(folder)
            metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
        except FileNotFoundError:  # replaced by another tab's save at this moment
            return None
        except Exception as err:  # noqa: BLE001 - safetensors and torch raise their own types for a damaged file
            raise ProfileError(f"{folder}: unreadable personal model ({type(err).__name__}: {str(err)[:200]})") from None
        if model.dims != self.dims:
            raise ProfileError(f"{folder}: personal model for feature sizes {model.dims}, the encoders give {self.dims}")
        return model, metrics

    def personal_fusions(self) -> list[str]:
        root = self.folder / "personal"  # dot-folders are saves in progress, never models
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "config.json").exists()) if root.exists() else []

    def delete_personal(self, fusion: str | None = None) -> None:
        with self.locked():
            root = self.folder / "personal"
            if fusion is None:
                shutil.rmtree(root, ignore_errors=True)
            elif fusion in self.personal_fusions():
                shutil.rmtree(root / fusion, ignore_errors=True)

    # ------------------------------------------------------------------ one file out, one file in
    def export(self, path: str | Path) -> Path:
        """Moments + baseline + personal models as one safetensors file (no raw clips)."""
        from safetensors.torch import save_file

        path = Path(path)
        with self.locked():  # one consistent reading, even with another tab writing
            rows, arrays = self._read()
            baseline = self.load_baseline()
            models = {name: got for name in self.personal_fusions() if (got := self.load_personal(name)) is not None}
        listed = self._listing(rows, arrays)
        tensors = {"moments/labels": torch.from_numpy(np.array([float(r["label"]) for r in rows], np.float32))}
        for m in (*MODALITIES, OFFSET):  # as stored: each face feature with the offset it was read with
            tensors[f"moments/{m}"] = torch.from_numpy(np.ascontiguousarray(arrays[m], np.float32))
        rows = listed
        if baseline is not None:
            tensors |= {f"baseline/{m}": torch.from_numpy(x.copy()) for m, x in baseline.offsets.items()}
        personal = {}
        for name, (model, metrics) in models.items():
            tensors |= {f"personal/{name}/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            personal[name] = {"config": asdict(model.cfg), "metrics": metrics}
        info = {"person": self.person, "dims": self.dims, "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "moments": [{k: r[k] for k in ("clip_id", "text", "created", "seconds")} for r in rows],
                "baseline": None if baseline is None else baseline.to_json(), "personal": personal}
        text = json.dumps(info, ensure_ascii=False)  # as UTF-8: "\uXXXX" would take 6 bytes a character of most scripts
        if len(json.dumps(text, ensure_ascii=False).encode()) > MAX_HEADER_BYTES - 2**20:  # what import would refuse (the tensors' entries take the rest)
            raise ProfileError(f"the moments' texts are too long to export in one file ({len(text.encode()) / 2**20:.0f} MB); "
                               "delete some moments first")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": FORMAT, "info": text})
        return path

    def import_file(self, path: str | Path, configs: dict[str, dict] | None = None) -> dict:
        """Merge an exported profile into this one: its moments are added (ids already here are
        skipped); its baseline and personal models are taken where this profile has none (this
        profile's own are never overwritten: delete them first to take the imported ones).
        Everything is checked before anything is written (``configs``: the settings a personal
        model of each method must have, default the shipped checkpoints'); returns what was taken."""
        parsed = read_profile_file(path, self.dims, configs)
        with self.locked():  # one lock for all of it: another tab's baseline or model saved meanwhile is never overwritten
            rows, arrays = self._read()
            have = {r["clip_id"] for r in rows}
            new = [i for i, r in enumerate(parsed["moments"]) if r["clip_id"] not in have]
            if len(rows) + len(new) > MAX_MOMENTS:
                raise ProfileError(f"importing would make {len(rows) + len(new)} moments; at most {MAX_MOMENTS}")
            own_baseline = self.load_baseline()  # a damaged own baseline: refused here, before any write
            took_baseline = parsed["baseline"] is not None and own_baseline is None
            own = set(self.personal_fusions())
            took = sorted(n for n in parsed["personal"] if n not in own)
            done: list[str] = []
            try:
                for name in took:
                    self._save_personal(*parsed["personal"][name])
                    done.append(f"the personal {name} model")
                if took_baseline:
                    self._save_baseline(parsed["baseline"])
                    done.append("the baseline")
                for i in new:
                    r = parsed["moments"][i]
                    rows.append({"clip_id": r["clip_id"], "label": f"{parsed['labels'][i]:g}", "split": "train", "text": r["text"],
                                 "video_id": self.person, "created": r["created"], "seconds": r["seconds"], "clip": ""})
                if new:
                    self._write(rows, {m: np.concatenate([arrays[m], parsed["feats"][m][new]]) for m in arrays})
            except (OSError, RuntimeError, ValueError) as err:  # a full disk half-way: say what was taken before it
                so_far = f"; {', '.join(done)} {'was' if len(done) == 1 else 'were'} imported before it" if done else "; nothing was imported"
                raise ProfileError(f"the import stopped ({type(err).__name__}: {str(err)[:160]}){so_far}") from None
        return {"moments_added": len(new), "moments_skipped": len(parsed["moments"]) - len(new), "baseline": took_baseline,
                "personal": took, "kept": sorted(([("baseline")] if parsed["baseline"] is not None and not took_baseline else [])
                                                 + [n for n in parsed["personal"] if n in own]),
                "left_out": parsed["left_out"],
                "refit": self._refit(took, own, parsed, own_baseline, parsed["baseline"] if took_baseline else own_baseline)}

    def _refit(self, took: list[str], own: set[str], parsed: dict, own_baseline: Baseline | None, now: Baseline | None) -> list[str]:
        """The personal models that learned under another baseline than the one this profile has now:
        each by the baseline its metrics record, or, where none is recorded (an older file or fit), by
        the baseline of where it came from (the file's, or this profile's before the import)."""
        def learned(name: str) -> str:
            if name in took:
                recorded, where = parsed["personal"][name][1].get("baseline"), parsed["baseline"]
            else:
                got = self.load_personal(name)
                recorded, where = (got[1].get("baseline") if got else None), own_baseline
            return recorded or Baseline.fingerprint(where)

        return sorted(n for n in (*took, *own) if learned(n) != Baseline.fingerprint(now))


def read_under(arrays: dict[str, np.ndarray], face_offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Stored moment features (each modality's (N, D) and ``vision_offset``) as they read under the
    baseline face offset ``face_offset`` (None: no baseline): a face read with offset o becomes
    x + o - face_offset; rows whose offset is unknown (NaN) or without a face stay as stored."""
    feats = {m: arrays[m] for m in MODALITIES}
    off = arrays[OFFSET]
    move = np.any(feats["vision"] != 0, axis=1) & np.all(np.isfinite(off), axis=1)
    if move.any():
        v = feats["vision"].copy()
        v[move] += off[move]
        if face_offset is not None:
            v[move] -= np.asarray(face_offset, np.float32)
        feats["vision"] = v.astype(np.float32)
    return feats


PROFILE_CLIP = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")  # [0-9], not \d (any Unicode digit); \Z, not $ (a trailing newline)


def _metadata(blob: bytes) -> dict:
    """The ``__metadata__`` of a safetensors blob (its JSON header), without loading tensors."""
    if len(blob) < 8:
        raise ProfileError("not a safetensors file (too short)")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > min(len(blob) - 8, MAX_HEADER_BYTES):
        raise ProfileError("not a safetensors file (bad header)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError:
        raise ProfileError("not a safetensors file (header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


METRIC_KEYS = {"moments": int, "scheme": str, "generic_mae": float, "personal_mae": float, "seconds": float, "fit_seconds": float,
               "baseline": str,  # baseline: Baseline.fingerprint of the one the model learned under
               # the fit's settings (PersonalConfig): which a model was fitted with, once the defaults change
               "fit_steps": int, "fit_lr": float, "fit_anchor": float, "fit_bias_anchor": float, "fit_loss": str}


def clean_metrics(d) -> dict:
    """A personal model's metrics with known keys and types only (they come from files)."""
    out = {}
    for k, typ in METRIC_KEYS.items():
        v = d.get(k) if isinstance(d, dict) else None
        if typ is str and isinstance(v, str):
            out[k] = v[:40]
        elif typ is not str and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = typ(v)
    return out


def shipped_configs(checkpoints: str | Path | None = None) -> dict[str, dict]:
    """Each shipped fusion method's settings: a personal model must have exactly these (a file
    cannot make the app build a model of any other size)."""
    from .checkpoint import read_config

    root = Path(checkpoints or REPO / "checkpoints") / "fusion"
    return {p.name: read_config(p)["config"] for p in sorted(root.iterdir()) if (p / "config.json").exists()} if root.exists() else {}


def same_settings(a: dict, b: dict) -> bool:
    """Whether two fusion settings are the same once completed with the defaults (a setting added
    since, such as ``loss``, is absent from files written before it with its default meaning)."""
    from .fusion import FusionConfig

    try:
        return asdict(FusionConfig(**a)) == asdict(FusionConfig(**b))
    except (TypeError, ValueError):
        return False


def read_profile_file(path: str | Path, dims: dict[str, int], configs: dict[str, dict] | None = None) -> dict:
    """Parse and check an exported profile strictly. Returns moments (rows), labels, feats, baseline
    and personal models ({fusion: (model, metrics)}). Raises :class:`ProfileError` with the reason,
    whatever is wrong with the file."""
    try:
        return _read_profile_file(Path(path), dims, shipped_configs() if configs is None else configs)
    except ProfileError:
        raise
    except Exception as err:  # noqa: BLE001 - any other surprise in a file from elsewhere is a malformed file
        raise ProfileError(f"the profile file is malformed ({type(err).__name__}: {str(err)[:120]})") from None


def _read_profile_file(path: Path, dims: dict[str, int], configs: dict[str, dict]) -> dict:
    from safetensors.torch import load as load_tensors

    from .fusion import FusionConfig, create_fusion, list_fusions

    try:
        size = path.stat().st_size
    except OSError as err:
        raise ProfileError(f"cannot read the profile file ({err.strerror})") from None
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"the profile file is {size / 2**20:.0f} MB; at most {MAX_PROFILE_BYTES // 2**20} MB")
    blob = path.read_bytes()
    meta = _metadata(blob)
    fmt = str(meta.get("format"))
    if fmt not in READ_FORMATS:
        if fmt.startswith("mmdemo-profile/"):
            raise ProfileError(f"made by a newer mmdemo (format {fmt[:40]!r}; this one reads {' and '.join(READ_FORMATS)}): update mmdemo to import it")
        raise ProfileError(f"not an mmdemo profile (format {fmt[:40]!r}, expected {FORMAT!r})")
    try:
        info = json.loads(meta["info"])
        tensors = load_tensors(blob)
    except Exception as err:  # noqa: BLE001
        raise ProfileError(f"the profile file is damaged ({type(err).__name__})") from None
    if not isinstance(info, dict):
        raise ProfileError("the profile file's description is not an object")
    if info.get("dims") != dims:
        raise ProfileError(f"the profile was made with feature sizes {info.get('dims')}; this installation's encoders give {dims}")
    moments = info.get("moments")
    if not isinstance(moments, list):
        raise ProfileError("the profile file has no moment list")
    n = len(moments)
    labels = tensors.pop("moments/labels", None)
    if labels is None or tuple(labels.shape) != (n,):
        raise ProfileError(f"the profile's labels do not match its {n} moments")
    labels = labels.float().numpy()
    if not np.all(np.isfinite(labels)) or np.any(np.abs(labels) > 3):
        raise ProfileError("the profile holds labels outside -3..+3")
    feats = {}
    for m in MODALITIES:
        x = tensors.pop(f"moments/{m}", None)
        if x is None or tuple(x.shape) != (n, dims[m]) or x.dtype != torch.float32:
            raise ProfileError(f"the profile's {DISPLAY_NAMES[m]} features are missing or have the wrong shape")
        x = x.numpy()
        if not np.all(np.isfinite(x)):
            raise ProfileError(f"the profile's {DISPLAY_NAMES[m]} features hold NaN or inf")
        feats[m] = x
    off = tensors.pop(f"moments/{OFFSET}", None)
    if fmt == "mmdemo-profile/1":  # the offsets the faces were read with were not recorded then
        if off is not None:
            raise ProfileError(f"the profile file holds face offsets, which format {fmt!r} does not have")
        feats[OFFSET] = np.full((n, dims["vision"]), np.nan, np.float32)
    else:
        if off is None or tuple(off.shape) != (n, dims["vision"]) or off.dtype != torch.float32:
            raise ProfileError("the profile's face offsets are missing or have the wrong shape")
        off = off.numpy()
        if not np.all(plausible_face_offset(off) | np.isnan(off).all(axis=1)):  # a row is known (plausible) or not (all NaN)
            raise ProfileError("the profile's face offsets hold inf, implausible values or rows only partly known")
        feats[OFFSET] = off
    rows = []
    for r in moments:
        if not isinstance(r, dict) or not PROFILE_CLIP.match(str(r.get("clip_id", ""))):
            raise ProfileError("the profile holds a moment without a valid id")
        rows.append({"clip_id": r["clip_id"], "text": stored_text(r.get("text", "")),
                     "created": stored_text(r.get("created", ""), 32), "seconds": stored_text(r.get("seconds", ""), 8)})
    if len({r["clip_id"] for r in rows}) != n:
        raise ProfileError("the profile holds the same moment twice")
    baseline = None
    offsets = {k.split("/", 1)[1]: tensors.pop(k).numpy() for k in [k for k in tensors if k.startswith("baseline/")]}
    if offsets or info.get("baseline") is not None:
        if not isinstance(info.get("baseline"), dict):
            raise ProfileError("the profile's baseline has no description")
        if not offsets:  # as a calibration that measured nothing: not a baseline
            raise ProfileError("the profile's baseline holds no offsets")
        try:
            baseline = Baseline.from_parts(offsets, info["baseline"], dims)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ProfileError(f"the profile's baseline is invalid ({err})") from None
    personal = {}
    specs = info.get("personal") or {}
    if not isinstance(specs, dict):
        raise ProfileError("the profile's personal models are not described as an object")
    left_out = []
    for name, spec in specs.items():
        prefix = f"personal/{name}/"
        state = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        if name not in list_fusions():  # a method of another version: its moments are still this person's
            left_out.append(f"the personal model for {str(name)[:40]!r}, a method this installation does not know")
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
            raise ProfileError(f"the personal {name} model has no settings")
        cfg = spec["config"]
        if name not in configs or not same_settings(cfg, configs[name]):
            # only the shipped settings: a file must not make the app build a model of any size
            left_out.append(f"the personal {name} model, made for other settings than this installation's {name} model (fit it again here)")
            continue
        model = create_fusion(name, dims=dims, cfg=FusionConfig(**cfg))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ProfileError(f"the personal {name} model does not fit this installation ({str(err)[:200]})") from None
        if not all(torch.isfinite(v).all() for v in model.state_dict().values()):
            raise ProfileError(f"the personal {name} model holds NaN or inf")
        personal[name] = (model.eval(), clean_metrics(spec.get("metrics")))
    if tensors:
        raise ProfileError(f"the profile file holds unexpected entries: {sorted(tensors)[:5]}")
    return {"moments": rows, "labels": labels, "feats": feats, "baseline": baseline, "personal": personal, "info": info, "left_out": left_out}
