"""`make venv` as root installs the systemd tools the tests use with apt-get; NO_APT=1 skips that.

Run on a copy of the Makefile with stand-ins on PATH: a Python that succeeds at everything (no
real install), `id` answering uid 0, and an `apt-get` that records its arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)


@pytest.fixture
def project(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    _script(tmp_path / ".venv" / "bin" / "python", "exit 0")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "id", "echo 0")
    _script(bin_dir / "apt-get", f'echo "$@" >> {tmp_path / "apt-get.log"}')
    os.symlink(shutil.which("touch"), bin_dir / "touch")
    return tmp_path, make


def _make_venv(project_dir: Path, make: str, *extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(project_dir / "bin"), "HOME": str(project_dir)}
    return subprocess.run([make, "-C", str(project_dir), "venv", *extra], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_make_venv_as_root_installs_the_systemd_tools_with_apt(project):
    project_dir, make = project
    done = _make_venv(project_dir, make)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (project_dir / "apt-get.log").read_text().splitlines()
    assert "install -y -qq systemd" in calls and "install -y -qq systemd-container" in calls
    assert "install -y -qq slurm-wlm munge" in calls


def test_no_apt_skips_apt_get_and_says_what_is_missing(project):
    project_dir, make = project
    done = _make_venv(project_dir, make, "NO_APT=1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (project_dir / "apt-get.log").exists()
    assert "warning: systemd-analyze not found" in done.stdout and "warning: systemd-nspawn not found" in done.stdout
    assert "warning: slurmctld or munged not found" in done.stdout
    assert (project_dir / ".venv" / ".installed").is_file()
