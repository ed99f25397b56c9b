"""The README's two commands: what a newcomer types, and what CI runs (.ci/run reads them there)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_install() -> str:
    return re.search(r"^    (.*apt-get update.*)$", README, re.M).group(1)


def readme_tests() -> str:
    return re.search(r"^    (.*python -m pytest.*)$", README, re.M).group(1)


def test_one_install_line_runs_the_app_and_ci_uses_it():
    line = readme_install()
    assert line.endswith("&& python app.py")
    assert "--no-deps" not in line and "requirements-nodeps" not in line
    assert not line.startswith("sudo") and " sudo " not in line  # works where sudo does not exist
    for pkg in ("ffmpeg", "espeak-ng", "sox", "chromium", "strace"):
        assert f" {pkg}" in line
    assert "pip install -r requirements.txt" in line
    assert README.index(line) < README.index(readme_tests()) < 1500  # the first lines give both
    assert readme_tests().split()[-3:] == [".venv/bin/python", "-m", "pytest"]  # the install line's venv, also from a new shell
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "eval" in ci


@pytest.mark.parametrize("with_sudo", [False, True], ids=["root-without-sudo", "user-with-sudo"])
def test_the_apt_part_works_with_and_without_sudo(tmp_path, with_sudo):
    """Run the line's apt-get part with stand-ins for apt-get (and sudo): as root on a machine
    without sudo it must call apt-get itself; where sudo exists it must go through sudo."""
    apt_part = readme_install().split(" && python3.11")[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {log}\n')
    if with_sudo:
        (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "sudo $1" >> {log}\nexec "$@"\n')
    for name in ("env",):
        os.symlink("/usr/bin/" + name, bin_dir / name)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    proc = subprocess.run(["/bin/bash", "-c", apt_part], env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert "apt-get update" in calls and any(c.startswith("apt-get install -y ffmpeg") for c in calls)
    assert (calls.count("sudo apt-get") + calls.count("sudo env") == 2) == with_sudo
