"""GreenTrainerCallback with a DaemonRhoSource inside a real transformers.Trainer, against a real
``carbonsched run`` daemon: the job, its epochs (energy, FLOPs, ρ, losses) in the daemon's store,
``carbonsched report``; and training without a daemon."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager

import pytest
import torch
from transformers import Trainer, TrainingArguments
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.store import Store
from daemon_helpers import DaemonProcess, short_dir, write_policy
from gt_core.data.datasets import SummarizationDataset, collate_batch
from gt_core.data.embedded_task import embedded_task
from gt_core.integrations.hf_callback import GreenTrainerCallback, _epoch_losses
from gt_core.rho.daemon_source import DaemonRhoSource
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer
from proc_helpers import free_port

pytestmark = pytest.mark.slow

N_TRAIN, BATCH, ACCUMULATION = 20, 4, 2
MICRO_BATCHES = 5  # 20 rows / 4 per micro-batch, per epoch
OPTIMIZER_STEPS = 3  # windows of 2, 2 and 1 micro-batches


def _trainer(tmp_path, source, *, evaluate: bool):
    torch.manual_seed(0)
    tok = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tok), hidden=32, layers=2, heads=4)
    train, val = embedded_task(n_train=N_TRAIN, n_val=4, seed=2)
    kwargs = dict(encoder_decoder=False, max_input_length=96, max_target_length=16)
    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=BATCH, per_device_eval_batch_size=4,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=3e-3, report_to="none", use_cpu=True,
        logging_steps=1, save_strategy="no", eval_strategy="epoch" if evaluate else "no", disable_tqdm=True,
        seed=0, remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=SummarizationDataset(train, tok, **kwargs),
        eval_dataset=SummarizationDataset(val, tok, **kwargs) if evaluate else None,
        data_collator=lambda feats: collate_batch(feats, tok.pad_token_id),
    )
    green = GreenTrainerCallback(source, importance_batches=1).attach(trainer)
    return trainer, green


@contextmanager
def _trained_against_daemon(tmp_path, *, evaluate: bool, train=Trainer.train, **source_kwargs):
    """``train(trainer)`` with a DaemonRhoSource against a real daemon (policy ρ 0.7), then stop the
    daemon; yields ``(daemon, source, trainer, green)`` while the daemon's state directory still exists."""
    with short_dir() as d:
        daemon = DaemonProcess(d, "--policy", str(write_policy(d, rho=0.7))).wait_ready()
        try:
            source = DaemonRhoSource(daemon.socket, default_rho=1.0, model_name="tiny-llama", scheme="green",
                                     **source_kwargs)
            trainer, green = _trainer(tmp_path, source, evaluate=evaluate)
            train(trainer)
        finally:
            assert daemon.stop() == 0
        yield daemon, source, trainer, green


def test_trainer_reports_job_and_epochs_to_a_real_daemon(tmp_path):
    with _trained_against_daemon(tmp_path, evaluate=True) as (daemon, source, trainer, green):
        with Store(daemon.state_dir / "carbonsched.sqlite3", read_only=True) as store:
            job = store.job(source.job_id)
            epochs = store.epochs(source.job_id)
            jobs = store.jobs()

        assert source.warnings == 0 and source.reachable is True
        assert [j["job_id"] for j in jobs] == [source.job_id]
        assert job["status"] == "completed" and job["model"] == "tiny-llama" and job["scheme"] == "green"
        assert [e["epoch"] for e in epochs] == [0, 1]

        logged = [e for e in trainer.state.log_history if "gt_rho" in e]
        history = trainer.state.log_history
        eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e]
        assert len(logged) == 2 and len(eval_losses) == 2
        for e, gt, h, eval_loss in zip(epochs, logged, green.history, eval_losses):
            assert e["ended_at"] is not None and e["started_at"] < e["ended_at"]
            assert e["energy_j"] > 0 and e["carbon_g"] > 0
            # ρ as the daemon's policy gave it, and the selection's effective ρ.
            assert e["rho_asked"] == gt["gt_rho"] == 0.7 and h["source"] == "daemon"
            assert e["rho_effective"] == pytest.approx(gt["gt_rho_effective"]) and 0 < e["rho_effective"] <= 0.7
            # Job-wide FLOPs: per-micro-batch FLOPs of the profile × micro-batches run (one process).
            assert e["flops_forward"] > 0 and e["flops_backward"] > 0
            assert e["flops_forward"] + e["flops_backward"] == pytest.approx(gt["gt_flops_per_step"] * MICRO_BATCHES)
            assert e["flops_full"] == pytest.approx(gt["gt_flops_full_per_step"] * MICRO_BATCHES)
            assert e["flops_full"] > e["flops_forward"] + e["flops_backward"]
            assert e["extra"]["micro_batches"] == MICRO_BATCHES and e["extra"]["steps"] == OPTIMIZER_STEPS
            assert e["extra"]["tensors_selected"] == gt["gt_tensors_selected"] and e["extra"]["rho_source"] == "daemon"
            assert 0 < e["wall_s"] and e["wall_s"] == pytest.approx(h["wall_s"])
            assert h["paused_s"] == 0  # a job not declared may_pause is never paused
            # Losses from the Trainer's log history: the epoch's step losses and its evaluation
            # (logged after on_epoch_end: the report waited for it).
            steps = [x["loss"] for x in history if "loss" in x and gt["step"] < x["step"] <= gt["step"] + OPTIMIZER_STEPS]
            assert len(steps) == OPTIMIZER_STEPS
            assert e["train_loss"] == pytest.approx(sum(steps) / len(steps))
            assert e["val_loss"] == pytest.approx(eval_loss)

        assert not any("gt_paused_s" in x for x in history)

        runner = CliRunner()
        shown = runner.invoke(carbonsched_app, ["report", "--state-dir", str(daemon.state_dir), "--job", source.job_id])
        assert shown.exit_code == 0, shown.output
        assert source.job_id in shown.output and "tiny-llama (green)" in shown.output
        assert "total: 2 epochs" in shown.output
        as_json = runner.invoke(
            carbonsched_app, ["report", "--state-dir", str(daemon.state_dir), "--job", source.job_id, "--format", "json"]
        )
        (reported,) = json.loads(as_json.output)["jobs"]
        assert [r["epoch"] for r in reported["epochs"]] == [0, 1]
        assert all(r["saved_label"] == "modelled" and r["saved_kwh"] > 0 for r in reported["epochs"])


def test_a_deadline_job_declared_without_epochs_takes_the_trainers_epochs(tmp_path):
    """The daemon plans a deadline job only with its epochs; the callback declares the Trainer's."""
    deadline_s = time.time() + 3600
    with _trained_against_daemon(tmp_path, evaluate=False, deadline_s=deadline_s) as (daemon, source, trainer, _):
        with Store(daemon.state_dir / "carbonsched.sqlite3", read_only=True) as store:
            job = store.job(source.job_id)
        assert source.warnings == 0
        assert job is not None and job["status"] == "completed"
        assert job["epochs"] == trainer.args.num_train_epochs == 2 and job["deadline"] is not None


def test_declared_epochs_fill_in_only_a_deadline_job_without_them():
    def source(**kwargs) -> DaemonRhoSource:
        return DaemonRhoSource("/nonexistent.sock", model_name="m", scheme="green", **kwargs)

    explicit = source(deadline_s=time.time() + 60, epochs=3)
    assert not explicit.declare_epochs(5) and explicit.job_fields["epochs"] == 3
    no_deadline = source()
    assert not no_deadline.declare_epochs(5) and "epochs" not in no_deadline.job_fields
    filled = source(deadline_s=time.time() + 60)
    assert not filled.declare_epochs(float("nan")) and not filled.declare_epochs(0)
    assert filled.declare_epochs(5) and filled.job_fields["epochs"] == 5.0


def test_trainer_completes_without_a_daemon_on_the_fallback_rho(tmp_path, caplog):
    with short_dir() as d, caplog.at_level(logging.WARNING, logger="gt_core.rho_daemon"):
        source = DaemonRhoSource(d / "absent.sock", default_rho=0.8, model_name="tiny-llama", scheme="green")
        trainer, green = _trainer(tmp_path, source, evaluate=False)
        trainer.train()
    assert trainer.state.global_step == 2 * OPTIMIZER_STEPS
    assert [h["gt_rho"] for h in green.history] == [0.8, 0.8]
    assert [h["source"] for h in green.history] == ["daemon-fallback"] * 2
    assert source.warnings == 1 and source.reachable is False and not source.epoch_reports
    warnings = [r for r in caplog.records if r.name == "gt_core.rho_daemon" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    # The epochs' totals are still computed (and kept in the history) without a daemon.
    assert all(h["micro_batches"] == MICRO_BATCHES and h["train_loss"] > 0 and h["val_loss"] is None for h in green.history)


def test_epoch_losses_weight_each_logged_loss_by_its_steps():
    entries = [{"gt_rho": 0.5, "step": 10}, {"loss": 2.0, "step": 11}, {"loss": 1.0, "step": 14},
               {"eval_loss": 3.0, "step": 14}, {"eval_loss": 2.5, "step": 14}]
    assert _epoch_losses(entries, 10) == (pytest.approx((2.0 + 3 * 1.0) / 4), 2.5)
    assert _epoch_losses([{"gt_rho": 0.5}], 0) == (None, None)



def _reporting_rank(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: which of them would report, under which job id and fields, with
    both processes on one node (local ranks 0 and 1) and on two nodes (local rank 0 each)."""
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    try:
        result = {}
        for nodes in (1, 2):
            os.environ.update(LOCAL_RANK=str(0 if nodes == 2 else rank), LOCAL_WORLD_SIZE=str(1 if nodes == 2 else 2),
                              GROUP_RANK=str(rank if nodes == 2 else 0))
            source = DaemonRhoSource(f"/tmp/absent-{port}.sock", model_name="m", scheme="green", job_id=f"rank-{rank}")
            reporter = GreenTrainerCallback(source)._setup_reporting()
            result[nodes] = {"reports": reporter is source, "job_id": source.job_id, "fields": source.job_fields,
                             "pid": os.getpid()}
        with open(f"{out}/r{rank}.json", "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_under_a_process_group_local_rank_0_of_each_node_reports_with_rank_0s_job_id(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_reporting_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    got = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    for nodes, reporting in (("1", [True, False]), ("2", [True, True])):
        assert [g[nodes]["job_id"] for g in got] == ["rank-0"] * 2
        assert [g[nodes]["reports"] for g in got] == reporting
        for rank, g in enumerate(got):
            fields = g[nodes]["fields"]
            assert fields["hostname"] and (fields["rank"], fields["world_size"]) == (rank, 2)
            assert fields["local_rank"] == (0 if nodes == "2" else rank)
            # the node's processes: both on one node, each its own on two nodes
            assert fields["pids"] == (sorted(x[nodes]["pid"] for x in got) if nodes == "1" else [g[nodes]["pid"]])


class _Boom(RuntimeError):
    pass


class TrialPruned(Exception):  # what optuna raises; matched by name, optuna is not a dependency
    pass


@pytest.mark.parametrize("raised, status", [(_Boom, "failed"), (KeyboardInterrupt, "interrupted"), (TrialPruned, "cancelled")])
def test_a_train_call_that_raises_is_reported_with_its_open_epoch_closed(tmp_path, raised, status):
    from transformers import TrainerCallback

    class RaiseInSecondEpoch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch > 1.2:
                raise raised("stop")

    class RaiseAfterTrainEnd(TrainerCallback):  # a pruned trial: on_train_end has run, then train() raises
        def on_train_end(self, args, state, control, **kwargs):
            raise raised("pruned")

    def train_until_raised(trainer: Trainer) -> None:
        trainer.add_callback(RaiseAfterTrainEnd() if raised is TrialPruned else RaiseInSecondEpoch())
        with pytest.raises(raised):
            trainer.train()

    with _trained_against_daemon(tmp_path, evaluate=False, train=train_until_raised) as (daemon, source, _, _):
        with Store(daemon.state_dir / "carbonsched.sqlite3", read_only=True) as store:
            job, epochs = store.job(source.job_id), store.epochs(source.job_id)
        assert job["status"] == status
        assert [e["epoch"] for e in epochs] == [0, 1] and all(e["ended_at"] is not None for e in epochs)
        if raised is not TrialPruned:  # epoch 1 never reported its end: the daemon closed it at job.end
            assert epochs[1]["extra"]["closed_by"] == f"job.end {status}" and epochs[1]["energy_j"] > 0
