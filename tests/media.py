"""Real test media made at test time: espeak-ng speech, the public-domain astronaut photo
(scikit-image), videos built from it with ffmpeg."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SENTENCE = "I really love this movie, the acting was wonderful and the story was great."


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (see the README's apt-get line)")
    return path


def espeak(path: Path, text: str = SENTENCE, rate: int = 22050) -> Path:
    need("espeak-ng")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def speech_16k(tmp: Path, text: str = SENTENCE) -> np.ndarray:
    from mmdemo.audio import resample

    x, sr = sf.read(str(espeak(tmp / "speech.wav", text)), dtype="float32")
    return resample(x, sr)


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def video(path: Path, *, audio: Path | None = None, seconds: float = 3.0, size: int = 320) -> Path:
    need("ffmpeg")
    import cv2

    png = path.with_suffix(".png")
    cv2.imwrite(str(png), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    cmd = ["ffmpeg", "-v", "error", "-y", "-loop", "1", "-i", str(png)]
    if audio is not None:
        cmd += ["-i", str(audio)]
    cmd += ["-t", str(seconds), "-vf", f"scale={size}:{size}", "-pix_fmt", "yuv420p", "-c:v", "libx264"]
    if audio is not None:
        cmd += ["-c:a", "aac", "-shortest"]
    subprocess.run(cmd + [str(path)], check=True, capture_output=True)
    return path


def wer(ref: str, hyp: str) -> float:
    """Word error rate (lower-cased, punctuation stripped)."""
    norm = lambda s: "".join(c for c in s.lower() if c.isalnum() or c.isspace()).split()  # noqa: E731
    r, h = norm(ref), norm(hyp)
    d = np.arange(len(h) + 1)
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(1, len(r))
