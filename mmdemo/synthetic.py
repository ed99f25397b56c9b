"""Synthetic multimodal sentiment data with a known ground truth.

Each sample has a sentiment y in [-3, 3]. Every modality's features are

    x_m[t] = s_m * g(y) A_m  +  z B_m  +  noise_t

with g(y) a few fixed non-linear codes of y (so a linear read-out is not enough), A_m a random
mixing, z a per-sample nuisance (constant over time, so averaging over time does not remove it) and
per-step noise. The signal strength s_m fixes how informative each modality is; by default text is
strong, audio weak and vision pure noise (s = 0), so a fusion method that explains itself must
rank text > audio > vision. ``python -m mmdemo.synthetic --out data.npz`` writes a dataset file.
"""

from __future__ import annotations

import argparse
import logging
import numbers
from dataclasses import dataclass, field

import numpy as np

from .data import SPLITS, FeatureDataset, Split
from .settings import NON_NEGATIVE, SHARE, as_flags, check_ranges, output_problem

MOSI_SIZES = (1284, 229, 686)
MOSI_DIMS = {"text": 300, "audio": 74, "vision": 35}


@dataclass(frozen=True)
class SyntheticSpec:
    sizes: tuple[int, int, int] = MOSI_SIZES  # train, valid, test
    seq_len: int = 50  # 0 gives pooled vectors (N, D)
    dims: dict[str, int] = field(default_factory=lambda: dict(MOSI_DIMS))
    signal: dict[str, float] = field(default_factory=lambda: {"text": 2.5, "audio": 0.6, "vision": 0.0})
    nuisance: float = 1.0  # per-sample noise (not averaged away over time)
    step_noise: float = 1.0  # per-time-step noise
    missing: float = 0.0  # share of (sample, modality) pairs marked absent
    seed: int = 0

    def __post_init__(self):
        extra = [] if len(self.sizes) == 3 and all(isinstance(n, numbers.Integral) and n >= 1 for n in self.sizes) else \
            [f"sizes={tuple(self.sizes)!r} (must be three whole numbers >= 1: train, valid, test)"]
        whole = isinstance(self.seq_len, numbers.Integral) and not isinstance(self.seq_len, bool)
        extra += [] if whole else [f"seq_len={self.seq_len!r} (must be a whole number)"]
        check_ranges(self, [(("seq_len", "nuisance", "step_noise"), NON_NEGATIVE), (("missing",), SHARE)], extra)


def _codes(y: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 4) fixed non-linear codes of the sentiment."""
    return np.stack([y / 1.5, np.tanh(y), np.abs(y) - 1.0, np.sin(1.3 * y)], axis=1)


def make_synthetic(spec: SyntheticSpec | None = None) -> FeatureDataset:
    spec = spec or SyntheticSpec()
    if set(spec.signal) - set(spec.dims):
        raise ValueError("signal names a modality that has no dims")
    rng = np.random.default_rng(spec.seed)
    mix = {m: rng.normal(size=(4, d)) / np.sqrt(d) for m, d in spec.dims.items()}
    splits = {}
    for name, n in zip(SPLITS, spec.sizes):
        y = np.clip(rng.normal(0.0, 1.4, size=n), -3, 3).astype(np.float32)
        codes = _codes(y)
        feats, present = {}, {}
        for m, d in spec.dims.items():
            base = spec.signal.get(m, 0.0) * codes @ mix[m] + spec.nuisance * rng.normal(size=(n, d))  # (N, D)
            if spec.seq_len:
                x = base[:, None, :] + spec.step_noise * rng.normal(size=(n, spec.seq_len, d))
            else:
                x = base + spec.step_noise * rng.normal(size=(n, d)) / np.sqrt(50)  # as if pooled over 50 steps
            feats[m] = x.astype(np.float32)
            present[m] = rng.random(n) >= spec.missing
        splits[name] = Split(feats=feats, present=present, labels=y, ids=[f"{name}_{i:05d}" for i in range(n)])
    meta = {
        "source": "synthetic",
        "signal": dict(spec.signal),
        "seq_len": spec.seq_len,
        "seed": spec.seed,
        "truth_order": sorted(spec.signal, key=lambda m: -spec.signal[m]),
    }
    return FeatureDataset(splits, meta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmdemo.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--seq-len", type=int, default=50, help="time steps per sample; 0 for pooled vectors")
    ap.add_argument("--sizes", type=int, nargs=3, default=MOSI_SIZES, metavar=("TRAIN", "VALID", "TEST"))
    ap.add_argument("--missing", type=float, default=0.0, help="share of absent (sample, modality) pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = SyntheticSpec(sizes=tuple(args.sizes), seq_len=args.seq_len, missing=args.missing, seed=args.seed)
    except ValueError as err:  # the settings' field names, as the flags that set them
        ap.error(as_flags(str(err)))
    problem = output_problem(args.out, folder=False)
    if problem:
        ap.error(f"--out: {problem}")
    ds = make_synthetic(spec)
    path = ds.save(args.out)
    print(f"wrote {path}: {ds.describe()}")


if __name__ == "__main__":
    main()
