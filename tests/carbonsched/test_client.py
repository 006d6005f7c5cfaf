"""DaemonClient against real sockets: answers, fallbacks, timeouts, reconnects; path defaults."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable
from carbonsched.paths import default_socket_path, default_state_dir
from carbonsched.protocol import ProtocolError
from carbonsched.daemon.server import UnixSocketServer

from daemon_helpers import short_dir, wait_until


class FakeDaemon:
    """A real protocol server whose ρ answer the test controls."""

    def __init__(self, path: Path, read_timeout_s: float = 5.0):
        self.rho = 0.6
        self.seen: list[tuple[str, dict]] = []
        self.server = UnixSocketServer(path, self.handle, read_timeout_s=read_timeout_s)

    def handle(self, request, peer):
        self.seen.append((request.op, dict(request.fields)))
        if request.op == "rho":
            return {"rho": self.rho, "policy": "fake", "reason": "test"}
        if request.op == "job.start":
            return {"job_id": request.fields.get("job_id", "generated")}
        if request.op == "job.end" and request.fields["job_id"] == "unknown":
            raise ProtocolError("bad_request", "unknown job_id 'unknown'")
        return {}


class SilentServer:
    """Accepts connections, reads, never answers."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def sock_dir():
    with short_dir() as d:
        yield d


def test_round_trip_and_error_replies(sock_dir):
    fake = FakeDaemon(sock_dir / "d.sock")
    fake.server.start()
    try:
        with DaemonClient(sock_dir / "d.sock") as client:
            answer = client.rho(job_id="j1")
            assert (answer.rho, answer.source) == (0.6, "daemon")
            assert answer.detail["policy"] == "fake"
            assert client.request("nope")["error"]["code"] == "unknown_op"
            with pytest.raises(DaemonRequestError) as info:
                client.call("nope")
            assert info.value.code == "unknown_op"
            assert client.job_start("opt", "greentrainer", job_id="j1") == "j1"
            assert client.epoch_start("j1", 0, 0.5) == {"v": 1, "ok": True, "id": 5}
            assert client.epoch_end("j1", 0, 0.5, 0.5, wall_s=1.0, train_loss=float("nan")) is None  # unencodable
            assert client.epoch_end("j1", 0, 0.5, 0.5, wall_s=1.0, grad_norm=0.3) is not None
            assert client.job_end("unknown") is None  # error reply: no exception for the trainer
            assert client.job_end("j1") is not None
        ops = [op for op, _ in fake.seen]
        assert ops == ["rho", "job.start", "epoch.start", "epoch.end", "job.end", "job.end"]  # unknown ops never reach it
        assert fake.seen[1][1]["pid"] == os.getpid()
    finally:
        fake.server.stop()


def test_without_a_daemon_rho_is_the_default_and_helpers_return_none(sock_dir):
    timeout_s = 5.0
    client = DaemonClient(sock_dir / "absent.sock", timeout_s=timeout_s, default_rho=0.8)
    started = time.monotonic()
    answer = client.rho()
    assert answer.rho == 0.8 and answer.source == "default" and "not found" in answer.detail["reason"]
    assert client.rho(default=0.3).rho == 0.3
    assert client.job_start("m", "s") is None
    assert client.epoch_end("j", 0, 0.5, 0.5) is None
    assert time.monotonic() - started < timeout_s  # a missing socket fails at once, never after a timeout
    with pytest.raises(DaemonUnavailable):
        client.request("ping")


def test_a_daemon_that_never_answers_costs_at_most_the_timeout(sock_dir):
    path = sock_dir / "silent.sock"
    silent = SilentServer(path)
    try:
        timeout_s = 1.0
        client = DaemonClient(path, timeout_s=timeout_s)
        for _ in range(2):
            started = time.monotonic()
            answer = client.rho(default=0.7)
            elapsed = time.monotonic() - started
            assert answer.source == "default" and answer.rho == 0.7 and answer.detail["reason"].endswith("timed out")
            # One timeout, not two (connect and read) nor a retry; the margin absorbs a loaded machine.
            assert 0.9 * timeout_s <= elapsed < 2 * timeout_s
    finally:
        silent.close()


def test_last_known_rho_is_used_when_the_daemon_goes_away(sock_dir):
    path = sock_dir / "d.sock"
    fake = FakeDaemon(path)
    fake.server.start()
    client = DaemonClient(path, timeout_s=0.3, default_rho=1.0)
    fake.rho = 0.45
    assert client.rho().source == "daemon"
    fake.server.stop()
    silent = SilentServer(path)  # same path, now a stuck process
    try:
        answer = client.rho()
        assert (answer.rho, answer.source) == (0.45, "last_known")
        assert answer.detail["age_s"] >= 0
    finally:
        silent.close()


def test_client_reconnects_after_the_server_drops_an_idle_connection(sock_dir):
    path = sock_dir / "d.sock"
    fake = FakeDaemon(path, read_timeout_s=0.2)
    fake.server.start()
    try:
        client = DaemonClient(path, timeout_s=1.0)
        assert client.rho().source == "daemon"
        assert wait_until(lambda: fake.server.active_connections == 0, 10)  # the server dropped the idle connection
        assert client.rho().source == "daemon"
        fake.rho = 0.9
        assert client.rho().rho == 0.9
    finally:
        fake.server.stop()


def test_a_reply_out_of_range_is_not_trusted(sock_dir):
    path = sock_dir / "d.sock"
    fake = FakeDaemon(path)
    fake.rho = 1.7
    fake.server.start()
    try:
        answer = DaemonClient(path, default_rho=1.0).rho()
        assert answer.source == "default" and "outside" in answer.detail["reason"]
    finally:
        fake.server.stop()


def test_default_socket_path_order(tmp_path):
    assert default_socket_path({"CARBONSCHED_SOCKET": "/x/y.sock", "XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/x/y.sock")
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/run/user/1/carbonsched/carbonsched.sock")
    fallback = default_socket_path({})
    if Path("/run/carbonsched").is_dir():
        assert fallback == Path("/run/carbonsched/carbonsched.sock")
    else:
        assert fallback == Path(f"/tmp/carbonsched-{os.getuid()}/carbonsched.sock")


def _stale_socket(path: Path) -> Path:
    """A socket file nobody listens on (what a stopped daemon may leave behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    return path


@pytest.fixture
def session_env(monkeypatch, sock_dir):
    """A login session ($XDG_RUNTIME_DIR set) and a service runtime dir, both in a temp dir."""
    monkeypatch.delenv("CARBONSCHED_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(sock_dir / "user"))
    monkeypatch.setenv("CARBONSCHED_SYSTEM_RUNTIME_DIR", str(sock_dir / "run"))
    (sock_dir / "run").mkdir()
    return {"user": sock_dir / "user" / "carbonsched" / "carbonsched.sock", "service": sock_dir / "run" / "carbonsched.sock"}


def test_a_login_session_finds_the_service_when_no_own_daemon_listens(session_env):
    _stale_socket(session_env["user"])
    service = FakeDaemon(session_env["service"])
    service.server.start()
    try:
        with DaemonClient() as client:
            assert client.socket_path == session_env["service"]
            client.call("ping")
        assert [op for op, _ in service.seen] == ["ping"]
    finally:
        service.server.stop()


def test_the_users_own_daemon_wins_while_it_listens(session_env):
    session_env["user"].parent.mkdir(parents=True)
    own, service = FakeDaemon(session_env["user"]), FakeDaemon(session_env["service"])
    own.server.start()
    service.server.start()
    try:
        with DaemonClient() as client:
            client.call("ping")
        assert [op for op, _ in own.seen] == ["ping"] and service.seen == []
    finally:
        own.server.stop()
        service.server.stop()


def test_with_nothing_listening_clients_name_the_service_socket_and_how_to_start_it(session_env, sock_dir, monkeypatch):
    _stale_socket(session_env["user"])
    client = DaemonClient()
    assert client.socket_path == session_env["service"]
    assert "systemctl start carbonsched" in client.start_hint
    (sock_dir / "run").rmdir()  # no service installed: the daemon this user would start
    client = DaemonClient()
    assert client.socket_path == session_env["user"] and client.start_hint == "carbonsched run"


def test_default_state_dir_order():
    assert default_state_dir({"CARBONSCHED_STATE_DIR": "/s", "STATE_DIRECTORY": "/var/lib/carbonsched"}) == Path("/s")
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/carbonsched:/var/lib/other"}) == Path("/var/lib/carbonsched")
    assert default_state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/carbonsched")
    assert default_state_dir({"HOME": "/home/u", "XDG_STATE_HOME": "/xs"}) == Path("/xs/carbonsched")


@pytest.mark.slow
def test_a_daemon_refusing_connections_is_unavailable_busy_and_rho_falls_back():
    from daemon_helpers import admitted_conn, configured_daemon

    with short_dir() as d, configured_daemon(d, "max_connections = 1\n") as daemon:
        holders: list = []

        def take_the_only_slot() -> bool:
            # Refused until the daemon has let go of wait_ready's own connection.
            conn = admitted_conn(daemon.socket)
            if conn is not None:
                holders.append(conn)
            return conn is not None

        assert wait_until(take_the_only_slot, 10)
        (holder,) = holders
        client = DaemonClient(daemon.socket, timeout_s=2.0, default_rho=0.9)
        for _ in range(20):  # sometimes refused before the request is even read: same outcome
            with pytest.raises(DaemonUnavailable, match="busy: too many connections"):
                client.call("ping")
        answer = client.rho()
        assert answer.rho == 0.9 and answer.source != "daemon"
        holder.close()

        def answered() -> bool:
            try:
                return client.call("ping")["ok"]
            except DaemonUnavailable:
                return False

        assert wait_until(answered, 15)  # the slot is free again
