"""The carbonsched daemon: polls intensity and power, turns them into ρ decisions, stores
everything, and answers training jobs over the unix socket.

Threads: the main thread waits for signals (SIGHUP reload, SIGTERM/SIGINT stop); APScheduler's
pool runs polling, sampling, deciding, pruning and the watchdog; the server runs one thread per
connection. Shared state lives behind ``self._lock``; the store serialises its own writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from carbonsched import PROTOCOL_VERSION, __version__
from carbonsched.config import DaemonConfig, load_config
from carbonsched.notify import Notifier
from carbonsched.paths import UnsafeDirectoryError, ensure_private_dir, ensure_runtime_dir, store_path
from carbonsched.power.devices import resolve_job_devices
from carbonsched.processes import process_alive
from carbonsched.protocol import ProtocolError, Request
from carbonsched.server import PeerCred, ServerError, UnixSocketServer
from carbonsched.accounting import epoch_energy, epoch_savings, job_pids, measured_j_per_flop
from carbonsched.store import J_PER_KWH, Store, StoreError
from carbonsched.types import Decision, IntensityReading, ProviderError, Signals, utcnow

log = logging.getLogger("carbonsched.daemon")

MAX_RECENT_ERRORS = 20
PRUNE_INTERVAL_S = 3600.0


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user."""


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr. Under journald (JOURNAL_STREAM set) no timestamp and a
    sd-daemon(3) priority prefix so the journal keeps the level."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{text}"


def _iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _start_of_utc_day(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclasses.dataclass(frozen=True)
class _Override:
    rho: float
    set_at: datetime
    expires_at: datetime | None
    uid: int

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclasses.dataclass(frozen=True)
class _DecisionRecord:
    decision: Decision
    decided_at: datetime
    valid_until: datetime
    reading: IntensityReading | None
    gpu_power_w: float | None


def build_provider_from(config: DaemonConfig) -> Any:
    from carbonsched.providers import DEFAULT_PROVIDER_SPEC, build_provider

    return build_provider(config.provider or DEFAULT_PROVIDER_SPEC)


def load_policy_from(config: DaemonConfig) -> Any:
    from carbonsched.policies import default_policy_path, load_policy

    return load_policy(config.policy or default_policy_path())


def build_meter() -> Any:
    from carbonsched.power import NodeEnergyMeter

    return NodeEnergyMeter()


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        cli_overrides: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
        provider_factory: Callable[[DaemonConfig], Any] = build_provider_from,
        policy_loader: Callable[[DaemonConfig], Any] = load_policy_from,
        meter_factory: Callable[[], Any] | None = build_meter,
    ):
        self.config = config
        self._cli_overrides = dict(cli_overrides or {})
        self.notifier = notifier or Notifier()
        self._ready_sent = False
        self._provider_factory = provider_factory
        self._policy_loader = policy_loader
        self._meter_factory = meter_factory
        self._lock = threading.RLock()
        self._decide_lock = threading.Lock()
        self._meter_lock = threading.Lock()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self.started_at = utcnow()
        self._started_monotonic = time.monotonic()
        self.provider: Any = None
        self.policy: Any = None
        self.meter: Any = None
        self.meter_error: str | None = None
        self.store: Store | None = None
        self.server: UnixSocketServer | None = None
        self.scheduler: Any = None
        self._metrics_server: Any = None
        self._reading: IntensityReading | None = None
        self._reading_error: str | None = None
        self._last_poll_at: datetime | None = None
        self._gpu_power_w: float | None = None
        self._decision: _DecisionRecord | None = None
        self._override: _Override | None = None
        self._errors: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_ERRORS)
        self.reload_error: str | None = None
        self.last_reload_at: datetime | None = None
        self._carbon_day: datetime | None = None
        self._carbon_today_g = 0.0
        self._job_carbon_g: dict[str, float] = {}
        self._energy_totals_j: dict[tuple[str, str], float] = {}

    # -- errors ------------------------------------------------------------------------------

    def _record_error(self, where: str, message: str) -> None:
        log.error("%s: %s", where, message)
        with self._lock:
            self._errors.append({"at": _iso(utcnow()), "where": where, "message": message})

    record_error = _record_error

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open everything and start serving; raises StartupError with a one-line message."""
        cfg = self.config
        try:
            self.provider = self._provider_factory(cfg)
        except Exception as exc:
            raise StartupError(f"provider {cfg.provider or 'default'!r}: {exc}") from exc
        try:
            self.policy = self._policy_loader(cfg)
        except Exception as exc:
            raise StartupError(f"policy: {exc}") from exc
        if self._meter_factory is not None:
            try:
                self.meter = self._meter_factory()
            except Exception as exc:
                self.meter_error = f"{type(exc).__name__}: {exc}"
                self._record_error("power", f"energy meter unavailable: {self.meter_error}")
        try:
            ensure_private_dir(cfg.state_dir)
            self.store = Store(store_path(cfg.state_dir))
            self.store.set_meta("node_name", cfg.node_name)
        except (OSError, StoreError) as exc:
            raise StartupError(f"store in {cfg.state_dir}: {exc}") from exc
        self._init_carbon_totals()
        try:
            ensure_runtime_dir(cfg.socket.parent)
            self.server = UnixSocketServer(
                cfg.socket,
                self.handle,
                max_connections=cfg.max_connections,
                read_timeout_s=cfg.read_timeout_s,
                max_line_bytes=cfg.max_line_bytes,
            )
            self.server.start()
        except (OSError, ServerError, UnsafeDirectoryError) as exc:
            self.store.close()
            raise StartupError(str(exc)) from exc
        self._start_scheduler()
        if cfg.metrics_port:
            from carbonsched.metrics import start_metrics_server

            self._metrics_server = start_metrics_server(self, cfg.metrics_addr, cfg.metrics_port)
        log.info(
            "listening on %s (provider %s, policy %s, store %s)",
            cfg.socket, getattr(self.provider, "name", "?"), getattr(self.policy, "name", "?"), self.store.path,
        )
        self.notifier.ready(status=self._status_line())
        self._ready_sent = True

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={"coalesce": True, "max_instances": 1})
        self._schedule_jobs()
        self.scheduler.start()

    def _schedule_jobs(self) -> None:
        intervals = self.config.intervals
        now = datetime.now(timezone.utc)
        jobs: list[tuple[str, Callable[[], None], float | None]] = [
            ("poll_intensity", self.poll_intensity, intervals.poll_intensity_s),
            ("sample_power", self.sample_power, intervals.sample_power_s if self.meter is not None else None),
            ("decide", self.decide, intervals.decide_s),
            ("prune", self.prune, PRUNE_INTERVAL_S),
            ("check_jobs", self.check_jobs, intervals.check_jobs_s),
            ("watchdog", self._watchdog, self.notifier.watchdog_interval_s),
        ]
        for job_id, func, seconds in jobs:
            if self.scheduler.get_job(job_id) is not None:
                self.scheduler.remove_job(job_id)
            if seconds:
                first = now if job_id != "decide" else now + timedelta(seconds=seconds)
                self.scheduler.add_job(
                    self._guarded(job_id, func), "interval", seconds=seconds, id=job_id,
                    next_run_time=first, misfire_grace_time=max(1, int(seconds)),
                )

    def _guarded(self, where: str, func: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                func()
            except Exception as exc:
                log.exception("%s failed", where)
                self._record_error(where, f"{type(exc).__name__}: {exc}")

        return run

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads. Main thread only; call before start(), since the
        socket answers (and READY=1 is sent) before run_forever() begins, and a SIGHUP in that
        window would otherwise kill the process with the default action."""
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def run_forever(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads. Call from the main thread after start()."""
        self.install_signal_handlers()
        while not self._stop.is_set():
            if self._reload_requested.wait(0.25):
                self._reload_requested.clear()
                self.reload()
        self.stop()

    def stop(self) -> None:
        log.info("stopping")
        self.notifier.stopping(status="shutting down")
        if self.server is not None:
            self.server.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        with self._meter_lock:
            if self.meter is not None and hasattr(self.meter, "close"):
                try:
                    self.meter.close()
                except Exception as exc:
                    log.warning("closing the energy meter: %s", exc)
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the config file and policy; on any error keep what runs and report it."""
        self.notifier.reloading()
        try:
            new_config = self.config
            if self.config.source is not None:
                new_config = load_config(self.config.source).with_overrides(**self._cli_overrides)
            new_policy = self._policy_loader(new_config)
            new_provider = self.provider
            if new_config.provider != self.config.provider:
                new_provider = self._provider_factory(new_config)
        except Exception as exc:  # ConfigError, PolicyFileError, ProviderSpecError, ...
            message = f"reload failed, keeping the running configuration: {exc}"
            with self._lock:
                self.reload_error = message
            self._record_error("reload", message)
            self.notifier.ready(status=self._status_line())
            return {"reloaded": False, "error": message}
        for name in ("socket", "state_dir", "max_connections", "read_timeout_s", "max_line_bytes", "metrics_port"):
            if getattr(new_config, name) != getattr(self.config, name):
                log.warning("reload: %s changed; it takes effect on restart", name)
                new_config = dataclasses.replace(new_config, **{name: getattr(self.config, name)})
        with self._lock:
            intervals_changed = new_config.intervals != self.config.intervals
            self.config, self.policy, self.provider = new_config, new_policy, new_provider
            self.reload_error = None
            self.last_reload_at = utcnow()
        if self.store is not None:
            self.store.set_meta("node_name", new_config.node_name)
        if intervals_changed and self.scheduler is not None:
            self._schedule_jobs()
        log.info("reloaded: provider %s, policy %s", getattr(new_provider, "name", "?"), getattr(new_policy, "name", "?"))
        self.decide()
        self.notifier.ready(status=self._status_line())
        return {"reloaded": True, "policy": getattr(new_policy, "name", None)}

    # -- periodic work -------------------------------------------------------------------------

    def poll_intensity(self) -> None:
        provider = self.provider
        try:
            reading = provider.current()
        except ProviderError as exc:
            with self._lock:
                self._reading_error = str(exc)
            self._record_error("intensity", str(exc))
            return
        if not isinstance(reading, IntensityReading) or _finite(reading.intensity_g_per_kwh) is None:
            self._record_error("intensity", f"provider {getattr(provider, 'name', '?')} returned an unusable reading")
            return
        with self._lock:
            previous = self._reading
            self._reading, self._reading_error, self._last_poll_at = reading, None, utcnow()
        assert self.store is not None
        if self.store.add_intensity(reading):
            log.info("intensity %.1f gCO2e/kWh (%s, %s)", reading.intensity_g_per_kwh, reading.provider, _iso(reading.timestamp))
        if previous is None or previous.intensity_g_per_kwh != reading.intensity_g_per_kwh:
            self.decide()

    def sample_power(self) -> None:
        with self._meter_lock:
            if self.meter is None:
                return
            readings = self.meter.poll()
            gpu_power_w = self.meter.gpu_power_w()
        assert self.store is not None
        self.store.add_energy(readings)
        with self._lock:
            self._gpu_power_w = _finite(gpu_power_w)
            for r in readings:
                key = (r.device, r.source)
                self._energy_totals_j[key] = self._energy_totals_j.get(key, 0.0) + r.energy_j
            intensity = self._reading.intensity_g_per_kwh if self._reading is not None else None
            self._roll_carbon_day(utcnow())
            if intensity is None:
                return
            running = self._job_devices()
            for r in readings:
                carbon_g = r.energy_j / J_PER_KWH * intensity
                self._carbon_today_g += carbon_g
                for job_id, devices in running.items():
                    if not devices or r.device in devices:
                        self._job_carbon_g[job_id] = self._job_carbon_g.get(job_id, 0.0) + carbon_g

    def _job_devices(self) -> dict[str, set[str]]:
        assert self.store is not None
        return {job["job_id"]: set(job["devices"]) for job in self.store.jobs(status="running")}

    def _roll_carbon_day(self, now: datetime) -> None:
        day = _start_of_utc_day(now)
        if self._carbon_day != day:
            self._carbon_day, self._carbon_today_g = day, 0.0

    def _init_carbon_totals(self) -> None:
        assert self.store is not None
        now = utcnow()
        self._carbon_day = _start_of_utc_day(now)
        _energy_j, carbon_g = self.store.energy_and_carbon(self._carbon_day, now)
        self._carbon_today_g = carbon_g or 0.0
        for job in self.store.jobs(status="running"):
            _energy_j, carbon_g = self.store.energy_and_carbon(job["started_at"], now, devices=job["devices"] or None)
            self._job_carbon_g[job["job_id"]] = carbon_g or 0.0

    def decide(self) -> _DecisionRecord:
        """Ask the policy for ρ now and record it. Policies keep hysteresis state, so only this
        method calls decide(); the socket answers from its result."""
        with self._decide_lock:
            now = utcnow()
            with self._lock:
                reading, gpu_power_w, policy = self._reading, self._gpu_power_w, self.policy
                running = list(self._job_carbon_g) if self.store is None else [j["job_id"] for j in self.store.jobs(status="running")]
                job_id = running[0] if len(running) == 1 else None
                self._roll_carbon_day(now)
                signals = Signals(
                    now=now,
                    intensity_g_per_kwh=reading.intensity_g_per_kwh if reading else None,
                    signal=reading.signal if reading else None,
                    forecast=reading.forecast if reading else (),
                    gpu_power_w=gpu_power_w,
                    carbon_used_today_g=self._carbon_today_g,
                    carbon_used_job_g=self._job_carbon_g.get(job_id) if job_id else None,
                    job_id=job_id,
                )
            decision = policy.decide(signals)
            rho = _finite(decision.rho)
            if rho is None or not 0.0 < rho <= 1.0:
                raise ValueError(f"policy {getattr(policy, 'name', '?')} returned rho={decision.rho!r}")
            record = _DecisionRecord(
                decision=decision,
                decided_at=now,
                valid_until=now + timedelta(seconds=self.config.intervals.decide_s),
                reading=reading,
                gpu_power_w=gpu_power_w,
            )
            previous = self._decision
            with self._lock:
                self._decision = record
            assert self.store is not None
            self.store.add_decision(now, decision, intensity_g_per_kwh=signals.intensity_g_per_kwh, gpu_power_w=gpu_power_w)
            if previous is None or previous.decision.rho != decision.rho:
                log.info("rho %.3f (%s: %s)", decision.rho, decision.policy, decision.reason)
            return record

    def prune(self) -> None:
        assert self.store is not None
        removed = self.store.prune(self.config.retention_days, utcnow())
        if removed:
            log.info("pruned %d samples older than %g days", removed, self.config.retention_days)

    def check_jobs(self) -> None:
        """A running job whose processes are all gone (killed, crashed, OOM) without job.end is
        marked failed, and its open epoch is closed with the energy used up to now, so it stops
        taking a share of the node's CPU/RAM energy from the jobs that run after it. Only jobs
        whose pids this daemon can see (same pid namespace) are checked."""
        assert self.store is not None
        for job in self.store.jobs(status="running"):
            pids = job_pids(job)
            if not job.get("pids_local") or any(process_alive(p) for p in pids):
                continue
            self._close_open_epochs(job, "check_jobs")
            self.store.end_job(job["job_id"], "failed", utcnow())
            with self._lock:
                self._job_carbon_g.pop(job["job_id"], None)
            log.warning(
                "job %s: its processes (%s) are gone without job.end; marked failed",
                job["job_id"], ", ".join(str(p) for p in sorted(pids)),
            )

    def _close_open_epochs(self, job: dict[str, Any], closed_by: str) -> None:
        """End the job's epochs that started but never reported their end, with the energy used
        up to now (else it would be nobody's once the job is no longer running)."""
        assert self.store is not None
        unfinished = [e for e in self.store.epochs(job["job_id"]) if e["ended_at"] is None and e["started_at"] is not None]
        if not unfinished:
            return
        self._sample_power_now()
        now = utcnow()
        for epoch in unfinished:
            energy = epoch_energy(self.store, job, epoch["started_at"], now.timestamp())
            self.store.end_epoch(
                job["job_id"], epoch["epoch"], ended_at=now, extra={**epoch["extra"], "closed_by": closed_by},
                **energy.epoch_columns(),
            )

    def _sample_power_now(self) -> None:
        """Meter up to this instant (the energy so far belongs to an epoch about to end)."""
        try:
            self.sample_power()
        except Exception as exc:
            self._record_error("sample_power", f"{type(exc).__name__}: {exc}")

    def _watchdog(self) -> None:
        if not self._ready_sent:
            return  # the scheduler starts before READY; systemd should see READY first
        if self.server is not None and self.server._accept_thread is not None and self.server._accept_thread.is_alive():
            self.notifier.watchdog()
        else:
            log.error("socket server thread is gone; withholding the watchdog ping")

    # -- socket ops ----------------------------------------------------------------------------

    def handle(self, request: Request, peer: PeerCred) -> dict[str, Any]:
        method = getattr(self, "_op_" + request.op.replace(".", "_"))
        return method(request.fields, peer, request)

    def _op_ping(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "protocol": PROTOCOL_VERSION}

    def _op_rho(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        now = utcnow()
        with self._lock:
            override, record = self._override, self._decision
        if record is None:
            try:
                record = self.decide()
            except Exception as exc:
                self._record_error("decide", f"{type(exc).__name__}: {exc}")
                raise ProtocolError("unavailable", f"no ρ decision available: {exc}") from exc
        reading = record.reading
        answer: dict[str, Any] = {
            "rho": record.decision.rho,
            "intensity_g_per_kwh": reading.intensity_g_per_kwh if reading else None,
            "signal": reading.signal if reading else None,
            "provider": reading.provider if reading else getattr(self.provider, "name", None),
            "age_s": round(reading.age_s(now), 3) if reading else None,
            "policy": record.decision.policy,
            "reason": record.decision.reason,
            "decided_at": _iso(record.decided_at),
            "valid_until": _iso(record.valid_until),
            "override": False,
        }
        if override is not None and override.active(now):
            answer.update(
                rho=override.rho,
                policy="override",
                reason=f"override by uid {override.uid} (policy would say {record.decision.rho:.3f})",
                override=True,
            )
            if override.expires_at is not None:
                answer["valid_until"] = _iso(min(override.expires_at, record.valid_until))
        if "job_id" in fields:
            answer["job_id"] = fields["job_id"]
        return answer

    def _job_for(self, job_id: str, peer: PeerCred) -> dict[str, Any]:
        assert self.store is not None
        job = self.store.job(job_id)
        if job is None:
            raise ProtocolError("bad_request", f"unknown job_id {job_id!r}")
        if job["uid"] is not None and peer.uid not in (job["uid"], 0, os.getuid()):
            raise ProtocolError("forbidden", f"job {job_id!r} belongs to uid {job['uid']}")
        return job

    def _op_job_start(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        assert self.store is not None
        job_id = fields.get("job_id") or uuid.uuid4().hex[:16]
        now = utcnow()
        # Whatever names the job used (CUDA ordinals, GPU UUIDs, MIG ids, PCI bus ids) → this node's gpu:N.
        gpus = getattr(getattr(self.meter, "gpu", None), "devices", None) or []
        # The kernel's view of the sender's pid equals the one it sent: same pid namespace, so
        # check_jobs may look the job's processes up.
        pids_local = peer.pid == fields["pid"]
        created = self.store.start_job(
            job_id, model=fields["model"], scheme=fields["scheme"], pid=fields["pid"], uid=peer.uid,
            devices=resolve_job_devices(fields.get("devices", ()), gpus), started_at=now,
            pids=fields.get("pids", ()), pids_local=pids_local,
            **{k: fields.get(k) for k in ("hostname", "rank", "local_rank", "world_size")},
        )
        if not created:
            self._job_for(job_id, peer)
            self.store.resume_job(job_id, pid=fields["pid"], pids=fields.get("pids"), pids_local=pids_local)
            log.info("job %s resumed by pid %d (uid %d)", job_id, fields["pid"], peer.uid)
        else:
            log.info("job %s started: %s, %s, pid %d, uid %d", job_id, fields["model"], fields["scheme"], fields["pid"], peer.uid)
        with self._lock:
            self._job_carbon_g.setdefault(job_id, 0.0)
        return {"job_id": job_id, "resumed": not created, "started_at": _iso(now)}

    def _op_epoch_start(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        assert self.store is not None
        self._job_for(fields["job_id"], peer)
        now = utcnow()
        self.store.start_epoch(
            fields["job_id"], fields["epoch"], rho_asked=fields["rho_asked"],
            rho_effective=fields.get("rho_effective"), started_at=now,
        )
        return {"job_id": fields["job_id"], "epoch": fields["epoch"], "started_at": _iso(now)}

    def _op_epoch_end(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        assert self.store is not None
        job = self._job_for(fields["job_id"], peer)
        self._sample_power_now()
        now = utcnow()
        job_id, epoch = fields["job_id"], fields["epoch"]
        started_at = next((e["started_at"] for e in self.store.epochs(job_id) if e["epoch"] == epoch), None)
        if started_at is None and fields.get("wall_s") is not None:
            started_at = now.timestamp() - fields["wall_s"]
        accounting = savings = None
        if started_at is not None:
            accounting = epoch_energy(self.store, job, started_at, now.timestamp())
        metrics = {k: v for k, v in fields.items() if k not in ("job_id", "epoch")}
        if accounting is not None:
            savings = epoch_savings(
                {**metrics, "energy_j": accounting.energy_j, "carbon_g": accounting.carbon_g},
                j_per_flop=measured_j_per_flop(self.store, job["model"]),
                mean_intensity_g_per_kwh=accounting.mean_intensity_g_per_kwh,
            )
        columns = accounting.epoch_columns() if accounting is not None else {}
        energy_j, carbon_g = columns.get("energy_j"), columns.get("carbon_g")
        self.store.end_epoch(job_id, epoch, ended_at=now, extra=request.extra, **columns, **metrics)
        return {
            "job_id": job_id, "epoch": epoch, "ended_at": _iso(now), "energy_j": energy_j, "carbon_g": carbon_g,
            "mean_intensity_g_per_kwh": accounting.mean_intensity_g_per_kwh if accounting else None,
            "accounting": accounting.to_dict() if accounting else None,
            "savings": savings.to_dict() if savings else None,
        }

    def _op_job_end(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        assert self.store is not None
        job = self._job_for(fields["job_id"], peer)
        self._close_open_epochs(job, f"job.end {fields['status']}")
        now = utcnow()
        self.store.end_job(fields["job_id"], fields["status"], now)
        with self._lock:
            carbon_g = self._job_carbon_g.pop(fields["job_id"], None)
        log.info("job %s ended: %s", fields["job_id"], fields["status"])
        return {"job_id": fields["job_id"], "status": fields["status"], "ended_at": _iso(now), "carbon_g": carbon_g}

    def _op_jobs(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        assert self.store is not None
        jobs = self.store.jobs(status=fields.get("status"))
        if "limit" in fields:
            jobs = jobs[-fields["limit"]:]
        for job in jobs:
            job["started_at"], job["ended_at"] = _iso(job["started_at"]), _iso(job["ended_at"])
        return {"jobs": jobs}

    def _op_override(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        now = utcnow()
        rho, ttl_s = fields["rho"], fields.get("ttl_s")
        with self._lock:
            if rho is None:
                self._override = None
            else:
                expires = now + timedelta(seconds=ttl_s) if ttl_s else None
                self._override = _Override(rho=rho, set_at=now, expires_at=expires, uid=peer.uid)
            override = self._override
        assert self.store is not None
        if override is not None:
            reason = f"override by uid {peer.uid}" + (f" for {ttl_s:g} s" if ttl_s else " until cleared")
            self.store.add_decision(now, Decision(rho=rho, reason=reason, policy="override"),
                                    intensity_g_per_kwh=None, gpu_power_w=None, override=True)
            log.info("%s: rho %.3f", reason, rho)
        else:
            log.info("override cleared by uid %d", peer.uid)
        return {"override": self._override_dict(override)}

    def _op_reload(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        return self.reload()

    def _op_status(self, fields: dict[str, Any], peer: PeerCred, request: Request) -> dict[str, Any]:
        return self.status()

    # -- status --------------------------------------------------------------------------------

    @staticmethod
    def _override_dict(override: _Override | None) -> dict[str, Any] | None:
        if override is None:
            return None
        return {"rho": override.rho, "set_at": _iso(override.set_at), "expires_at": _iso(override.expires_at), "uid": override.uid}

    def _safe(self, what: Callable[[], Any]) -> Any:
        try:
            return what()
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def status(self) -> dict[str, Any]:
        now = utcnow()
        with self._lock:
            reading, record, override = self._reading, self._decision, self._override
            if override is not None and not override.active(now):
                override = None
            errors = list(self._errors)
            carbon_today_g = self._carbon_today_g
        provider = self._safe(self.provider.describe) if self.provider is not None else None
        policy = {
            "name": getattr(self.policy, "name", None),
            "kind": getattr(self.policy, "kind", None),
            "file": getattr(self.policy, "source_file", None),
            "rho_min": getattr(self.policy, "rho_min", None),
        }
        if self.meter is not None:
            meter = self._safe(self.meter.status)
        else:
            meter = {"available": False, "error": self.meter_error}
        assert self.store is not None
        return {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "started_at": _iso(self.started_at),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "config": self.config.describe(),
            "store": {"path": str(self.store.path), "schema_version": self.store.schema_version},
            "provider": provider,
            "intensity": None if reading is None else {
                "intensity_g_per_kwh": reading.intensity_g_per_kwh,
                "signal": reading.signal,
                "provider": reading.provider,
                "zone": reading.zone,
                "timestamp": _iso(reading.timestamp),
                "age_s": round(reading.age_s(now), 3),
                "estimated": reading.estimated,
            },
            "intensity_error": self._reading_error,
            "policy": policy,
            "last_decision": None if record is None else {
                "rho": record.decision.rho,
                "reason": record.decision.reason,
                "policy": record.decision.policy,
                "decided_at": _iso(record.decided_at),
                "valid_until": _iso(record.valid_until),
            },
            "override": self._override_dict(override),
            "gpu_power_w": self._gpu_power_w,
            "carbon_used_today_g": carbon_today_g,
            "meter": meter,
            "jobs_running": [
                {"job_id": j["job_id"], "model": j["model"], "scheme": j["scheme"], "pid": j["pid"], "uid": j["uid"],
                 "started_at": _iso(j["started_at"])}
                for j in self.store.jobs(status="running")
            ],
            "connections": self.server.active_connections if self.server else 0,
            "reload_error": self.reload_error,
            "last_reload_at": _iso(self.last_reload_at),
            "errors": errors,
        }

    def _status_line(self) -> str:
        record = self._decision
        rho = f"rho {record.decision.rho:.3f}" if record else "no decision yet"
        return f"{rho}; policy {getattr(self.policy, 'name', '?')}; provider {getattr(self.provider, 'name', '?')}"

    # -- metrics -------------------------------------------------------------------------------

    def metrics_snapshot(self) -> dict[str, Any]:
        """Current values for the Prometheus collector (see carbonsched.metrics)."""
        with self._lock:
            record, reading = self._decision, self._reading
            override = self._override is not None and self._override.active(utcnow())
            return {
                "rho": record.decision.rho if record else None,
                "override": override,
                "intensity_g_per_kwh": reading.intensity_g_per_kwh if reading else None,
                "gpu_power_w": self._gpu_power_w,
                "carbon_today_g": self._carbon_today_g,
                "jobs_running": len(self._job_carbon_g),
                "energy_j": dict(self._energy_totals_j),
            }


def run_daemon(config: DaemonConfig, cli_overrides: dict[str, Any] | None = None) -> None:
    """Foreground entry point for `carbonsched run`; raises StartupError if it cannot start."""
    setup_logging()
    daemon = Daemon(config, cli_overrides=cli_overrides)
    daemon.install_signal_handlers()
    daemon.start()
    daemon.run_forever()
