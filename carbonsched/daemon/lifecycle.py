"""The carbonsched daemon: wires the parts and runs their lifecycle.

    poll    periodic.PeriodicWork.poll_intensity / sample_power   provider, meter → state, store
    decide  periodic.PeriodicWork.decide                          state → policy → state, store
    serve   server.UnixSocketServer → socket_ops.handle           state, store → training jobs
    record  store.Store (SQLite) and runtime_state.RuntimeState (in memory)

Threads: the main thread waits for signals (SIGHUP reload, SIGTERM/SIGINT stop); APScheduler's
pool runs the periodic work; the server runs one thread per connection. The live state is behind
the RuntimeState's lock; the store serialises its own writes.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from datetime import timezone
from typing import TYPE_CHECKING, Any, Callable

from carbonsched.daemon import socket_ops
from carbonsched.config import DaemonConfig, load_config
from carbonsched.daemon.status import build_status, status_line
from carbonsched.daemon.logsetup import setup_logging
from carbonsched.daemon.sd_notify import Notifier
from carbonsched.paths import UnsafeDirectoryError, ensure_private_dir, ensure_runtime_dir, store_path
from carbonsched.daemon.periodic import PeriodicWork
from carbonsched.daemon.runtime_state import RuntimeState, Settings
from carbonsched.daemon.server import ServerError, UnixSocketServer
from carbonsched.store import Store, StoreError
from carbonsched.types import utcnow

if TYPE_CHECKING:
    from collections.abc import Mapping

    from carbonsched.policies import Policy
    from carbonsched.power import NodeEnergyMeter
    from carbonsched.protocol import ReloadReply, StatusReply
    from carbonsched.providers.base import IntensityProvider

log = logging.getLogger("carbonsched.daemon")
SIGNAL_POLL_S = 0.1  # how soon run_forever() acts on a stop or reload request

# A reload keeps these as they were started with; they take effect on restart.
RESTART_ONLY_SETTINGS = ("socket", "state_dir", "max_connections", "read_timeout_s", "max_line_bytes", "metrics_port")


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the user."""


def build_provider_from(config: DaemonConfig) -> IntensityProvider:
    from carbonsched.providers import DEFAULT_PROVIDER_SPEC, build_provider

    return build_provider(config.provider or DEFAULT_PROVIDER_SPEC)


def load_policy_from(config: DaemonConfig) -> Policy:
    from carbonsched.policies import default_policy_path, load_policy

    return load_policy(config.policy or default_policy_path())


def open_store(config: DaemonConfig) -> Store:
    return Store(store_path(config.state_dir))


def build_meter() -> NodeEnergyMeter:
    from carbonsched.power import NodeEnergyMeter

    return NodeEnergyMeter()


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        cli_overrides: Mapping[str, object] | None = None,
        notifier: Notifier | None = None,
        provider_factory: Callable[[DaemonConfig], IntensityProvider] = build_provider_from,
        policy_loader: Callable[[DaemonConfig], Policy] = load_policy_from,
        meter_factory: Callable[[], NodeEnergyMeter] | None = build_meter,
        store_factory: Callable[[DaemonConfig], Store] = open_store,
    ):
        self._cli_overrides = dict(cli_overrides or {})
        self.notifier = notifier or Notifier()
        self._ready_sent = False
        self._provider_factory = provider_factory
        self._policy_loader = policy_loader
        self._meter_factory = meter_factory
        self._store_factory = store_factory
        # Set by signal handlers, so plain attributes: a handler runs in the main thread between any
        # two bytecodes, possibly while that thread holds a lock the handler would need (a
        # threading.Event's, inside Event.wait), which would deadlock it. Writing a bool takes no lock.
        self._stop_requested = False
        self._reload_requested = False
        self._reload_lock = threading.Lock()
        self._stopped = False
        self.started_at = utcnow()
        self._started_monotonic = time.monotonic()
        self.state = RuntimeState(Settings(config=config, policy=None, provider=None))
        self.meter: Any = None
        self.meter_error: str | None = None
        self.store: Store | None = None
        self.work: PeriodicWork | None = None
        self.server: UnixSocketServer | None = None
        self.scheduler: Any = None
        self._metrics_server: Any = None

    @property
    def config(self) -> DaemonConfig:
        return self.state.settings.config

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open everything and start serving; raises StartupError with a one-line message."""
        cfg = self.config
        try:
            provider = self._provider_factory(cfg)
        except Exception as exc:
            raise StartupError(f"provider {cfg.provider or 'default'!r}: {exc}") from exc
        try:
            policy = self._policy_loader(cfg)
        except Exception as exc:
            raise StartupError(f"policy: {exc}") from exc
        self.state.install(Settings(config=cfg, policy=policy, provider=provider))
        if self._meter_factory is not None:
            try:
                self.meter = self._meter_factory()
            except Exception as exc:
                self.meter_error = f"{type(exc).__name__}: {exc}"
                self.state.record_error("power", f"energy meter unavailable: {self.meter_error}")
        try:
            ensure_private_dir(cfg.state_dir)
            self.store = self._store_factory(cfg)
            self.store.set_meta("node_name", cfg.node_name)
        except (OSError, StoreError) as exc:
            raise StartupError(f"store in {cfg.state_dir}: {exc}") from exc
        self.work = PeriodicWork(self.state, self.store, self.meter)
        self.work.begin_run()
        self.work.queue_counter_recovery()
        ops = socket_ops.OpContext(state=self.state, store=self.store, work=self.work, reload=self.reload, status=self.status)
        try:
            ensure_runtime_dir(cfg.socket.parent)
            self.server = UnixSocketServer(
                cfg.socket,
                lambda request, peer: socket_ops.handle(ops, request, peer),
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
            from carbonsched.daemon.metrics import start_metrics_server

            self._metrics_server = start_metrics_server(self.state, cfg.metrics_addr, cfg.metrics_port)
        log.info(
            "listening on %s (provider %s, policy %s, store %s)",
            cfg.socket, getattr(provider, "name", "?"), getattr(policy, "name", "?"), self.store.path,
        )
        self.notifier.ready(status=self._status_line())
        self._ready_sent = True

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={"coalesce": True, "max_instances": 1})
        self._schedule_jobs()
        self.scheduler.start()

    def _schedule_jobs(self) -> None:
        assert self.work is not None
        self.work.schedule(self.scheduler, self._watchdog, self.notifier.watchdog_interval_s)

    def _watchdog(self) -> None:
        if not self._ready_sent:
            return  # the scheduler starts before READY; systemd should see READY first
        if self.server is not None and self.server.accepting:
            self.notifier.watchdog()
        else:
            log.error("socket server thread is gone; withholding the watchdog ping")

    def request_stop(self) -> None:
        """Ask run_forever() to stop; safe from a signal handler and from any thread."""
        self._stop_requested = True

    def request_reload(self) -> None:
        """Ask run_forever() to reload; safe from a signal handler and from any thread."""
        self._reload_requested = True

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
        try:
            while not self._stop_requested:
                if self._reload_requested:
                    self._reload_requested = False  # a SIGHUP during the reload asks for another
                    self.reload()
                else:
                    time.sleep(SIGNAL_POLL_S)
        finally:  # never a process whose socket answers while nothing reloads or stops it
            self.stop()

    def stop(self) -> None:
        """Stop serving, let requests being handled and periodic work finish, then close the
        meter and the store. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping")
        self.notifier.stopping(status="shutting down")
        if self.server is not None:
            self.server.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.work is not None:
            self.work.close_meter()
            try:
                self.work.end_run()
            except Exception as exc:  # a read-only or full disk: the next start infers the stop
                log.warning("recording the daemon's stop: %s", exc)
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    # -- reload --------------------------------------------------------------------------------

    def reload(self) -> ReloadReply:
        """Re-read the config file and policy; on any error keep what runs and report it.
        SIGHUP and the `reload` op may ask at once: one reload at a time, so the later one reads
        the files after the earlier one's result is in force and its own result is what stays."""
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> ReloadReply:
        self.notifier.reloading()
        running = self.state.settings
        try:
            new_config = running.config
            if running.config.source is not None:
                new_config = load_config(running.config.source).with_overrides(**self._cli_overrides)
            new_policy = self._policy_loader(new_config)
            new_provider = running.provider
            if new_config.provider != running.config.provider:
                new_provider = self._provider_factory(new_config)
        except Exception as exc:  # ConfigError, PolicyFileError, ProviderSpecError, ...
            message = f"reload failed, keeping the running configuration: {exc}"
            self.state.reload_failed(message)
            self.state.record_error("reload", message)
            self.notifier.ready(status=self._status_line())
            return {"reloaded": False, "error": message}
        for name in RESTART_ONLY_SETTINGS:
            if getattr(new_config, name) != getattr(running.config, name):
                log.warning("reload: %s changed; it takes effect on restart", name)
                new_config = dataclasses.replace(new_config, **{name: getattr(running.config, name)})
        intervals_changed = self.state.apply_reload(Settings(config=new_config, policy=new_policy, provider=new_provider))
        log.info("reloaded: provider %s, policy %s", getattr(new_provider, "name", "?"), getattr(new_policy, "name", "?"))
        reply: ReloadReply = {"reloaded": True, "policy": getattr(new_policy, "name", None)}
        try:  # the new settings are in force; what follows must not take the reload path down
            if self.store is not None:
                self.store.set_meta("node_name", new_config.node_name)
            if intervals_changed and self.scheduler is not None:
                self._schedule_jobs()
            assert self.work is not None
            self.work.decide()
        except Exception as exc:  # e.g. a policy raising, a busy disk: the next decide interval retries
            message = f"reloaded, but deciding with the new settings failed: {type(exc).__name__}: {exc}"
            self.state.record_error("reload", message)
            reply["error"] = message
        self.notifier.ready(status=self._status_line())
        return reply

    # -- serve ---------------------------------------------------------------------------------

    def status(self) -> StatusReply:
        assert self.store is not None
        return build_status(
            self.state, self.store, meter=self.meter, meter_error=self.meter_error, started_at=self.started_at,
            uptime_s=time.monotonic() - self._started_monotonic,
            connections=self.server.active_connections if self.server else 0,
        )

    def _status_line(self) -> str:
        record, _override = self.state.decision_and_override()
        return status_line(self.state.settings, record, self.state.reload_status())


def run_daemon(config: DaemonConfig, cli_overrides: Mapping[str, object] | None = None) -> None:
    """Foreground entry point for `carbonsched run`; raises StartupError if it cannot start."""
    setup_logging()
    daemon = Daemon(config, cli_overrides=cli_overrides)
    daemon.install_signal_handlers()
    daemon.start()
    daemon.run_forever()
