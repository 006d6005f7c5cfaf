"""carbonsched under a real systemd: a throwaway systemd boots as PID 1 of a systemd-nspawn
container over this machine's own / (a tmpfs overlay takes every write, so nothing reaches the
disk), the service is installed the way the README tells an operator (`carbonsched service
install`), and then started, asked, reloaded, stalled until the watchdog restarts it, and stopped.

Needs root, CAP_SYS_ADMIN and Debian's systemd-container package (`make venv` installs it);
skips with the reason otherwise. The tests run in file order on one container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import wait_until

WORKTREE = Path(__file__).resolve().parents[3]
CARBONSCHED = Path(sys.executable).parent / "carbonsched"
UNIT = "carbonsched.service"
CAP_SYS_ADMIN = 21
BOOT_DEADLINE_S = 90.0
SERVICE_DEADLINE_S = 60.0
# The shipped WatchdogSec=60s and RestartSec=5s would make the restart test wait over a minute; a
# drop-in shortens only these two timings.
TEST_TIMING_DROP_IN = "[Service]\nWatchdogSec=10s\nRestartSec=1s\n"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to boot a systemd container"
    with open("/proc/self/status") as status:
        cap_eff = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    if not cap_eff & (1 << CAP_SYS_ADMIN):
        return "needs CAP_SYS_ADMIN to mount and boot a systemd container"
    for tool in ("systemd-nspawn", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install -y systemd-container)"
    if not CARBONSCHED.exists():
        return f"{CARBONSCHED} missing (pip install -e .)"
    # The container sees only the root file system (a non-recursive bind of /), and its systemd
    # mounts a fresh /tmp (and the unit has PrivateTmp=yes): a checkout or venv there is invisible.
    for needed in (WORKTREE, Path(sys.prefix), Path(sys.base_prefix)):
        if os.stat(needed).st_dev != os.stat("/").st_dev:
            return f"{needed} is on another file system than /, invisible in the container"
        for tmp in (Path("/tmp"), Path("/var/tmp")):
            if needed.resolve().is_relative_to(tmp):
                return f"{needed} lies under {tmp}, which the container and the service see empty"
    return None


# One booted container for the module, whose tests run in order on one worker (make test's --dist loadfile).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


def _descendants(pid: int) -> Iterator[int]:
    queue = [pid]
    while queue:
        current = queue.pop(0)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            yield child
            queue.append(child)


class BootedSystemd:
    """systemd as PID 1 of an nspawn container over a non-recursive bind of / with a volatile
    overlay; ``run`` executes a command inside it (nsenter into all its namespaces)."""

    def __init__(self, workdir: Path):
        self.root = workdir / "root"  # must not lie under a directory bound into the container
        self.console_log = workdir / "console.log"
        self.machine = f"cstest{os.getpid()}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.mounted = False

    def boot(self) -> None:
        self.root.mkdir()
        subprocess.run(["mount", "--bind", "/", str(self.root)], check=True)
        self.mounted = True
        with self.console_log.open("wb") as console:
            # `timeout` ends the container even if this test process is killed.
            self.nspawn = subprocess.Popen(
                ["timeout", "-k", "10", "600", "systemd-nspawn", "-D", str(self.root), "--volatile=overlay",
                 "--register=no", "--keep-unit", f"--machine={self.machine}", "--console=read-only", "-b",
                 "--", "systemd.mask=postgresql.service", "systemd.unit=multi-user.target"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )
        found = wait_until(self._find_leader, BOOT_DEADLINE_S, interval_s=0.2)
        assert found, f"no systemd in the container:\n{self.console_log.read_text(errors='replace')[-2000:]}"

        def booted() -> bool:  # systemctl fails ("Failed to connect to bus") until PID 1 listens
            state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout_s=BOOT_DEADLINE_S)
            return state.stdout.strip() in ("running", "degraded")

        assert wait_until(booted, BOOT_DEADLINE_S, interval_s=0.2), self.console_log.read_text(errors="replace")[-2000:]

    def _find_leader(self) -> bool:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console_log.read_text(errors='replace')}")
        for pid in _descendants(self.nspawn.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.leader = pid
                    return True
            except OSError:
                continue
        return False

    def run(self, *argv: str, user: str | None = None, check: bool = True, timeout_s: float = 60.0,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container with a clean environment (PYTHONPATH: this worktree),
        as root or as ``user`` with that user's groups."""
        assert self.leader is not None
        env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
               f"PYTHONPATH={WORKTREE}"]
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *as_user, *env, *argv],
                                capture_output=True, text=True, timeout=timeout_s, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, stdin=text)

    def show(self, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", *(f"--property={p}" for p in properties), UNIT).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.run("journalctl", "--no-pager", "-u", UNIT, check=False).stdout

    def shut_down(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.leader is not None:
                subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "poweroff", "--no-block"],
                               capture_output=True, timeout=30)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGTERM)
                try:
                    self.nspawn.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.nspawn.pid, signal.SIGKILL)
                    self.nspawn.wait(10)
        if self.mounted:
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True)
            self.mounted = False


@pytest.fixture(scope="module")
def machine() -> Iterator[BootedSystemd]:
    workdir = Path(tempfile.mkdtemp(prefix="cs-systemd-", dir="/tmp"))
    booted = BootedSystemd(workdir)
    try:
        booted.boot()
        # The interpreter lives under /root (0700) on this machine: let the test users reach it.
        booted.run("chmod", "0711", "/root")
        booted.write(f"/etc/systemd/system/{UNIT}.d/test-timing.conf", TEST_TIMING_DROP_IN)
        yield booted
    finally:
        booted.shut_down()
        shutil.rmtree(workdir, ignore_errors=True)


def rho_reply(machine: BootedSystemd, user: str | None = None) -> dict:
    return json.loads(machine.run(str(CARBONSCHED), "rho", "--json", user=user).stdout)


def daemon_status(machine: BootedSystemd) -> dict:
    return json.loads(machine.run(str(CARBONSCHED), "status", "--json").stdout)


def test_service_install_starts_the_daemon_ready(machine):
    installed = machine.run(str(CARBONSCHED), "service", "install", "--provider", "trace", timeout_s=SERVICE_DEADLINE_S)
    assert "$ systemctl enable --now carbonsched.service" in installed.stdout
    # Type=notify: `enable --now` returned after READY=1.
    props = machine.show("ActiveState", "SubState", "StatusText", "User", "SupplementaryGroups")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), machine.journal()
    assert "policy default; provider" in props["StatusText"]
    assert "render" not in props["SupplementaryGroups"].split()  # this machine has no render group
    status = machine.run(str(CARBONSCHED), "service", "status")
    assert "active (running)" in status.stdout
    again = machine.run(str(CARBONSCHED), "service", "install", "--provider", "trace")
    assert "nothing to change" in again.stdout


def test_socket_belongs_to_the_service_group(machine):
    listing = machine.run("stat", "-c", "%U %G %a %F", "/run/carbonsched", "/run/carbonsched/carbonsched.sock").stdout
    assert listing.splitlines() == ["carbonsched carbonsched 750 directory", "carbonsched carbonsched 660 socket"]


def test_group_member_gets_rho_and_others_are_refused(machine):
    machine.run("useradd", "--create-home", "--groups", "carbonsched", "alice")
    machine.run("useradd", "--create-home", "mallory")
    reply = rho_reply(machine, user="alice")
    assert 0 < reply["rho"] <= 1 and reply["policy"] == "default"

    refused = machine.run(str(CARBONSCHED), "rho", user="mallory", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")
    connect = "import socket; socket.socket(socket.AF_UNIX).connect('/run/carbonsched/carbonsched.sock')"
    raw = machine.run(sys.executable, "-c", connect, user="mallory", check=False)
    assert "PermissionError" in raw.stderr


def test_reload_applies_a_good_config_and_keeps_serving_after_a_broken_one(machine):
    machine.write("/etc/carbonsched/policy.toml", 'kind = "constant"\nname = "reloaded"\nrho = 0.55\nrho_min = 0.3\n')
    machine.run("systemctl", "reload", UNIT)
    assert wait_until(lambda: rho_reply(machine)["policy"] == "reloaded", SERVICE_DEADLINE_S, interval_s=0.5)
    assert rho_reply(machine)["rho"] == pytest.approx(0.55)

    good_config = machine.run("cat", "/etc/carbonsched/carbonsched.toml").stdout
    machine.write("/etc/carbonsched/carbonsched.toml", good_config + "colour = 'green'\n")
    machine.run("systemctl", "reload", UNIT)
    assert wait_until(lambda: daemon_status(machine).get("reload_error"), SERVICE_DEADLINE_S, interval_s=0.5)
    assert "colour: unknown key" in daemon_status(machine)["reload_error"]
    assert rho_reply(machine)["policy"] == "reloaded"  # still serving on the configuration it had
    assert machine.show("ActiveState")["ActiveState"] == "active"
    text = machine.run(str(CARBONSCHED), "status").stdout
    assert "reload     reload failed, keeping the running configuration" in text
    status_text = machine.show("StatusText")["StatusText"]
    assert "reload failed" in status_text and "colour: unknown key" in status_text

    machine.write("/etc/carbonsched/carbonsched.toml", good_config)
    machine.run("systemctl", "reload", UNIT)
    assert wait_until(lambda: daemon_status(machine).get("reload_error") is None, SERVICE_DEADLINE_S, interval_s=0.5)
    assert wait_until(lambda: "reload failed" not in machine.show("StatusText")["StatusText"], SERVICE_DEADLINE_S, interval_s=0.5)
    assert "reload failed" not in machine.run(str(CARBONSCHED), "status").stdout


def test_watchdog_restarts_a_stalled_daemon_and_the_store_survives(machine):
    record_job = ("from carbonsched.client import DaemonClient; "
                  "print(DaemonClient().job_start('tiny', 'green', job_id='before-restart'))")
    assert machine.run(sys.executable, "-c", record_job, user="alice").stdout.strip() == "before-restart"
    before = machine.show("MainPID", "NRestarts")
    machine.run("kill", "-STOP", before["MainPID"])

    def restarted() -> bool:
        now = machine.show("MainPID", "NRestarts", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

    assert wait_until(restarted, SERVICE_DEADLINE_S, interval_s=0.5), machine.journal()[-3000:]
    assert int(machine.show("NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in machine.journal()
    jobs = json.loads(machine.run(str(CARBONSCHED), "jobs", "--json").stdout)["jobs"]
    assert [j["job_id"] for j in jobs] == ["before-restart"]
    assert rho_reply(machine, user="alice")["policy"] == "reloaded"  # the edited policy file, read at start


def test_stop_ends_the_daemon_cleanly(machine):
    machine.run("systemctl", "stop", UNIT, timeout_s=SERVICE_DEADLINE_S)
    props = machine.show("ActiveState", "Result")
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success")
    assert "stopped" in machine.journal()
    status = machine.run(str(CARBONSCHED), "service", "status", check=False)
    assert status.returncode == 3


def test_uninstall_keeps_the_store_and_purge_removes_everything(machine):
    kept = machine.run(str(CARBONSCHED), "service", "uninstall", timeout_s=SERVICE_DEADLINE_S)
    assert "--purge removes them" in kept.stdout
    assert machine.run("test", "-e", f"/etc/systemd/system/{UNIT}", check=False).returncode == 1
    assert machine.run("test", "-s", "/var/lib/carbonsched/carbonsched.sqlite3", check=False).returncode == 0
    assert machine.show("LoadState")["LoadState"] == "not-found"

    machine.run(str(CARBONSCHED), "service", "uninstall", "--purge", timeout_s=SERVICE_DEADLINE_S)
    for gone in ("/var/lib/carbonsched", "/etc/carbonsched"):
        assert machine.run("test", "-e", gone, check=False).returncode == 1, gone
    assert machine.run("getent", "passwd", "carbonsched", check=False).returncode == 2
    assert machine.run("getent", "group", "carbonsched", check=False).returncode == 2
