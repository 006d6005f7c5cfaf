"""A real daemon pausing a real transformers.Trainer through GreenTrainerCallback: the daemon replays
a sped-up trace whose first hours are dirty, so a pausable job with a deadline is paused; the
Trainer waits at a step boundary (an epoch's start, and between two steps when the plan pauses it
again mid-epoch), resumes when the daemon says run, and runs every step of every epoch once. A
daemon killed while the Trainer is paused: it resumes on its own after its bounded wait."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable

import pytest
from transformers import TrainerCallback

from carbonsched.store import Store
from daemon_helpers import DaemonProcess, ask_new_conn, short_dir, wait_until
from gt_core.integrations.hf_callback import GreenTrainerCallback
from gt_core.rho.daemon_source import DaemonRhoSource
from gt_core.models.tiny import tiny_model
from hf_trainer_helpers import green_hf_trainer
from pause_helpers import paused_job, wait_for_reading, write_trace

pytestmark = pytest.mark.slow

EPOCHS, STEPS_PER_EPOCH = 2, 4  # 8 examples, 2 per step
POLL_S = 0.05
SECOND_PAUSE_STEP = 2  # the plan pauses the job again before epoch 0's third step


class _Events(TrainerCallback, logging.Handler):
    """What happened, in order: the pauses and resumes gt_core.rho.pausing logs, and the epochs and
    steps the Trainer ran (this callback comes after the green one, so after its pauses).
    ``after_step`` runs at the end of a step, given the global step reached."""

    def __init__(self, after_step: Callable[[int], None] = lambda step: None) -> None:
        TrainerCallback.__init__(self)
        logging.Handler.__init__(self, logging.WARNING)
        self.events: list[tuple[Any, ...]] = []
        self.reasons: list[str] = []
        self.after_step = after_step
        self.step_began_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("paused before step"):
            step, epoch = record.args[:2]
            self.events.append(("paused", epoch, step))
        elif record.msg.startswith("resuming at step"):
            step, epoch, _seconds, why = record.args
            self.events.append(("resumed", epoch, step))
            self.reasons.append(why)

    def pauses(self) -> int:
        return sum(1 for event in self.events if event[0] == "paused")

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.events.append(("epoch", round(state.epoch or 0)))

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_began_at = time.monotonic()
        self.events.append(("step", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.after_step(state.global_step)


def _override(daemon: DaemonProcess, rho: float | None) -> None:
    """An admin's ρ for every job (None clears it: the plan answers again)."""
    conn = daemon.conn()
    try:
        assert conn.ask(op="override", rho=rho)["ok"]
    finally:
        conn.close()


def _pausable_source(daemon: DaemonProcess, **kwargs: Any) -> DaemonRhoSource:
    """The job model GreenTrainer declares for `--deadline --may-pause`, a deadline far away."""
    return DaemonRhoSource(daemon.socket, model_name="tiny-opt", scheme="green", deadline_s=time.time() + 900,
                           epochs=EPOCHS, epoch_seconds=2, rho_min=0.5, may_pause=True, pause_poll_s=POLL_S, **kwargs)


def _start_training(tmp_path, tokenizer, task, source: DaemonRhoSource, events: _Events):
    """The Trainer (2 epochs of 4 steps) training in a thread; returns (trainer, green, thread, outcome)."""
    train, _ = task
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=16, layers=2, heads=2, max_len=128, seed=0)
    green = GreenTrainerCallback(source, importance_batches=1)
    trainer = green_hf_trainer(tmp_path, tokenizer, train, model, green, num_train_epochs=EPOCHS,
                               per_device_train_batch_size=2)
    trainer.add_callback(events)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            trainer.train()
        except BaseException as exc:  # re-raised by the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return trainer, green, worker, outcome


def _paused_logs(trainer) -> list[dict[str, Any]]:
    return [entry for entry in trainer.state.log_history if "gt_paused_s" in entry]


def test_daemon_pauses_the_hf_trainer_at_step_boundaries_and_every_step_runs_once(tmp_path, tokenizer, task):
    pausing_log = logging.getLogger("gt_core.pausing")
    with short_dir() as d:
        # 1000x: the 23 dirty hours last 83 s; the job is resumed by an admin's ρ long before.
        daemon = DaemonProcess(d, "--provider", f"trace:{write_trace(d)}?speedup=1000").wait_ready()
        assert wait_for_reading(daemon)  # so that the job is planned as it registers
        source = _pausable_source(daemon)

        def plan_pauses_again(global_step: int) -> None:
            if global_step != SECOND_PAUSE_STEP:
                return
            _override(daemon, None)
            assert wait_until(lambda: (ask_new_conn(daemon.socket, op="rho", job_id=source.job_id) or {})
                              .get("pause_until") is not None, 30, 0.05), daemon.log()
            # The next step's check is due (the callback asks at most once per POLL_S).
            assert wait_until(lambda: time.monotonic() - events.step_began_at > POLL_S, 5, 0.01)

        events = _Events(plan_pauses_again)
        pausing_log.addHandler(events)
        worker = None
        try:
            trainer, green, worker, outcome = _start_training(tmp_path, tokenizer, task, source, events)
            for pause in (1, 2):  # paused at the epoch's start, then between two of its steps
                assert wait_until(lambda: events.pauses() == pause and paused_job(daemon) is not None, 60, 0.05), (
                    f"pause {pause} not seen: {events.events} {outcome}\n{daemon.log()}")
                assert paused_job(daemon)["job_id"] == source.job_id
                _override(daemon, 0.8)  # an admin's ρ runs the job now
            worker.join(120)
            assert not worker.is_alive(), events.events
            assert "error" not in outcome, outcome
        finally:
            pausing_log.removeHandler(events)
            if worker is not None and worker.is_alive():
                daemon.signal(signal.SIGKILL)  # the paused Trainer then resumes after its bounded wait
            assert daemon.stop() in (0, -signal.SIGKILL)
        with Store(daemon.state_dir / "carbonsched.sqlite3", read_only=True) as store:
            job = store.job(source.job_id)
            epochs = store.epochs(source.job_id)
            pauses = store.pauses(source.job_id)

    second_step = SECOND_PAUSE_STEP
    assert events.events == [
        ("paused", 0, 0), ("resumed", 0, 0), ("epoch", 0), *[("step", s) for s in range(second_step)],
        ("paused", 0, second_step), ("resumed", 0, second_step),
        *[("step", s) for s in range(second_step, STEPS_PER_EPOCH)],
        ("epoch", 1), *[("step", s) for s in range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH)],
    ]
    assert events.reasons == ["told to run", "told to run"]
    # Every step of every epoch ran, once.
    assert trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH
    assert [h["steps"] for h in green.history] == [h["micro_batches"] for h in green.history] == [STEPS_PER_EPOCH] * 2
    # Each pause went through the Trainer's logging at the step it held; the epoch's sum is its paused_s.
    logged = _paused_logs(trainer)
    assert [entry["step"] for entry in logged] == [0, second_step] and all(e["gt_paused_s"] > 0 for e in logged)
    assert green.history[0]["paused_s"] == sum(e["gt_paused_s"] for e in logged) and green.history[1]["paused_s"] == 0
    # The daemon: the job, its epochs as the callback measured them, and both pause intervals.
    assert job["status"] == "completed" and job["may_pause"] and job["epochs"] == EPOCHS
    assert [e["epoch"] for e in epochs] == [0, 1] and all(e["ended_at"] for e in epochs)
    assert [e["extra"]["steps"] for e in epochs] == [STEPS_PER_EPOCH] * 2
    assert [e["wall_s"] for e in epochs] == [h["wall_s"] for h in green.history]
    assert len(pauses) == 2 and all(p["ended_at"] is not None and p["ended_at"] > p["started_at"] for p in pauses)
    at_start, mid_epoch = pauses
    assert at_start["ended_at"] <= epochs[0]["started_at"]  # before the epoch's selection and epoch.start
    assert epochs[0]["started_at"] <= mid_epoch["started_at"] and mid_epoch["ended_at"] <= epochs[0]["ended_at"]


def test_an_hf_trainer_paused_by_a_daemon_that_dies_resumes_after_its_bounded_wait(tmp_path, tokenizer, task):
    pausing_log = logging.getLogger("gt_core.pausing")
    with short_dir() as d:
        daemon = DaemonProcess(d, "--provider", f"trace:{write_trace(d)}?speedup=1000").wait_ready()
        assert wait_for_reading(daemon)
        source = _pausable_source(daemon, pause_max_wait_s=1)
        events = _Events()
        pausing_log.addHandler(events)
        worker = None
        try:
            trainer, green, worker, outcome = _start_training(tmp_path, tokenizer, task, source, events)
            seen = {}
            assert wait_until(lambda: seen.setdefault("job", paused_job(daemon)) or seen.pop("job"), 60, 0.05), (
                daemon.log())
            assert seen["job"]["plan"]["pause_until_s"] > time.time() + 20  # far beyond the bounded wait
            daemon.signal(signal.SIGKILL)
            daemon.proc.wait(10)
            worker.join(120)
            assert not worker.is_alive(), events.events
            assert "error" not in outcome, outcome
        finally:
            pausing_log.removeHandler(events)
            daemon.stop()
            if worker is not None and worker.is_alive():
                worker.join(60)

    assert events.events == [
        ("paused", 0, 0), ("resumed", 0, 0), ("epoch", 0), *[("step", s) for s in range(STEPS_PER_EPOCH)],
        ("epoch", 1), *[("step", s) for s in range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH)],
    ]
    assert events.reasons == ["no answer from the daemon for 1 s while paused"]
    assert trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH
    assert [h["steps"] for h in green.history] == [STEPS_PER_EPOCH] * 2
    (logged,) = _paused_logs(trainer)
    assert logged["step"] == 0 and logged["gt_paused_s"] > 0 and green.history[0]["paused_s"] == logged["gt_paused_s"]
