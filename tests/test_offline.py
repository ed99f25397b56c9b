"""Nothing leaves the machine, native code included (slow).

The network guard of conftest.py only sees Python sockets. Native libraries open their own: the
onnxruntime that runs Silero VAD looks up Microsoft's telemetry host from C++ threads seconds after
it is imported (unless ORT_DISABLE_TELEMETRY=1), and MediaPipe's PyPI builds from 0.10.35 on post
usage logs to play.googleapis.com through a libcurl built into libmediapipe.so, with no switch to
turn it off (requirements.txt pins 0.10.33, the last release without it). These tests run a pipeline session and an app start in subprocesses under
``strace -f -e trace=connect`` and fail on any connection outside loopback and local sockets, and
on any DNS lookup (a connection to port 53, or to a local resolver's socket), wherever it comes from.
The subprocesses get none of the offline variables in their environment: the code must set them.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.media import need

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "ORT_DISABLE_TELEMETRY")
LINGER_S = 15.0  # onnxruntime's lookups came about 9 s after its import (measured): stay alive longer than that

SYSCALLS = ("connect(", "sendto(", "sendmsg(", "sendmmsg(")  # a destination in any of them: a packet may leave
ADDRESS = re.compile(r"\{sa_family=(AF_\w+)(.*?)\}")
RESOLVERS = ("resolve",)  # systemd-resolved's sockets answer only name lookups (nscd also serves users and groups: not flagged)


def leaks(trace: str) -> list[str]:
    """The calls of an strace log (connect, or a send with a destination address) that reach beyond
    the machine or ask for a name."""
    bad = []
    for line in trace.splitlines():
        if not any(c in line for c in SYSCALLS):
            continue
        m = ADDRESS.search(line)
        if not m:
            continue
        family, rest = m.groups()
        if family == "AF_UNIX":
            if any(r in rest for r in RESOLVERS):
                bad.append(line.strip())
            continue
        if family in ("AF_NETLINK", "AF_UNSPEC"):
            continue
        port = re.search(r"htons\((\d+)\)", rest)
        if port and port.group(1) == "53":
            bad.append(line.strip())
            continue
        addr = re.search(r'inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"', rest)
        host = addr.group(1) if addr else ""
        if not (host.startswith("127.") or host in ("::1", "0.0.0.0", "::") or host.startswith("::ffff:127.")):
            bad.append(line.strip())
    return bad


def test_the_leak_detector_sees_a_lookup_and_passes_loopback():
    assert leaks('[pid 1] connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0')
    assert leaks('connect(3, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("20.42.65.90")}, 16) = -1 ENETUNREACH')
    assert leaks('connect(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28)')
    assert leaks('connect(5, {sa_family=AF_UNIX, sun_path="/run/systemd/resolve/io.systemd.Resolve"}, 110) = 0')
    assert leaks('sendto(9, "abc", 3, 0, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("8.8.8.8")}, 16) = 3')
    assert not leaks('sendto(9, "abc", 3, MSG_NOSIGNAL, NULL, 0) = 3')  # on a connected socket: its connect() is what counts
    assert not leaks('connect(7, {sa_family=AF_INET, sin_port=htons(7860), sin_addr=inet_addr("127.0.0.1")}, 16) = 0')
    assert not leaks('connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0')
    assert not leaks('connect(4, {sa_family=AF_UNIX, sun_path="/tmp/x.sock"}, 110) = 0')


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env["HOME"] = str(tmp)  # no telemetry database left in the real home either
    env["PYTHONPATH"] = str(ROOT)
    return env


def _strace(tmp: Path, argv: list[str]) -> tuple[list[str], Path]:
    need("strace")
    log = tmp / "strace.log"
    return ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(log)] + argv, log


def _check_strace_works(tmp: Path) -> None:
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(tmp / "probe.log"), sys.executable, "-c", "pass"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace processes on this machine ({probe.stderr.strip()[:200]}): "
                    "native connections were NOT checked")


def test_a_pipeline_session_makes_no_connection(tmp_path):
    need("espeak-ng")
    _check_strace_works(tmp_path)
    script = tmp_path / "session.py"
    script.write_text(textwrap.dedent(f"""
        import time
        import numpy as np
        from mmdemo.pipeline import Engine
        from tests.media import astronaut, speech_16k
        from pathlib import Path
        engine = Engine(device="cpu")
        engine.warmup("weighted")  # loads every model, onnxruntime (Silero VAD) included
        loaded = time.monotonic()
        s = engine.session("weighted", blocking_asr=True)
        x = speech_16k(Path({str(tmp_path)!r}))
        s.set_text("what a lovely day", t=0.0)
        for i in range(0, len(x), 8000):
            s.push_audio(x[i:i + 8000], 16000, t=i / 16000)
            s.push_frame(astronaut(), t=i / 16000)
        up = s.flush(t=len(x) / 16000)
        assert up.present["text"] and up.present["vision"], up.reasons
        time.sleep(max(0.0, {LINGER_S} - (time.monotonic() - loaded)))
        print("session done")
    """))
    cmd, log = _strace(tmp_path, [sys.executable, str(script)])
    proc = subprocess.run(cmd, cwd=ROOT, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "session done" in proc.stdout, proc.stderr[-3000:]
    found = leaks(log.read_text())
    assert not found, "connections beyond the machine:\n" + "\n".join(found[:10])
    assert not (tmp_path / ".cache" / "Microsoft").exists(), "onnxruntime created its telemetry folder"


def test_an_app_start_makes_no_connection(tmp_path):
    _check_strace_works(tmp_path)
    port = free_port()
    env = _clean_env(tmp_path) | {"GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    cmd, log = _strace(tmp_path, [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu"])
    out = open(tmp_path / "app.log", "w")
    # its own process group: stopping strace alone would detach it and leave the app running
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "models ready" not in (tmp_path / "app.log").read_text():
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not finish loading its models"
            time.sleep(0.5)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:  # a page is served
            assert r.status == 200
        time.sleep(LINGER_S)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        out.close()
    found = leaks(log.read_text())
    assert not found, "connections beyond the machine:\n" + "\n".join(found[:10])
