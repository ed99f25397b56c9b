"""Analyse a recorded clip with the live pipeline: a timeline of sentiment and contributions.

The clip's frames (sampled at ``fps``) and its audio track (in ``hop``-second chunks) are fed to a
fresh :class:`~mmdemo.pipeline.Session` in time order, exactly as the live app would receive them,
with utterances transcribed as soon as they close. Returns one row per update; ``to_csv`` and
``to_json`` write them.
"""

from __future__ import annotations

import csv
import json
import numbers
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE
from .media import MediaError, duration_s, has_video_stream, iter_frames, kind_of, read_audio
from .metrics import jsonable
from .pipeline import Engine, Update

MAX_SECONDS = 600.0


@dataclass
class ClipResult:
    updates: list[Update]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    said: list[str] = field(default_factory=list)  # per update: the words of the utterances transcribed at it ("" mostly)
    transcript: str = ""  # every utterance of the clip, in order

    def rows(self) -> list[dict]:
        said = self.said or [""] * len(self.updates)
        return [u.row() | {"said": s} for u, s in zip(self.updates, said)]

    def to_csv(self, path: str | Path) -> Path:
        rows = self.rows()
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["t"])
            w.writeheader()
            w.writerows(rows)
        return path

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(jsonable({"notes": self.notes, "seconds": self.seconds, "transcript": self.transcript, "updates": self.rows()}), indent=1))
        return path


def analyse_clip(engine: Engine, path: str | Path, *, fusion: str | None = None, fps: float = 5.0, hop: float = 0.5,
                 max_seconds: float = MAX_SECONDS, progress: Callable[[float], None] | None = None) -> ClipResult:
    """Run a video (or audio) file through a fresh session. Raises MediaError for unusable files."""
    path = Path(path)
    for name, value in (("fps", fps), ("hop", hop), ("max_seconds", max_seconds)):
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of {'frames a second' if name == 'fps' else 'seconds'}, got {value!r}")
    kind = kind_of(path, probe=True)
    if kind not in ("video", "audio"):
        raise MediaError(f"{path.name}: not a video or audio file")
    session = engine.session(fusion, blocking_asr=True)
    session.said = []  # the whole transcript, not the live display's last few thousand characters
    notes: list[str] = []
    length = duration_s(path)  # for the progress bar and the note on a clip longer than max_seconds
    audio = read_audio(path, max_seconds=max_seconds)
    if audio is None or audio.size == 0:
        notes.append("the clip has no audio track: voice and speech are absent")
        audio = np.zeros(0, np.float32)
    elif len(audio) < engine.config.voice_window_s * SAMPLE_RATE:
        notes.append(f"the audio is {len(audio) / SAMPLE_RATE:.1f} s long, shorter than the {engine.config.voice_window_s:.1f} s "
                     "window the voice model reads: no voice reading (speech is still transcribed)")
    max_frames = max(1, int(max_seconds * fps))
    frames = iter_frames(path, fps=fps, max_frames=max_frames) if kind == "video" else (f for f in ())
    with closing(frames):  # the video reader is released on every exit, errors included
        return _run(session, frames, audio, kind, path, hop, max_seconds, progress, notes, length, max_frames)


def _run(session, frames, audio, kind, path, hop, max_seconds, progress, notes, length=None, max_frames=None) -> ClipResult:
    duration = max(len(audio) / SAMPLE_RATE, 0.0)
    total = min(length, max_seconds) if length else None  # what the progress bar counts to (else what is read so far)
    # longer than the limit: by the container's length where ffprobe tells it, else by what the readers stopped at
    capped = length > max_seconds + 0.05 if length else len(audio) >= int(max_seconds * SAMPLE_RATE)
    n_frames = 0
    try:
        next_frame = next(frames, None)
    except MediaError:
        if not len(audio) or has_video_stream(path) is not False:  # a picture that does not decode is an error, not "no face"
            raise
        next_frame, frames = None, iter(())  # an audio-only file named like a video (.mp4 of sound only)
        notes.append("the file has no readable video frames: the face is absent (its sound is analysed)")
    if kind == "video" and next_frame is None and not len(audio):
        raise MediaError(f"{path.name}: no video frames could be decoded")
    updates: list[Update] = []
    said: list[str] = []
    n_hop = max(1, int(hop * SAMPLE_RATE))
    pos = 0

    seen = 0  # utterances of session.said already given to a row

    def record(up: Update) -> None:
        nonlocal seen
        new, seen = session.said[seen:], len(session.said)
        updates.append(up)
        said.append(" ".join(text for _, text in new))

    while next_frame is not None or pos < len(audio):
        if next_frame is not None and next_frame[0] > max_seconds:  # frames past the limit (a slow slideshow reaches it late)
            capped, next_frame = True, None
            continue
        # a chunk is stamped when all of it has arrived, as live: at its end; the frames up to then come first
        chunk_end = min(pos + n_hop, len(audio)) / SAMPLE_RATE
        take_frame = next_frame is not None and (pos >= len(audio) or next_frame[0] <= chunk_end)
        if take_frame:
            t, frame = next_frame
            record(session.push_frame(frame, t=t))
            n_frames += 1
            next_frame = next(frames, None)
            duration = max(duration, t)
        else:
            record(session.push_audio(audio[pos : pos + n_hop], SAMPLE_RATE, t=chunk_end))
            pos += n_hop
        if progress and (total or duration):
            progress(min(1.0, updates[-1].t / max(total or duration, 1e-6)))
    if len(audio):  # at the clip's end: a face seen to the end is still present, the last utterance is transcribed
        record(session.flush(t=duration))
    if progress:
        progress(1.0)
    if not length and max_frames and n_frames >= max_frames:  # the frame reader stopped at its limit
        capped = True
    if capped:
        notes.append(f"only the first {max_seconds:g} s were analysed")
    return ClipResult(updates, notes, duration, said, " ".join(text for _, text in session.said))
