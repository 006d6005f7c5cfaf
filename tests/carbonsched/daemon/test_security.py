"""Security properties of a real `carbonsched run` subprocess.

- The socket is mode 0660; a user outside its group cannot even connect.
- A client under another uid (setpriv to 65534, /usr/bin/python3 with only the stdlib) that is
  let into the socket's group can ask ρ and run its own job, but cannot use admin ops (override,
  reload) nor start, end or write epochs of another user's job.
- A recognisable fake API key never shows in the daemon's log, ``status``, error replies or CLI
  output, even when the provider answers 401 and echoes the credentials back.
- A world-writable config file is refused with a one-line error.
- ``carbonsched report --plot/--output`` write only where the user pointed them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import textwrap

import pytest

from daemon_helpers import CARBONSCHED_BIN, DaemonProcess, short_dir, wait_until
from provider_server import FakeProviderServer, Reply

pytestmark = pytest.mark.slow

NOBODY = 65534
FAKE_KEY = "cs-FAKEKEY-7f3a9c1e5b2d"
SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = "/usr/bin/python3"

needs_root = pytest.mark.skipif(os.getuid() != 0 or not SETPRIV or not os.path.exists(SYSTEM_PYTHON),
                                reason="needs root, setpriv and /usr/bin/python3")

OTHER_UID_CLIENT = textwrap.dedent("""\
    import json, socket, sys
    path, victim = sys.argv[1], sys.argv[2]
    results = {}
    try:
        open(sys.argv[3], "rb")
        results["read_store"] = "ok"
    except OSError as exc:
        results["read_store"] = type(exc).__name__
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    f = s.makefile("rwb")
    def ask(name, **req):
        f.write(json.dumps(req).encode() + b"\\n"); f.flush()
        reply = json.loads(f.readline())
        results[name] = "ok" if reply["ok"] else reply["error"]["code"]
        return reply
    ask("ping", op="ping")
    ask("rho", op="rho")
    ask("override", op="override", rho=0.1)
    ask("override_clear", op="override", rho=None)
    ask("reload", op="reload")
    ask("victim_epoch_start", op="epoch.start", job_id=victim, epoch=5, rho_asked=0.2)
    ask("victim_epoch_end", op="epoch.end", job_id=victim, epoch=0, rho_asked=0.2, rho_effective=0.2)
    ask("victim_job_end", op="job.end", job_id=victim, status="cancelled")
    ask("victim_job_start", op="job.start", job_id=victim, model="x", scheme="y", pid=1)
    own = ask("own_job_start", op="job.start", model="m", scheme="s", pid=1)
    ask("own_epoch_end", op="epoch.end", job_id=own["job_id"], epoch=0, rho_asked=0.5, rho_effective=0.5)
    ask("own_job_end", op="job.end", job_id=own["job_id"], status="completed")
    print(json.dumps(results))
""")


def _as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, *args],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def daemon():
    with short_dir() as d:
        proc = DaemonProcess(d).wait_ready()
        try:
            yield proc
        finally:
            proc.stop()


def test_socket_is_0660(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


@needs_root
def test_another_uid_cannot_connect_outside_the_group_nor_act_as_admin_or_owner(daemon):
    conn = daemon.conn()
    victim = conn.ask(op="job.start", model="opt", scheme="gt", pid=os.getpid(), job_id="root-job")["job_id"]
    assert conn.ask(op="epoch.end", job_id=victim, epoch=0, rho_asked=0.7, rho_effective=0.7, wall_s=1.0)["ok"]
    db = daemon.state_dir / "carbonsched.sqlite3"
    before = sqlite3.connect(str(db)).execute("SELECT * FROM epochs WHERE job_id = ?", (victim,)).fetchall()

    script = daemon.workdir / "other_uid_client.py"
    script.write_text(OTHER_UID_CLIENT)
    os.chmod(script, 0o644)
    os.chmod(daemon.workdir, 0o711)  # let uid 65534 reach the script and the socket's directory
    run_dir = daemon.socket.parent

    # Not in the socket's group: mode 0660 keeps it out entirely.
    denied = _as_nobody(str(script), str(daemon.socket), victim, str(db))
    assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied.stderr

    # In the socket's group (how a deployment admits trainers): the daemon's own rules apply.
    os.chown(run_dir, 0, NOBODY)
    os.chown(daemon.socket, 0, NOBODY)
    try:
        out = _as_nobody(str(script), str(daemon.socket), victim, str(db))
    finally:
        os.chown(daemon.socket, 0, 0)
        os.chown(run_dir, 0, 0)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    print(f"\nuid {NOBODY}: {results}")
    assert results["read_store"] == "PermissionError"
    assert results["ping"] == results["rho"] == "ok"
    assert results["override"] == results["override_clear"] == results["reload"] == "forbidden"
    for op in ("victim_epoch_start", "victim_epoch_end", "victim_job_end", "victim_job_start"):
        assert results[op] == "forbidden", (op, results)
    assert results["own_job_start"] == results["own_epoch_end"] == results["own_job_end"] == "ok"

    assert conn.ask(op="rho")["override"] is False
    assert conn.ask(op="jobs", status="running")["jobs"][-1]["job_id"] == victim
    after = sqlite3.connect(str(db)).execute("SELECT * FROM epochs WHERE job_id = ?", (victim,)).fetchall()
    assert after == before
    nobody_jobs = [j for j in conn.ask(op="jobs")["jobs"] if j["uid"] == NOBODY]
    assert len(nobody_jobs) == 1 and nobody_jobs[0]["status"] == "completed"


def test_api_key_never_appears_in_logs_status_errors_or_cli_output():
    with short_dir() as d, FakeProviderServer() as server:
        # The fake server expects another token: every call is a 401, and some echo the credentials.
        server.queue("/v3/carbon-intensity/latest", *[Reply(401, echo_auth=True)] * 3)
        server.queue("/v3/carbon-intensity/forecast", *[Reply(401, echo_auth=True)] * 3)
        spec = f"electricitymaps:DE?base_url={server.url}&max_tries=1,static:DEU"
        env = {"ELECTRICITYMAPS_TOKEN": FAKE_KEY}
        daemon = DaemonProcess(d, "--provider", spec, env=env).wait_ready()
        try:
            assert wait_until(lambda: server.count("/v3/carbon-intensity/latest") >= 1, 15)
            conn = daemon.conn()
            assert wait_until(lambda: "401" in json.dumps(conn.ask(op="status")["provider"]), 15)
            status = conn.ask(op="status")
            outputs = {"status": json.dumps(status), "rho": json.dumps(conn.ask(op="rho"))}
            bad = conn.ask(op="job.start", model=FAKE_KEY[:3], scheme="s", pid="x")  # an error reply
            outputs["error_reply"] = json.dumps(bad)
            cli_env = {**os.environ, **env}
            for name, args in {
                "cli_status": ["status", "--socket", str(daemon.socket)],
                "cli_status_json": ["status", "--socket", str(daemon.socket), "--json"],
                "cli_rho": ["rho", "--socket", str(daemon.socket), "--json"],
                "cli_intensity": ["intensity", "--provider", f"electricitymaps:DE?base_url={server.url}&max_tries=1"],
                "cli_doctor": ["doctor", "--socket", str(daemon.socket), "--provider",
                               f"electricitymaps:DE?base_url={server.url}&max_tries=1", "--check-network"],
            }.items():
                server.queue("/v3/carbon-intensity/latest", Reply(401, echo_auth=True))
                out = subprocess.run([str(CARBONSCHED_BIN), *args], capture_output=True, text=True, timeout=60, env=cli_env)
                outputs[name] = out.stdout + out.stderr
            assert "401" in outputs["cli_intensity"], outputs["cli_intensity"]
        finally:
            daemon.stop()
        outputs["daemon_log"] = daemon.log_path.read_text(errors="replace")
        assert any(h.headers.get("auth-token") == FAKE_KEY for h in server.hits)  # the key was really used
        leaks = [name for name, text in outputs.items() if FAKE_KEY in text or FAKE_KEY[3:] in text]
        print(f"\nsearched {len(outputs)} outputs ({sum(map(len, outputs.values()))} chars) for the key: {len(leaks)} leaks")
        assert not leaks, {name: outputs[name][:2000] for name in leaks}


def test_world_writable_config_is_refused_with_a_clear_error():
    with short_dir() as d:
        config = d / "carbonsched.toml"
        config.write_text("retention_days = 7\n")
        os.chmod(config, 0o666)
        out = subprocess.run(
            [str(CARBONSCHED_BIN), "run", "--config", str(config), "--socket", str(d / "s.sock"),
             "--state-dir", str(d / "state"), "--provider", "static:DEU"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode != 0
        assert "world-writable" in out.stderr and str(config) in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert not (d / "s.sock").exists()


def test_report_and_plot_write_only_where_the_user_pointed():
    with short_dir() as d:
        daemon = DaemonProcess(d).wait_ready()
        try:
            conn = daemon.conn()
            for job_id in ("../../escape", "/tmp/abs-escape", "ok-job"):
                assert conn.ask(op="job.start", model="../m", scheme="s", pid=1, job_id=job_id)["ok"]
                assert conn.ask(op="epoch.end", job_id=job_id, epoch=0, rho_asked=0.5, rho_effective=0.5, wall_s=1.0,
                                flops_forward=1e9, flops_backward=1e9, flops_full=3e9)["ok"]
                assert conn.ask(op="job.end", job_id=job_id, status="completed")["ok"]
        finally:
            daemon.stop()
        out_dir = d / "out"
        out_dir.mkdir()
        before_tmp = set(os.listdir("/tmp"))
        before_d = set(os.listdir(d))

        def report(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(CARBONSCHED_BIN), "report", "--state-dir", str(daemon.state_dir), *args],
                                  capture_output=True, text=True, timeout=120, cwd=out_dir)

        done = report("--plot", str(out_dir / "plot.png"), "--output", str(out_dir / "report.txt"))
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(out_dir)) == ["plot.png", "report.txt"]
        assert set(os.listdir(d)) == before_d
        assert not any(name.startswith(("abs-escape", "escape")) for name in set(os.listdir("/tmp")) - before_tmp)
        assert not (d.parent / "escape").exists() and not os.path.exists("/tmp/abs-escape")

        for bad in (str(out_dir), str(out_dir) + "/", str(d / "missing-dir" / "plot.png")):
            refused = report("--plot", bad)
            assert refused.returncode != 0 and refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
        assert sorted(os.listdir(out_dir)) == ["plot.png", "report.txt"]
