"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

import torch

DIMS = {"text": 20, "audio": 7, "vision": 5}


def make_batch(dims=DIMS, batch=6, seq=4, seed=0, kinds=None):
    """Random features: sequences for every modality unless ``kinds`` says 'vec' for some."""
    g = torch.Generator().manual_seed(seed)
    kinds = kinds or {}
    feats = {}
    for m, d in dims.items():
        shape = (batch, d) if kinds.get(m) == "vec" else (batch, seq, d)
        feats[m] = torch.randn(*shape, generator=g)
    return feats


def presence_patterns(modalities, batch):
    """Rows cycling through every subset of modalities (incl. none and all)."""
    n = len(modalities)
    rows = [[(s >> j) & 1 for j in range(n)] for s in range(2**n)]
    mask = torch.tensor([rows[i % len(rows)] for i in range(batch)], dtype=torch.bool)
    return {m: mask[:, j] for j, m in enumerate(modalities)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_module(name: str):
    """The script ``bench/<name>.py`` imported as a module (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
