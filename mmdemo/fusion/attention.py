"""Attention fusion: input-dependent modality weights a = softmax(w^T tanh(W h_m)), h' = sum_m a_m h_m.

Attention over modality embeddings (as in the modality-attention layers of e.g. Gu et al.,
"Multimodal Affective Analysis Using Hierarchical Attention Strategy", ACL 2018). Unlike
TorchMultimodal's AttentionFusionModule, the weights are returned: they are this method's own
per-sample contributions, beside the Shapley values.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, UnimodalEncoder, masked_softmax, mlp, register, stack_modalities


@register("attention")
class AttentionFusion(Fusion):
    has_weights = True

    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        h = cfg.hidden
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=h, dropout=cfg.dropout) for m, d in dims.items()})
        self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1, bias=False))
        self.head = mlp(h, h, 1, cfg.dropout)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        hs = stack_modalities({m: self.encoders[m](x[m], steps[m]) for m in self.modalities}, self.modalities)  # (B, M, H)
        a = masked_softmax(self.score(hs).squeeze(-1), mask)  # (B, M)
        fused = (a.unsqueeze(-1) * hs).sum(dim=1)  # (B, H)
        return FusionOutput(self.bound(self.head(fused).squeeze(-1)), a)
