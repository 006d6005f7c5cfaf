"""carbonsched as the demo uses it: ``carbonsched run`` as a child process and ``carbonsched report``.

Only the daemon's command line and its client are used, never its store or report internals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

from carbon_demo.errors import DemoError

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
REPORT_TIMEOUT_S = 120.0
CARBONSCHED = (sys.executable, "-m", "carbonsched.cli")
# The demo's daemon is a plain child process, not a systemd service.
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")


class DaemonSubprocess:
    """``carbonsched run`` in a child process, logging to a file; ``stop()`` always ends it."""

    def __init__(self, socket_path: Path, state_dir: Path, log_path: Path, *, speedup: float, policy: Path | None):
        self.socket_path = socket_path
        self.log_path = log_path
        args = [
            *CARBONSCHED, "run",
            "--socket", str(socket_path), "--state-dir", str(state_dir),
            "--provider", f"trace?speedup={speedup:g}",
            "--poll-intensity-s", "0.5", "--sample-power-s", "0.5", "--decide-s", "0.5",
            *(["--policy", str(policy)] if policy is not None else []),
        ]
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 5) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with DaemonClient(self.socket_path, timeout_s=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise DemoError(f"the daemon exited with code {self.proc.returncode}: {self.log_tail(1)}")
                try:
                    if client.call("ping").get("pong"):
                        return
                except (DaemonUnavailable, DaemonRequestError):
                    time.sleep(0.1)
        raise DemoError(f"the daemon did not answer within {timeout_s:g} s; log: {self.log_path}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; the exit code (negative: the signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def write_report(state_dir: Path, job_id: str, report_path: Path, plot_path: Path) -> str:
    """``carbonsched report`` of one job from the daemon's state: the table (also written to
    ``report_path``) is returned, the PNG plot goes to ``plot_path``."""
    args = [
        *CARBONSCHED, "report", "--state-dir", str(state_dir), "--job", job_id,
        "--output", str(report_path), "--plot", str(plot_path),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=REPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"carbonsched report exited with code {done.returncode}: {last_line}")
    return report_path.read_text(encoding="utf-8").rstrip("\n")
