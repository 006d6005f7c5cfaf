"""sd_notify against real datagram sockets, path and abstract."""

from __future__ import annotations

import os
import socket

import pytest

from carbonsched.daemon.sd_notify import Notifier

from daemon_helpers import short_dir


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.strip().split("\n"))


def test_messages_reach_a_path_socket():
    with short_dir() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(d / "notify"))
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(d / "notify")})
        assert n.ready(status="rho 0.5\nsecond line")
        assert receive(sock) == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "rho 0.5 second line"}
        assert n.watchdog() and receive(sock) == {"WATCHDOG": "1"}
        assert n.status("reloading policy") and receive(sock) == {"STATUS": "reloading policy"}
        assert n.stopping() and receive(sock) == {"STOPPING": "1"}


def test_messages_reach_an_abstract_socket():
    name = f"carbonsched-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock)["READY"] == "1"


def test_without_notify_socket_nothing_is_sent_and_a_dead_socket_is_not_fatal():
    assert not Notifier({}).ready()
    assert not Notifier({}).enabled
    with short_dir() as d:
        assert not Notifier({"NOTIFY_SOCKET": str(d / "gone")}).watchdog()


@pytest.mark.parametrize(
    ("env", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env, interval_s):
    assert Notifier(env).watchdog_interval_s == interval_s
