"""Feature extraction with the live app's own encoders: videos, audio, images or text -> a dataset file.

    python -m mmdemo.extract SRC --labels labels.csv --out features.npz

``labels.csv`` has one row per clip: an id (``clip_id``), a sentiment label (``label``, -3..+3, or
any numeric column via ``--label-column``) and optionally ``path`` (relative to SRC; otherwise
``SRC/<id>.<ext>`` is looked up), ``text`` (the transcript; else Whisper transcribes the speech),
``split`` (train/valid/test; else a deterministic split by ``speaker``, or by clip id) and
``speaker``. Media kinds by extension: video (frames -> face, audio track -> voice, speech ->
words), audio (voice, words), image (face), none (words from the text column only).

Per clip, the same encoders as the live pipeline: the face feature is the mean over the sampled
frames where a face was found, the voice feature is eGeMAPS over the clip's speech (first to last
VAD speech frame), the words feature embeds the transcript. A modality the clip does not have is
stored as absent, with the reason. Broken files are skipped and reported (errors.json beside the
output); the work is cached in parts under ``--cache`` so an interrupted run resumes where it
stopped. A tqdm bar shows progress; the summary says what each encoder found.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import MODALITIES
from .audio import SAMPLE_RATE
from .data import SPLITS, FeatureDataset, Split, split_by_group, warn_scale
from .device import resolve_device
from .encoders import DIMS, FaceEncoder, Transcriber, VoiceEncoder, WordsEncoder
from .media import AUDIO_EXT, IMAGE_EXT, VIDEO_EXT, MediaError, has_video_stream, iter_frames, kind_of, read_audio, read_image
from .settings import output_problem

log = logging.getLogger(__name__)

EXTRACTOR_VERSION = "3"  # 3: video frames at their own timestamps. Bump whenever an encoder computes something different
MEDIA_EXT = VIDEO_EXT | AUDIO_EXT | IMAGE_EXT
MAX_ITEM_SECONDS = 1800.0  # the audio read of one item (a clip or an utterance): a day-long recording would not fit in memory


@dataclass
class Item:
    id: str
    label: float
    path: Path | None
    text: str | None
    split: str | None
    group: str


@dataclass
class ItemFeatures:
    id: str
    feats: dict[str, np.ndarray | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    transcript: str = ""
    info: dict = field(default_factory=dict)
    fingerprint: str = ""  # of the item's inputs (:func:`fingerprint`): a cached item whose inputs changed is redone


# ----------------------------------------------------------------------------- reading labels


def read_items(src: Path, labels: Path, *, id_col: str = "clip_id", label_col: str = "label", text_col: str | None = "text",
               path_col: str | None = "path", split_col: str | None = "split", group_col: str | None = "speaker",
               limit_per_split: int | None = None, valid: float = 0.1, test: float = 0.2) -> tuple[list[Item], Counter]:
    """Rows of ``labels`` as items; the counter says how many rows were skipped and why.
    ``limit_per_split``: the first N rows of each split (the CSV's, else the split by group that
    :func:`build_dataset` gives with ``valid`` and ``test``)."""
    skipped: Counter = Counter()
    try:
        fh = open(labels, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise SystemExit(f"cannot read the labels file {labels}: {err}") from None
    with fh:
        try:
            return _read_rows(fh, src, labels, id_col, label_col, text_col, path_col, split_col, group_col, limit_per_split, skipped, valid, test)
        except UnicodeDecodeError as err:
            raise SystemExit(f"{labels}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 (e.g. \"CSV UTF-8\" in a spreadsheet)") from None


def _read_rows(fh, src, labels, id_col, label_col, text_col, path_col, split_col, group_col, limit_per_split, skipped, valid, test):
    """The rows of an open labels file (:func:`read_items`)."""
    reader = csv.DictReader(fh)
    cols = reader.fieldnames or []
    if label_col not in cols:
        raise SystemExit(f"{labels}: no column {label_col!r} (columns: {', '.join(cols)})")
    if id_col not in cols and (path_col not in cols):
        raise SystemExit(f"{labels}: needs an id column {id_col!r} or a path column {path_col!r}")
    index = _media_index(src) if path_col not in cols else None
    items, per_split = [], Counter()
    for row in reader:
        raw = (row.get(label_col) or "").strip()
        try:
            label = float(raw)
        except ValueError:
            skipped["no numeric label"] += 1
            continue
        if not np.isfinite(label):
            skipped["no numeric label"] += 1
            continue
        path = None
        if path_col in cols and row.get(path_col):
            path = src / row[path_col]
        cid = (row.get(id_col) or (Path(row[path_col]).stem if path else "")).strip()
        if not cid:
            skipped["no id"] += 1
            continue
        if path is None and index is not None:
            path = index.get(cid)
        split = (row.get(split_col) or "").strip().lower() if split_col in cols else None
        if split and split not in SPLITS:
            skipped[f"unknown split {split!r}"] += 1
            continue
        text = row.get(text_col) if text_col and text_col in cols else None
        group = (row.get(group_col) or "").strip() if group_col in cols else ""
        if limit_per_split is not None:
            # without a split column, the split the item will get (the same hash of its group)
            key = split or str(split_by_group([group or cid], valid=valid, test=test)[0])
            if per_split[key] >= limit_per_split:
                continue
            per_split[key] += 1
        items.append(Item(cid, label, path, text, split or None, group or cid))
    seen: Counter = Counter(it.id for it in items)
    dup = [k for k, n in seen.items() if n > 1]
    if dup:  # features are kept and cached by id: two clips of one id would silently share one's features
        how = (f"give each row its own {id_col!r}" if id_col in cols
               else f"the ids come from the file names (without folder and extension): add a {id_col!r} column with one id per row")
        raise SystemExit(f"{labels}: {len(dup)} id(s) appear on more than one row ({', '.join(map(repr, dup[:5]))}{', ...' if len(dup) > 5 else ''}); {how}")
    warn_scale(np.array([it.label for it in items], np.float32), labels)
    return items, skipped


def _media_index(src: Path) -> dict[str, Path]:
    index = {}
    for root, _, files in os.walk(src):
        for f in files:
            p = Path(root) / f
            if p.suffix.lower() in MEDIA_EXT:
                index.setdefault(p.stem, p)
    return index


# ----------------------------------------------------------------------------- the encoders


class Extractor:
    """Clip-level features with the live encoders."""

    def __init__(self, modalities=MODALITIES, *, fps: float = 5.0, max_frames: int = 300, transcribe: bool = True,
                 device: str | None = None, words_overlay: Path | None = None, expression: Path | None = None):
        self.modalities = tuple(modalities)
        self.fps, self.max_frames, self.transcribe = fps, max_frames, transcribe
        self.face = FaceEncoder(expression=expression)
        self.voice = VoiceEncoder()
        self.words = WordsEncoder(device=device, overlay=words_overlay)
        self.asr = Transcriber(device=device)

    def warmup(self) -> None:
        """Loads the models this extractor's modalities need now (they load on first use otherwise):
        a Ray worker does it before it takes items, so no item's time limit counts the loading."""
        if "vision" in self.modalities:
            self.face.warmup()
        if "audio" in self.modalities:
            self.voice.warmup()
        if "text" in self.modalities:
            self.words.warmup()
            if self.transcribe:
                self.asr.warmup()

    def media(self, item: Item) -> ItemFeatures:
        """Face and voice features (and a transcript when needed) of one clip. Raises MediaError
        for a broken file."""
        out = ItemFeatures(item.id)
        kind = kind_of(item.path, probe=True) if item.path else "none"
        if kind == "none" and item.text is None:
            raise MediaError(f"{item.id}: no media file found and no text column")
        if item.path is not None and not item.path.exists():
            raise MediaError(f"{item.path}: no such file")
        if kind == "unknown":
            raise MediaError(f"{item.path}: unknown media type {item.path.suffix!r}")
        out.info["kind"] = kind
        if "vision" in self.modalities:
            if kind == "image":
                res = self.face.encode(read_image(item.path))
                out.feats["vision"], out.reasons["vision"] = res.feature, res.reason
            elif kind == "video":
                found, seen, reason = [], 0, "no face in any frame"
                try:
                    for _, frame in iter_frames(item.path, fps=self.fps, max_frames=self.max_frames):
                        seen += 1
                        res = self.face.encode(frame)
                        if res.present:
                            found.append(res.feature)
                        else:
                            reason = res.reason if not found else reason
                except MediaError:
                    if seen or has_video_stream(item.path) is not False:  # a picture that does not decode (or broke midway): an error
                        raise
                    reason = "no video frames (an audio-only file)"  # e.g. an .mp4 of sound only: voice and words still count
                out.info["face_frames"] = f"{len(found)}/{seen}"
                out.feats["vision"] = np.mean(found, axis=0).astype(np.float32) if found else None
                out.reasons["vision"] = "" if found else reason
            else:
                out.feats["vision"], out.reasons["vision"] = None, "no image or video"
        audio = None
        if kind in ("audio", "video") and ("audio" in self.modalities or ("text" in self.modalities and not _has_text(item) and self.transcribe)):
            audio = read_audio(item.path, max_seconds=MAX_ITEM_SECONDS)
            if audio is not None and len(audio) >= MAX_ITEM_SECONDS * SAMPLE_RATE:
                out.info["audio_note"] = f"only the first {MAX_ITEM_SECONDS / 60:.0f} min of the audio were read"
        if "audio" in self.modalities:
            if audio is None:
                out.feats["audio"], out.reasons["audio"] = None, "no audio track" if kind == "video" else "no audio"
            else:
                res = self.voice.encode(audio)
                out.feats["audio"], out.reasons["audio"] = res.feature, res.reason
                out.info["speech_s"] = res.info.get("speech_s", 0.0)
        if "text" in self.modalities and not _has_text(item) and audio is not None and self.transcribe:
            out.transcript = self.asr.transcribe(audio)
        return out


def attach_words(batch: list[ItemFeatures], texts: list[str | None], feats, reasons) -> None:
    """The words features of a batch (from ``encode_batch(texts)``) into its items."""
    for f, x, r, txt in zip(batch, feats, reasons, texts):
        f.feats["text"] = None if r else np.array(x, dtype=np.float32)  # a copy: not a view into a shared batch array
        f.reasons["text"] = r
        f.transcript = f.transcript or (txt or "")


def _has_text(item: Item) -> bool:
    return bool(item.text and item.text.strip())


def fingerprint(item: Item) -> str:
    """What an item's features are made from: its text and its media file's path, size and
    modification time (reading every file to hash it would cost as much as a rerun)."""
    try:
        st = item.path.stat() if item.path else None
        media = f"{item.path}|{st.st_size}|{st.st_mtime_ns}" if st else ""
    except OSError:
        media = f"{item.path}|missing"
    return hashlib.sha1(f"{item.text or ''}\x00{media}".encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- cache (resume)


class PartCache:
    """Finished items in numbered ``part-*.npz`` files (written atomically): a rerun skips them."""

    def __init__(self, folder: Path, modalities: tuple[str, ...]):
        self.folder, self.modalities = folder, modalities
        folder.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, ItemFeatures] = {}
        for part in sorted(folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    a = {k: z[k] for k in z.files}  # each key of an npz decompresses its whole array: read once
                prints = a.get("fingerprint", np.full(len(a["ids"]), ""))  # parts of older versions have none: redone
                for i, cid in enumerate(a["ids"]):
                    f = ItemFeatures(str(cid), transcript=str(a["transcript"][i]), fingerprint=str(prints[i]))
                    for m in modalities:
                        # a copy: a view would keep the part's whole array alive per item (GBs for a corpus)
                        f.feats[m] = a[f"feat/{m}"][i].copy() if a[f"present/{m}"][i] else None
                        f.reasons[m] = str(a[f"reason/{m}"][i])
                    self.done[f.id] = f  # parts are read in order: an item redone later replaces its older features
            except Exception as err:  # noqa: BLE001 - a torn part is redone, not fatal
                log.warning("ignoring unreadable cache part %s (%s)", part, err)
        self.next = len(list(folder.glob("part-*.npz")))

    def write(self, batch: list[ItemFeatures]) -> None:
        if not batch:
            return
        arrays = {"ids": np.array([b.id for b in batch]), "transcript": np.array([b.transcript for b in batch]),
                  "fingerprint": np.array([b.fingerprint for b in batch])}
        for m in self.modalities:
            arrays[f"feat/{m}"] = _stack([b.feats.get(m) for b in batch], DIMS[m])
            arrays[f"present/{m}"] = np.array([b.feats.get(m) is not None for b in batch])
            arrays[f"reason/{m}"] = np.array([b.reasons.get(m, "") for b in batch])
        path = self.folder / f"part-{self.next:05d}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        self.next += 1
        for b in batch:
            self.done[b.id] = b


def cache_key(src: Path, labels: Path, modalities, fps: float, max_frames: int, label_col: str, text_col: str | None,
              words_overlay: Path | None = None, expression: Path | None = None) -> str:
    """Changes whenever the features would: inputs, settings, the text encoder's and the expression CNN's weights."""
    overlay = hashlib.sha1(Path(words_overlay).read_bytes()).hexdigest() if words_overlay else ""
    parts = [str(src.resolve()), str(labels.resolve()), ",".join(modalities), str(fps), str(max_frames), label_col, str(text_col), overlay, EXTRACTOR_VERSION]
    if expression is not None and "vision" in modalities:  # absent: the key of fer's CNN, as before
        cfg = Path(expression).with_name("expression.json")
        parts.append("expression:" + hashlib.sha1(Path(expression).read_bytes() + (cfg.read_bytes() if cfg.exists() else b"")).hexdigest())
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def pending(items: list[Item], cache: PartCache) -> tuple[dict[str, str], list[Item]]:
    """Every item's :func:`fingerprint`, and the items to extract: those not in ``cache``, or cached
    from other inputs (an edited transcript, a replaced media file)."""
    prints = {it.id: fingerprint(it) for it in items}
    return prints, [it for it in items if it.id not in cache.done or cache.done[it.id].fingerprint != prints[it.id]]


def finished(items: list[Item], cache: PartCache, prints: dict[str, str]) -> dict[str, ItemFeatures]:
    """The cached features of ``items`` made from their current inputs (an item whose changed input
    failed to read is an error of this run, not its old features)."""
    return {it.id: cache.done[it.id] for it in items if it.id in cache.done and cache.done[it.id].fingerprint == prints[it.id]}


# ----------------------------------------------------------------------------- the run


def extract(items: list[Item], extractor: Extractor, cache: PartCache, *, chunk: int = 64, progress: bool = True) -> tuple[dict[str, ItemFeatures], list[dict]]:
    """Features of every item (cached ones reused unless their text or media file changed);
    returns (features by id, errors)."""
    prints, todo = pending(items, cache)
    errors: list[dict] = []
    timing: Counter = Counter()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="extract", unit="clip", disable=not progress)
    for start in range(0, len(todo), chunk):
        batch, texts = [], []
        for it in todo[start : start + chunk]:
            t0 = time.perf_counter()
            try:
                f = extractor.media(it)
            except (MediaError, OSError, ValueError, RuntimeError) as err:
                errors.append({"id": it.id, "path": str(it.path) if it.path else None, "error": str(err)})
                bar.update(1)
                continue
            timing["media_s"] += time.perf_counter() - t0
            f.fingerprint = prints[it.id]
            batch.append(f)
            texts.append(it.text if _has_text(it) else f.transcript)
            bar.update(1)
        if "text" in extractor.modalities and batch:
            t0 = time.perf_counter()
            feats, reasons = extractor.words.encode_batch(texts)
            timing["text_s"] += time.perf_counter() - t0
            attach_words(batch, texts, feats, reasons)
        cache.write(batch)
    bar.close()
    if timing:
        log.info("extraction time: %s", ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    return finished(items, cache, prints), errors


def build_dataset(items: list[Item], feats: dict[str, ItemFeatures], modalities, meta: dict, *, valid: float = 0.1, test: float = 0.2) -> FeatureDataset:
    kept = [it for it in items if it.id in feats]
    if not kept:
        raise SystemExit("no clip could be extracted: nothing to write")
    fallback = split_by_group([it.group for it in kept], valid=valid, test=test)
    split_of = [it.split or fallback[i] for i, it in enumerate(kept)]
    splits = {}
    for s in SPLITS:
        rows = [it for it, sp in zip(kept, split_of) if sp == s]
        splits[s] = Split(
            feats={m: _stack([feats[it.id].feats.get(m) for it in rows], DIMS[m]) for m in modalities},
            present={m: np.array([feats[it.id].feats.get(m) is not None for it in rows], dtype=bool) for m in modalities},
            labels=np.array([it.label for it in rows], dtype=np.float32),
            ids=[it.id for it in rows],
            text=[(it.text if _has_text(it) else feats[it.id].transcript) or "" for it in rows],
        )
    return FeatureDataset(splits, meta)


def _stack(vectors: list[np.ndarray | None], dim: int) -> np.ndarray:
    out = np.zeros((len(vectors), dim), np.float32)
    for i, v in enumerate(vectors):
        if v is not None:
            out[i] = v
    return out


def summarize(items: list[Item], feats: dict[str, ItemFeatures], modalities, errors: list[dict]) -> dict:
    got = [feats[it.id] for it in items if it.id in feats]
    out = {"items": len(items), "extracted": len(got), "broken": len(errors), "modalities": {}}
    for m in modalities:
        present = sum(f.feats.get(m) is not None for f in got)
        reasons = Counter(f.reasons.get(m, "") for f in got if f.feats.get(m) is None)
        out["modalities"][m] = {"present": present, "share": present / len(got) if got else 0.0, "absent_because": dict(reasons.most_common(5))}
    return out


def run_extraction(src: Path, labels: Path, *, modalities=MODALITIES, id_col: str = "clip_id", label_col: str = "label",
                   text_col: str | None = "text", path_col: str | None = "path", split_col: str | None = "split",
                   group_col: str | None = "speaker", valid: float = 0.1, test: float = 0.2, fps: float = 5.0,
                   max_frames: int = 300, transcribe: bool = True, limit_per_split: int | None = None,
                   cache: Path | None = None, resume: bool = True, device: str | None = None,
                   words_overlay: Path | None = None, expression: Path | None = None, progress: bool = True, ray: str | None = None, workers: int | None = None,
                   item_timeout_s: float = 600.0, gpus_per_worker: float = 0.0) -> tuple[FeatureDataset, dict, list[dict]]:
    """Extract a corpus: returns (dataset, summary of what each encoder found, broken files).
    ``ray``: "local" (Ray on this machine) or a cluster address: the work goes to Ray actors
    (:mod:`mmdemo.distributed`), ``workers`` of them, each item at most ``item_timeout_s``."""
    modalities = tuple(modalities)
    items, skipped = read_items(src, labels, id_col=id_col, label_col=label_col, text_col=text_col, path_col=path_col,
                                split_col=split_col, group_col=group_col, limit_per_split=limit_per_split, valid=valid, test=test)
    if not items:
        raise SystemExit(f"{labels}: no usable rows ({dict(skipped)})")
    if expression is not None and "vision" in modalities:  # a damaged file would cache every face as absent
        from .expression import load_expression

        if not Path(expression).is_file():
            raise SystemExit(f"{expression}: no expression CNN weights there (expression.safetensors from python -m mmdemo.expression)")
        try:
            load_expression(expression)
        except Exception as err:
            raise SystemExit(f"{expression}: not a usable expression CNN ({err})") from None
    if words_overlay is not None:  # the folder the app reads (checkpoints/words) or its file
        given = Path(words_overlay)
        words_overlay = given / "encoder.safetensors" if given.is_dir() else given
        if not words_overlay.is_file():
            raise SystemExit(f"{given}: no fine-tuned words layers there (checkpoints/words, or its encoder.safetensors)")
        if "text" not in modalities:
            words_overlay = None  # words are not extracted: nothing reads them
    key = cache_key(src, labels, modalities, fps, max_frames, label_col, text_col, words_overlay, expression)
    folder = cache or Path(os.environ.get("MMDEMO_CACHE", Path.home() / ".cache" / "mmdemo")) / "extract" / key
    if not resume and folder.exists():
        for p in folder.glob("part-*.npz"):
            p.unlink()
    parts = PartCache(folder, modalities)
    resumed = len(items) - len(pending(items, parts)[1])
    if resumed and progress:
        print(f"resuming: {resumed} clips already extracted in {folder}")
    kwargs = {"modalities": modalities, "fps": fps, "max_frames": max_frames, "transcribe": transcribe, "device": device, "words_overlay": words_overlay,
              "expression": expression}
    t0 = time.perf_counter()
    chunk = 512 if modalities == ("text",) else 64  # text alone: big batches, sorted by length inside
    if ray:
        from .distributed import ray_extract

        feats, errors = ray_extract(items, kwargs, parts, address=None if ray == "local" else ray, workers=workers,
                                    gpus_per_worker=gpus_per_worker, item_timeout_s=item_timeout_s, chunk=chunk, progress=progress)
    else:
        feats, errors = extract(items, Extractor(**kwargs), parts, chunk=chunk, progress=progress)
    seconds = time.perf_counter() - t0
    if items and not feats:  # every item failed: say why here, as no errors.json will be written
        why = "; ".join(f"{e['id']}: {e['error']}" for e in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise SystemExit(f"no clip could be extracted: nothing to write ({why})" if errors else "no clip could be extracted: nothing to write")
    summary = summarize(items, feats, modalities, errors) | {"skipped_rows": dict(skipped), "seconds": seconds, "resumed": resumed}
    meta = {"source": str(src), "labels": str(labels), "label_column": label_col, "modalities": list(modalities),
            "fps": fps, "extractor": EXTRACTOR_VERSION, "words_overlay": str(words_overlay) if words_overlay else None,
            "expression": str(expression) if expression else None, "summary": summary}
    return build_dataset(items, feats, modalities, meta, valid=valid, test=test), summary, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.extract", description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring (python -c 'import mmdemo.extract; help(mmdemo.extract)').")
    ap.add_argument("src", type=Path, help="folder with the media (and usually labels.csv)")
    ap.add_argument("--labels", type=Path, help="labels CSV (default SRC/labels.csv)")
    ap.add_argument("--out", type=Path, required=True, help="output dataset (.npz)")
    ap.add_argument("--modalities", default=",".join(MODALITIES), help="subset of text,audio,vision")
    ap.add_argument("--id-column", default="clip_id")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--text-column", default="text", help="transcript column ('' to ignore it and transcribe)")
    ap.add_argument("--path-column", default="path")
    ap.add_argument("--split-column", default="split")
    ap.add_argument("--group-column", default="speaker", help="speaker/group id for a speaker-independent split")
    ap.add_argument("--valid", type=float, default=0.1, help="valid share when the CSV has no split")
    ap.add_argument("--test", type=float, default=0.2, help="test share when the CSV has no split")
    ap.add_argument("--fps", type=float, default=5.0, help="video frames sampled per second")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--no-transcribe", action="store_true", help="never run Whisper")
    ap.add_argument("--limit-per-split", type=int, help="only the first N rows of each split (quick runs)")
    ap.add_argument("--cache", type=Path, help="resume cache folder (default ~/.cache/mmdemo/extract/<key>)")
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing cache")
    ap.add_argument("--device", default=None, help="auto, cpu or cuda")
    ap.add_argument("--words-overlay", type=Path, help="fine-tuned text-encoder layers (checkpoints/words)")
    ap.add_argument("--expression", type=Path, help="mmdemo's expression CNN (the shipped models read with "
                    "checkpoints/unimodal/vision/expression.safetensors: pass it for features that match them); default fer's CNN")
    ap.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="distribute over Ray: alone, a fresh Ray on this machine; with an address (auto, or HEAD:6379 from a "
                         "machine of the cluster), a running cluster (pip install -r requirements-ray.txt)")
    ap.add_argument("--workers", type=int, help="Ray workers (default: one per CPU of the cluster)")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0,
                    help="with --ray on a cluster with GPUs: the GPU share each worker reserves (its encoders then run on CUDA)")
    ap.add_argument("--item-timeout", type=float, help="with --ray: seconds one file may take before it is reported and skipped (default 600)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.ray and (args.workers is not None or args.gpus_per_worker or args.item_timeout is not None):
        ap.error("--workers, --gpus-per-worker and --item-timeout go with --ray")
    if args.item_timeout is not None and args.item_timeout <= 0:
        ap.error("--item-timeout must be positive")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be at least 1")
    if not (math.isfinite(args.fps) and args.fps > 0):
        ap.error(f"--fps must be a positive number of frames a second, got {args.fps}")
    if args.max_frames < 1:
        ap.error(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.limit_per_split is not None and args.limit_per_split < 1:
        ap.error(f"--limit-per-split must be at least 1, got {args.limit_per_split}")
    for flag, share in (("--valid", args.valid), ("--test", args.test)):
        if not 0 <= share < 1:
            ap.error(f"{flag} must be a share in [0, 1), got {share}")
    if args.valid + args.test >= 1:
        ap.error(f"--valid + --test must leave rows to train on, got {args.valid} + {args.test}")
    if args.device is not None:
        try:
            resolve_device(args.device)
        except ValueError as err:
            ap.error(str(err))

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    bad = set(modalities) - set(MODALITIES)
    if bad or not modalities:
        ap.error(f"--modalities must be a subset of {','.join(MODALITIES)}")
    if not args.src.is_dir():
        ap.error(f"{args.src} is not a folder")
    problem = output_problem(args.out, folder=False)
    if problem:
        ap.error(f"--out: {problem}")
    labels = args.labels or args.src / "labels.csv"
    ds, summary, errors = run_extraction(
        args.src, labels, modalities=modalities, id_col=args.id_column, label_col=args.label_column,
        text_col=args.text_column or None, path_col=args.path_column, split_col=args.split_column,
        group_col=args.group_column, valid=args.valid, test=args.test, fps=args.fps, max_frames=args.max_frames,
        transcribe=not args.no_transcribe, limit_per_split=args.limit_per_split, cache=args.cache,
        resume=not args.no_resume, device=args.device, words_overlay=args.words_overlay, expression=args.expression,
        progress=not args.quiet, ray=args.ray, workers=args.workers, item_timeout_s=args.item_timeout or 600.0, gpus_per_worker=args.gpus_per_worker)
    if summary["resumed"] and args.quiet:
        print(f"resuming: {summary['resumed']} clips already extracted")
    ds.save(args.out)
    errors_path = args.out.with_name(args.out.stem + ".errors.json")
    if errors:
        errors_path.write_text(json.dumps(errors, indent=2) + "\n")
    elif errors_path.exists():
        errors_path.unlink()
    print(f"\nwrote {args.out}: {ds.describe()} in {summary['seconds']:.1f} s")
    for m, s in summary["modalities"].items():
        why = "; ".join(f"{r or 'unknown'}: {n}" for r, n in s["absent_because"].items())
        print(f"  {m:6s} present in {s['present']}/{summary['extracted']} ({100 * s['share']:.1f}%)" + (f"  absent: {why}" if why else ""))
    if summary["skipped_rows"]:
        print(f"  skipped rows: {summary['skipped_rows']}")
    if errors:
        print(f"  {len(errors)} broken files skipped, listed in {errors_path}; first: {errors[0]['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
