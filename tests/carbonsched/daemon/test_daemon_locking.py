"""Concurrency of the daemon's parts: no store call while the runtime state's lock is held,
one reload at a time, and no store close under a request still being handled (a real daemon
in this process; store doubles wrap the real SQLite store)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from carbonsched.config import DaemonConfig
from carbonsched.policies import load_policy
from carbonsched.paths import store_path
from carbonsched.store import Store
from daemon_helpers import LineConn, wait_until
from inprocess_daemon import inprocess_daemon, write_policy

BUDGET = 'kind = "budget"\nrho_min = 0.2\nbudget_g_per_job = 1.0\n'


class StoreDouble:
    """The real store, with ``before_call(name)`` run before each of its methods."""

    def __init__(self, config: DaemonConfig, before_call: Callable[[str], None]):
        self.real = Store(store_path(config.state_dir))
        self.before_call = before_call

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.real, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self.before_call(name)
            return value(*args, **kwargs)

        return call


def store_factory(before_call: Callable[[str], None]) -> Callable[[DaemonConfig], StoreDouble]:
    return lambda config: StoreDouble(config, before_call)


def test_no_store_call_happens_while_the_state_lock_is_held():
    """A store call under the state lock would make every ρ answer wait for the disk."""
    state_lock: list[Any] = []
    calls: list[str] = []
    calls_under_lock: list[str] = []

    def check(name: str) -> None:
        calls.append(name)
        if state_lock and state_lock[0].held_by_current_thread():
            calls_under_lock.append(name)

    with inprocess_daemon(BUDGET, store_factory=store_factory(check)) as running:
        daemon = running.daemon
        state_lock.append(daemon.state.lock)
        conn = LineConn(daemon.config.socket)
        for job_id, devices in (("a", ["0"]), ("b", ["1"])):
            assert conn.ask(op="job.start", job_id=job_id, model="m", scheme="green", pid=os.getpid(), devices=devices)["ok"]
            assert conn.ask(op="epoch.start", job_id=job_id, epoch=0, rho_asked=1.0)["ok"]
        for _ in range(2):
            running.gpus[0].energy_mJ += 100_000
            running.add_rapl_energy_j("cpu", 10.0)
            daemon.work.sample_power()
            daemon.work.poll_intensity()
            daemon.work.decide()
            daemon.work.check_jobs()
            daemon.work.prune()
        for request in ({"op": "rho", "job_id": "a"}, {"op": "status"}, {"op": "jobs"},
                        {"op": "override", "rho": 0.5, "ttl_s": 60}, {"op": "override", "rho": None},
                        {"op": "epoch.end", "job_id": "a", "epoch": 0, "rho_asked": 1.0, "rho_effective": 1.0},
                        {"op": "job.end", "job_id": "a", "status": "completed"}, {"op": "reload"}):
            assert conn.ask(**request)["ok"], request
        conn.close()
    assert {"jobs", "add_energy", "add_decision", "epoch_windows", "end_epoch"} <= set(calls)
    assert calls_under_lock == []


def test_concurrent_reloads_run_one_at_a_time_and_the_later_one_stays(tmp_path):
    """The SIGHUP path (which calls reload()) and the `reload` op at once: the second reload
    starts after the first has put its result in force, so the second's result stays."""
    policy_files = [write_policy(tmp_path, f"p{i}", 'kind = "constant"\nrho = 0.7\n') for i in range(3)]
    guard = threading.Lock()
    loads: list[int] = []
    inside, overlapping = [0], []
    first_reload_inside = threading.Event()

    def loader(config: DaemonConfig) -> Any:
        with guard:
            n = len(loads)
            loads.append(n)
            inside[0] += 1
            if inside[0] > 1:
                overlapping.append(n)
        try:
            if n == 1:
                first_reload_inside.set()
                # Give a concurrent second reload every chance to start now; serialised, it cannot.
                wait_until(lambda: len(loads) > 2, timeout_s=2.0)
            return load_policy(policy_files[n])
        finally:
            with guard:
                inside[0] -= 1

    with inprocess_daemon(policy_loader=loader) as running:
        daemon = running.daemon
        replies: list[dict[str, Any]] = []
        sighup_path = threading.Thread(target=lambda: replies.append(daemon.reload()))
        sighup_path.start()
        assert first_reload_inside.wait(10)
        conn = LineConn(daemon.config.socket, timeout_s=30)
        op_reply = conn.ask(op="reload")
        conn.close()
        sighup_path.join(30)
        final_policy = daemon.status()["policy"]["name"]
    assert replies == [{"reloaded": True, "policy": "p1"}]
    assert op_reply["ok"] and op_reply["policy"] == "p2"
    assert overlapping == []
    assert final_policy == "p2"


def test_stop_lets_a_request_being_handled_finish_before_the_store_closes():
    entered, release = threading.Event(), threading.Event()

    def block_epoch_end(name: str) -> None:
        if name == "end_epoch" and not release.is_set():
            entered.set()
            release.wait(30)

    with inprocess_daemon(store_factory=store_factory(block_epoch_end)) as running:
        daemon = running.daemon
        conn = LineConn(daemon.config.socket)
        assert conn.ask(op="job.start", job_id="j", model="m", scheme="green", pid=os.getpid())["ok"]
        assert conn.ask(op="epoch.start", job_id="j", epoch=0, rho_asked=0.5)["ok"]
        replies: list[Any] = []

        def epoch_end() -> None:
            try:
                replies.append(conn.ask(op="epoch.end", job_id="j", epoch=0, rho_asked=0.5, rho_effective=0.5))
            except OSError as exc:  # the connection closed before the reply
                replies.append(exc)

        client = threading.Thread(target=epoch_end)
        client.start()
        assert entered.wait(10)
        stopping = threading.Thread(target=daemon.stop)
        stopping.start()
        # Give stop() every chance to close the store under the waiting request; it must wait.
        wait_until(lambda: not stopping.is_alive(), timeout_s=2.0)
        release.set()
        client.join(30)
        stopping.join(30)
        conn.close()
        with running.store() as store:
            (epoch,) = store.epochs("j")
    assert isinstance(replies[0], dict) and replies[0]["ok"], replies
    assert epoch["ended_at"] is not None


def test_a_reload_whose_first_decision_fails_keeps_the_daemon_reloading(monkeypatch):
    """The new settings are in force when deciding with them fails: the error is reported and the
    next reload works (before, the exception left the SIGHUP loop, and a daemon whose socket still
    answered never reloaded again)."""
    with inprocess_daemon() as running:
        daemon = running.daemon
        real_decide = daemon.work.decide
        failures = iter([RuntimeError("database is locked")])

        def decide_failing_once():
            for exc in failures:
                raise exc
            return real_decide()

        monkeypatch.setattr(daemon.work, "decide", decide_failing_once)
        reply = daemon.reload()
        assert reply["reloaded"] is True and "database is locked" in reply["error"]
        assert any("database is locked" in e["message"] for e in daemon.status()["errors"])
        assert daemon.reload() == {"reloaded": True, "policy": "start"}
