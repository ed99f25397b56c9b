"""Tensor Fusion Network (TFN): the outer product of the modality embeddings, each with a 1 appended.

Zadeh et al., "Tensor Fusion Network for Multimodal Sentiment Analysis", EMNLP 2017. With
z_m = [h_m; 1], the flattened z_1 (x) z_2 (x) ... (x) z_M holds every unimodal, bimodal and trimodal
interaction term; an MLP maps it to the prediction. An absent modality has h_m = 0, so only the
terms without it survive (its "1" keeps the others). Size: (tensor_dim + 1)^M features. No weights
of its own: contributions are the Shapley values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, UnimodalEncoder, mlp, register


@register("tensor")
class TensorFusion(Fusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        k = cfg.tensor_dim
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=k, dropout=cfg.dropout) for m, d in dims.items()})
        self.head = mlp(math.prod([k + 1] * len(dims)), cfg.hidden, 1, cfg.dropout)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        z = None
        for i, m in enumerate(self.modalities):
            h = self.encoders[m](x[m], steps[m]) * mask[:, i, None]  # (B, k), zero when absent
            zm = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)  # (B, k+1)
            z = zm if z is None else (z.unsqueeze(-1) * zm.unsqueeze(1)).flatten(1)  # (B, prod (k+1))
        return FusionOutput(self.bound(self.head(z).squeeze(-1)), None)
