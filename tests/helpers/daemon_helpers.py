"""Helpers for tests that talk to real sockets and real daemon processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CARBONSCHED_BIN = Path(sys.executable).parent / "carbonsched"


@contextmanager
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path: unix socket paths are limited to 107 bytes. On
    leaving, whatever the path out (a failed assertion included), any daemon still running from it
    is killed before the directory is deleted."""
    path = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    try:
        yield path
    finally:
        for daemon in [d for d in RUNNING_DAEMONS if d.workdir == path or path in d.workdir.parents]:
            daemon.kill()
        shutil.rmtree(path, ignore_errors=True)


class LineConn:
    """A raw protocol connection: send bytes, read reply lines."""

    def __init__(self, path: Path, timeout_s: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(str(path))
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, **obj: Any) -> dict[str, Any]:
        self.send(json.dumps(obj).encode() + b"\n")
        return self.reply()

    def reply(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def unanswered_and_open(self) -> bool:
        """The server has neither answered nor closed this connection (checked without waiting)."""
        timeout_s = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # returns at once: a reply or EOF is waiting
        except BlockingIOError:
            return self._buf == b""
        except ConnectionResetError:
            return False
        finally:
            self.sock.settimeout(timeout_s)
        return False

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


# What a client sees when a daemon is not listening yet, or refuses a connection because it is at
# its limit (it may still be counting a connection that was just closed): no socket file, ECONNREFUSED
# or EAGAIN from connect, a broken pipe (closed before our request), a reset (closed with our request
# unread), a bare EOF, or no answer within the timeout. Polling treats each as "not yet".
NOT_ADMITTED_ERRORS = (FileNotFoundError, ConnectionError, BlockingIOError, TimeoutError)


def admitted_conn(path: Path, timeout_s: float = 5.0) -> LineConn | None:
    """A new connection the daemon admitted (it answered a ping), or None if it was refused."""
    try:
        conn = LineConn(path, timeout_s)
    except NOT_ADMITTED_ERRORS:
        return None
    try:
        if conn.ask(op="ping").get("ok") is True:
            return conn
    except NOT_ADMITTED_ERRORS:
        pass
    conn.close()
    return None


def ask_new_conn(path: Path, timeout_s: float = 5.0, **request: Any) -> dict[str, Any] | None:
    """``request`` on a new connection: the reply, or None if the daemon refused the connection."""
    try:
        conn = LineConn(path, timeout_s)
    except NOT_ADMITTED_ERRORS:
        return None
    try:
        reply = conn.ask(**request)
    except NOT_ADMITTED_ERRORS:
        return None
    finally:
        conn.close()
    if not reply.get("ok") and reply.get("error", {}).get("code") == "unavailable":
        return None
    return reply


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


RUNNING_DAEMONS: set["DaemonProcess"] = set()  # started and not yet stopped or killed


class DaemonProcess:
    """`carbonsched run` as a real subprocess with short intervals."""

    def __init__(self, workdir: Path, *extra_args: str, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.socket = workdir / "run" / "carbonsched.sock"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "daemon.log"
        args = [
            str(CARBONSCHED_BIN), "run", "--socket", str(self.socket), "--state-dir", str(self.state_dir),
            "--provider", "trace?speedup=3600", "--poll-intensity-s", "0.2", "--sample-power-s", "0.2",
            "--decide-s", "0.3", *extra_args,
        ]
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
        full_env.update(env or {})
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=workdir)
        RUNNING_DAEMONS.add(self)

    def wait_ready(self, timeout_s: float = 30.0) -> "DaemonProcess":
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            conn = admitted_conn(self.socket, timeout_s=2.0)
            if conn is None:
                return False
            conn.close()
            return True

        try:
            ready = wait_until(answers, timeout_s)
        except BaseException:
            self.kill()
            raise
        if not ready:  # never leave a daemon running that no test will stop
            log = self.log()
            self.kill()
            raise AssertionError(f"daemon not ready within {timeout_s:g} s (killed):\n{log}")
        return self

    def kill(self) -> None:
        """SIGKILL the daemon (if it still runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()
        RUNNING_DAEMONS.discard(self)

    def conn(self) -> LineConn:
        return LineConn(self.socket)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        RUNNING_DAEMONS.discard(self)
        return self.proc.returncode


@contextmanager
def configured_daemon(workdir: Path, config_text: str) -> Iterator[DaemonProcess]:
    """A ready daemon run with ``--config workdir/carbonsched.toml`` holding ``config_text``
    (``proc.config`` is that file), stopped on leaving."""
    config = workdir / "carbonsched.toml"
    config.write_text(config_text)
    proc = DaemonProcess(workdir, "--config", str(config)).wait_ready()
    proc.config = config
    try:
        yield proc
    finally:
        proc.stop()


def write_policy(directory: Path, rho: float = 0.7) -> Path:
    """A constant policy: the tiny test model's cheapest feasible ρ is about 0.51."""
    path = directory / "policy.toml"
    path.write_text(f'kind = "constant"\nname = "test-constant"\nrho = {rho}\nrho_min = 0.34\n')
    return path


def store_integrity(db: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of a daemon's store: "ok" when it is sound."""
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
