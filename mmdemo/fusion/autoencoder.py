"""Multimodal autoencoder: one shared latent from the present modalities, a decoder per modality.

In the spirit of Ngiam et al., "Multimodal Deep Learning", ICML 2011, with a mean-of-experts
latent so any subset of modalities can be encoded: z = mean over present m of enc_m(x_m). Each
decoder reconstructs its modality's (time-pooled, standardised) features from z; the prediction is
read from z. Training reconstructs every modality the data has, including those hidden by modality
dropout, so the latent learns to impute them: ``impute()`` returns decoded features for absent
modalities in the encoders' raw scale. No weights of its own: contributions are Shapley values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Presence, Steps, UnimodalEncoder, mlp, pooled, register


@register("autoencoder")
class AutoencoderFusion(Fusion):
    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        h = cfg.hidden
        self.encoders = nn.ModuleDict({m: UnimodalEncoder(d_in=d, hidden=h, dropout=cfg.dropout) for m, d in dims.items()})
        self.decoders = nn.ModuleDict({m: mlp(h, 2 * h, d, cfg.dropout) for m, d in dims.items()})
        self.head = mlp(h, h, 1, cfg.dropout)

    def latent(self, x: Features, mask: Tensor, steps: Steps) -> Tensor:
        hs = torch.stack([self.encoders[m](x[m], steps[m]) for m in self.modalities], dim=1)  # (B, M, H)
        w = mask.float().unsqueeze(-1)
        return (hs * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, H); zeros when nothing present

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        z = self.latent(x, mask, steps)
        extras = {m: self.decoders[m](z) for m in self.modalities}  # (B, D_m) reconstructions
        return FusionOutput(self.bound(self.head(z).squeeze(-1)), None, extras)

    def prepared_loss(self, out: FusionOutput, target: Tensor, *, x: Features, available: Tensor, steps: Steps) -> Tensor:
        # Targets come from the full features, so modalities hidden by modality dropout are
        # reconstructed too: that is what teaches the latent to impute. Padding steps are not data.
        recon = out.prediction.new_zeros(())
        for i, m in enumerate(self.modalities):
            err = F.mse_loss(out.extras[m], pooled(x[m], steps[m]), reduction="none").mean(dim=-1)  # (B,)
            recon = recon + (err * available[:, i]).sum() / available[:, i].sum().clamp_min(1)
        return self.prediction_loss(out.prediction, target) + self.cfg.recon_weight * recon / len(self.modalities)

    @torch.no_grad()
    def impute(self, feats: Features, present: Presence | None = None, steps: Steps | None = None) -> dict[str, Tensor]:
        """Decoded (time-pooled) features of every modality, in raw encoder units, from the present ones."""
        x, mask, st = self.prepare(feats, present, steps)
        z = self.latent(x, mask, st)
        return {m: self.norm.inverse(m, self.decoders[m](z)) for m in self.modalities}
