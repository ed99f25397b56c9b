import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mmdemo.fusion import FusionConfig, create_fusion  # noqa: E402

from tests.helpers import DIMS  # noqa: E402


@pytest.fixture
def build():
    def _build(name, dims=DIMS, seed=0, **cfg):
        torch.manual_seed(seed)
        return create_fusion(name, dims=dims, cfg=FusionConfig(**cfg))

    return _build


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
