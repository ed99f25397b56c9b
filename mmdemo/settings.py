"""Range checks of the settings dataclasses (pipeline, training, fusion): a value that would break or
silently disable what reads it is refused when the settings are made, with its name, so that a
command line, ``app.py --set`` or library code each get the same clear error before any work starts."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable

POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
SHARE = (lambda v: 0 <= v < 1, "in [0, 1)")
PROBABILITY = (lambda v: 0 < v < 1, "in (0, 1)")
COUNT = (lambda v: v >= 1 and v == int(v), "a whole number >= 1")

Rule = tuple[tuple[str, ...], tuple[Callable[[float], bool], str]]


def check_ranges(settings, rules: Iterable[Rule], extra: Iterable[str] = ()) -> None:
    """Raise one ValueError naming every field of ``settings`` that breaks its rule (a finite real
    number for which ``ok`` holds); ``extra``: further problems found by the caller."""
    bad = []
    for names, (ok, what) in rules:
        for name in names:
            v = getattr(settings, name)
            try:
                good = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and ok(v)
            except TypeError:
                good = False
            if not good:
                bad.append(f"{name}={v!r} (must be {what})")
    bad += list(extra)
    if bad:
        raise ValueError(f"{type(settings).__name__} out of range: " + "; ".join(bad))


def output_problem(path, *, folder: bool) -> str | None:
    """Why a command could not write its output at ``path`` (a ``folder``, or a file), or None: checked
    before the command's work starts, so that a typo does not cost an hour of extraction or training."""
    import os
    from pathlib import Path

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if not folder and path.is_dir():
        return f"{path} is a folder; give a file name, e.g. {path / 'features.npz'}"
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists: the rest will be made in it
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {path} cannot be made"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to write in {parent}"
    return None


def as_flags(message: str, rename: dict[str, str] | None = None) -> str:
    """A settings error (``field_name=value``) in the words of a command line: ``--field-name=value``
    (``rename``: fields whose flag is named otherwise, e.g. {"epochs": "finetune-epochs"})."""
    rename = rename or {}
    return re.sub(r"\b([a-z]+(?:_[a-z]+)*)=", lambda m: "--" + rename.get(m.group(1), m.group(1).replace("_", "-")) + "=", message)
