"""Unix-socket server for the JSON-lines protocol: one thread per connection, bounded.

The server owns transport concerns only: socket file lifecycle and mode, connection limits,
timeouts, line framing, peer credentials and the admin-op rule. What an op does is the
handler's business; whatever the handler raises becomes an ``internal`` error reply.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from carbonsched.protocol import (
    ADMIN_OPS,
    DEFAULT_MAX_LINE_BYTES,
    LineBuffer,
    ProtocolError,
    Request,
    decode_request,
    encode,
    error_reply,
    ok_reply,
)

log = logging.getLogger("carbonsched.server")

_UMASK_LOCK = threading.Lock()
_PEERCRED_STRUCT = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


Handler = Callable[[Request, PeerCred], dict[str, Any]]


class ServerError(Exception):
    """The socket cannot be served (another daemon listens, path is not a socket, ...)."""


def peer_credentials(conn: socket.socket) -> PeerCred:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED_STRUCT.size)
    return PeerCred(*_PEERCRED_STRUCT.unpack(raw))


def socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # A listener with a full backlog still counts as alive.
        return exc.errno in (errno.EAGAIN, errno.ETIMEDOUT)
    finally:
        probe.close()


class UnixSocketServer:
    def __init__(
        self,
        path: Path | str,
        handler: Handler,
        *,
        max_connections: int = 64,
        read_timeout_s: float = 30.0,
        write_timeout_s: float = 5.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        socket_mode: int = 0o660,
        admin_uids: frozenset[int] | None = None,
    ):
        self.path = Path(path)
        self.handler = handler
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_line_bytes = max_line_bytes
        self.socket_mode = socket_mode
        self.admin_uids = admin_uids if admin_uids is not None else frozenset({0, os.getuid()})
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()
        self.connections_refused = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._bind()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="carbonsched-accept", daemon=True)
        self._accept_thread.start()

    def _bind(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            mode = self.path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                raise ServerError(f"{self.path} exists and is not a socket; refusing to replace it")
            if socket_in_use(self.path):
                raise ServerError(f"another process is already listening on {self.path}")
            log.info("replacing stale socket file %s", self.path)
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind under a umask that already yields the final mode: no window with wider access.
            with _UMASK_LOCK:
                old_umask = os.umask(0o777 & ~self.socket_mode)
                try:
                    listener.bind(str(self.path))
                finally:
                    os.umask(old_umask)
            os.chmod(self.path, self.socket_mode)
            self._inode = self.path.stat().st_ino
            # The backlog is not the connection limit: a burst beyond it would see EAGAIN from
            # connect() instead of the 'too many connections' reply the accept loop sends.
            listener.listen(socket.SOMAXCONN)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ServerError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        self._listener = listener

    def stop(self, timeout_s: float = 2.0, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting, let every request being handled finish and its reply go out (up to
        ``drain_timeout_s``), close every connection and remove the socket file if it is still
        ours. Once this returns no handler runs, so what they use may be closed."""
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout_s)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._conns_lock:
            conns = list(self._conns)
            handlers = list(self._handlers)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD)  # ends waiting reads; a reply being written still goes out
            except OSError:
                pass
        deadline = time.monotonic() + drain_timeout_s
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        still_running = sum(t.is_alive() for t in handlers)
        if still_running:
            log.warning("%d connection handler(s) still running after %g s", still_running, drain_timeout_s)
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    @property
    def accepting(self) -> bool:
        """Whether the thread accepting connections runs."""
        return self._accept_thread is not None and self._accept_thread.is_alive()

    @property
    def active_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # -- connections -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.2):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if self._stop.is_set():
                        return
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.05)  # e.g. EMFILE: do not spin
                    continue
                self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        with self._conns_lock:
            admitted = len(self._conns) < self.max_connections
            if admitted:
                self._conns.add(conn)
        if not admitted:
            self.connections_refused += 1
            try:
                conn.settimeout(0.5)
                conn.sendall(encode(error_reply("unavailable", f"too many connections (max {self.max_connections})")))
            except OSError:
                pass
            conn.close()
            return
        thread = threading.Thread(target=self._serve, args=(conn,), name="carbonsched-conn", daemon=True)
        with self._conns_lock:
            self._handlers.add(thread)
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            peer = peer_credentials(conn)
            buffer = LineBuffer(self.max_line_bytes)
            idle_since = time.monotonic()
            while not self._stop.is_set():
                remaining_s = self.read_timeout_s - (time.monotonic() - idle_since)
                if remaining_s <= 0:
                    if buffer.pending:
                        log.info("closing connection from pid %d: incomplete line timed out", peer.pid)
                    return
                conn.settimeout(remaining_s)
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                try:
                    lines = list(buffer.feed(data))
                except ProtocolError as exc:
                    self._send(conn, error_reply(exc.code, exc.message))
                    return
                for line in lines:
                    self._send(conn, self._reply(line, peer))
                if not buffer.pending:
                    idle_since = time.monotonic()
        except OSError:
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("connection handler failed")
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
                self._handlers.discard(threading.current_thread())
            conn.close()

    def _reply(self, line: bytes, peer: PeerCred) -> dict[str, Any]:
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            return error_reply(exc.code, exc.message, exc.request_id)
        except Exception as exc:  # a validation bug must cost one request, not the connection
            log.exception("decoding a request failed")
            return error_reply("internal", f"request could not be decoded: {type(exc).__name__}")
        if request.op in ADMIN_OPS and peer.uid not in self.admin_uids:
            return error_reply("forbidden", f"{request.op} is allowed only to uid {os.getuid()} or root", request.id)
        try:
            return ok_reply(self.handler(request, peer), request.id)
        except ProtocolError as exc:
            return error_reply(exc.code, exc.message, request.id)
        except Exception as exc:
            log.exception("op %s failed", request.op)
            return error_reply("internal", f"{request.op} failed: {type(exc).__name__}", request.id)

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        try:
            data = encode(reply)
        except (TypeError, ValueError) as exc:
            log.error("reply not encodable: %s", exc)
            try:
                data = encode(error_reply("internal", "reply could not be encoded", reply.get("id")))
            except (TypeError, ValueError):  # the echoed id itself is the problem
                data = encode(error_reply("internal", "reply could not be encoded"))
        conn.settimeout(self.write_timeout_s)
        conn.sendall(data)
