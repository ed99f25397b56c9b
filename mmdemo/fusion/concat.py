"""Early (joint) fusion: concatenate the modality embeddings, then an MLP.

The simplest fusion baseline of the multimodal literature (e.g. the "early fusion" baselines of
Zadeh et al., CMU-MOSI 2016; Baltrusaitis et al., "Multimodal Machine Learning: A Survey", 2019).
An absent modality is replaced by a learned "missing" embedding. The method has no weights of its
own: its contributions are the Shapley values computed from masked evaluations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, UnimodalEncoder, mlp, register


@register("concat")
class ConcatFusion(Fusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        h = cfg.hidden
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=h, dropout=cfg.dropout) for m, d in dims.items()})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(h)) for m in dims})
        self.head = mlp(h * len(dims), h, 1, cfg.dropout)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        parts = [
            torch.where(mask[:, i, None], self.encoders[m](x[m], steps[m]), self.missing[m])  # (B, H)
            for i, m in enumerate(self.modalities)
        ]
        raw = self.head(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
        return FusionOutput(self.bound(raw), None)
