"""The unit as `carbonsched service install` writes it passes `systemd-analyze verify` without a
warning and keeps an "OK" exposure in `systemd-analyze security` (needs Debian's systemd package;
`make venv` installs it). What the unit does under a real systemd is tests/carbonsched/service/test_systemd_real.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carbonsched.service.unit import UnitParameters, render_unit

CARBONSCHED = Path(sys.executable).parent / "carbonsched"
# systemd-analyze security's 0-100 scale: 20 is an overall exposure of 2.0, the top of "OK".
MAX_EXPOSURE = 20

ANALYZE = shutil.which("systemd-analyze")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing: apt-get install -y systemd")]

PLAIN = UnitParameters(executable=CARBONSCHED)
# A GPU machine whose interpreter lives in a home directory, installed with a PYTHONPATH.
HOME_INTERPRETER = UnitParameters(
    executable=CARBONSCHED,
    supplementary_groups=("render", "video"),
    read_only_home_paths=(Path("/root/.pyenv/versions/3.11.7"), Path("/home/builder/src")),
    python_path="/home/builder/src:/opt/extra",
)


def write_unit(directory: Path, params: UnitParameters) -> Path:
    unit = directory / "carbonsched.service"
    unit.write_text(render_unit(params))
    return unit


@pytest.mark.parametrize("params", [PLAIN, HOME_INTERPRETER], ids=["plain", "home-interpreter"])
def test_installed_unit_verifies_without_any_warning(tmp_path, params):
    unit = write_unit(tmp_path, params)
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("params", [PLAIN, HOME_INTERPRETER], ids=["plain", "home-interpreter"])
def test_installed_unit_keeps_an_ok_security_exposure(tmp_path, params):
    unit = write_unit(tmp_path, params)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", "--json=short", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"exposure above {MAX_EXPOSURE / 10:.1f}:\n{result.stdout}\n{result.stderr}"
    met = {item["name"]: item["set"] for item in json.loads(result.stdout)}
    # The protections the daemon must never lose, whatever the machine adds.
    for kept in ("NoNewPrivileges=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "ProtectSystem=", "PrivateTmp=",
                 "ProtectKernelModules=", "RestrictNamespaces=~user", "SystemCallFilter=~@privileged"):
        assert met[kept] is True, kept


def test_the_documentation_the_unit_names_is_installed_with_the_package(tmp_path):
    """systemd/README.md's install: build a wheel, install it, render the unit with the installed
    code; its Documentation= must name a file the install created (a wheel built by pip with the
    same setuptools backend as `python -m build --wheel`, without network; --target for the venv)."""
    repo = Path(__file__).resolve().parents[3]
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                           check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, source / name, follow_symlinks=False)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("carbon_aware_greentrainer-*.whl"))
    installed = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(installed), str(wheel)], check=True,
                   capture_output=True, timeout=300)

    render = ("import sys; from pathlib import Path; from carbonsched.service.unit import UnitParameters, render_unit; "
              "sys.stdout.write(render_unit(UnitParameters(executable=Path(sys.argv[1]))))")
    unit_text = subprocess.run([sys.executable, "-c", render, str(CARBONSCHED)], cwd=tmp_path, capture_output=True,
                               text=True, check=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(installed)}).stdout
    documentation = [line.split("=", 1)[1] for line in unit_text.splitlines() if line.startswith("Documentation=")]
    assert len(documentation) == 1 and documentation[0].startswith("file:///"), documentation
    readme = Path(documentation[0].removeprefix("file://"))
    assert readme.is_relative_to(installed) and readme.is_file(), readme
    assert readme.read_text() == (repo / "systemd" / "README.md").read_text()
    unit = tmp_path / "carbonsched.service"
    unit.write_text(unit_text)
    verified = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr
