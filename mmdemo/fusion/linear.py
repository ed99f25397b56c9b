"""A linear head: the standardised features of every modality (sequences averaged over their real
steps), dropout, one linear layer, bounded to the sentiment scale.

Not a fusion method (it is registered with :func:`register_head`, so the UI and the fusion
benchmarks never list it): it is the unimodal reading that generalises best where a corpus differs
from the ones learned from. Across voice corpora (other languages, microphones, acted emotions) a
linear map of per-speaker z-scored eGeMAPS features keeps the order negative < neutral < positive
on held-out corpora where an MLP overfits the training corpora (``python -m mmdemo.benchmark``,
voice table). An absent modality contributes nothing (its standardised features are zeros); the
head learns a bias per modality for that case.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Dropout, Features, Fusion, FusionConfig, FusionOutput, Steps, pooled, register_head


@register_head("linear")
class LinearHead(Fusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        self.drop = Dropout(cfg.dropout)
        self.linear = nn.Linear(sum(self.dims.values()), 1)
        self.missing = nn.Parameter(torch.zeros(len(dims)))  # the reading's shift when a modality is absent

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        parts = [pooled(x[m], steps[m]) * mask[:, i, None] for i, m in enumerate(self.modalities)]
        raw = self.linear(self.drop(torch.cat(parts, dim=-1))).squeeze(-1) + ((~mask).float() * self.missing).sum(dim=-1)
        return FusionOutput(self.bound(raw), None)
