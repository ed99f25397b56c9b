"""Late fusion and the learned weighted combination of modality sub-networks.

``late``: one sub-network (encoder + head) per modality, each a complete unimodal predictor trained
on the label; the fused prediction is the plain average of the present modalities' predictions
(decision-level fusion; Baltrusaitis et al. 2019). Its weights are uniform over present modalities.

``weighted``: the same sub-networks, combined with one learned logit theta_m per sub-network:
w = softmax(theta) over the present modalities, prediction = sum_m w_m * y_m. Because every
sub-network is also trained on its own to predict the label (so the y_m share one scale), theta is
at once the fusion weight and the modality's global, learned contribution: the interpretability
claim of weighted sub-network fusion (SEEDS-style "learned weight per modality sub-network").

Each sub-network's own loss is computed on its modality's real input, also when modality dropout
hid that modality from the fused prediction of the same step (a head must never learn to predict
the label from a blanked input).
``global_weights()`` returns softmax(theta) over all modalities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, UnimodalEncoder, masked_softmax, mlp, register


class SubnetworkFusion(Fusion):
    """Shared body: one predictor per modality, mixed by ``logits()`` over present modalities."""

    has_weights = True

    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        h = cfg.hidden
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=h, dropout=cfg.dropout) for m, d in dims.items()})
        self.heads = nn.ModuleDict({m: mlp(h, h, 1, cfg.dropout) for m in dims})
        self.empty = nn.Parameter(torch.zeros(()))  # prediction when no modality is present

    def logits(self) -> Tensor:  # (M,)
        raise NotImplementedError

    def unimodal(self, x: Features, steps: Steps) -> Tensor:
        """Every sub-network's own (unbounded) prediction, (B, M)."""
        return torch.stack([self.heads[m](self.encoders[m](x[m], steps[m])).squeeze(-1) for m in self.modalities], dim=1)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        return self.mix(self.unimodal(x, steps), mask, real=mask)

    def mix(self, ys: Tensor, mask: Tensor, *, real: Tensor) -> FusionOutput:
        """The fused prediction from the sub-networks' predictions ``ys`` (B, M) of the modalities in
        ``mask`` (B, M): an absent modality's prediction gets weight 0, whatever it is. ``real``
        (B, M) marks the predictions that read a real input (for :meth:`prepared_loss`)."""
        w = masked_softmax(self.logits().expand_as(ys), mask)  # (B, M)
        none = ~mask.any(dim=1)
        raw = (w * ys).sum(dim=1) + none * self.empty  # (B,)
        return FusionOutput(self.bound(raw), w, {"unimodal": self.bound(ys), "real": real})

    def step_loss(self, x: Features, available: Tensor, shown: Tensor, target: Tensor, steps: Steps) -> Tensor:
        # One pass of the sub-networks over every real input serves both terms: the fused
        # prediction mixes the shown modalities only (a hidden one gets weight 0, so reading its
        # real input there changes nothing), and each sub-network's own loss reads its real input.
        out = self.mix(self.unimodal(x, steps), shown, real=available)
        return self.prepared_loss(out, target, x=x, available=available, steps=steps)

    def prepared_loss(self, out: FusionOutput, target: Tensor, *, x: Features, available: Tensor, steps: Steps) -> Tensor:
        fused = self.prediction_loss(out.prediction, target)
        # the sub-networks learn from the real input of every modality the data has, including the
        # ones modality dropout hid from this step's fused prediction: one more pass of the
        # sub-networks when the fused pass did not read them all (a plain forward that modality
        # dropout hid some from); :meth:`step_loss` reads them all in its one pass.
        real = out.extras.get("real")
        if real is not None and not (available & ~real).any():
            uni_pred = out.extras["unimodal"]
        else:
            uni_pred = self.bound(self.unimodal(x, steps))
        err = self.prediction_loss(uni_pred, target[:, None].expand_as(uni_pred), reduction="none") * available  # (B, M)
        uni = err.sum() / available.sum().clamp_min(1)
        return fused + self.cfg.unimodal_weight * uni


@register("late")
class LateFusion(SubnetworkFusion):
    def logits(self) -> Tensor:
        return self.empty.new_zeros(len(self.modalities))


@register("weighted")
class WeightedFusion(SubnetworkFusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        self.theta = nn.Parameter(torch.zeros(len(dims)))  # one learned logit per sub-network

    def logits(self) -> Tensor:
        return self.theta

    def param_groups(self, *, lr: float, weight_decay: float) -> list[dict]:
        # theta is read as the modalities' contributions: no weight decay pulling it to uniform,
        # and a larger step so it settles within the epochs the sub-networks need.
        rest = [p for n, p in self.named_parameters() if n != "theta"]
        return [
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": [self.theta], "lr": lr * 10, "weight_decay": 0.0},
        ]

    def global_weights(self) -> dict[str, float]:
        w = torch.softmax(self.theta.detach(), dim=0)
        return {m: float(w[i]) for i, m in enumerate(self.modalities)}
