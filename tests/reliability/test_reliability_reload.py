"""SIGHUP with a broken config file keeps the running configuration and says why.

tests/carbonsched/daemon/test_daemon.py covers a broken *policy* file on SIGHUP; here the *config* file breaks in
several ways (invalid TOML, a wrong type, an unknown key, world-writable, a missing policy file,
a deleted file). (A provider spec in the file is not tried here: the test daemon's --provider flag
overrides it, as command-line flags do on reload.) Each time: ρ and the policy stay as they were, ``status.reload_error`` and
the log name the problem, and a fixed file reloads cleanly afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from daemon_helpers import CARBONSCHED_BIN, DaemonProcess, ask_new_conn, configured_daemon, short_dir, wait_until

pytestmark = pytest.mark.slow

POLICY = 'kind = "constant"\nname = "steady"\nrho = 0.55\nrho_min = 0.3\n'
OTHER_POLICY = 'kind = "constant"\nname = "steadier"\nrho = 0.65\nrho_min = 0.3\n'


@pytest.fixture(scope="module")
def daemon():
    with short_dir() as d:
        (d / "policy.toml").write_text(POLICY)
        (d / "other.toml").write_text(OTHER_POLICY)
        with configured_daemon(d, 'policy = "policy.toml"\nretention_days = 7\n') as proc:
            yield proc


BROKEN_CONFIGS = {
    "invalid_toml": ('policy = "policy.toml\nretention_days = 7\n', "carbonsched.toml"),
    "wrong_type": ('policy = "policy.toml"\nretention_days = "a week"\n', "retention_days"),
    "unknown_key": ('policy = "policy.toml"\nretention_dayz = 7\n', "retention_dayz"),
    "world_writable": ('policy = "other.toml"\n', "world-writable"),
    "missing_policy": ('policy = "no-such-policy.toml"\n', "no-such-policy.toml"),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_sighup_with_a_broken_config_keeps_the_running_one(daemon, case):
    text, fragment = BROKEN_CONFIGS[case]
    conn = daemon.conn()
    assert conn.ask(op="rho")["rho"] == 0.55
    daemon.config.write_text(text)
    os.chmod(daemon.config, 0o666 if case == "world_writable" else 0o644)
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: fragment in (conn.ask(op="status")["reload_error"] or ""), 15), conn.ask(op="status")["reload_error"]
    status = conn.ask(op="status")
    assert "keeping the running configuration" in status["reload_error"]
    assert status["policy"]["name"] == "steady" and status["config"]["retention_days"] == 7
    assert status["errors"][-1]["where"] == "reload"
    assert conn.ask(op="rho")["rho"] == 0.55
    assert daemon.proc.poll() is None
    assert wait_until(lambda: fragment in daemon.log(), 15)
    assert "reload failed" in daemon.log()

    # fixed: the next SIGHUP applies it and clears the error; then back to the original
    os.chmod(daemon.config, 0o644)
    daemon.config.write_text('policy = "other.toml"\nretention_days = 7\n')
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="rho")["rho"] == 0.65, 15)
    assert conn.ask(op="status")["reload_error"] is None
    daemon.config.write_text('policy = "policy.toml"\nretention_days = 7\n')
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="rho")["rho"] == 0.55, 15)


def test_a_deleted_config_file_on_sighup_is_reported(daemon):
    conn = daemon.conn()
    saved = daemon.config.read_text()
    daemon.config.unlink()
    try:
        daemon.signal(signal.SIGHUP)
        assert wait_until(lambda: "no such file" in (conn.ask(op="status")["reload_error"] or ""), 15)
        assert conn.ask(op="rho")["rho"] == 0.55
    finally:
        daemon.config.write_text(saved)
    assert conn.ask(op="reload")["reloaded"] is True


def _statuses(notify: socket.socket) -> list[str]:
    """The STATUS= texts of the sd_notify datagrams waiting on ``notify``."""
    texts = []
    while True:
        try:
            data = notify.recv(4096).decode()
        except BlockingIOError:
            return texts
        texts += [line.split("=", 1)[1] for line in data.splitlines() if line.startswith("STATUS=")]


def test_systemd_status_text_and_status_tell_of_a_failed_reload_until_one_succeeds():
    with short_dir() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(d / "notify"))
        notify.setblocking(False)
        (d / "policy.toml").write_text(POLICY)
        (d / "other.toml").write_text(OTHER_POLICY)
        config = d / "carbonsched.toml"
        config.write_text('policy = "policy.toml"\n')
        daemon = DaemonProcess(d, "--config", str(config), env={"NOTIFY_SOCKET": str(d / "notify")}).wait_ready()
        try:
            conn = daemon.conn()
            seen: list[str] = []

            def status_text(predicate) -> bool:
                seen.extend(_statuses(notify))
                return bool(seen) and predicate(seen[-1])

            assert wait_until(lambda: status_text(lambda text: "policy steady" in text), 10), seen
            config.write_text('policy = "policy.toml"\nretention_dayz = 7\n')
            daemon.signal(signal.SIGHUP)
            assert wait_until(lambda: status_text(lambda text: "reload failed" in text), 10), seen
            assert "retention_dayz" in seen[-1] and "policy steady" in seen[-1]

            config.write_text('policy = "other.toml"\n')
            daemon.signal(signal.SIGHUP)
            assert wait_until(lambda: status_text(lambda text: "policy steadier" in text), 10), seen
            assert "reload" not in seen[-1]
            status = conn.ask(op="status")
            assert status["reload_error"] is None
            assert [e for e in status["errors"] if e["where"] == "reload"] == []
            shown = subprocess.run([str(CARBONSCHED_BIN), "status", "--socket", str(daemon.socket)],
                                   capture_output=True, text=True, check=True).stdout
            assert "reload failed" not in shown and "policy     steadier" in shown
        finally:
            assert daemon.stop() == 0


def test_status_stops_showing_a_reload_failure_once_a_reload_succeeds(daemon):
    from typer.testing import CliRunner

    from carbonsched.cli import app

    def status_text() -> str:
        result = CliRunner().invoke(app, ["status", "--socket", str(daemon.socket)])
        assert result.exit_code == 0, result.output
        return result.output

    conn = daemon.conn()
    daemon.config.write_text('policy = "no-such-policy.toml"\n')
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="status")["reload_error"] is not None, 15)
    assert "reload failed" in status_text()
    daemon.config.write_text('policy = "policy.toml"\nretention_days = 7\n')
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: conn.ask(op="status")["reload_error"] is None, 15)
    assert "reload failed" not in status_text()


def test_a_storm_of_sighups_leaves_the_daemon_reloading_and_stoppable():
    """Thousands of SIGHUPs in a few seconds: the daemon stays up, the next SIGHUP after the storm
    still applies a changed config, and SIGTERM stops it cleanly. (A signal handler that took a
    lock the main thread could be holding deadlocked the main loop within seconds of this.)"""
    with short_dir() as d:
        (d / "policy.toml").write_text(POLICY)
        (d / "other.toml").write_text(OTHER_POLICY)
        config = d / "carbonsched.toml"
        config.write_text('policy = "policy.toml"\n')
        daemon = DaemonProcess(d, "--config", str(config)).wait_ready()
        try:
            deadline = time.monotonic() + 3.0
            sent = 0
            while time.monotonic() < deadline and daemon.proc.poll() is None:
                daemon.signal(signal.SIGHUP)
                sent += 1
                time.sleep(0.0005)
            assert daemon.proc.poll() is None, f"died after {sent} SIGHUPs:\n{daemon.log()[-3000:]}"
            config.write_text('policy = "other.toml"\n')
            daemon.signal(signal.SIGHUP)
            assert wait_until(lambda: (ask_new_conn(daemon.socket, op="rho") or {}).get("rho") == 0.65, 30), \
                daemon.log()[-3000:]
        finally:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        log = daemon.log_path.read_text(errors="replace")
        assert "RecursionError" not in log and "Exception ignored" not in log
