"""The fine-tuning of the words encoder sees what the live encoder will compute (slow: MiniLM)."""

import numpy as np
import pytest
import torch

from mmdemo.encoders.words import MAX_TOKENS, MiniLM
from mmdemo.text_model import FinetuneConfig, TopLayers, _batch, bottom_states, load_minilm

pytestmark = pytest.mark.slow


def test_finetuning_features_equal_the_live_features():
    """Train = serve: the embedding the fine-tuning head learns from is the live words feature,
    also for a text longer than the fine-tuning used to read (96 word pieces)."""
    cfg = FinetuneConfig()
    assert cfg.max_tokens == MAX_TOKENS
    tok, model = load_minilm()
    long = "the acting was wonderful but the story dragged on and on, " * 12  # ~170 word pieces
    texts = ["short and sweet", long]
    assert len(tok(long)["input_ids"]) > 100
    k = 2
    states = bottom_states(tok, model, texts, k, max_tokens=cfg.max_tokens, device=torch.device("cpu"), progress=False)
    top = TopLayers(model, k).eval()
    h, m = _batch(states, range(len(texts)), torch.device("cpu"))
    with torch.inference_mode():
        train_side = top.embed(h, m).numpy()
    serve_side = MiniLM(device="cpu").embed(texts)
    cos = (train_side * serve_side).sum(axis=1)
    assert np.all(cos > 0.9999), cos  # the cached states are fp16: nothing else differs
