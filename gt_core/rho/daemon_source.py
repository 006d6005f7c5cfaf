"""ρ from the carbonsched daemon, with the job's epochs reported back to it.

:class:`DaemonRhoSource` is a :class:`~gt_core.rho.sources.RhoSource` and a
:class:`~gt_core.training.callbacks.TrainerCallback` at once: the trainer asks it for ρ at every selection
point and tells it when epochs start and end; it forwards both to the daemon.

Training never depends on the daemon. Every exchange is bounded by the client timeout, and after
a failed exchange (refused, timed out, or an unusable ρ answer) the source backs off: the retry
delay starts at ``backoff_s`` and doubles after each further failure up to ``max_backoff_s``; any
answer from the daemon resets it. While the delay runs, mid-epoch ρ requests (``reselect``
``"on_change"`` asks before every step, an int K every K steps) are answered at once, with no
exchange, from the last ρ the daemon gave, else ``default_rho``. So an unreachable or hung daemon
costs the step loop at most one exchange per back-off period, not one per step: with the defaults
(1 s doubling to 60 s) at most 6 step-loop exchanges in the first minute of an outage, then at
most one a minute, each costing at most the timeout. The trainer's rarer events (run start, each
epoch's first ρ request or start, each epoch end, run end) always attempt their exchange, at most
one each while the daemon is unreachable and each bounded by the timeout, so epochs are still
reported as soon as the daemon is back.

The first failure of an outage is logged once as a warning; when the daemon answers again (at
the first attempt after the back-off, or at the next epoch event) the same job id is registered
again (the daemon marks it running) and reporting resumes. An epoch whose start was missed is
still recorded at its end (the daemon derives its start from the wall time).

A job with a deadline sends its job model with ``job.start`` (a
:class:`~carbonsched.protocol.DeadlineJob` as ``deadline_job``, or the separate ``deadline_s``,
``epochs``, ``epoch_seconds``, ``rho_min``, ``mean_rho``, ``may_pause``); the daemon then plans it, and its ρ
answers may carry a pause (:attr:`~gt_core.rho.sources.RhoReading.pause_until_s`). :meth:`DaemonRhoSource.check_pause`
is the cheap, rate-limited question :mod:`gt_core.rho.pausing` asks between steps.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, TypeGuard, cast

from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable
from carbonsched.protocol import DeadlineJob, EpochEndReply, JsonObject, JsonValue

from gt_core.training.callbacks import TrainerCallback, TrainStatus
from gt_core.training.job_env import declaration_from_env, devices_from_env, slurm_job_fields, slurm_job_name
from gt_core.rho.sources import RhoReading, check_rho

if TYPE_CHECKING:
    from pathlib import Path

    from gt_core.training.records import EpochRecord, TrainerView

log = logging.getLogger("gt_core.rho_daemon")

J_PER_KWH = 3.6e6

# Per-epoch values sent as extra fields of epoch.end (the daemon keeps them with the epoch).
_EXTRA_FIELDS = ("tensors_selected", "param_share_selected", "steps", "selections", "importance_s", "dp_s", "rho_source")


DEFAULT_PAUSE_POLL_S = 2.0
DEFAULT_PAUSE_MAX_WAIT_S = 300.0


_REPORTING_METHODS = ("start_job", "open_epoch", "report_epoch", "end_job")


class DaemonReporter(Protocol):
    """What reports a job to a daemon: :class:`DaemonRhoSource`, or anything with its job id,
    ``job.start`` fields and reporting methods."""

    job_id: str
    job_fields: JsonObject

    def start_job(self) -> bool: ...

    def open_epoch(self, epoch: int, rho_asked: float, rho_effective: float | None = None) -> None: ...

    def report_epoch(self, epoch: int, *, rho_asked: float | None, rho_effective: float | None,
                     flops_forward: float | None, flops_backward: float | None, flops_full: float | None,
                     wall_s: float | None, train_loss: float | None = None, val_loss: float | None = None,
                     scheme: str | None = None, **extra: JsonValue) -> EpochEndReply | None: ...

    def end_job(self, status: TrainStatus) -> None: ...


def is_daemon_reporter(obj: object) -> TypeGuard[DaemonReporter]:
    """True for a ρ source or callback that reports a job to a daemon: a :class:`DaemonRhoSource`
    or anything with its ``job_id``, ``job_fields`` and ``start_job``/``open_epoch``/
    ``report_epoch``/``end_job`` methods."""
    return (
        hasattr(obj, "job_id") and isinstance(getattr(obj, "job_fields", None), dict)
        and all(callable(getattr(obj, name, None)) for name in _REPORTING_METHODS)
    )


def _clamp_fraction(value: float | None) -> float | None:
    """A ratio as the protocol's (0, 1] field; None when it is not a usable number."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return min(1.0, float(value))


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class DaemonRhoSource(TrainerCallback):
    """Ask the daemon for ρ; register the job and report its epochs.

    ``model_name`` and ``scheme`` identify the job in the daemon's store (reports compare a green
    job with a full fine-tuning job of the same model). ``job_id`` defaults to a fresh random id,
    kept for the whole run so a daemon restart does not split the job. ``backoff_s`` and
    ``max_backoff_s`` bound how often mid-epoch ρ requests try an unreachable daemon (see the
    module docstring). A deadline job's model is ``deadline_job`` (checked once, when it was
    built) or, for callers that declare it piece by piece, the separate fields ``deadline_s`` ...
    ``release_after_s``; not both.
    """

    def __init__(
        self,
        socket_path: "str | Path | None" = None,
        *,
        default_rho: float = 1.0,
        timeout_s: float = 2.0,
        model_name: str,
        scheme: str,
        job_id: str | None = None,
        devices: Sequence[str] | None = None,
        job_fields: Mapping[str, JsonValue] | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        deadline_s: float | None = None,
        epochs: float | None = None,
        epoch_seconds: float | None = None,
        rho_min: float | None = None,
        mean_rho: float | None = None,
        may_pause: bool = False,
        release_after_s: float | None = None,
        pause_poll_s: float = DEFAULT_PAUSE_POLL_S,
        pause_max_wait_s: float = DEFAULT_PAUSE_MAX_WAIT_S,
        deadline_job: DeadlineJob | None = None,
    ) -> None:
        if deadline_job is not None:
            loose = (deadline_s, epochs, epoch_seconds, rho_min, mean_rho, release_after_s)
            if may_pause or any(value is not None for value in loose):
                raise ValueError("give deadline_job or the separate deadline fields (deadline_s, epochs, ...), not both")
            deadline_s, may_pause = deadline_job.deadline_unix_s, deadline_job.may_pause
        self.default_rho = check_rho(default_rho, what="default rho")
        if not (math.isfinite(pause_poll_s) and pause_poll_s > 0 and math.isfinite(pause_max_wait_s) and pause_max_wait_s >= 0):
            raise ValueError(f"need pause_poll_s > 0 and pause_max_wait_s >= 0, got {pause_poll_s} and {pause_max_wait_s}")
        self.may_pause = bool(may_pause)
        self.pause_poll_s = float(pause_poll_s)
        self.pause_max_wait_s = float(pause_max_wait_s)
        self._pause_checked_at = -math.inf
        if not (math.isfinite(backoff_s) and backoff_s >= 0 and math.isfinite(max_backoff_s) and max_backoff_s >= backoff_s):
            raise ValueError(f"need 0 <= backoff_s <= max_backoff_s, got {backoff_s} and {max_backoff_s}")
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.client = DaemonClient(socket_path, timeout_s=timeout_s, default_rho=self.default_rho)
        self.model_name = model_name
        self.scheme = scheme
        self.job_id = job_id or slurm_job_name() or uuid.uuid4().hex[:16]
        self.devices = list(devices_from_env() if devices is None else devices)
        # More job.start fields, e.g. hostname/rank/local_rank/world_size of a multi-process job;
        # in a Slurm job, its Slurm id and nodes.
        self.job_fields: JsonObject = {**slurm_job_fields(), **(job_fields or {})}
        # The job model a daemon plans a deadline job by (sent with job.start when given); with
        # none given, the one `carbonsched sbatch` put in the environment.
        if deadline_job is not None:
            declared: JsonObject = deadline_job.to_wire()
        else:
            declared = {"deadline": deadline_s, "epochs": epochs, "epoch_seconds": epoch_seconds, "rho_min": rho_min,
                        "mean_rho": mean_rho, "may_pause": True if self.may_pause else None,
                        "release_after_s": release_after_s}
        if deadline_s is None:
            from_env = declaration_from_env()
            if from_env:
                declared = {**from_env, **{k: v for k, v in declared.items() if v is not None and k != "may_pause"}}
                self.may_pause = bool(declared.get("may_pause"))
                declared["may_pause"] = True if self.may_pause else None
        self.job_fields.update({k: v for k, v in declared.items() if v is not None})
        self.registered = False
        self.reachable: bool | None = None  # None until the first exchange
        self.warnings = 0
        self.epoch_reports: dict[int, EpochEndReply] = {}
        self.last_reading: RhoReading | None = None
        self._epoch_rho: dict[int, float] = {}
        # Back-off after a failed exchange: the current delay (0 while the daemon answers) and
        # the monotonic time before which mid-epoch ρ requests do not try the daemon.
        self._delay_s = 0.0
        self._retry_at = 0.0
        self.skipped = 0  # ρ requests answered from the back-off without an exchange

    def declare_epochs(self, epochs: float) -> bool:
        """Fill in the epoch count of a deadline job declared without one, before ``job.start``.

        A daemon plans a deadline job only with its epochs; a caller that knows them from elsewhere
        (the transformers callback, from ``TrainingArguments``) declares them here. An explicit
        ``epochs=`` wins. Returns True when the count was filled in."""
        if self.registered or "deadline" not in self.job_fields or "epochs" in self.job_fields:
            return False
        if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
            return False
        self.job_fields["epochs"] = float(epochs)
        return True

    @property
    def socket_path(self) -> "Path":
        return self.client.socket_path

    # -- daemon exchanges -------------------------------------------------------------------

    def _mark(self, ok: bool, reason: str = "") -> None:
        """Record the outcome of one exchange: logging per outage, and the back-off."""
        if ok:
            self._delay_s, self._retry_at = 0.0, 0.0
        else:
            self._delay_s = min(self.max_backoff_s, 2 * self._delay_s) if self._delay_s else self.backoff_s
            self._retry_at = time.monotonic() + self._delay_s
        if ok and self.reachable is False:
            log.info("carbonsched daemon at %s answers again; reporting resumes for job %s", self.socket_path, self.job_id)
        elif not ok and self.reachable is not False:
            self.warnings += 1
            log.warning(
                "carbonsched daemon at %s unavailable (%s): training continues on the last rho (else %.2f)",
                self.socket_path, reason, self.default_rho,
            )
        self.reachable = ok

    def _call(self, op: str, **fields: JsonValue) -> JsonObject | None:
        """One request; None on any failure. An unknown job (a daemon with a fresh store) is
        registered again and the request retried once."""
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            reply = self.client.call(op, **fields)
        except DaemonUnavailable as exc:
            self.registered = False
            self._mark(False, str(exc))
            return None
        except DaemonRequestError as exc:
            if exc.code == "bad_request" and "unknown job_id" in exc.message and op != "job.start":
                self.registered = False
                if self._register():
                    return self._call(op, **fields)
            self._mark(True)
            log.warning("carbonsched %s rejected: %s", op, exc)
            return None
        except (TypeError, ValueError) as exc:  # values JSON cannot carry
            log.warning("carbonsched %s not sent: %s", op, exc)
            return None
        self._mark(True)
        return reply

    def _register(self) -> bool:
        if self.registered:
            return True
        reply = self._call(
            "job.start", **self.job_fields, model=self.model_name, scheme=self.scheme, pid=os.getpid(),
            devices=self.devices, job_id=self.job_id,
        )
        self.registered = reply is not None
        return self.registered

    def probe(self) -> str | None:
        """Ask the daemon for a ``ping`` without registering the job: None when it answers, else
        why not (one line)."""
        try:
            self.client.call("ping")
        except DaemonUnavailable as exc:
            return str(exc).splitlines()[0] if str(exc) else "no answer"
        except DaemonRequestError as exc:
            return f"{exc.code}: {exc.message}"
        return None

    # -- RhoSource -----------------------------------------------------------------------------

    def backing_off(self) -> float:
        """Seconds until mid-epoch ρ requests try the daemon again; 0 when they would now."""
        return max(0.0, self._retry_at - time.monotonic()) if self._delay_s else 0.0

    def rho_for(self, epoch: int, step: int) -> RhoReading:
        fallback = self.last_reading.rho if self.last_reading is not None else self.default_rho
        opening = epoch not in self._epoch_rho  # an epoch event: always tried
        wait_s = 0.0 if opening else self.backing_off()
        if wait_s > 0:
            self.skipped += 1
            reading = RhoReading(
                fallback, "daemon-fallback", {"reason": "daemon unavailable, backing off", "retry_in_s": round(wait_s, 3)}
            )
        elif not self._register():
            reading = RhoReading(fallback, "daemon-fallback", {"reason": "daemon unavailable"})
        else:
            answer = self.client.rho(self.job_id, default=fallback)
            if answer.source == "daemon":
                self._mark(True)
                reading = RhoReading(answer.rho, "daemon", dict(answer.detail), answer.pause_until_s)
            else:
                self.registered = False
                self._mark(False, str(answer.detail.get("reason", "no answer")))
                reading = RhoReading(fallback, "daemon-fallback", dict(answer.detail))
        if reading.source == "daemon" or self.last_reading is None:
            self.last_reading = reading
        if opening:
            # The epoch's window opens here, before importance and DP, so their energy counts too.
            self._epoch_rho[epoch] = reading.rho
            self._call_if_registered("epoch.start", job_id=self.job_id, epoch=epoch, rho_asked=reading.rho)
        return reading

    # -- pausing (gt_core.rho.pausing waits; this only asks) ---------------------------------------

    @property
    def supports_pause(self) -> bool:
        """True for a job declared pausable, in its rank 0 process (the one that asks ρ): the
        trainer then checks for a pause between steps. Other ranks wait at their next collective."""
        return self.may_pause and self.job_fields.get("rank", 0) == 0

    def check_pause(self, *, paused: bool, force: bool = False) -> RhoReading | None:
        """Ask the daemon for ρ and whether to pause, telling it whether the job is paused now.
        Without ``force`` at most once per ``pause_poll_s`` and never while backing off (then
        None, as for no answer); the reading's ``pause_until_s`` is the plan's pause."""
        now = time.monotonic()
        if not force and (now - self._pause_checked_at < self.pause_poll_s or self.backing_off() > 0):
            return None
        self._pause_checked_at = now
        if not self._register():
            return None
        answer = self.client.rho(self.job_id, default=self.default_rho, paused=paused)
        if answer.source != "daemon":
            self.registered = False
            self._mark(False, str(answer.detail.get("reason", "no answer")))
            return None
        self._mark(True)
        self.last_reading = RhoReading(answer.rho, "daemon", dict(answer.detail), answer.pause_until_s)
        return self.last_reading

    def _call_if_registered(self, op: str, **fields: JsonValue) -> JsonObject | None:
        return self._call(op, **fields) if self.registered else None

    # -- job reporting (used by the callbacks below and by gt_core.integrations.hf_callback) ------------------

    def start_job(self) -> bool:
        """Register the job with the daemon (once); False while the daemon is unreachable."""
        return self._register()

    def open_epoch(self, epoch: int, rho_asked: float, rho_effective: float | None = None) -> None:
        """``epoch.start``, unless the epoch was already opened (by :meth:`rho_for` at its first
        selection, or an earlier call)."""
        if epoch in self._epoch_rho:
            return
        self._epoch_rho[epoch] = rho_asked
        if self._register():
            self._call("epoch.start", job_id=self.job_id, epoch=epoch, rho_asked=rho_asked, rho_effective=rho_effective)

    def report_epoch(
        self,
        epoch: int,
        *,
        rho_asked: float | None,
        rho_effective: float | None,
        flops_forward: float | None,
        flops_backward: float | None,
        flops_full: float | None,
        wall_s: float | None,
        train_loss: float | None = None,
        val_loss: float | None = None,
        scheme: str | None = None,
        **extra: JsonValue,
    ) -> EpochEndReply | None:
        """``epoch.end`` with the epoch's totals (FLOPs of the whole job's steps in the epoch);
        ``extra`` values are kept with the epoch by the daemon (non-finite ones are dropped).
        ``rho_asked`` defaults to the ρ the epoch was opened with; ``rho_effective`` outside
        (0, 1] is sent as 1. Returns the daemon's reply, None when not recorded."""
        rho_effective = _clamp_fraction(rho_effective) or 1.0
        rho_asked = rho_asked if rho_asked is not None else self._epoch_rho.get(epoch, rho_effective)
        extra["model"], extra["scheme"] = self.model_name, scheme or self.scheme
        if not self._register():
            return None
        reply = cast("EpochEndReply | None", self._call(
            "epoch.end", job_id=self.job_id, epoch=epoch, rho_asked=rho_asked, rho_effective=rho_effective,
            flops_forward=_finite(flops_forward), flops_backward=_finite(flops_backward),
            flops_full=_finite(flops_full), wall_s=_finite(wall_s),
            train_loss=_finite(train_loss), val_loss=_finite(val_loss),
            **{k: v for k, v in extra.items() if v is not None and not (isinstance(v, float) and not math.isfinite(v))},
        ))
        if reply is not None:
            self.epoch_reports[epoch] = reply
        return reply

    def describe_epoch(self, epoch: int) -> str:
        """What the daemon recorded for ``epoch``, for the console line: mean grid intensity
        (gCO2e/kWh), energy (kWh) and carbon (gCO2e), or that it recorded nothing."""
        reply = self.epoch_reports.get(epoch)
        if reply is None:
            return "[not recorded by carbonsched]"
        intensity = _finite(reply.get("mean_intensity_g_per_kwh"))
        energy_j, carbon_g = _finite(reply.get("energy_j")), _finite(reply.get("carbon_g"))
        return (
            f"grid {'-' if intensity is None else f'{intensity:.0f}'} gCO2e/kWh, "
            f"{'-' if energy_j is None else f'{energy_j / J_PER_KWH:.3g}'} kWh, "
            f"{'-' if carbon_g is None else f'{carbon_g:.3g}'} gCO2e"
        )

    def end_job(self, status: TrainStatus) -> None:
        """``job.end`` with ``status``; closes the connection (a later exchange opens a new one)."""
        if self._register():
            self._call("job.end", job_id=self.job_id, status=status)
        self.client.close()

    # -- TrainerCallback -----------------------------------------------------------------------

    def on_train_start(self, trainer: "TrainerView") -> None:
        self.start_job()

    def on_epoch_start(self, trainer: "TrainerView", epoch: int, reading: RhoReading | None) -> None:
        rho_effective = _clamp_fraction(trainer.rho_effective)
        rho_asked = reading.rho if reading is not None else (rho_effective or 1.0)
        self.open_epoch(epoch, rho_asked, rho_effective)

    def on_epoch_end(self, trainer: "TrainerView", record: "EpochRecord") -> None:
        self.report_epoch(
            record.epoch, rho_asked=record.rho_asked, rho_effective=record.rho_effective,
            flops_forward=record.flops_forward, flops_backward=record.flops_backward, flops_full=record.flops_full,
            wall_s=record.wall_s, train_loss=record.train_loss, val_loss=record.val_loss, scheme=record.scheme,
            **{name: getattr(record, name) for name in _EXTRA_FIELDS},
        )

    def on_train_end(self, trainer: "TrainerView", records: "Sequence[EpochRecord]", status: TrainStatus) -> None:
        self.end_job(status)

    def __repr__(self) -> str:
        return f"DaemonRhoSource({str(self.socket_path)!r}, job_id={self.job_id!r})"
