"""DaemonRhoSource against a real daemon subprocess: absent, appearing mid-run, answering ρ."""

import logging
import time

import pytest

from daemon_helpers import DaemonProcess, short_dir, write_policy
from gt_core.training.callbacks import TrainerCallback
from gt_core.rho.daemon_source import DaemonRhoSource, devices_from_env
from gt_core.models.tiny import tiny_model
from gt_core.training.trainer import GreenTrainer, TrainConfig
from carbonsched.store import Store

pytestmark = pytest.mark.slow


def make_trainer(tmp_path, tokenizer, task, source, epochs=2, callbacks=()):
    config = TrainConfig(
        epochs=epochs, lr=1e-3, batch_size=8, importance_batches=1, max_input_length=32, max_target_length=12,
        output_dir=tmp_path / "run", progress=False, save_final=False,
    )
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
    return GreenTrainer(model, tokenizer, task[0], task[1], config, rho_source=source, callbacks=callbacks)


def test_devices_from_cuda_visible_devices():
    assert devices_from_env({}) == []
    assert devices_from_env({"CUDA_VISIBLE_DEVICES": "0, 2"}) == ["0", "2"]  # the daemon maps them
    assert devices_from_env({"CUDA_VISIBLE_DEVICES": "GPU-1234"}) == ["GPU-1234"]


def test_daemon_absent_at_start_trains_on_the_default_and_warns_once(tmp_path, tokenizer, task, caplog):
    caplog.set_level(logging.WARNING)
    with short_dir() as d:
        source = DaemonRhoSource(d / "none.sock", default_rho=0.9, timeout_s=0.5, model_name="tiny", scheme="green")
        trainer = make_trainer(tmp_path, tokenizer, task, source)
        started = time.monotonic()
        records = trainer.train()
        elapsed_s = time.monotonic() - started
    assert [r.rho_asked for r in records] == [0.9, 0.9]
    assert {r.rho_source for r in records} == {"daemon-fallback"}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert source.warnings == 1 and source.epoch_reports == {}
    assert elapsed_s < 60


def test_daemon_appearing_mid_run_gets_the_same_job_and_the_epoch_whose_start_it_missed(tmp_path, tokenizer, task, caplog):
    caplog.set_level(logging.INFO)
    with short_dir() as d:
        holder: dict = {}

        class StartDaemonAtEpoch1(TrainerCallback):
            def on_epoch_start(self, trainer, epoch, reading):
                if epoch == 1:  # the source already failed to ask ρ for this epoch
                    holder["daemon"] = DaemonProcess(d, "--policy", str(write_policy(d))).wait_ready()

        socket = d / "run" / "carbonsched.sock"
        source = DaemonRhoSource(socket, default_rho=0.8, timeout_s=2.0, model_name="tiny", scheme="green")
        trainer = make_trainer(tmp_path, tokenizer, task, source, epochs=3, callbacks=[StartDaemonAtEpoch1()])
        try:
            records = trainer.train()
            daemon = holder["daemon"]
            with Store(daemon.state_dir / "carbonsched.sqlite3") as store:
                job = store.job(source.job_id)
                epochs = store.epochs(source.job_id)
        finally:
            if "daemon" in holder:
                holder["daemon"].stop()
    assert records[0].rho_source == "daemon-fallback" and records[1].rho_source == "daemon-fallback"
    assert records[2].rho_source == "daemon" and records[2].rho_asked is not None
    assert job["status"] == "completed" and job["model"] == "tiny" and job["scheme"] == "green"
    assert [e["epoch"] for e in epochs] == [1, 2]
    missed = epochs[0]
    assert missed["ended_at"] - missed["started_at"] == pytest.approx(missed["wall_s"], abs=1e-6)
    assert missed["energy_j"] is not None and epochs[1]["energy_j"] > 0
    assert epochs[1]["rho_asked"] == records[2].rho_asked == 0.7
    assert epochs[1]["extra"]["tensors_selected"] == records[2].tensors_selected
    assert source.warnings == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)
