import itertools
import math

import pytest
import torch

from mmdemo.contributions import explain
from mmdemo.fusion import list_fusions

from tests.helpers import make_batch, presence_patterns


def brute_force_shapley(model, feats, present, i):
    """Shapley values of row i from the definition, one model call per coalition."""
    mods = model.modalities
    n = len(mods)
    row = {m: x[i : i + 1] for m, x in feats.items()}

    def value(coalition):
        with torch.no_grad():
            return float(model(row, {m: torch.tensor([m in coalition and bool(present[m][i])]) for m in mods}).prediction)

    phi = {}
    for m in mods:
        others = [o for o in mods if o != m]
        total = 0.0
        for k in range(n):
            for s in itertools.combinations(others, k):
                w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                total += w * (value(set(s) | {m}) - value(set(s)))
        phi[m] = total
    return phi


@pytest.mark.parametrize("name", list_fusions())
def test_shapley_is_exact_efficient_and_zero_for_absent(build, name):
    model = build(name).eval()
    feats = make_batch(batch=8)
    pres = presence_patterns(model.modalities, 8)
    e = explain(model, feats, pres)
    assert e.shapley.shape == (8, 3)
    # efficiency: contributions add up to f(present) - f(none)
    assert torch.allclose(e.shapley.sum(dim=1), e.prediction - e.baseline, atol=1e-5)
    # dummy players: absent modalities contribute exactly nothing
    mask = torch.stack([pres[m] for m in model.modalities], dim=1)
    assert (e.shapley[~mask] == 0).all()
    # prediction equals the plain forward pass
    assert torch.allclose(e.prediction, model(feats, pres).prediction, atol=1e-5)
    # and matches the definition computed one coalition at a time
    for i in (3, 7):
        ref = brute_force_shapley(model, feats, pres, i)
        for j, m in enumerate(model.modalities):
            assert e.shapley[i, j].item() == pytest.approx(ref[m], abs=1e-5)


def test_explain_restores_training_mode(build):
    model = build("concat").train()
    explain(model, make_batch(batch=2))
    assert model.training


def test_row_is_plain_python(build):
    model = build("attention")
    row = explain(model, make_batch(batch=2)).row(1)
    assert set(row["shapley"]) == set(model.modalities)
    assert abs(sum(row["weights"].values()) - 1) < 1e-5
    assert all(isinstance(v, float) for v in row["shapley"].values())
