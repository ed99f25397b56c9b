"""The one contract every fusion method implements, the registry, and the blocks they share.

A fusion method receives features keyed by modality name, each a vector ``(B, D)`` or a sequence
``(B, T, D)``, a presence mask per modality ``(B,)`` and, for sequences, optionally a step mask
``(B, T)`` (True = a real time step, False = padding: what the ``audio_lengths`` / ``vision_lengths``
of the MMSA releases describe). Padding never counts as data: it is left out of the normalisation
statistics, of every pooling over time and of the attention keys, and a sequence with no real step
is absent. Inputs may live on any device: they are moved to the model's. It returns the sentiment prediction on the
CMU-MOSI scale (-3..+3) and, where the method has them, its own per-modality weights ``(B, M)``.
Rows of ``weights`` sum to 1 over the present modalities; absent modalities get 0, and a row with
no modality present is all zeros. Modalities are always named, never positional: ``model.modalities``
fixes the column order of ``weights``.

Adding a method: one file with a ``@register("name")`` subclass of :class:`Fusion` and one import
line in ``mmdemo/fusion/__init__.py``. The CLI, the UI dropdown and the tests read the registry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..settings import COUNT, NON_NEGATIVE, POSITIVE, SHARE, check_ranges

Features = dict[str, Tensor]
Presence = dict[str, Tensor]
Steps = dict[str, Tensor | None]  # modality -> (B, T) bool step mask of a sequence; None: a vector, or every step real


LOSSES = ("l1", "huber")  # FusionConfig.loss


@dataclass(frozen=True)
class FusionConfig:
    """Hyper-parameters shared by the fusion methods (each method reads the fields it needs)."""

    hidden: int = 32  # width of each modality's embedding and of the heads
    dropout: float = 0.1
    heads: int = 2  # attention heads (cross_attention)
    layers: int = 1  # cross-modal blocks (cross_attention)
    rank: int = 4  # factor rank (low_rank)
    tensor_dim: int = 12  # per-modality width before the outer product (tensor): (d+1)^M features
    recon_weight: float = 0.5  # weight of the reconstruction loss (autoencoder)
    unimodal_weight: float = 0.5  # weight of each sub-network's own loss (late, weighted)
    out_range: float = 3.0  # predictions are squashed smoothly into (-out_range, out_range)
    # the prediction's loss: "l1" (mean absolute error, the literature's MAE: the prediction tends
    # to the conditional median, which on labels of a few values, such as a face's -1 / 0 / +1,
    # snaps to one of them) or "huber" (squared within 1 of the target, absolute beyond: near the
    # conditional mean, a graded reading that moves smoothly between the labels)
    loss: str = "l1"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check_ranges(self, [(("hidden", "heads", "layers", "rank", "tensor_dim"), COUNT), (("dropout",), SHARE),
                            (("recon_weight", "unimodal_weight"), NON_NEGATIVE), (("out_range",), POSITIVE)])


@dataclass
class FusionOutput:
    prediction: Tensor  # (B,) sentiment on the -3..+3 scale
    weights: Tensor | None  # (B, M) the method's own modality weights, or None if it has none
    extras: dict[str, Tensor] = field(default_factory=dict)  # what the method's loss needs


FUSIONS: dict[str, type[Fusion]] = {}
# Single-modality heads that are not fusion methods (the UI, the CLI's method list and the fusion
# tests never see them) but load and train like one: a unimodal reading ships as a checkpoint the
# same way.
HEADS: dict[str, type[Fusion]] = {}


def _registrar(name: str, table: dict[str, type[Fusion]]):
    def wrap(cls: type[Fusion]) -> type[Fusion]:
        if name in FUSIONS or name in HEADS:
            raise ValueError(f"{name!r} is registered twice")
        cls.name = name
        table[name] = cls
        return cls

    return wrap


def register(name: str):
    """Class decorator: put a :class:`Fusion` subclass in the registry under ``name``."""
    return _registrar(name, FUSIONS)


def register_head(name: str):
    """Class decorator: put a :class:`Fusion` subclass among the unimodal heads under ``name``."""
    return _registrar(name, HEADS)


def list_fusions() -> list[str]:
    return list(FUSIONS)


def create_fusion(name: str, *, dims: dict[str, int], cfg: FusionConfig | None = None) -> Fusion:
    """Build a registered method (or unimodal head). Unknown names raise a ``KeyError`` that lists the choices."""
    cls = FUSIONS.get(name) or HEADS.get(name)
    if cls is None:
        raise KeyError(f"unknown fusion {name!r}; choose one of: {', '.join(FUSIONS)} (unimodal heads: {', '.join(HEADS)})")
    return cls(dims=dims, cfg=cfg or FusionConfig())


# ----------------------------------------------------------------------------- small helpers


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``mask``-ed entries; rows with nothing unmasked give all zeros (never NaN,
    not even in the gradient)."""
    any_on = mask.any(dim=dim, keepdim=True)
    safe = torch.where(mask, logits, torch.full_like(logits, -1e9))
    safe = torch.where(any_on, safe, torch.zeros_like(logits))
    return torch.softmax(safe, dim=dim) * mask * any_on


@functools.cache
def _rand_draws_bernoulli() -> bool:
    """Does this build draw ``bernoulli_(q)`` on the CPU as ``rand(float64) < q``, number for number?

    ATen's default CPU kernel does (one 53-bit uniform per element, in memory order); builds with MKL
    use MKL's own stream on Intel processors instead. Checked once per process on a private
    generator (the global one is not touched), at two sizes, including what each leaves of the
    generator's stream."""
    for n in (7, 4099):
        a, b = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
        want = torch.empty(n, device="cpu").bernoulli_(0.7, generator=a)
        got = (torch.rand(n, dtype=torch.float64, device="cpu", generator=b) < 0.7).float()
        if not torch.equal(want, got) or not torch.equal(torch.rand(3, device="cpu", generator=a), torch.rand(3, device="cpu", generator=b)):
            return False
    return True


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the same masks, drawn faster on the CPU (``bench/dropout_masks.py``:
    about 2x for a 128 x 128 input on one core).

    On the CPU, ``F.dropout`` draws its mask with ``bernoulli_``, whose default kernel takes one
    uniform number per element serially, slower than ``torch.rand`` draws the same numbers.
    Where that kernel is the one this build uses (``_rand_draws_bernoulli``), the same uniforms are
    drawn with ``torch.rand`` and compared to the keep probability: the mask, the scaling, the
    gradient and the random stream left behind are those of ``F.dropout``, to the bit, so training
    gives the same models. Anywhere else (CUDA, MKL's Intel kernel, a non-contiguous or in-place
    input) it is ``nn.Dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        if (self.training and 0.0 < self.p < 1.0 and not self.inplace and x.device.type == "cpu"
                and x.is_floating_point() and x.is_contiguous() and _rand_draws_bernoulli()):
            keep = 1.0 - self.p
            noise = (torch.rand(x.shape, dtype=torch.float64, device=x.device) < keep).to(x.dtype)
            return x * noise.div_(keep)  # F.dropout's own arithmetic: input * (mask / keep)
        return super().forward(x)


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), Dropout(dropout), nn.Linear(d_hidden, d_out))


def pooled(x: Tensor, steps: Tensor | None = None) -> Tensor:
    """A sequence (B, T, D) averaged over its real steps (``steps`` (B, T) bool, all when None); a
    vector (B, D) unchanged. A row without any real step gives zeros."""
    if x.dim() != 3:
        return x
    if steps is None:
        return x.mean(dim=1)
    w = steps.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class UnimodalEncoder(nn.Module):
    """Per-modality sub-network: per-step projection, then attention pooling over time for sequences.

    ``(B, D) -> (B, H)`` or ``(B, T, D) -> (B, H)``; ``sequence()`` keeps the time axis.
    """

    def __init__(self, *, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, hidden))
        self.score = nn.Linear(hidden, 1, bias=False)  # attention pooling over time (a bias would cancel in the softmax)
        self.norm = nn.LayerNorm(hidden)

    def sequence(self, x: Tensor) -> Tensor:
        h = self.proj(x if x.dim() == 3 else x.unsqueeze(1))  # (B, T, H)
        return self.norm(h)

    def forward(self, x: Tensor, steps: Tensor | None = None) -> Tensor:
        h = self.proj(x)
        if h.dim() == 3:  # (B, T, H) -> (B, H), padding steps get no weight
            logits = self.score(h).squeeze(-1)  # (B, T)
            a = torch.softmax(logits, dim=1) if steps is None else masked_softmax(logits, steps, dim=1)
            h = (a.unsqueeze(-1) * h).sum(dim=1)
        return self.norm(h)


class FeatureNorm(nn.Module):
    """Per-modality standardisation stored as buffers, so a checkpoint carries it and live raw
    features can be fed as they come from the encoders."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        for m, d in dims.items():
            self.register_buffer(f"mean_{m}", torch.zeros(d))
            self.register_buffer(f"std_{m}", torch.ones(d))

    def set(self, m: str, mean: Tensor, std: Tensor) -> None:
        getattr(self, f"mean_{m}").copy_(mean)
        getattr(self, f"std_{m}").copy_(std.clamp_min(1e-6))

    def forward(self, m: str, x: Tensor) -> Tensor:
        return (x - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")

    def inverse(self, m: str, x: Tensor) -> Tensor:
        return x * getattr(self, f"std_{m}") + getattr(self, f"mean_{m}")


# ----------------------------------------------------------------------------- the base class


class Fusion(nn.Module):
    """Base class: checks and normalises the inputs, then calls the method's :meth:`fuse`.

    Subclasses implement ``fuse(x, mask)`` where ``x`` holds standardised features with absent
    entries zeroed and ``mask`` is ``(B, M)`` bool in ``self.modalities`` order; they may override
    :meth:`prepared_loss` to add their own terms (reconstruction, per-sub-network losses) and
    :meth:`step_loss` to compute a training step's loss in fewer passes. Both read features already
    through :meth:`prepare`: the training loop prepares a split once, not at every step.
    """

    name: ClassVar[str] = ""
    has_weights: ClassVar[bool] = False  # does the method produce its own modality weights?

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the training loop calls step_loss on prepared features: an override of these would be
        # skipped in training without a word
        for name, instead in (("loss", "prepared_loss"), ("training_loss", "step_loss")):
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__} overrides Fusion.{name}, which training does not call: override {instead} instead")

    def __init__(self, *, dims: dict[str, int], cfg: FusionConfig):
        super().__init__()
        if not dims:
            raise ValueError("a fusion needs at least one modality")
        for m, d in dims.items():
            if not m.isidentifier():
                raise ValueError(f"modality names must be identifiers, got {m!r}")
            if int(d) < 1:
                raise ValueError(f"modality {m!r} needs a positive feature size, got {d}")
        self.modalities: tuple[str, ...] = tuple(dims)
        self.dims = {m: int(d) for m, d in dims.items()}
        self.cfg = cfg
        self.norm = FeatureNorm(self.dims)

    # -- public API -------------------------------------------------------------------------
    def forward(self, feats: Features, present: Presence | None = None, steps: Steps | None = None) -> FusionOutput:
        x, mask, st = self.prepare(feats, present, steps)
        return self.fuse(x, mask, st)

    def fuse(self, x: Features, mask: Tensor, steps: Steps) -> FusionOutput:  # pragma: no cover - abstract
        """``x``: standardised features, absent rows and padding steps zeroed; ``mask`` (B, M) bool;
        ``steps``: per modality the (B, T) step mask of a padded sequence, None when every step is
        real (or for a vector)."""
        raise NotImplementedError

    def loss(self, out: FusionOutput, target: Tensor, *, feats: Features, available: Tensor, steps: Steps | None = None) -> Tensor:
        """Training loss of ``out = self(feats, present, steps)``. ``available`` (B, M) marks the
        modalities the data really has (before modality dropout); methods use it and the full
        ``feats`` to train sub-networks or reconstructions on their real inputs."""
        x, avail, st = self.prepare(feats, {m: available[:, i] for i, m in enumerate(self.modalities)}, steps)
        return self.prepared_loss(out, target, x=x, available=avail, steps=st)

    def prepared_loss(self, out: FusionOutput, target: Tensor, *, x: Features, available: Tensor, steps: Steps) -> Tensor:
        """:meth:`loss` with the full features through :meth:`prepare` (``x``, ``available`` and
        ``steps`` as it returns them for the modalities the data has). Default: the prediction's loss."""
        return self.prediction_loss(out.prediction, target)

    def prediction_loss(self, pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The loss of predictions against targets that ``cfg.loss`` names."""
        if self.cfg.loss == "huber":
            return F.smooth_l1_loss(pred, target, beta=1.0, reduction=reduction)
        return F.l1_loss(pred, target, reduction=reduction)

    def training_loss(self, feats: Features, shown: Tensor, available: Tensor, target: Tensor, steps: Steps | None = None) -> Tensor:
        """The loss of one training step on raw features: the prediction from the ``shown``
        modalities ((B, M) bool, what modality dropout left of ``available``, so ``shown`` is within
        ``available``), scored as :meth:`loss` scores it with ``available`` ((B, M) bool, what the
        data has): :meth:`prepare`, then :meth:`step_loss`."""
        x, avail, st = self.prepare(feats, {m: available[:, i] for i, m in enumerate(self.modalities)}, steps)
        return self.step_loss(x, avail, avail & shown.to(avail.device).bool(), target, st)

    def step_loss(self, x: Features, available: Tensor, shown: Tensor, target: Tensor, steps: Steps) -> Tensor:
        """:meth:`training_loss` on features already through :meth:`prepare` with ``available``
        (what :meth:`prepare` returns: ``available`` and ``steps`` included); ``shown`` (B, M) bool is
        within ``available``. A method may override it to do the same in fewer passes."""
        out = self.fuse(self.hide(x, shown, steps), shown, steps)
        return self.prepared_loss(out, target, x=x, available=available, steps=steps)

    def hide(self, x: Features, shown: Tensor, steps: Steps) -> Features:
        """Prepared features with the modalities not ``shown`` zeroed: what :meth:`prepare` gives
        when told only the shown modalities are present (the same numbers, to the bit)."""
        out = {}
        for i, m in enumerate(self.modalities):
            t = x[m]
            keep = shown[:, i].view(-1, *([1] * (t.dim() - 1)))
            out[m] = torch.where(keep, t, torch.zeros_like(t))
        return out

    @property
    def device(self) -> torch.device:
        return getattr(self.norm, f"mean_{self.modalities[0]}").device

    def param_groups(self, *, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups, chosen by parameter name (never by position). Default: one group."""
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]

    def set_normalization(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        for m, (mean, std) in stats.items():
            self.norm.set(m, mean, std)

    # -- helpers for subclasses -------------------------------------------------------------
    def bound(self, raw: Tensor) -> Tensor:
        r = self.cfg.out_range
        return r * torch.tanh(raw / r)

    def complete_inputs(self, feats: Features, present: Presence | None, steps: Steps | None = None) -> tuple[Features, Tensor, Steps]:
        """Validate shapes, move everything to the model's device and fill modalities missing from
        ``feats`` with zeros (marked absent). Returns the raw features, the (B, M) bool presence mask
        in ``self.modalities`` order (a sequence with no real step counts as absent) and the step
        masks (None for a vector or a sequence given without one: every step real)."""
        unknown = set(feats) - set(self.modalities)
        if unknown:
            raise KeyError(f"unknown modalities {sorted(unknown)}; this model has {list(self.modalities)}")
        ref = next((t for t in feats.values() if t is not None), None)
        if ref is None:
            raise ValueError("no features given: pass at least one modality tensor")
        batch, device = ref.shape[0], self.device
        present = present or {}
        steps = steps or {}
        x: Features = {}
        st: Steps = {}
        cols = []
        for m in self.modalities:
            t = feats.get(m)
            s = None
            if t is None:
                t = torch.zeros(batch, self.dims[m], device=device)
                p = torch.zeros(batch, dtype=torch.bool, device=device)
            else:
                if t.dim() not in (2, 3) or t.shape[-1] != self.dims[m] or t.shape[0] != batch:
                    raise ValueError(
                        f"{m}: expected (B, {self.dims[m]}) or (B, T, {self.dims[m]}) with B={batch}, "
                        f"got {tuple(t.shape)}"
                    )
                t = t.to(device)
                p = present.get(m)
                p = torch.ones(batch, dtype=torch.bool, device=device) if p is None else p.to(device).bool()
                if p.shape != (batch,):
                    raise ValueError(f"{m}: presence must have shape ({batch},), got {tuple(p.shape)}")
                if t.dim() == 3:
                    s = steps.get(m)
                    if s is not None:  # None: every step is real (no masking work at all)
                        s = s.to(device).bool()
                        if s.shape != t.shape[:2]:
                            raise ValueError(f"{m}: the step mask must have shape {tuple(t.shape[:2])}, got {tuple(s.shape)}")
                        p = p & s.any(dim=1)  # nothing but padding: absent
                elif steps.get(m) is not None:
                    raise ValueError(f"{m}: a step mask was given for a vector input")
            x[m] = t
            st[m] = s
            cols.append(p)
        return x, torch.stack(cols, dim=1), st

    def prepare(self, feats: Features, present: Presence | None, steps: Steps | None = None) -> tuple[Features, Tensor, Steps]:
        """:meth:`complete_inputs`, then standardise, zero absent rows and padding steps, and
        replace non-finite values (a NaN in an absent row or a padding step must not leak)."""
        raw, mask, st = self.complete_inputs(feats, present, steps)
        x: Features = {}
        for i, m in enumerate(self.modalities):
            t = self.norm(m, raw[m].float())
            keep = mask[:, i].view(-1, *([1] * (t.dim() - 1)))
            if st[m] is not None:
                keep = keep & st[m].unsqueeze(-1)
            x[m] = torch.where(keep & torch.isfinite(t), t, torch.zeros_like(t))
        return x, mask, st

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dims={self.dims}"


def stack_modalities(h: dict[str, Tensor], order: tuple[str, ...]) -> Tensor:
    """{m: (B, H)} -> (B, M, H) in ``order``."""
    return torch.stack([h[m] for m in order], dim=1)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

