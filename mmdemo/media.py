"""Reading media files: images and video frames with OpenCV, audio with soundfile (ffmpeg when the
container needs it, e.g. the audio track of a video or an mp3). Errors are :class:`MediaError`
with a message fit for the user."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # broken files are reported by us, not by libav on stderr

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from .audio import SAMPLE_RATE, AudioError, check_rate, resample, to_mono_float

VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".y4m", ".ogv", ".3gp", ".3g2",
             ".ts", ".mts", ".m2ts", ".vob", ".mxf"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".wma", ".amr", ".caf", ".oga", ".weba"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class MediaError(ValueError):
    pass


def kind_of(path: str | Path, *, probe: bool = False) -> str:
    """"video", "audio", "image" or "unknown", by the file's extension; with ``probe``, a file of
    another extension (or none) is asked what streams it holds (ffprobe)."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXT:
        return "video"
    if ext in AUDIO_EXT:
        return "audio"
    if ext in IMAGE_EXT:
        return "image"
    if probe and Path(path).is_file():
        kinds = _stream_kinds(path) or set()
        return "video" if "video" in kinds else "audio" if "audio" in kinds else "unknown"
    return "unknown"


def _stream_kinds(path: str | Path) -> set[str] | None:
    """The kinds of stream (video, audio, ...) a container holds, a cover picture not counted as
    video; None when ffprobe cannot tell (not installed, or it fails on the file)."""
    if shutil.which("ffprobe") is None:
        return None
    try:
        proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type:stream_disposition=attached_pic",
                               "-of", "csv=p=0", str(path)], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    lines = [ln.split(",") for ln in proc.stdout.decode("utf-8", "replace").split()]
    return {p[0] for p in lines if p and p[-1] != "1"}  # a cover picture (attached_pic) is not a video


def check_file(path: str | Path) -> Path:
    """``path`` as a Path when it is a non-empty file; otherwise a MediaError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path.name}: no such file")
    if not path.is_file():
        raise MediaError(f"{path.name}: not a file (a folder?)")
    if path.stat().st_size == 0:
        raise MediaError(f"{path.name}: the file is empty (0 bytes): an upload or a recording that did not finish?")
    return path


def has_video_stream(path: str | Path) -> bool | None:
    """Does the container hold a video stream (ffprobe; a cover picture is none)? None when that
    cannot be told (no ffprobe, or it fails): an audio-only file is then not assumed."""
    kinds = _stream_kinds(path)
    return None if kinds is None else "video" in kinds


def duration_s(path: str | Path) -> float | None:
    """The container's duration in seconds (ffprobe); None when it cannot be told."""
    if shutil.which("ffprobe") is None:
        return None
    try:
        proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                              capture_output=True, timeout=60)
        d = float(proc.stdout.strip() or "nan") if proc.returncode == 0 else float("nan")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return d if np.isfinite(d) and d > 0 else None


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8."""
    data = np.fromfile(str(check_file(path)), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise MediaError(f"{Path(path).name}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _ffmpeg_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray | None:
    """Mono float32 at 16 kHz through ffmpeg; None when the file has no audio stream."""
    if shutil.which("ffmpeg") is None:
        raise MediaError(f"{Path(path).name}: decoding this file needs ffmpeg (apt-get install ffmpeg)")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    if max_seconds:
        cmd += ["-t", str(max_seconds)]
    cmd += ["-f", "f32le", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{Path(path).name}: ffmpeg took over 10 minutes to decode the audio; the file may be damaged") from None
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        if "does not contain any stream" in err or "Output file #0 does not contain" in err or "matches no streams" in err:
            return None
        last = (err.splitlines()[-1] if err else f"exit status {proc.returncode}").replace(str(path), Path(path).name)
        if any(k in err for k in ("Invalid data found", "moov atom not found", "Truncating packet", "End of file")):
            raise MediaError(f"{Path(path).name}: the file is damaged or incomplete (an upload or a recording that did not finish?): {last}")
        raise MediaError(f"{Path(path).name}: ffmpeg could not decode the audio ({last})")
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    if audio.size == 0:
        return None
    return to_mono_float(audio.copy())


def read_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray | None:
    """Mono float32 at 16 kHz from an audio file or a video's audio track; None when there is no
    audio stream."""
    path = check_file(path)
    if kind_of(path) != "video":
        try:
            info = sf.info(str(path))
            try:
                check_rate(info.samplerate)  # a header that says 1 Hz would stretch 40 samples over 40 s
            except AudioError as err:
                raise MediaError(f"{path.name}: {err}") from None
            frames = int(max_seconds * info.samplerate) if max_seconds else -1
            data, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
            return resample(to_mono_float(data), sr)
        except (sf.LibsndfileError, RuntimeError, TypeError):
            pass  # a container soundfile does not read (mp3 on old libsndfile, m4a, ...): try ffmpeg
    return _ffmpeg_audio(path, max_seconds)


def iter_frames(path: str | Path, *, fps: float = 5.0, max_frames: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(time in s, RGB frame) sampled at about ``fps`` (0: every frame). A frame's time is its own
    timestamp in the file, so variable-frame-rate videos (phones, browser recordings) keep their
    timing; where the container gives none, the frame's index over the nominal frame rate. Raises
    MediaError if nothing decodes (and, being a generator, ValueError for a bad ``fps`` or
    ``max_frames``) at the first frame asked for."""
    if fps is not None and not (np.isfinite(fps) and fps >= 0):
        raise ValueError(f"fps must be >= 0 (0: every frame), got {fps!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames!r}")
    cap = cv2.VideoCapture(str(check_file(path)))
    if not cap.isOpened():
        raise MediaError(f"{Path(path).name}: not a readable video")
    try:
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        src_fps = src_fps if src_fps and src_fps > 0 and np.isfinite(src_fps) else 25.0
        period = 1.0 / fps if fps else 0.0
        slack = min(0.5 / src_fps, 0.5 * period)  # a frame half a nominal frame early still counts as on time
        index = emitted = 0
        t_prev, due = -1.0, 0.0
        while max_frames is None or emitted < max_frames:
            ok = cap.grab()
            if not ok:
                break
            pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            # the frame's timestamp, unless the backend has none (0 or not increasing after the first frame)
            t = pts if np.isfinite(pts) and pts >= 0 and (index == 0 or pts > t_prev) else (index / src_fps if index == 0 else t_prev + 1.0 / src_fps)
            t_prev = t
            if t + slack + 1e-9 >= due:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    emitted += 1
                    while period and due <= t + slack + 1e-9:  # the next slot of a fixed grid: the rate stays fps on average
                        due += period
                    yield t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if emitted == 0:
            raise MediaError(f"{Path(path).name}: no video frames could be decoded")
    finally:
        cap.release()
