"""Checkpoints: safetensors weights + a JSON config, rebuilt through the registry and loaded strictly.

A checkpoint folder holds ``model.safetensors`` (the state dict, nothing executable), ``config.json``
(fusion name, modality dims, FusionConfig) and optionally ``metrics.json`` / ``provenance.json``.
Never pickled modules, no absolute paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .fusion import Fusion, FusionConfig, create_fusion

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "mmdemo-fusion/1"


def save_fusion(model: Fusion, folder: str | Path, *, extra: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT, "fusion": model.name})
    config = {"format": FORMAT, "fusion": model.name, "dims": model.dims, "config": asdict(model.cfg)}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name, payload in (extra or {}).items():
        (folder / name).write_text(json.dumps(payload, indent=2) + "\n")
    return folder


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {CONFIG}; is this a checkpoint folder?")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_fusion(folder: str | Path, *, device: str | torch.device = "cpu") -> Fusion:
    """Rebuild the model from its config and load the weights with ``strict=True``."""
    folder = Path(folder)
    config = read_config(folder)
    unknown = set(config["config"]) - {f.name for f in fields(FusionConfig)}
    if unknown:
        raise ValueError(f"{folder}: config has fields this version does not know: {sorted(unknown)}")
    try:
        cfg = FusionConfig(**config["config"])
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from None
    model = create_fusion(config["fusion"], dims=config["dims"], cfg=cfg)
    state = load_file(str(folder / WEIGHTS))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
