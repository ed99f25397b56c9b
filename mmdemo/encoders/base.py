"""The encoder interface: raw input in, a feature vector (or a clear "absent" with the reason) out.

Every pretrained model comes from an installed package or from the repository's ``assets/models``
(never a download): :func:`package_file` finds a file inside a distribution without importing it,
:func:`mmdemo.assets.model_file` a shipped file, checked against its sha256. Heavy models are loaded once, lazily and
thread-safely (:class:`Lazy`), and shared read-only by every session.
"""

from __future__ import annotations

import importlib.metadata as md
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class EncoderResult:
    modality: str
    feature: np.ndarray | None  # (D,) float32 when present
    reason: str = ""  # why the modality is absent ("" when present)
    info: dict[str, Any] = field(default_factory=dict)  # extras: face box, expression, speech share, notes...

    @property
    def present(self) -> bool:
        return self.feature is not None

    @classmethod
    def absent(cls, modality: str, reason: str, **info) -> EncoderResult:
        return cls(modality, None, reason, info)


class Encoder:
    """Base class: ``encode(raw) -> EncoderResult`` with a fixed ``modality`` and ``dim``."""

    modality: ClassVar[str]
    dim: ClassVar[int]

    def encode(self, raw) -> EncoderResult:  # pragma: no cover - interface
        raise NotImplementedError

    def warmup(self) -> None:
        """Load the models now (they load lazily on first use otherwise)."""


class MissingModelError(RuntimeError):
    pass


def package_file(dist: str, relpath: str, install_hint: str) -> Path:
    """A file shipped inside an installed distribution, found without importing the package."""
    try:
        path = Path(str(md.distribution(dist).locate_file(relpath)))
    except md.PackageNotFoundError:
        raise MissingModelError(f"the package {dist!r} is not installed; {install_hint}") from None
    if not path.exists():
        raise MissingModelError(f"{relpath} is missing from the installed {dist!r}; {install_hint}")
    return path


class Lazy(Generic[T]):
    """A value built on first use, once, even with several threads asking at the same time."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None
