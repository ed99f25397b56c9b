"""What machine a benchmark ran on (its results files record it)."""

from __future__ import annotations

from mmdemo.device import cpu_model

__all__ = ["cpu_model"]
