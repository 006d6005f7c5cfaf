import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.service.doctor import check_cpu_ram, check_gpu, exit_code
from fake_pynvml import FakeGpu, make_fake_nvml
from power_helpers import read_files_as_unprivileged_user

TOKEN = "em-secret-token-7f3a9c"


def invoke(args, env):
    return CliRunner().invoke(app, ["doctor", *args], env=env)


def test_doctor_passes_with_credentials_and_never_prints_them(tmp_path):
    result = invoke(
        ["--provider", "electricitymaps:DE", "--socket", str(tmp_path / "run" / "cs.sock"),
         "--state-dir", str(tmp_path / "state")],
        {"ELECTRICITYMAPS_TOKEN": TOKEN, "CREDENTIALS_DIRECTORY": ""},
    )
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    assert "ELECTRICITYMAPS_TOKEN set" in result.output
    assert "[ok  ] state_dir" in result.output
    assert not (tmp_path / "state").exists()  # checking must not leave directories behind


def test_doctor_fails_on_missing_credential_and_unwritable_state_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke(
        ["--json", "--provider", "watttime:CAISO_NORTH", "--socket", str(tmp_path / "cs.sock"),
         "--state-dir", str(tmp_path / "file" / "state")],
        {"WATTTIME_USERNAME": TOKEN, "WATTTIME_PASSWORD": "", "CREDENTIALS_DIRECTORY": ""},
    )
    assert result.exit_code == 1
    assert TOKEN not in result.output
    report = json.loads(result.output)
    by_name = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False
    provider = by_name["provider:watttime:CAISO_NORTH"]
    assert provider["status"] == "fail" and "WATTTIME_PASSWORD" in provider["message"]
    assert "WATTTIME_USERNAME" not in provider["message"]
    assert by_name["state_dir"]["status"] == "fail" and "is not a directory" in by_name["state_dir"]["message"]
    assert by_name["socket"]["status"] == "ok"


def test_doctor_without_provider_names_the_fallback(tmp_path):
    result = invoke(["--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path)], {})
    assert result.exit_code == 0, result.output
    assert "location unknown: no --provider given; falling back to 'trace'" in result.output


def test_gpu_without_counter_warns_and_falls_back_to_power_integration():
    nvml = make_fake_nvml([FakeGpu(energy_mJ=0), FakeGpu(name="Tesla P100", energy_mJ=None)])
    checks = {c.name: c for c in check_gpu(nvml)}
    assert checks["nvml"].status == "ok"
    assert checks["gpu:0"].status == "ok"
    assert checks["gpu:1"].status == "warn" and "falls back to power integration" in checks["gpu:1"].message
    assert exit_code(list(checks.values())) == 0
    assert nvml.state["init_count"] == 0


def test_rapl_permission_problem_comes_with_chmod_fix(tmp_path, monkeypatch):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "name").write_text("package-0\n")
    (domain / "energy_uj").write_text("123\n")
    os.chmod(domain / "energy_uj", 0)
    read_files_as_unprivileged_user(monkeypatch)
    (cpu,) = [c for c in check_cpu_ram(tmp_path) if c.name == "cpu_energy"]
    assert cpu.status == "warn"
    assert "RAPL files not readable (permission)" in cpu.message
    assert f"chmod o+r {tmp_path}/intel-rapl:*/energy_uj" in cpu.fix


def test_doctor_as_a_subprocess(tmp_path):
    executable = Path(sys.executable).parent / "carbonsched"
    env = {**os.environ, "ELECTRICITYMAPS_TOKEN": TOKEN}
    proc = subprocess.run(
        [str(executable), "doctor", "--json", "--provider", "electricitymaps", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 1  # electricitymaps without a zone is a bad spec
    assert TOKEN not in proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["provider"]["status"] == "fail" and "needs a zone" in checks["provider"]["message"]
    assert checks["cpu_energy"]["status"] in ("ok", "warn")


def test_doctor_says_the_socket_is_in_use_when_a_daemon_listens_on_it():
    from inprocess_daemon import inprocess_daemon

    with inprocess_daemon() as running:
        socket_path = running.daemon.config.socket
        result = invoke(["--socket", str(socket_path), "--state-dir", str(running.workdir / "other-state")], {})
    assert f"socket {socket_path} is in use by a running daemon" in result.output, result.output
    assert "can be created" not in result.output.split("[ok  ] socket")[1].splitlines()[0]
