"""Per-modality contributions for every fusion method: exact Shapley values plus native weights.

The game: the players are the modalities, the value of a coalition S is the model's prediction
with only the modalities in S (and actually present) given, every other one masked as absent.
Every method accepts any subset (modality dropout trains it to), so all 2^M coalitions are real
evaluations of the same model, run as ONE batched forward pass of B * 2^M rows.

phi_m = sum over S not containing m of |S|! (M - |S| - 1)! / M! * (f(S + m) - f(S)).
They are signed, in sentiment units, and sum to f(all present) - f(none) (efficiency). A modality
that is absent is a dummy player: phi = 0 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from .fusion.base import Features, Fusion, Presence, Steps


@dataclass
class Explanation:
    modalities: tuple[str, ...]
    prediction: Tensor  # (B,) f(present modalities)
    baseline: Tensor  # (B,) f(no modality): what the model says knowing nothing
    shapley: Tensor  # (B, M) signed contributions; rows sum to prediction - baseline
    weights: Tensor | None  # (B, M) the method's own weights (None if it has none)
    present: Tensor  # (B, M) bool

    def row(self, i: int = 0) -> dict:
        """One sample as plain Python (for JSON, plots and the UI)."""
        return {
            "prediction": float(self.prediction[i]),
            "baseline": float(self.baseline[i]),
            "shapley": {m: float(self.shapley[i, j]) for j, m in enumerate(self.modalities)},
            "weights": None
            if self.weights is None
            else {m: float(self.weights[i, j]) for j, m in enumerate(self.modalities)},
            "present": {m: bool(self.present[i, j]) for j, m in enumerate(self.modalities)},
        }


@lru_cache(maxsize=8)
def _shapley_plan(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For n players: coalition masks (2^n, n) and, per player, the (without, with) coalition
    indices and their Shapley weights, each (n, 2^(n-1))."""
    masks = torch.tensor([[(s >> j) & 1 for j in range(n)] for s in range(2**n)], dtype=torch.bool)
    without, with_, weight = [], [], []
    for j in range(n):
        idx = [s for s in range(2**n) if not (s >> j) & 1]
        without.append(idx)
        with_.append([s | (1 << j) for s in idx])
        weight.append(
            [math.factorial(bin(s).count("1")) * math.factorial(n - bin(s).count("1") - 1) / math.factorial(n) for s in idx]
        )
    return masks, torch.tensor(without), torch.tensor(with_), torch.tensor(weight, dtype=torch.float64)


def explain(model: Fusion, feats: Features, present: Presence | None = None, steps: Steps | None = None) -> Explanation:
    """Exact Shapley values over the model's modalities for a batch (one forward pass), on the
    model's device whatever device the inputs are on."""
    was_training = model.training
    if was_training:  # toggling walks every submodule: only when needed (live models are in eval)
        model.eval()
    try:
        with torch.inference_mode():
            x, mask, st = model.complete_inputs(feats, present, steps)
            batch, n = mask.shape
            masks, without, with_, weight = _shapley_plan(n)
            masks = masks.to(mask.device)
            k = masks.shape[0]
            # (K*B, ...) rows: coalition-major, so row s*B + b is coalition s of sample b
            rep = {m: t.repeat(k, *([1] * (t.dim() - 1))) for m, t in x.items()}
            rep_steps = {m: s.repeat(k, 1) for m, s in st.items() if s is not None}
            pres = mask.unsqueeze(0) & masks.unsqueeze(1)  # (K, B, M)
            pres_flat = pres.reshape(k * batch, n)
            out = model(rep, {m: pres_flat[:, j] for j, m in enumerate(model.modalities)}, rep_steps)
            f = out.prediction.view(k, batch).double()  # (K, B)
            dev = f.device
            delta = f[with_.to(dev)] - f[without.to(dev)]  # (M, K/2, B)
            phi = (weight.to(dev).unsqueeze(-1) * delta).sum(dim=1).T  # (B, M)
            phi = torch.where(mask, phi, torch.zeros_like(phi))
            weights = None
            if out.weights is not None:
                weights = out.weights.view(k, batch, n)[-1].float()  # full coalition = as given
            return Explanation(
                modalities=model.modalities,
                prediction=f[-1].float(),
                baseline=f[0].float(),
                shapley=phi.float(),
                weights=weights,
                present=mask,
            )
    finally:
        if was_training:
            model.train()
