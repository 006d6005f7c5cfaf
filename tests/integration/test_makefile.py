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


@pytest.fixture
def recording_project(project):
    """The same copy, with a Python stand-in that records the arguments it is run with."""
    project_dir, make = project
    _script(project_dir / ".venv" / "bin" / "python", f'echo "$@" >> {project_dir / "python.log"}')
    (project_dir / ".venv" / ".installed").touch()  # newer than pyproject.toml: no install step
    return project_dir, make


def _pytest_calls(project_dir: Path, make: str, *args: str) -> list[str]:
    done = subprocess.run([make, "-C", str(project_dir), *args], capture_output=True, text=True,
                          env={"PATH": str(project_dir / "bin")}, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in (project_dir / "python.log").read_text().splitlines() if line.startswith("-m pytest")]


def test_make_test_runs_everything_but_soak_on_a_worker_per_core(recording_project):
    (call,) = _pytest_calls(*recording_project, "test")
    assert "-n auto --dist loadfile" in call and call.endswith("-m not soak")


def test_make_test_fast_leaves_out_the_slow_tests_and_passes_extra_arguments(recording_project):
    (call,) = _pytest_calls(*recording_project, "test-fast", "TEST_WORKERS=0", "PYTEST_ARGS=-x")
    assert "-n 0 --dist loadfile" in call and call.endswith("-m not slow and not soak -x")


def test_make_soak_runs_only_the_soak_tests(recording_project):
    (call,) = _pytest_calls(*recording_project, "soak")
    assert "-m soak" in call and "not soak" not in call
