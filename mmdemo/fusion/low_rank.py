"""Low-rank Multimodal Fusion (LMF): TFN's weight tensor factorised into modality-specific factors.

Liu et al., "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018.
With z_m = [h_m; 1], output = sum_r lambda_r * prod_m (z_m W_m^(r)) + b, never forming the outer
product. Every factor W_m (R, k+1, H), the rank weights lambda and the bias are registered
parameters (a ParameterDict), so they train and are saved: MultiBench keeps them in a Python list
and MMSA leaves them out of every optimizer group. No weights of its own: contributions are Shapley.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, UnimodalEncoder, mlp, register


@register("low_rank")
class LowRankFusion(Fusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        h, r = cfg.hidden, cfg.rank
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=h, dropout=cfg.dropout) for m, d in dims.items()})
        self.factors = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_normal_(torch.empty(r, h + 1, h))) for m in dims})
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, r)).squeeze(0))  # (R,)
        self.bias = nn.Parameter(torch.zeros(h))
        self.head = mlp(h, h, 1, cfg.dropout)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        prod = None
        for i, m in enumerate(self.modalities):
            hm = self.encoders[m](x[m], steps[m]) * mask[:, i, None]  # (B, H)
            zm = torch.cat([hm, hm.new_ones(hm.shape[0], 1)], dim=-1)  # (B, H+1)
            fm = torch.einsum("bk,rkh->rbh", zm, self.factors[m])  # (R, B, H)
            prod = fm if prod is None else prod * fm
        fused = torch.einsum("r,rbh->bh", self.rank_weights, prod) + self.bias  # (B, H)
        return FusionOutput(self.bound(self.head(fused).squeeze(-1)), None)
