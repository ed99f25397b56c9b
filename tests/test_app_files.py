"""The app's file hygiene without models: microphone chunks in Gradio's cache, clip outputs, the
names the API accepts."""

import os
import time

import numpy as np
import pytest
import torch

import app as studio_app
from mmdemo.checkpoint import save_fusion
from mmdemo.fusion import create_fusion
from mmdemo.pipeline import Engine


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_old_chunks_go_fresh_ones_stay(tmp_path, monkeypatch):
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    sweeper = studio_app.ChunkSweeper(max_age_s=30.0, every_s=3600, folder_age_s=300.0)
    old, fresh = cache / "aa" / "audio.wav", cache / "bb" / "audio.wav"
    outside = tmp_path / "mine.wav"
    for p in (old, fresh, outside):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        sweeper.seen(p)
    _age(old, 60)
    _age(outside, 60)
    assert sweeper.sweep() == 1
    assert not old.exists() and old.parent.exists()  # the emptied hash folder waits: Gradio may be moving the same content in
    _age(old.parent, 600)
    sweeper.sweep()
    assert not old.parent.exists()  # ... and goes once idle for folder_age_s
    assert fresh.exists() and outside.exists()  # never anything outside Gradio's cache
    _age(fresh, 60)
    fresh.write_bytes(b"x")  # the same content uploaded again (a fresh file renamed over it): still in use
    assert sweeper.sweep() == 0 and fresh.exists()


def test_clip_outputs_are_cleaned(tmp_path):
    clips = studio_app.ClipOutputs(tmp_path / "clips", max_age_s=600)
    a = clips.new()
    _age(a, 3600)
    b = clips.new()
    c = clips.new()
    assert not a.exists() and b.exists() and c.exists()


def test_only_registered_methods_with_a_model_load(tmp_path):
    """Fusion names come from the network (/predict): a path, '..' or an unknown name never reaches
    the filesystem, and nothing is cached for it."""
    torch.manual_seed(0)
    save_fusion(create_fusion("concat", dims={"text": 4}), tmp_path / "ckpt" / "fusion" / "concat")
    save_fusion(create_fusion("tensor", dims={"text": 4}), tmp_path / "elsewhere" / "tensor")  # checkpoint-shaped, not shipped
    engine = Engine(tmp_path / "ckpt", device="cpu")
    assert engine.fusion("concat").name == "concat"
    for name in ("../../elsewhere/tensor", str(tmp_path / "elsewhere" / "tensor"), "tensor", "nope", "", None):
        with pytest.raises(KeyError, match="available: concat"):
            engine.fusion(name)
    assert list(engine._fusions) == ["concat"]
    assert np.isfinite(engine.session("concat").set_text("", t=0.0).prediction)
