"""DaemonRhoSource with a daemon that hangs: a real protocol server whose handler holds every
request until the test releases it, and real GreenTrainer runs asking ρ before every step
(reselect="on_change"). Assertions count what the server received, not how long things took."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

from carbonsched.protocol import ProtocolError
from carbonsched.daemon.server import UnixSocketServer
from daemon_helpers import short_dir
from gt_core.training.callbacks import TrainerCallback
from gt_core.data.embedded_task import embedded_task
from gt_core.rho.daemon_source import DaemonRhoSource
from gt_core.models.tiny import tiny_model
from gt_core.training.trainer import GreenTrainer, TrainConfig

STEPS = 30
TIMEOUT_S = 0.2
# Where the server must answer in time once released: room for a loaded machine.
ANSWER_TIMEOUT_S = 0.5
# Exchanges the trainer's epoch events always attempt in a one-epoch run while the daemon is
# unreachable: run start, the epoch's first ρ request, the epoch end, the run end.
EPOCH_EVENTS = 4


class GatedDaemon:
    """A real protocol server that reads and counts every request but answers none until
    ``release()`` (a hung or SIGSTOPped daemon); then it answers like a daemon with a constant
    policy. ``hold()`` makes it hang again."""

    def __init__(self, path, rho: float = 0.7):
        self.rho = rho
        self.received: list[tuple[str, dict, bool]] = []  # (op, fields, released when received)
        self._released = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.server = UnixSocketServer(path, self.handle, read_timeout_s=60.0)

    def __enter__(self) -> "GatedDaemon":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.server.stop()

    def release(self) -> None:
        self._released.set()

    def hold(self) -> None:
        self._released.clear()

    def handle(self, request, peer):
        with self._lock:
            released = self._released.is_set()
            self.received.append((request.op, dict(request.fields), released))
        while not self._released.wait(0.05):
            if self._closing.is_set():
                raise ProtocolError("unavailable", "test server closing")
        if not released:  # the client gave up on it long ago; a late answer would be ignored
            raise ProtocolError("unavailable", "answered too late")
        if request.op == "job.start":
            return {"job_id": request.fields["job_id"]}
        if request.op == "rho":
            return {"rho": self.rho, "policy": "gated", "reason": "test"}
        return {}

    def ops(self, *, released: bool | None = None) -> list[str]:
        with self._lock:
            return [op for op, _, r in self.received if released is None or r == released]


@pytest.fixture(scope="module")
def task():
    return embedded_task(n_train=STEPS, n_val=2)


def make_trainer(tmp_path, tokenizer, task, source, *, step_floor_s=0.0, callbacks=()):
    """One epoch of STEPS optimizer steps (batch 1), asking ρ before every step."""
    config = TrainConfig(
        epochs=1, lr=1e-3, batch_size=1, importance_batches=1, max_input_length=32, max_target_length=12,
        reselect="on_change", output_dir=tmp_path / "run", progress=False, save_final=False,
        print_epoch_summary=False,
    )
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
    if step_floor_s:
        # Every forward pass (so every training step) takes at least this long: a lower bound on
        # step time turns "within the back-off" into a step count.
        model.register_forward_pre_hook(lambda module, args: time.sleep(step_floor_s))
    return GreenTrainer(model, tokenizer, task[0], task[1], config, rho_source=source, callbacks=callbacks)


def test_a_hung_daemon_is_asked_a_bounded_number_of_times_not_once_per_step(tmp_path, tokenizer, task, caplog):
    caplog.set_level(logging.WARNING)
    with short_dir() as d, GatedDaemon(d / "hung.sock") as hung:
        source = DaemonRhoSource(hung.server.path, default_rho=0.9, timeout_s=TIMEOUT_S, model_name="tiny", scheme="green")
        trainer = make_trainer(tmp_path, tokenizer, task, source)
        started = time.monotonic()
        records = trainer.train()
        elapsed_s = time.monotonic() - started
        ops = hung.ops()

    assert trainer.state.global_step == STEPS and len(records) == 1 and not trainer.interrupted
    # Never registered, so every exchange was a job.start, each one a request the server read.
    assert set(ops) == {"job.start"}
    # Mid-epoch ρ requests: each either tried the daemon (one request) or was answered from the
    # back-off (1 s doubling) without an exchange; k tries need at least (2**k - 1) s of run.
    step_loop_tries = len(ops) - EPOCH_EVENTS
    assert 0 <= step_loop_tries <= math.log2(elapsed_s / source.backoff_s + 1)
    assert source.skipped + step_loop_tries == STEPS - 1
    assert len(ops) <= EPOCH_EVENTS + 3 < STEPS  # asking every step would have been STEPS + 3
    # ρ fell back to the default for the whole run; one warning for the one outage.
    assert [(s["rho"], s["source"]) for s in trainer.state.selections] == [(0.9, "daemon-fallback")]
    assert (records[0].rho_asked, records[0].rho_source) == (0.9, "daemon-fallback")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert source.warnings == 1 and len(warnings) == 1 and "unavailable" in warnings[0], warnings
    assert source.epoch_reports == {}
    assert elapsed_s < 120  # generous: the exchanges themselves cost at most len(ops) * TIMEOUT_S


def test_a_released_daemon_is_picked_up_within_the_back_off_and_gets_the_job_again(tmp_path, tokenizer, task, caplog):
    caplog.set_level(logging.INFO)
    backoff_s, step_floor_s = 0.1, 0.02

    with short_dir() as d, GatedDaemon(d / "gated.sock", rho=0.7) as gated:

        class ReleaseAfterTheEpochOpened(TrainerCallback):
            """Runs after the epoch's first ρ request timed out (the source is backing off)."""

            def on_epoch_start(self, trainer, epoch, reading):
                assert reading.source == "daemon-fallback" and source.skipped == 0
                self.skipped_before = source.skipped
                gated.release()

        release = ReleaseAfterTheEpochOpened()
        source = DaemonRhoSource(
            gated.server.path, default_rho=0.9, timeout_s=ANSWER_TIMEOUT_S, backoff_s=backoff_s, max_backoff_s=backoff_s,
            model_name="tiny", scheme="green",
        )
        trainer = make_trainer(tmp_path, tokenizer, task, source, step_floor_s=step_floor_s, callbacks=[release])
        records = trainer.train()
        held, answered = gated.ops(released=False), gated.ops(released=True)
        job_starts = [f for op, f, r in gated.received if op == "job.start" and r]

    # Before the release: run start and the epoch's first ρ request, one job.start each.
    assert held == ["job.start", "job.start"]
    # After it: the job registered again under its id, then fresh ρ before every remaining step,
    # then the epoch end (its missed start is derived by the daemon) and the run end.
    skipped_after_release = source.skipped - release.skipped_before
    assert skipped_after_release <= math.ceil(backoff_s / step_floor_s) + 1
    rho_asks = STEPS - 1 - skipped_after_release
    assert answered == ["job.start"] + ["rho"] * rho_asks + ["epoch.end", "job.end"]
    assert [f["job_id"] for f in job_starts] == [source.job_id]
    # The trainer selected again, mid-epoch, as soon as the daemon's ρ came in.
    (first, second) = trainer.state.selections
    assert (first["rho"], first["source"], first["global_step"]) == (0.9, "daemon-fallback", 0)
    assert (second["rho"], second["source"]) == (0.7, "daemon") and 0 < second["global_step"] < STEPS
    assert (records[0].rho_asked, records[0].rho_source) == (0.7, "daemon")
    assert 0 in source.epoch_reports and source.reachable is True and source.warnings == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_daemon_that_hangs_mid_run_keeps_its_last_rho_and_is_asked_rarely(tmp_path, tokenizer, task):
    with short_dir() as d, GatedDaemon(d / "gated.sock", rho=0.7) as gated:
        gated.release()

        class HangAfterTheEpochOpened(TrainerCallback):
            def on_epoch_start(self, trainer, epoch, reading):
                assert reading.source == "daemon"
                gated.hold()

        source = DaemonRhoSource(
            gated.server.path, default_rho=0.9, timeout_s=ANSWER_TIMEOUT_S, model_name="tiny", scheme="green"
        )
        trainer = make_trainer(tmp_path, tokenizer, task, source, callbacks=[HangAfterTheEpochOpened()])
        started = time.monotonic()
        records = trainer.train()
        elapsed_s = time.monotonic() - started
        answered, held = gated.ops(released=True), gated.ops(released=False)

    assert answered == ["job.start", "rho", "epoch.start"]  # run start; the epoch's first ρ and its start
    # The step that first found it hung asked ρ (one request); then the back-off, retries
    # (one job.start each), and the epoch end and run end (one job.start each).
    assert held[0] == "rho" and set(held[1:]) == {"job.start"}
    step_loop_tries = len(held) - 2  # epoch end and run end
    assert 1 <= step_loop_tries <= 1 + math.log2(elapsed_s / source.backoff_s + 1)
    assert source.skipped + step_loop_tries == STEPS - 1
    # ρ stayed the daemon's last answer: no reselection, and the epoch still counts as daemon-asked.
    assert [(s["rho"], s["source"]) for s in trainer.state.selections] == [(0.7, "daemon")]
    assert records[0].rho_asked == 0.7 and source.warnings == 1 and source.epoch_reports == {}
