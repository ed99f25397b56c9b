"""Cross-modal attention (MulT-style): each modality's sequence attends to the other modalities.

Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences", ACL 2019. For
each target modality, queries come from its own (projected) sequence and keys/values from the
concatenated sequences of the other present modalities, plus one learned "null" token that is
always present (so a target with no partner attends to it instead of producing NaN). Absent
modalities and padding steps are masked out of the keys, and padding is left out of the pooling. Each target's output is pooled over time, and the targets
are combined by a learned, input-dependent gate: those gate weights are this method's own
per-modality weights. Vectors work as sequences of length 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Features, Fusion, FusionConfig, FusionOutput, Steps, masked_softmax, mlp, pooled, register, stack_modalities


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: x <- x + MHA(LN(x), LN(ctx)); x <- x + FFN(LN(x))."""

    def __init__(self, *, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = mlp(dim, 2 * dim, dim, dropout)

    def forward(self, x: Tensor, ctx: Tensor, ctx_pad: Tensor) -> Tensor:
        # x (B, Tq, d); ctx (B, Tk, d); ctx_pad (B, Tk) True = ignore
        kv = self.norm_kv(ctx)
        x = x + self.attn(self.norm_q(x), kv, kv, key_padding_mask=ctx_pad, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


@register("cross_attention")
class CrossAttentionFusion(Fusion):
    has_weights = True

    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__(dims=dims, cfg=cfg)
        d = cfg.hidden
        if d % cfg.heads:
            raise ValueError(f"hidden ({d}) must be divisible by heads ({cfg.heads})")
        self.proj = nn.ModuleDict({m: nn.Linear(k, d) for m, k in dims.items()})
        self.kind = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in dims})  # modality type embedding
        self.null = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleDict(
            {m: nn.ModuleList(CrossBlock(dim=d, heads=cfg.heads, dropout=cfg.dropout) for _ in range(cfg.layers)) for m in dims}
        )
        self.out_norm = nn.LayerNorm(d)
        self.gate = nn.Linear(d, 1, bias=False)  # a bias would cancel in the softmax
        self.head = mlp(d, d, 1, cfg.dropout)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:
        seqs, valid = {}, {}
        for i, m in enumerate(self.modalities):
            t = x[m] if x[m].dim() == 3 else x[m].unsqueeze(1)
            seqs[m] = self.proj[m](t) + self.kind[m]  # (B, T_m, d)
            s = steps[m] if steps[m] is not None else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            valid[m] = s & mask[:, i, None]  # (B, T_m): real steps of a present modality
        batch = mask.shape[0]
        null = self.null.expand(batch, -1, -1)  # (B, 1, d)
        out = {}
        for i, m in enumerate(self.modalities):
            others = [j for j, n in enumerate(self.modalities) if n != m]
            ctx = torch.cat([null] + [seqs[self.modalities[j]] for j in others], dim=1)  # (B, 1 + sum T, d)
            pad = torch.cat(
                [mask.new_zeros(batch, 1)]
                + [~valid[self.modalities[j]] for j in others],
                dim=1,
            )  # (B, 1 + sum T)
            h = seqs[m]
            for block in self.blocks[m]:
                h = block(h, ctx, pad)
            out[m] = self.out_norm(pooled(h, steps[m]))  # (B, d), real steps only
        hs = stack_modalities(out, self.modalities)  # (B, M, d)
        w = masked_softmax(self.gate(hs).squeeze(-1), mask)  # (B, M)
        fused = (w.unsqueeze(-1) * hs).sum(dim=1)
        return FusionOutput(self.bound(self.head(fused).squeeze(-1)), w)
