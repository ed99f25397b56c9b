"""Fine-tuning the top layers of all-MiniLM-L6-v2 for sentiment (CMU-MOSI scale).

The bottom ``6 - k`` transformer layers (and the embeddings) stay as packaged; their output for
every sentence is computed once and cached, so each epoch only runs the top ``k`` layers forward
and backward (about k/6 of the cost of full fine-tuning: what makes this practical on 2 CPU cores).
The training head is mean pooling over the attention mask, L2 normalisation (exactly the live
words feature) and a linear layer. What ships is the top layers' weights in fp16 (an "overlay" for
:class:`mmdemo.encoders.WordsEncoder`); the live words feature is then the fine-tuned embedding.
"""

from __future__ import annotations

import copy
import logging
import numbers
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .device import resolve_device
from .encoders.words import MAX_TOKENS, minilm_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    train_layers: int = 6  # top transformer layers trained (1..6; the embeddings stay frozen)
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-5  # transformer layers
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    max_tokens: int = MAX_TOKENS  # what the live encoder reads: the head learns on the features it will be served
    patience: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        from .device import resolve_device
        from .settings import COUNT, NON_NEGATIVE, POSITIVE, check_ranges

        layers = self.train_layers
        whole = isinstance(layers, numbers.Integral) and not isinstance(layers, bool)
        extra = [] if whole and 1 <= layers <= 6 else [f"train_layers={layers!r} (must be a whole number 1..6: MiniLM has 6 layers)"]
        try:
            resolve_device(self.device)
        except ValueError as err:
            extra.append(str(err))
        check_ranges(self, [(("epochs", "batch_size", "max_tokens", "patience"), COUNT), (("lr", "head_lr"), POSITIVE),
                            (("weight_decay",), NON_NEGATIVE)], extra)


def _mask_for(model, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The attention mask in the form this transformers version's layers expect."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)


class TopLayers(nn.Module):
    """The top k layers of a loaded MiniLM + the regression head."""

    def __init__(self, model, k: int):
        super().__init__()
        self.model = model  # kept for the mask helper and config
        n = len(model.encoder.layer)
        self.first = n - k
        self.layers = nn.ModuleList(model.encoder.layer[self.first :])
        self.head = nn.Linear(model.config.hidden_size, 1)

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask4 = _mask_for(self.model, hidden, attention_mask)
        for layer in self.layers:
            out = layer(hidden, mask4)
            hidden = out[0] if isinstance(out, tuple) else out
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    def forward(self, hidden, attention_mask):
        return 3.0 * torch.tanh(self.head(self.embed(hidden, attention_mask)).squeeze(-1) / 3.0)


def load_minilm():
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = minilm_dir()
    return AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()


@torch.inference_mode()
def bottom_states(tokenizer, model, texts: list[str], k: int, *, max_tokens: int, device, batch_size: int = 128, progress=True):
    """Per sentence: the hidden states entering the top k layers, as (L_i, 384) fp16 tensors."""
    n_layers = len(model.encoder.layer)
    out = []
    order = np.argsort([len(t) for t in texts])  # batch similar lengths together
    states: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in tqdm(range(0, len(texts), batch_size), desc="encode (frozen layers)", disable=not progress, leave=False):
        idx = order[i : i + batch_size]
        enc = tokenizer([texts[j] or "" for j in idx], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        enc = {k_: v.to(device) for k_, v in enc.items()}
        hs = model(**enc, output_hidden_states=True).hidden_states[n_layers - k]  # input of layer n-k
        for row, j in enumerate(idx):
            length = int(enc["attention_mask"][row].sum())
            states[int(j)] = (hs[row, :length].half().cpu(), enc["attention_mask"][row, :length].cpu())
    for j in range(len(texts)):
        out.append(states[j])
    return out


def _batch(states, idx, device):
    h = nn.utils.rnn.pad_sequence([states[i][0] for i in idx], batch_first=True).float().to(device)
    m = nn.utils.rnn.pad_sequence([states[i][1] for i in idx], batch_first=True).to(device)
    return h, m


def length_buckets(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Random batches of similar lengths (less padding): shuffle, sort within chunks of 50 batches
    by length, cut into batches, shuffle the batches."""
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    chunk = 50 * batch_size
    batches = []
    for c in range(0, len(perm), chunk):
        part = perm[c : c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def finetune(train_texts, train_y, valid_texts, valid_y, cfg: FinetuneConfig = FinetuneConfig(), *, progress=True,
             predict: dict[str, list[str]] | None = None) -> dict:
    """Fine-tune the top ``cfg.train_layers`` layers; early stopping on validation MAE.
    Returns {"overlay": state dict of the trained layers (fp16), "history", "valid_mae", "seconds",
    "predictions": {name: the fine-tuned model's own predictions (its linear head) for each text
    list of ``predict``, with the best weights}}."""
    if len(train_texts) == 0 or len(valid_texts) == 0:
        raise ValueError(f"fine-tuning needs train and valid texts (got {len(train_texts)} and {len(valid_texts)})")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tokenizer, model = load_minilm()
    model.to(device)
    k = cfg.train_layers
    t0 = time.perf_counter()
    tr = bottom_states(tokenizer, model, list(train_texts), k, max_tokens=cfg.max_tokens, device=device, progress=progress)
    va = bottom_states(tokenizer, model, list(valid_texts), k, max_tokens=cfg.max_tokens, device=device, progress=progress)
    top = TopLayers(model, k).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.layers.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": top.layers.parameters(), "lr": cfg.lr}, {"params": top.head.parameters(), "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    ytr = torch.tensor(np.asarray(train_y, np.float32), device=device)
    lengths = np.array([len(h) for h, _ in tr])
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_head, stale, history = float("inf"), None, None, 0, []

    def valid_mae() -> float:
        top.eval()
        preds = []
        with torch.inference_mode():
            for i in range(0, len(va), 256):
                h, m = _batch(va, range(i, min(i + 256, len(va))), device)
                preds.append(top(h, m).cpu())
        return float(np.mean(np.abs(torch.cat(preds).numpy() - np.asarray(valid_y))))

    bar = tqdm(range(1, cfg.epochs + 1), desc=f"fine-tune top {k} layers", disable=not progress)
    for epoch in bar:
        top.train()
        batches = length_buckets(lengths, cfg.batch_size, gen)
        total = 0.0
        for idx in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            h, m = _batch(tr, idx, device)
            loss = F.l1_loss(top(h, m), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
        mae = valid_mae()
        history.append({"epoch": epoch, "train_l1": total / len(tr), "valid_mae": mae})
        bar.set_postfix(valid_mae=f"{mae:.3f}")
        if mae < best - 1e-4:
            best, stale = mae, 0
            best_state = copy.deepcopy({n: p.detach().cpu() for n, p in top.layers.state_dict().items()})
            best_head = copy.deepcopy({n: p.detach().cpu() for n, p in top.head.state_dict().items()})
        else:
            stale += 1
            if stale > cfg.patience:
                break
    if best_state is None:
        raise ValueError("fine-tuning never reached a finite validation MAE (are the labels numbers?)")
    overlay = {f"encoder.layer.{top.first + int(n.split('.')[0])}.{n.split('.', 1)[1]}": v.half() for n, v in best_state.items()}
    predictions = {}
    if predict:
        # the shipped weights are the fp16 overlay: predict with exactly those
        top.layers.load_state_dict({n: v.half().float() for n, v in best_state.items()})
        top.head.load_state_dict(best_head)
        top.eval()
        for name, texts in predict.items():
            states = bottom_states(tokenizer, model, list(texts), k, max_tokens=cfg.max_tokens, device=device, progress=False)
            out = []
            with torch.inference_mode():
                for i in range(0, len(states), 256):
                    h, m = _batch(states, range(i, min(i + 256, len(states))), device)
                    out.append(top(h, m).float().cpu())
            predictions[name] = torch.cat(out).numpy() if out else np.zeros(0, np.float32)
    return {"overlay": overlay, "history": history, "valid_mae": best, "seconds": time.perf_counter() - t0, "predictions": predictions}


def save_overlay(overlay: dict[str, torch.Tensor], folder: Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in overlay.items()}, str(path), metadata={k: str(v) for k, v in meta.items()})
    return path


__all__ = ["FinetuneConfig", "finetune", "save_overlay", "MAX_TOKENS"]
