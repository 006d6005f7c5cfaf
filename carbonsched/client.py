"""Client for the daemon socket, for training jobs and the CLI.

Training code must keep training whatever happens to the daemon: ``rho()`` never raises and
never waits longer than ``timeout_s``; the job/epoch helpers return None on failure. The client
itself does not throttle: every call tries the daemon, so a caller asking often (the trainer's ρ
source, :mod:`gt_core.rho.daemon_source`) backs off after a failure.
"""

from __future__ import annotations

import itertools
import math
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast

from carbonsched.paths import client_socket_path, how_to_start
from carbonsched.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    EpochEndReply,
    EpochStartReply,
    JobEndReply,
    JobsReply,
    JobStartReply,
    JsonObject,
    JsonValue,
    LineBuffer,
    OverrideReply,
    PingReply,
    PlanBindReply,
    PlanSubmitReply,
    ProtocolError,
    ReloadReply,
    RhoReply,
    StatusReply,
    decode_reply,
    encode,
)

log = logging.getLogger("carbonsched.client")

RhoSourceName = Literal["daemon", "last_known", "default"]
Reply = TypeVar("Reply")


class DaemonUnavailable(Exception):
    """No answer from the daemon within the timeout (not running, stuck, busy refusing connections,
    or socket unusable)."""


class DaemonRequestError(Exception):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RhoAnswer:
    rho: float
    source: RhoSourceName
    detail: JsonObject = field(default_factory=dict)  # the daemon's reply (RhoReply) or why it fell back
    pause_until_s: float | None = None  # unix s: the daemon's plan pauses the job until then


def pause_until_from(value: object) -> float | None:
    """A reply's ``pause_until`` as unix seconds; anything but a finite number means no pause."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class DaemonClient:
    def __init__(
        self,
        socket_path: Path | str | None = None,
        timeout_s: float = 2.0,
        *,
        default_rho: float = 1.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ):
        self.socket_path = Path(socket_path) if socket_path is not None else client_socket_path()
        self.timeout_s = timeout_s
        self.default_rho = default_rho
        self.max_line_bytes = max_line_bytes
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._last_rho: float | None = None
        self._last_rho_at: float | None = None

    @property
    def start_hint(self) -> str:
        """The command that starts the daemon expected at ``socket_path`` (the service or a private one)."""
        return how_to_start(self.socket_path)

    # -- transport -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "DaemonClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, op: str, **fields: JsonValue) -> JsonObject:
        """Send one request and return the reply object (``ok`` may be false).

        Raises DaemonUnavailable if no reply arrives within ``timeout_s`` in total.
        """
        deadline = time.monotonic() + self.timeout_s
        request_id = next(self._ids)
        payload = encode({"op": op, "id": request_id, **fields})
        with self._lock:
            reused = self._sock is not None
            try:
                reply = self._exchange(payload, request_id, deadline)
                error = reply.get("error")
                if reply.get("id") is None and isinstance(error, dict) and error.get("code") == "unavailable":
                    # Refused at the door (too many connections): no request of ours was read.
                    self._drop()
                    raise DaemonUnavailable(f"{self.socket_path} busy: {error.get('message', '')}")
                return reply
            except (OSError, ValueError, ProtocolError, _Closed) as first:
                self._drop()
                # A kept-alive connection the server closed while idle: one fresh attempt.
                if reused and isinstance(first, (_Closed, BrokenPipeError, ConnectionResetError)):
                    try:
                        return self._exchange(payload, request_id, deadline)
                    except (OSError, ValueError, ProtocolError, _Closed) as second:
                        self._drop()
                        first = second
                raise DaemonUnavailable(f"no answer from {self.socket_path}: {_describe(first)}") from None

    def _exchange(self, payload: bytes, request_id: int, deadline: float) -> JsonObject:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(_remaining(deadline))
                sock.connect(str(self.socket_path))
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        sock = self._sock
        sock.settimeout(_remaining(deadline))
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            # A server refusing the connection may close it before our request arrives; the line
            # it wrote first is still ours to read (else the read below fails too).
            pass
        buffer = LineBuffer(self.max_line_bytes)
        while True:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(65536)
            if not data:
                raise _Closed("daemon closed the connection")
            for line in buffer.feed(data):
                reply = decode_reply(line)
                if reply.get("id") in (request_id, None):
                    return reply
                # A reply to an earlier request that timed out on our side: skip it.

    def call(self, op: str, **fields: JsonValue) -> JsonObject:
        """Like request(), but an error reply raises DaemonRequestError."""
        reply = self.request(op, **fields)
        if not reply.get("ok"):
            error = reply.get("error")
            error = error if isinstance(error, dict) else {}
            raise DaemonRequestError(str(error.get("code", "internal")), str(error.get("message", "")))
        return reply

    # -- typed ops: the reply of each op (carbonsched.protocol), DaemonRequestError on an error -----

    def ping(self) -> PingReply:
        return cast(PingReply, self.call("ping"))

    def status(self) -> StatusReply:
        return cast(StatusReply, self.call("status"))

    def rho_reply(self, job_id: str | None = None) -> RhoReply:
        """The daemon's whole ``rho`` answer (:meth:`rho` is the never-failing one for training)."""
        return cast(RhoReply, self.call("rho", **({"job_id": job_id} if job_id is not None else {})))

    def jobs(self, status: str | None = None, limit: int | None = None) -> JobsReply:
        fields = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        return cast(JobsReply, self.call("jobs", **fields))

    def override(self, rho: float | None, ttl_s: float | None = None) -> OverrideReply:
        """Serve ``rho`` instead of the policy's (None clears it), for ``ttl_s`` s or until cleared."""
        return cast(OverrideReply, self.call("override", rho=rho, **({"ttl_s": ttl_s} if ttl_s is not None else {})))

    def reload(self) -> ReloadReply:
        return cast(ReloadReply, self.call("reload"))

    def plan_submit(self, **declaration: JsonValue) -> PlanSubmitReply:
        """``declaration``: deadline, epochs, epoch_seconds, rho_min, mean_rho, power_w."""
        return cast(PlanSubmitReply, self.call("plan.submit", **declaration))

    def plan_bind(self, plan_id: str, slurm_job_id: str) -> PlanBindReply:
        return cast(PlanBindReply, self.call("plan.bind", plan_id=plan_id, slurm_job_id=slurm_job_id))

    # -- ρ -----------------------------------------------------------------------------------

    def rho(self, job_id: str | None = None, default: float | None = None, *, paused: bool | None = None) -> RhoAnswer:
        """ρ from the daemon; else the last ρ it gave this client; else ``default`` (or the
        client's ``default_rho``). ``detail`` says why a fallback was used. ``paused``: tell the
        daemon whether the job is waiting out a pause (it records the pause interval); the
        answer's ``pause_until_s`` is set only by a daemon answer that pauses the job."""
        fields: JsonObject = {"job_id": job_id} if job_id is not None else {}
        if paused is not None:
            fields["paused"] = paused
        try:
            reply = cast(RhoReply, self.call("rho", **fields))
            rho = float(reply["rho"])
            if not 0.0 < rho <= 1.0:
                raise ValueError(f"daemon sent rho={rho} outside (0, 1]")
        except (DaemonUnavailable, DaemonRequestError, KeyError, TypeError, ValueError) as exc:
            reason = _describe(exc)
            log.debug("rho fallback: %s", reason)
            if self._last_rho is not None and self._last_rho_at is not None:
                return RhoAnswer(
                    self._last_rho,
                    "last_known",
                    {"reason": reason, "age_s": round(time.monotonic() - self._last_rho_at, 3)},
                )
            fallback = self.default_rho if default is None else default
            return RhoAnswer(float(fallback), "default", {"reason": reason})
        self._last_rho, self._last_rho_at = rho, time.monotonic()
        detail: JsonObject = {k: v for k, v in reply.items() if k not in ("ok", "v", "id", "rho")}
        return RhoAnswer(rho, "daemon", detail, pause_until_from(reply.get("pause_until")))

    # -- job and epoch reports (never raise) -------------------------------------------------

    def _quiet(self, reply_type: type[Reply], op: str, **fields: JsonValue) -> Reply | None:
        try:
            return cast(Reply, self.call(op, **{k: v for k, v in fields.items() if v is not None}))
        except (DaemonUnavailable, DaemonRequestError) as exc:
            log.warning("carbonsched %s not recorded: %s", op, _describe(exc))
            return None
        except (TypeError, ValueError) as exc:  # unencodable field values (e.g. NaN loss)
            log.warning("carbonsched %s not recorded: %s", op, exc)
            return None

    def job_start(
        self,
        model: str,
        scheme: str,
        *,
        pid: int | None = None,
        devices: list[str] | None = None,
        job_id: str | None = None,
    ) -> str | None:
        reply = self._quiet(JobStartReply, "job.start", model=model, scheme=scheme, pid=pid or os.getpid(), devices=devices, job_id=job_id)
        return None if reply is None else str(reply["job_id"])

    def epoch_start(
        self, job_id: str, epoch: int, rho_asked: float, rho_effective: float | None = None
    ) -> EpochStartReply | None:
        return self._quiet(EpochStartReply, "epoch.start", job_id=job_id, epoch=epoch, rho_asked=rho_asked, rho_effective=rho_effective)

    def epoch_end(
        self, job_id: str, epoch: int, rho_asked: float, rho_effective: float, **metrics: JsonValue
    ) -> EpochEndReply | None:
        """``metrics``: flops_forward, flops_backward, flops_full, wall_s, train_loss, val_loss,
        and any extra JSON-able values (stored with the epoch)."""
        return self._quiet(EpochEndReply, "epoch.end", job_id=job_id, epoch=epoch, rho_asked=rho_asked, rho_effective=rho_effective, **metrics)

    def job_end(self, job_id: str, status: str = "completed") -> JobEndReply | None:
        return self._quiet(JobEndReply, "job.end", job_id=job_id, status=status)


class _Closed(Exception):
    pass


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("timed out")
    return remaining


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, FileNotFoundError):
        return "socket file not found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
