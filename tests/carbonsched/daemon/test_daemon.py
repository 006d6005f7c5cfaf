"""`carbonsched run` as a real subprocess: ops over the socket, CLI, override, SIGHUP, SIGTERM, sd_notify."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from carbonsched.store import Store

from daemon_helpers import CARBONSCHED_BIN, DaemonProcess, configured_daemon, short_dir, wait_until

pytestmark = pytest.mark.slow

GOOD_POLICY = 'kind = "constant"\nname = "pinned"\nrho = 0.6\nrho_min = 0.34\n'
OTHER_POLICY = 'kind = "constant"\nname = "repinned"\nrho = 0.8\nrho_min = 0.34\n'
BROKEN_POLICY = 'kind = "constant"\nname = "broken"\nrho = "lots"\n'


@pytest.fixture(scope="module")
def daemon():
    with short_dir() as d:
        policy = d / "policy.toml"
        policy.write_text(GOOD_POLICY)
        with configured_daemon(d, f'policy = "{policy}"\nretention_days = 7\n') as proc:
            proc.policy_file = policy
            yield proc


def cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(CARBONSCHED_BIN), *args], capture_output=True, text=True, timeout=timeout_s)


def test_rho_job_and_epoch_ops_are_answered_and_stored(daemon):
    conn = daemon.conn()
    rho = conn.ask(op="rho", job_id="none-yet")
    assert rho["ok"] and rho["v"] == 1
    assert rho["rho"] == 0.6 and rho["policy"] == "pinned" and rho["override"] is False
    assert rho["valid_until"].endswith("+00:00") and rho["provider"] == "trace"
    assert wait_until(lambda: conn.ask(op="rho")["intensity_g_per_kwh"] is not None, 15)

    job = conn.ask(op="job.start", model="opt-125m", scheme="greentrainer", pid=os.getpid(), devices=["cpu"])
    assert job["ok"] and job["resumed"] is False
    job_id = job["job_id"]
    assert conn.ask(op="epoch.start", job_id=job_id, epoch=0, rho_asked=0.6)["ok"]
    time.sleep(0.5)  # let a few power samples land inside the epoch
    end = conn.ask(op="epoch.end", job_id=job_id, epoch=0, rho_asked=0.6, rho_effective=0.58,
                   flops_forward=1e12, flops_backward=1.2e12, flops_full=3e12, wall_s=0.5,
                   train_loss=2.25, val_loss=2.5, selected_tensors=17)
    assert end["ok"], end
    assert conn.ask(op="epoch.end", job_id="no-such-job", epoch=0, rho_asked=0.6, rho_effective=0.6)["error"]["code"] == "bad_request"
    status = conn.ask(op="status")
    assert [j["job_id"] for j in status["jobs_running"]] == [job_id]
    assert conn.ask(op="job.end", job_id=job_id, status="completed")["ok"]
    jobs = conn.ask(op="jobs")["jobs"]
    assert [(j["job_id"], j["status"]) for j in jobs] == [(job_id, "completed")]
    assert conn.ask(op="job.start", model="m", scheme="s", pid=1, job_id=job_id)["resumed"] is True
    assert conn.ask(op="job.end", job_id=job_id, status="interrupted")["ok"]

    with Store(daemon.state_dir / "carbonsched.sqlite3") as store:  # a second reader while the daemon writes
        (epoch,) = store.epochs(job_id)
        assert epoch["rho_effective"] == 0.58 and epoch["flops_backward"] == 1.2e12 and epoch["val_loss"] == 2.5
        assert epoch["extra"] == {"selected_tensors": 17}
        assert epoch["ended_at"] > epoch["started_at"]
        assert store.job(job_id)["status"] == "interrupted"
        now = time.time()
        assert store.intensity_samples(now - 3600, now + 60)
        assert store.decisions(now - 3600, now + 60)


def test_garbage_on_the_socket_is_answered_and_the_daemon_lives_on(daemon):
    conn = daemon.conn()
    conn.send(b"\xff\xfe{{{\n")
    assert conn.reply()["error"]["code"] == "bad_json"
    assert conn.ask(op="job.start", model="m", scheme="s", pid=-3)["error"]["message"].startswith("job.start: field 'pid'")
    conn.send(b'{"op": "ping", "pad": "' + b"x" * 70000 + b'"}\n')
    assert conn.reply()["error"]["code"] == "too_large"
    assert daemon.conn().ask(op="ping")["ok"]


def test_cli_commands_against_the_daemon(daemon):
    sock = str(daemon.socket)
    out = cli("rho", "--socket", sock, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rho"] == 0.6
    human = cli("rho", "--socket", sock)
    assert human.returncode == 0 and human.stdout.startswith("rho 0.600")
    status = cli("status", "--socket", sock)
    assert status.returncode == 0 and "policy     pinned" in status.stdout
    assert "forecast   trace, 24 h" in status.stdout  # where the forecast comes from, and its horizon
    assert cli("jobs", "--socket", sock, "--json").returncode == 0
    assert cli("override", "0.5", "--socket", sock, "--ttl-s", "30").returncode == 0
    assert json.loads(cli("rho", "--socket", sock, "--json").stdout)["override"] is True
    assert cli("override", "--clear", "--socket", sock).stdout.strip() == "override cleared"
    bad = cli("override", "1.5", "--socket", sock)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_override_with_ttl_expires_back_to_the_policy(daemon):
    conn = daemon.conn()
    # Long enough that the next request surely lands inside it, even on a busy machine.
    assert conn.ask(op="override", rho=0.42, ttl_s=2.0)["override"]["rho"] == 0.42
    rho = conn.ask(op="rho")
    assert rho["rho"] == 0.42 and rho["override"] is True and rho["policy"] == "override"
    assert wait_until(lambda: conn.ask(op="rho")["override"] is False, 15)
    assert conn.ask(op="rho")["rho"] == 0.6


def test_sighup_with_a_broken_policy_keeps_the_old_one_and_says_so(daemon):
    conn = daemon.conn()
    daemon.policy_file.write_text(BROKEN_POLICY)
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="status")["reload_error"] is not None, 15)
    status = conn.ask(op="status")
    assert status["policy"]["name"] == "pinned"
    assert "rho" in status["reload_error"] and "keeping" in status["reload_error"]
    assert any(e["where"] == "reload" for e in status["errors"])
    assert conn.ask(op="rho")["rho"] == 0.6
    assert "reload failed" in daemon.log()

    daemon.policy_file.write_text(OTHER_POLICY)
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="status")["policy"]["name"] == "repinned", 15)
    assert conn.ask(op="status")["reload_error"] is None
    assert conn.ask(op="rho")["rho"] == 0.8
    daemon.policy_file.write_text(GOOD_POLICY)
    assert conn.ask(op="reload")["reloaded"] is True  # the admin op does the same as SIGHUP
    assert conn.ask(op="rho")["rho"] == 0.6


def test_sigterm_exits_cleanly_with_sd_notify_lifecycle():
    with short_dir() as d:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(d / "notify"))
        notify.settimeout(20)
        proc = DaemonProcess(d, env={"NOTIFY_SOCKET": str(d / "notify"), "WATCHDOG_USEC": "400000", "JOURNAL_STREAM": "8:1"})
        try:
            messages: list[str] = []
            while not any("WATCHDOG=1" in m for m in messages):
                messages.append(notify.recv(4096).decode())
            assert "READY=1" in messages[0] and f"MAINPID={proc.proc.pid}" in messages[0]
            assert proc.socket.exists()
            proc.signal(signal.SIGTERM)
            assert proc.proc.wait(15) == 0
            while not any("STOPPING=1" in m for m in messages):
                messages.append(notify.recv(4096).decode())
            assert not proc.socket.exists()
            log_lines = proc.log().splitlines()
            # Under journald: no timestamps, a priority prefix per line.
            assert all(line.startswith("<") for line in log_lines if "carbonsched" in line), log_lines
            assert any("stopped" in line for line in log_lines)
        finally:
            proc.stop()
            notify.close()
        with Store(proc.state_dir / "carbonsched.sqlite3") as store:  # closed cleanly, readable
            assert store.schema_version >= 1


def test_cli_errors_are_one_line_without_traceback():
    with short_dir() as d:
        absent = cli("status", "--socket", str(d / "none.sock"))
        assert absent.returncode == 1
        assert absent.stderr == f"error: no daemon at {d / 'none.sock'} (start it: carbonsched run)\n"
        config = d / "c.toml"
        config.write_text('provider = "trace"\n')
        os.chmod(config, 0o666)
        refused = cli("run", "--config", str(config), "--socket", str(d / "s.sock"), "--state-dir", str(d))
        assert refused.returncode != 0 and refused.stderr.startswith("error: ") and "world-writable" in refused.stderr
        assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
        os.chmod(config, 0o644)
        config.write_text('bogus_key = 1\n')
        unknown = cli("run", "--config", str(config))
        assert unknown.stderr.startswith(f"error: {config}: bogus_key: unknown key")
        bad_provider = cli("run", "--provider", "nonsense?x=1", "--socket", str(d / "s.sock"), "--state-dir", str(d))
        assert bad_provider.returncode == 1 and bad_provider.stderr.startswith("error: cannot start: provider")
        assert "Traceback" not in bad_provider.stderr
        intensity = cli("intensity", "--provider", "trace", "--json")
        assert intensity.returncode == 0 and json.loads(intensity.stdout)["intensity_g_per_kwh"] > 0
