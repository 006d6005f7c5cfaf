"""The main job end to end: `greentrainer train --rho-from daemon` against a real daemon process,
the store's epoch rows, `carbonsched report` in every format, and a daemon killed mid-job."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.store import J_PER_KWH, Store
from daemon_helpers import DaemonProcess, short_dir, write_policy
from gt_core.training.callbacks import TrainerCallback
from gt_core.data.embedded_task import embedded_task
from gt_core.rho.daemon_source import DaemonRhoSource
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import build_tokenizer
from gt_core.training.trainer import GreenTrainer, TrainConfig

pytestmark = pytest.mark.slow

GREENTRAINER_BIN = os.path.join(os.path.dirname(sys.executable), "greentrainer")


def test_train_cli_reports_epochs_to_the_daemon_and_report_reads_them(tmp_path):
    with short_dir() as d:
        daemon = DaemonProcess(d, "--policy", str(write_policy(d))).wait_ready()
        try:
            run = subprocess.run(
                [GREENTRAINER_BIN, "train", "--tiny", "opt", "--limit", "16", "--epochs", "2", "--batch-size", "8",
                 "--max-input-length", "48", "--max-target-length", "12", "--importance-batches", "1", "--lr", "1e-3",
                 "--rho-from", f"daemon:{daemon.socket}", "--output-dir", str(tmp_path / "run"), "--no-progress"],
                capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            assert run.returncode == 0, run.stderr
            assert "unavailable" not in run.stderr
            epoch_lines = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
            assert len(epoch_lines) == 2, run.stdout
            assert all(re.search(r"grid \d+ gCO2e/kWh, [0-9.e+-]+ kWh, [0-9.e+-]+ gCO2e$", line) for line in epoch_lines), run.stdout
        finally:
            assert daemon.stop() == 0
        state_dir = daemon.state_dir
        with Store(state_dir / "carbonsched.sqlite3") as store:
            (job,) = store.jobs()
            epochs = store.epochs(job["job_id"])
        assert job["status"] == "completed" and job["model"] == "tiny-opt" and job["scheme"] == "green"
        assert [e["epoch"] for e in epochs] == [0, 1]
        for e in epochs:
            assert e["rho_asked"] == 0.7 and 0 < e["rho_effective"] <= 0.7
            assert e["flops_forward"] > 0 and e["flops_backward"] > 0 and e["flops_full"] > e["flops_forward"] + e["flops_backward"]
            assert e["energy_j"] > 0 and e["carbon_g"] > 0 and e["started_at"] < e["ended_at"]

        runner = CliRunner()
        base = ["report", "--state-dir", str(state_dir)]
        table = runner.invoke(carbonsched_app, base)
        assert table.exit_code == 0, table.output
        assert job["job_id"] in table.output and "tiny-opt (green)" in table.output
        assert table.output.count("modelled") >= 2 and "total: 2 epochs" in table.output

        as_json = runner.invoke(carbonsched_app, [*base, "--format", "json", "--job", job["job_id"]])
        assert as_json.exit_code == 0, as_json.output
        (reported,) = json.loads(as_json.output)["jobs"]
        assert [e["epoch"] for e in reported["epochs"]] == [0, 1]
        for row, e in zip(reported["epochs"], epochs):
            assert abs(row["energy_kwh"] - e["energy_j"] / J_PER_KWH) < 1e-15
            assert row["saved_label"] == "modelled" and row["saved_kwh"] > 0 and row["saved_g"] > 0
            full_over_used = e["flops_full"] / (e["flops_forward"] + e["flops_backward"])
            assert abs(row["saved_kwh"] - row["energy_kwh"] * (full_over_used - 1)) < 1e-12
            assert 100 < row["mean_intensity_g_per_kwh"] < 450

        csv_path = tmp_path / "report.csv"
        as_csv = runner.invoke(carbonsched_app, [*base, "--format", "csv", "--output", str(csv_path)])
        assert as_csv.exit_code == 0, as_csv.output
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["job_id"] == job["job_id"]
        assert float(rows[1]["carbon_g"]) == epochs[1]["carbon_g"]

        plot = tmp_path / "plot.png"
        plotted = runner.invoke(carbonsched_app, [*base, "--plot", str(plot)])
        assert plotted.exit_code == 0, plotted.output
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_daemon_killed_mid_job_and_restarted_keeps_the_job_and_records_later_epochs(tmp_path):
    tokenizer = build_tokenizer()
    train, val = embedded_task(n_train=16, n_val=4)
    with short_dir() as d:
        policy = write_policy(d)
        daemons = [DaemonProcess(d, "--policy", str(policy)).wait_ready()]

        class KillAndRestart(TrainerCallback):
            def on_epoch_end(self, trainer, record):
                if record.epoch == 0:
                    daemons[0].proc.send_signal(signal.SIGKILL)
                    daemons[0].proc.wait(10)

            def on_epoch_start(self, trainer, epoch, reading):
                if epoch == 1:  # after the source failed to reach the dead daemon for this epoch
                    daemons.append(DaemonProcess(d, "--policy", str(policy)).wait_ready())

        source = DaemonRhoSource(daemons[0].socket, default_rho=1.0, model_name="tiny", scheme="green")
        config = TrainConfig(epochs=3, lr=1e-3, batch_size=8, importance_batches=1, max_input_length=32,
                             max_target_length=12, output_dir=tmp_path / "run", progress=False, save_final=False)
        model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
        trainer = GreenTrainer(model, tokenizer, train, val, config, rho_source=source, callbacks=[KillAndRestart()])
        try:
            records = trainer.train()
        finally:
            for daemon in daemons:
                daemon.stop()
        assert len(daemons) == 2 and daemons[0].proc.returncode == -signal.SIGKILL
        with Store(daemons[0].state_dir / "carbonsched.sqlite3") as store:
            jobs = store.jobs()
            epochs = store.epochs(source.job_id)
    assert len(records) == 3 and not trainer.interrupted
    assert [r.rho_source for r in records] == ["daemon", "daemon-fallback", "daemon"]
    assert records[1].rho_asked == 0.7  # the last ρ the daemon gave, not the default
    assert [j["job_id"] for j in jobs] == [source.job_id] and jobs[0]["status"] == "completed"
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(e["ended_at"] is not None and e["energy_j"] is not None for e in epochs)
    assert source.warnings == 1
