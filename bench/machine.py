"""What machine a benchmark ran on (its results files record it), and which devices it may time."""

from __future__ import annotations

from mmdemo.device import cpu_model

__all__ = ["cpu_model", "devices"]


def devices(text: str | None) -> list[str]:
    """``--devices`` of a speed bench: a comma-separated list such as ``cpu,cuda`` or ``cuda:1``
    (None: the CPU, and CUDA when present). Raises ValueError with a message for a device torch does
    not know or CUDA where there is none."""
    import torch

    if not text:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for name in (t.strip().lower() for t in text.split(",")):
        if not name:
            continue
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{name}: no CUDA device here")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        out.append(name)
    if not out:
        raise ValueError("no device named")
    return out
