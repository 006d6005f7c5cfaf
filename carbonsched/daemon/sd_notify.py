"""sd_notify(3) over $NOTIFY_SOCKET, by hand: one AF_UNIX datagram of newline-separated
KEY=VALUE assignments. A name starting with '@' is in the abstract namespace. Without
$NOTIFY_SOCKET (not under systemd) every call is a no-op."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("carbonsched.notify")


def _address(notify_socket: str) -> str | bytes:
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.notify_socket = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = self._parse_watchdog(env)

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> int | None:
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None  # the watchdog belongs to another process (e.g. our parent)
        return usec if usec > 0 else None

    @property
    def enabled(self) -> bool:
        return self.notify_socket is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the configured timeout, as sd_watchdog_enabled advises."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def send(self, **assignments: str | int) -> bool:
        """Send KEY=VALUE lines; True if the datagram was sent. Never raises."""
        if self.notify_socket is None:
            return False
        lines = []
        for key, value in assignments.items():
            text = str(value).replace("\n", " ")
            lines.append(f"{key}={text}")
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(_address(self.notify_socket))
                sock.sendall(payload)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.notify_socket, exc.strerror or exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"READY": 1, "MAINPID": os.getpid()}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        return self.send(RELOADING=1)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)
