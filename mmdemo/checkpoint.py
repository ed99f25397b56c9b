"""Checkpoints: safetensors weights + a JSON config, rebuilt through the registry and loaded strictly.

A checkpoint folder holds ``model.safetensors`` (the state dict, nothing executable), ``config.json``
(fusion name, modality dims, FusionConfig) and optionally ``metrics.json`` / ``provenance.json``.
Never pickled modules, no absolute paths. A folder is replaced whole (:func:`replacing_folder`):
an interrupted save leaves the earlier model, never its weights beside another's config. A :class:`MeanOfModels` (several models of one method and
configuration, read as their mean) saves the same way, with ``"members": K`` in its config and each
member's weights under ``members.<k>.``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .fusion import Fusion, FusionConfig, FusionOutput, create_fusion

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "mmdemo-fusion/1"


class MeanOfModels(nn.Module):
    """Models of one method, modalities and configuration that differ only in their training seed,
    read as one: the mean of their predictions (and of their own modality weights). The face stage
    of ``python -m mmdemo.benchmark`` lets the validation people choose between one head and such a
    mean (README, "Face"). It reads like a :class:`Fusion`: same call, ``modalities``, ``dims``,
    ``cfg``, ``name``, ``device`` and :meth:`complete_inputs`, so
    :func:`mmdemo.contributions.explain` explains it like any model. Members are plain fusion models
    (a mean of means could not be loaded back) with their modalities in one order (a member's weight
    columns and inputs follow it)."""

    def __init__(self, members: list[Fusion]):
        super().__init__()
        if not members:
            raise ValueError("a mean of models needs at least one model")
        for m in members:
            if isinstance(m, MeanOfModels) or not isinstance(m, Fusion):
                raise TypeError(f"a mean of models takes fusion models, not {type(m).__name__}")
        first = members[0]
        for m in members[1:]:
            if (type(m), m.name, m.modalities, m.dims, m.cfg) != (type(first), first.name, first.modalities, first.dims, first.cfg):
                raise ValueError(f"a mean of models needs one method, modalities (in one order) and configuration; got {first.name} "
                                 f"{first.modalities} {first.dims} and {m.name} {m.modalities} {m.dims} (or another configuration)")
        self.members = nn.ModuleList(members)
        self.name, self.dims, self.modalities, self.cfg, self.has_weights = first.name, first.dims, first.modalities, first.cfg, first.has_weights

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def complete_inputs(self, feats, present=None, steps=None):
        """As :meth:`Fusion.complete_inputs` (every member reads the same inputs)."""
        return self.members[0].complete_inputs(feats, present, steps)

    def forward(self, feats, present=None, steps=None) -> FusionOutput:
        outs = [m(feats, present, steps) for m in self.members]
        weights = None if outs[0].weights is None else torch.stack([o.weights for o in outs]).mean(dim=0)
        return FusionOutput(torch.stack([o.prediction for o in outs]).mean(dim=0), weights)


@contextmanager
def replacing_folder(folder: str | Path):
    """Writes ``folder`` as a whole: yields a private staging folder beside it (a dot-folder; a copy
    of ``folder`` when it exists), which takes ``folder``'s place when the block ends
    without an error: the earlier folder is set aside by one rename, the new one put in by another,
    then the earlier one deleted. A reader finds the earlier folder or the new one, each whole (or,
    between the two renames, none), never a mix of both. On an error, Ctrl-C included, the staging
    folder goes and ``folder`` is as it was."""
    folder = Path(folder)
    if folder.is_symlink():  # the folder it names is the one replaced (the link stays)
        folder = folder.resolve()
    problem = replace_problem(folder)
    if problem:
        raise OSError(f"{folder}: {problem}")
    token = secrets.token_hex(4)
    stage, old = folder.with_name(f".{folder.name}.new-{token}"), folder.with_name(f".{folder.name}.old-{token}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        if folder.is_dir():
            # links copied as links; plain copies of the files (not their modes: a read-only file is
            # written over in the copy); staging folders an earlier save left behind are not copied
            shutil.copytree(folder, stage, symlinks=True, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns(".*.new-*", ".*.old-*"))
        else:
            stage.mkdir()
        yield stage
        if folder.exists():
            os.replace(folder, old)
        os.replace(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old.exists() and not folder.exists():  # the earlier folder back where it was (if that fails too, it stays
            os.replace(old, folder)              # aside as a dot-folder, never deleted here)
        raise
    shutil.rmtree(old, ignore_errors=True)  # only once the new folder is in place


def replace_problem(folder: str | Path) -> str | None:
    """Why :func:`replacing_folder` could not replace ``folder`` (None when it can): checked before
    long work whose results it would write, so that they are not lost at the end."""
    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        return "exists and is not a folder"
    if folder.is_dir() and os.path.ismount(folder):
        return "is a mount point: it cannot be replaced by a rename (give a folder inside it)"
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its parent folder {parent} is not writable (the new folder is written beside it, then renamed)"
    return None


OWN_FILES = ("metrics.json", "provenance.json")  # an earlier model's, which a save that does not write them removes


def save_fusion(model: Fusion | MeanOfModels, folder: str | Path, *, extra: dict | None = None) -> Path:
    """Weights, config and ``extra`` JSON files (name -> payload) in ``folder``, replaced whole
    (:func:`replacing_folder`): other files there stay (the face head's folder also holds the
    expression CNN); an earlier model's metrics or provenance that this save does not write go."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"format": FORMAT, "fusion": model.name, "dims": model.dims, "config": asdict(model.cfg)}
    if isinstance(model, MeanOfModels):
        config["members"] = len(model.members)
    texts = {CONFIG: json.dumps(config, indent=2) + "\n"} | {name: json.dumps(payload, indent=2) + "\n" for name, payload in (extra or {}).items()}
    with replacing_folder(folder) as stage:
        save_file(state, str(stage / WEIGHTS), metadata={"format": FORMAT, "fusion": model.name})
        for name in OWN_FILES:
            (stage / name).unlink(missing_ok=True)
        for name, text in texts.items():
            (stage / name).write_text(text)
    return folder


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {CONFIG}; is this a checkpoint folder?")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def load_fusion(folder: str | Path, *, device: str | torch.device = "cpu") -> Fusion | MeanOfModels:
    """Rebuild the model from its config and load the weights with ``strict=True`` (a
    :class:`MeanOfModels` where the config names its ``members``)."""
    folder = Path(folder)
    config = read_config(folder)
    unknown = set(config["config"]) - {f.name for f in fields(FusionConfig)}
    if unknown:
        raise ValueError(f"{folder}: config has fields this version does not know: {sorted(unknown)}")
    try:
        cfg = FusionConfig(**config["config"])
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from None
    members = config.get("members")
    if members is None:
        model = create_fusion(config["fusion"], dims=config["dims"], cfg=cfg)
    elif isinstance(members, int) and not isinstance(members, bool) and members >= 1:
        model = MeanOfModels([create_fusion(config["fusion"], dims=config["dims"], cfg=cfg) for _ in range(members)])
    else:
        raise ValueError(f"{folder}: config's members must be a positive whole number, got {members!r}")
    state = load_file(str(folder / WEIGHTS))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
