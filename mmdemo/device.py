"""Pick the torch device: CUDA when present, CPU otherwise; ``MMDEMO_DEVICE`` or an argument forces one."""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


def resolve_device(preference: str | None = None) -> torch.device:
    """``preference`` in {None, "auto", "cpu", "cuda", "cuda:N"}; None reads ``MMDEMO_DEVICE``."""
    pref = (preference or os.environ.get("MMDEMO_DEVICE") or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        log.warning("CUDA was requested but is not available; using the CPU")
        return torch.device("cpu")
    try:
        return torch.device(pref)
    except RuntimeError as err:
        raise ValueError(f"unknown device {pref!r}{'' if preference else ' (from MMDEMO_DEVICE)'}: use auto, cpu or cuda") from err


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says: results
    files record it, as speeds differ 2-3x between machines of one kind."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()
