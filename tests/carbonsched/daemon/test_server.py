"""The unix-socket server with real sockets, real threads and a real unprivileged peer."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time

import pytest

from carbonsched.protocol import ProtocolError
from carbonsched.daemon.server import ServerError, UnixSocketServer

from daemon_helpers import LineConn, short_dir, wait_until


# A "held" request stays in its handler until the test releases it.
HELD_ENTERED = threading.Event()
HELD_RELEASE = threading.Event()


def handler(request, peer):
    if request.op == "rho" and request.fields.get("job_id") == "held":
        HELD_ENTERED.set()
        HELD_RELEASE.wait(10)
    if request.op == "rho" and request.fields.get("job_id") == "boom":
        raise RuntimeError("handler bug")
    if request.op == "rho" and request.fields.get("job_id") == "nope":
        raise ProtocolError("bad_request", "unknown job_id 'nope'")
    if request.op == "rho" and request.fields.get("job_id") == "slow":
        time.sleep(0.5)
    return {"op": request.op, "peer_uid": peer.uid, "peer_pid": peer.pid}


@pytest.fixture
def sock_dir():
    with short_dir() as d:
        yield d


@pytest.fixture
def server(sock_dir):
    srv = UnixSocketServer(sock_dir / "s.sock", handler, max_connections=8, read_timeout_s=0.5)
    srv.start()
    yield srv
    srv.stop()


def test_socket_file_is_0660_and_peer_credentials_reach_the_handler(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    conn = LineConn(server.path)
    reply = conn.ask(op="ping", id="a")
    assert reply["ok"] is True and reply["v"] == 1 and reply["id"] == "a"
    assert reply["peer_uid"] == os.getuid() and reply["peer_pid"] == os.getpid()
    conn.close()


def test_errors_are_replies_and_the_connection_stays_usable(server):
    conn = LineConn(server.path)
    assert conn.ask(op="fly")["error"]["code"] == "unknown_op"
    conn.send(b"{broken\n")
    assert conn.reply()["error"]["code"] == "bad_json"
    conn.send(b'{"op": "rho", "job_id": "\xff"}\n')
    assert conn.reply()["error"]["code"] == "bad_json"
    assert conn.ask(op="job.start", model="m", scheme="s", pid="x")["error"]["code"] == "bad_request"
    internal = conn.ask(op="rho", job_id="boom")
    assert internal["error"]["code"] == "internal" and "handler bug" not in internal["error"]["message"]
    assert conn.ask(op="rho", job_id="nope")["error"] == {"code": "bad_request", "message": "unknown job_id 'nope'"}
    # Two requests in one write, each answered in order.
    conn.send(b'{"op":"ping","id":1}\n{"op":"status","id":2}\n')
    assert [conn.reply()["id"], conn.reply()["id"]] == [1, 2]
    assert conn.ask(op="ping")["ok"] is True
    conn.close()


def test_too_large_line_gets_an_error_then_the_connection_closes(sock_dir):
    srv = UnixSocketServer(sock_dir / "s.sock", handler, max_line_bytes=1024)
    srv.start()
    try:
        conn = LineConn(srv.path)
        conn.send(b'{"op": "ping", "pad": "' + b"x" * 4096)
        assert conn.reply()["error"]["code"] == "too_large"
        assert conn.closed_by_server()
        assert LineConn(srv.path).ask(op="ping")["ok"] is True
    finally:
        srv.stop()


def test_a_stalled_half_line_client_neither_blocks_others_nor_keeps_its_slot(sock_dir):
    # A read timeout far above any scheduling delay: the other client is answered while the
    # stalled one still holds its slot, which a server reading one connection at a time cannot do.
    srv = UnixSocketServer(sock_dir / "s.sock", handler, read_timeout_s=3.0)
    srv.start()
    try:
        stalled = LineConn(srv.path)
        stalled.send(b'{"op": "pi')
        other = LineConn(srv.path)
        assert other.ask(op="ping")["ok"] is True
        assert stalled.unanswered_and_open()
        other.close()
        assert stalled.closed_by_server()  # after read_timeout_s
        assert wait_until(lambda: srv.active_connections == 0, 10)
    finally:
        srv.stop()


def test_concurrent_clients_all_get_their_own_answers(server):
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            conn = LineConn(server.path)
            for i in range(25):
                reply = conn.ask(op="ping", id=f"{n}-{i}")
                if reply.get("id") != f"{n}-{i}":
                    errors.append(f"wrong reply {reply}")
            conn.close()
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []


def test_a_request_in_progress_does_not_delay_other_connections(server):
    HELD_ENTERED.clear()
    HELD_RELEASE.clear()
    held = LineConn(server.path)
    held.send(b'{"op": "rho", "job_id": "held"}\n')
    try:
        assert HELD_ENTERED.wait(10)
        assert LineConn(server.path).ask(op="ping")["ok"]  # while the held request is still in its handler
        assert held.unanswered_and_open()
    finally:
        HELD_RELEASE.set()
    assert held.reply()["ok"]


def test_vanished_clients_do_not_hurt_the_server(server):
    for _ in range(6):  # under max_connections: each holds its slot until the reply fails
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(server.path))
        s.sendall(b'{"op": "rho", "job_id": "slow"}\n')
        s.close()  # gone before the reply is written
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(server.path))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    s.sendall(b'{"op": "pi')
    s.close()
    assert LineConn(server.path).ask(op="ping")["ok"] is True
    assert wait_until(lambda: server.active_connections == 0, 10)
    assert LineConn(server.path).ask(op="ping")["ok"] is True


def test_connections_over_the_limit_get_an_error_line_and_are_closed(sock_dir):
    srv = UnixSocketServer(sock_dir / "s.sock", handler, max_connections=2, read_timeout_s=5.0)
    srv.start()
    try:
        held = [LineConn(srv.path), LineConn(srv.path)]
        for conn in held:
            assert conn.ask(op="ping")["ok"]
        extra = LineConn(srv.path)
        reply = extra.reply()
        assert reply["ok"] is False and reply["error"]["code"] == "unavailable"
        assert extra.closed_by_server()
        held[0].close()
        assert wait_until(lambda: srv.active_connections == 1, 10)
        assert LineConn(srv.path).ask(op="ping")["ok"]
    finally:
        srv.stop()


def test_stale_socket_is_replaced_but_a_live_one_or_a_regular_file_is_not(sock_dir):
    path = sock_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening
    first = UnixSocketServer(path, handler)
    first.start()
    try:
        with pytest.raises(ServerError, match="already listening"):
            UnixSocketServer(path, handler).start()
        assert LineConn(path).ask(op="ping")["ok"]
    finally:
        first.stop()
    assert not path.exists()
    regular = sock_dir / "file"
    regular.write_text("data")
    with pytest.raises(ServerError, match="not a socket"):
        UnixSocketServer(regular, handler).start()
    assert regular.read_text() == "data"


NOBODY_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
buf = b""
for line in sys.argv[2:]:
    s.sendall(line.encode() + b"\\n")
    while b"\\n" not in buf:
        buf += s.recv(65536)
    reply, buf = buf.split(b"\\n", 1)
    print(reply.decode())
"""


@pytest.mark.slow
def test_admin_ops_are_refused_to_another_uid_but_normal_ops_work(sock_dir):
    os.chmod(sock_dir, 0o755)  # let nobody reach the socket; the socket itself stays 0660
    srv = UnixSocketServer(sock_dir / "s.sock", handler)
    srv.start()
    try:
        os.chown(srv.path, -1, 65534)  # nobody's group may connect, as the carbonsched group would
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", NOBODY_CLIENT,
             str(srv.path), '{"op": "ping"}', '{"op": "override", "rho": 0.5}', '{"op": "reload"}'],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.splitlines()
        import json

        ping, override, reload = (json.loads(line) for line in out)
        assert ping["ok"] is True and ping["peer_uid"] == 65534
        assert override["ok"] is False and override["error"]["code"] == "forbidden"
        assert reload["error"]["code"] == "forbidden"
        assert LineConn(srv.path).ask(op="override", rho=0.5)["ok"] is True  # root/own uid allowed
    finally:
        srv.stop()
