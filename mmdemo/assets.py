"""Files the project ships in ``assets/``: model files (checked against their sha256) and the UI's
static JavaScript and CSS."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODELS = ASSETS / "models"

_checked: dict[Path, str] = {}
_lock = threading.Lock()


class AssetError(RuntimeError):
    """A shipped file is missing or is not the file the manifest names."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict:
    path = MODELS / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise AssetError(f"{path}: unreadable model manifest ({err}); restore assets/ from the repository") from None


def model_file(name: str) -> Path:
    """The path of a shipped model file, verified once per process against the manifest's sha256."""
    entry = manifest().get(name)
    if entry is None:
        raise AssetError(f"{name} is not listed in {MODELS / 'manifest.json'}")
    path = MODELS / name
    with _lock:
        if _checked.get(path) == entry["sha256"]:
            return path
        if not path.is_file():
            raise AssetError(f"{path} is missing; restore assets/ from the repository (git checkout -- assets)")
        digest = sha256(path)
        if digest != entry["sha256"]:
            raise AssetError(f"{path} is damaged or replaced: sha256 {digest[:12]}..., expected {entry['sha256'][:12]}...")
        _checked[path] = digest
    return path


def text(name: str) -> str:
    """A static text asset of the UI (JavaScript, CSS)."""
    return (ASSETS / name).read_text(encoding="utf-8")
