import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime's native telemetry (see tests/test_offline.py)
# users' profiles (and the app's profile key) of every app the tests start go to a temporary folder,
# never into the home folder of whoever runs the tests
import tempfile  # noqa: E402

os.environ.setdefault("MMDEMO_DATA_DIR", tempfile.mkdtemp(prefix="mmdemo-test-userdata-"))

import socket  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mmdemo.fusion import FusionConfig, create_fusion  # noqa: E402
from tests.helpers import DIMS  # noqa: E402

# ---------------------------------------------------------------- no network, ever
# Every test runs with non-loopback connections and DNS look-ups refused and recorded; a test
# during which anything tried to reach the network fails (models must come from packages).
NETWORK_ATTEMPTS: list[str] = []


def _local(host) -> bool:
    h = str(host).strip("[]").lower()
    return h in ("localhost", "::1", "0.0.0.0", "", "::") or h.startswith("127.")


def _guard(fn, kind):
    def wrapped(*args, **kwargs):
        target = args[1] if kind == "connect" else args[0]
        host = target[0] if isinstance(target, tuple) else target
        fam = getattr(args[0], "family", None) if kind == "connect" else None
        if kind == "connect" and fam not in (socket.AF_INET, socket.AF_INET6):
            return fn(*args, **kwargs)
        if not _local(host):
            NETWORK_ATTEMPTS.append(f"{kind} {host}")
            raise OSError(f"network access is blocked in tests ({kind} {host})")
        return fn(*args, **kwargs)

    return wrapped


socket.socket.connect = _guard(socket.socket.connect, "connect")
socket.socket.connect_ex = _guard(socket.socket.connect_ex, "connect")
socket.getaddrinfo = _guard(socket.getaddrinfo, "getaddrinfo")
socket.gethostbyname = _guard(socket.gethostbyname, "gethostbyname")  # aioice resolves STUN servers with it


@pytest.fixture(autouse=True)
def no_network_attempts():
    before = len(NETWORK_ATTEMPTS)
    yield
    tried = NETWORK_ATTEMPTS[before:]
    assert not tried, f"the code tried to reach the network: {tried}"


@pytest.fixture
def build():
    def _build(name, dims=DIMS, seed=0, **cfg):
        torch.manual_seed(seed)
        return create_fusion(name, dims=dims, cfg=FusionConfig(**cfg))

    return _build


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
