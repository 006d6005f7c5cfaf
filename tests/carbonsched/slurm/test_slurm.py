"""carbonsched with a real Slurm: a one-node cluster (munged, slurmctld, slurmd from Debian's
packages, :mod:`slurm_cluster`) runs real `greentrainer train` jobs submitted with `carbonsched
sbatch`, next to a real carbonsched daemon in this process (real socket and store; a fake NVML
with two GPUs, the hardware boundary). The provider is a static value with a forecast file the
test writes: dirty now, clean from a few seconds on.

Shown here: the job begins no earlier than the plan's begin time; the trainer declares the job
`carbonsched sbatch` planned (from the environment) under the id ``slurm-<SLURM_JOB_ID>`` with the
GPU Slurm gave it; at its end its kWh and gCO2e are in ``scontrol show job``. A planned pause
longer than the job's release-after requeues it: another job runs on the freed CPUs in the gap,
the job begins again no earlier than the pause's end, resumes from its checkpoint and ends with
the weights of an uninterrupted run.

Skips with one line where Slurm or munge is not installed or not root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

from carbonsched.config import DaemonConfig, Intervals
from carbonsched.daemon.lifecycle import Daemon
from carbonsched.power import NodeEnergyMeter
from carbonsched.protocol import JOB_DECLARATION_ENV
from carbonsched.store import J_PER_KWH, Store
from daemon_helpers import short_dir, wait_until
from fake_pynvml import FakeGpu, make_fake_nvml
from slurm_cluster import SlurmCluster, slurm_skip_reason

# One cluster for the module (make test's --dist loadfile keeps a module on one worker): two clusters
# would each start a slurmd for this host's node.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(slurm_skip_reason() is not None, reason=slurm_skip_reason() or "")]

BIN = Path(sys.executable).parent
CARBONSCHED = BIN / "carbonsched"
GREENTRAINER = BIN / "greentrainer"
# No energy counter (metered from power samples) and no process list (each GPU's energy belongs to
# the jobs Slurm gave it): 100 W on GPU 0, 250 W on GPU 1.
GPUS = [FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", bus_id="00000000:07:00.0", energy_mJ=None,
                power_mW=100_000, processes=[]),
        FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", bus_id="00000000:0A:00.0", energy_mJ=None,
                power_mW=250_000, processes=[])]
DIRTY_G_PER_KWH = 700.0  # above POL's static value, so waiting for the forecast's clean value pays
CLEAN_G_PER_KWH = 50.0


@pytest.fixture(scope="module")
def cluster():
    slurm = SlurmCluster().start()
    try:
        yield slurm
    finally:
        slurm.stop()


def write_forecast(path: Path, clean_from_s: float, clean_for_s: float) -> datetime:
    """Clean from ``clean_from_s`` seconds from now for ``clean_for_s``, dirty after; returns
    when the clean stretch begins."""
    now = datetime.now(timezone.utc)
    rows = [(now + timedelta(seconds=clean_from_s), CLEAN_G_PER_KWH),
            (now + timedelta(seconds=clean_from_s + clean_for_s), DIRTY_G_PER_KWH),
            (now + timedelta(seconds=clean_from_s + 2 * clean_for_s), DIRTY_G_PER_KWH)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("timestamp,intensity\n" + "".join(f"{t.isoformat()},{v}\n" for t, v in rows))
    tmp.replace(path)
    return rows[0][0]


def new_forecast(node: dict, clean_from_s: float, clean_for_s: float) -> None:
    """Write the forecast file and wait until the daemon's reading carries it."""
    clean_at = write_forecast(node["forecast"], clean_from_s, clean_for_s)

    def seen() -> bool:
        reading = node["daemon"].state.view(datetime.now(timezone.utc)).reading
        return reading is not None and any(abs((p.timestamp - clean_at).total_seconds()) < 1e-3
                                           for p in reading.forecast)

    assert wait_until(seen, timeout_s=30), "the daemon did not read the new forecast"


@pytest.fixture(scope="module")
def node(cluster):
    """The carbonsched daemon of the cluster's node, and the provider spec it and the submitter use.
    Its Slurm commands find the cluster through SLURM_CONF, as on a node whose slurm.conf is elsewhere."""
    with short_dir() as d, pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(cluster.conf))
        forecast = d / "forecast.csv"
        write_forecast(forecast, 3600, 3600)
        provider = f"static:POL?forecast_file={forecast}"
        config = DaemonConfig(socket=d / "run" / "cs.sock", state_dir=d / "state", provider=provider, partition_gpus=1,
                              intervals=Intervals(poll_intensity_s=0.5, sample_power_s=0.2, decide_s=0.5,
                                                  check_jobs_s=3600))
        daemon = Daemon(config, meter_factory=lambda: NodeEnergyMeter(make_fake_nvml(GPUS), cpu_ram=False))
        daemon.start()
        try:
            assert wait_until(lambda: daemon.state.view(datetime.now(timezone.utc)).reading is not None, timeout_s=30)
            yield {"dir": d, "config": config, "provider": provider, "forecast": forecast, "daemon": daemon}
        finally:
            daemon.stop()


TRAIN_OPTIONS = ("--tiny", "opt", "--batch-size", "4", "--max-input-length", "48", "--max-target-length", "12",
                 "--importance-batches", "1", "--lr", "1e-3", "--no-progress", "--seed", "3")


def training_script(path: Path, socket: Path, output_dir: Path, *extra: str) -> Path:
    """The batch script the docs show: the #SBATCH lines for a requeue, then the trainer alone."""
    options = " ".join((*TRAIN_OPTIONS, *extra))
    path.write_text(f"""#!/bin/bash
#SBATCH --requeue --signal=B:TERM@120 --open-mode=append
echo "begin $(date +%s.%N) restart ${{SLURM_RESTART_COUNT:-0}}"
export OMP_NUM_THREADS=1
exec {GREENTRAINER} train {options} --rho-from daemon:{socket} --output-dir {output_dir}
""")
    path.chmod(0o755)
    return path


def begins(out: Path) -> dict[int, float]:
    """Restart count -> when that part of the job began (unix s), from the script's own lines."""
    return {int(m.group(2)): float(m.group(1)) for m in re.finditer(r"begin (\S+) restart (\d+)", out.read_text())}


def carbonsched_sbatch(cluster: SlurmCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CARBONSCHED), "sbatch", *args], env=cluster.env(), capture_output=True, text=True,
                          timeout=120)


def test_carbonsched_sbatch_begins_the_job_at_the_planned_start_and_records_its_carbon_in_slurm(cluster, node, tmp_path):
    new_forecast(node, clean_from_s=30, clean_for_s=600)
    # Another job holds GPU 0 of the shared node: Slurm gives the training job GPU 1.
    other = cluster.run("sbatch", "--parsable", "--gres=gpu:1", "-o", "/dev/null", "--wrap", "sleep 600").stdout.strip()
    assert cluster.wait_state(other, ("RUNNING",)) == "RUNNING"
    script = training_script(tmp_path / "train.sh", node["config"].socket, tmp_path / "run", "--limit", "16")
    out = tmp_path / "job.out"
    submitted = carbonsched_sbatch(cluster, "--epochs", "1", "--epoch-minutes", "1", "--deadline", "20m",
                                   "--may-pause", "--mean-rho", "0.7", "--provider", node["provider"], "--",
                                   "--gres=gpu:1", "-o", str(out), str(script))
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"Submitted Slurm job (\d+)", submitted.stdout).group(1)
    planned = re.search(r"plan: begin (\S+ \S+) UTC \(in (\d+) s\)", submitted.stdout)
    planned_begin_s = datetime.strptime(planned.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    assert int(planned.group(2)) >= 10, submitted.stdout  # the plan waits for the clean forecast
    assert wait_until(lambda: cluster.job(job_id).get("Reason") == "BeginTime", timeout_s=10), cluster.job(job_id)

    assert cluster.wait_state(job_id, ("COMPLETED", "FAILED", "CANCELLED"), timeout_s=240) == "COMPLETED", (
        out.read_text() if out.exists() else cluster.logs())
    assert begins(out)[0] >= planned_begin_s  # the printout's begin is cut to the second
    assert "done: 1 epochs" in out.read_text(), out.read_text()

    with Store(node["config"].state_dir / "carbonsched.sqlite3", read_only=True) as store:
        job = store.job(f"slurm-{job_id}")
        epochs = store.epochs(f"slurm-{job_id}")
        energy_j, carbon_g = store.job_energy_and_carbon(f"slurm-{job_id}")
    assert job is not None and job["status"] == "completed"
    assert job["slurm_job_id"] == job_id and job["slurm_nodes"] == cluster.node
    cluster.run("scancel", other)
    assert job["devices"] == ["gpu:1"]  # SLURM_JOB_GPUS, resolved to the daemon's name
    assert job["epochs"] == 1 and job["may_pause"] and job["mean_rho"] == 0.7 and job["epoch_seconds"] == 60
    assert energy_j > 0 and carbon_g > 0
    # Its GPU energy is GPU 1's alone: about 250 W over its epochs, not GPU 0's 100 W nor both GPUs' 350 W.
    gpu_w = sum(e["gpu_j"] for e in epochs) / sum(e["ended_at"] - e["started_at"] for e in epochs)
    assert 175 < gpu_w < 300, gpu_w

    def recorded() -> str | None:
        comment = cluster.job(job_id).get("AdminComment", "")
        return comment if comment.startswith("carbonsched:") else None

    assert wait_until(recorded, timeout_s=30), cluster.job(job_id)
    values = dict(pair.split("=") for pair in recorded().removeprefix("carbonsched:").split(","))
    assert float(values["energy_kwh"]) == pytest.approx(energy_j / J_PER_KWH, rel=1e-5)
    assert float(values["carbon_gco2e"]) == pytest.approx(carbon_g, rel=1e-5)

    report = subprocess.run([str(CARBONSCHED), "report", "--slurm-job", job_id, "--format", "json", "--state-dir",
                             str(node["config"].state_dir)], capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    (reported,) = json.loads(report.stdout)["jobs"]
    assert reported["job_id"] == f"slurm-{job_id}" and reported["totals"]["carbon_g"] == pytest.approx(carbon_g)


def test_dry_run_prints_the_sbatch_command_with_the_plan_and_the_declaration(cluster, node, tmp_path):
    new_forecast(node, clean_from_s=600, clean_for_s=600)
    done = carbonsched_sbatch(cluster, "--epochs", "2", "--epoch-minutes", "5", "--deadline", "2h", "--provider",
                              node["provider"], "--dry-run", "--", "-p", "debug", "--export=NONE", "job.sh", "arg")
    assert done.returncode == 0, done.stderr
    command = done.stdout.splitlines()[0]
    begin = int(re.search(r"--begin=now\+(\d+)", command).group(1))
    deadline = int(re.search(r"--deadline=now\+(\d+)", command).group(1))
    # 600 s and 2 h, each less the command's start-up (whole seconds: a loaded machine takes one or more)
    assert 540 <= begin <= 601 and 7140 <= deadline <= 7200
    # --export=NONE would withhold the declaration from the script: only it is exported.
    assert command.startswith(f"{JOB_DECLARATION_ENV}=")
    assert command.endswith(f"-p debug --export={JOB_DECLARATION_ENV} job.sh arg")
    assert cluster.run("squeue", "-h").stdout.strip() == ""  # nothing submitted


def test_sbatch_options_that_the_plan_sets_are_refused(cluster, node):
    done = carbonsched_sbatch(cluster, "--epochs", "1", "--deadline", "1h", "--provider", node["provider"], "--",
                              "--begin=now+60", "job.sh")
    assert done.returncode == 2 and "--begin=now+60" in done.stderr and "Traceback" not in done.stderr
    no_script = carbonsched_sbatch(cluster, "--epochs", "1", "--deadline", "1h", "--provider", node["provider"], "--",
                                   "-o", "out.txt")
    assert no_script.returncode == 2 and "give the batch script" in no_script.stderr
    own_arguments = carbonsched_sbatch(cluster, "--epochs", "1", "--deadline", "1h", "--provider", node["provider"],
                                       "--dry-run", "--", "-p", "debug", "job.sh", "--deadline", "x")
    assert own_arguments.returncode == 0 and own_arguments.stdout.splitlines()[0].endswith("job.sh --deadline x")


def test_a_long_planned_pause_requeues_the_job_another_job_runs_in_the_gap_and_it_resumes_to_identical_weights(
        cluster, node, tmp_path):
    new_forecast(node, clean_from_s=1, clean_for_s=900)
    run_dir = tmp_path / "run"
    script = training_script(tmp_path / "train.sh", node["config"].socket, run_dir, "--limit", "400", "--scheme",
                             "full", "--pause-poll-s", "0.2")
    out = tmp_path / "job.out"
    submitted = carbonsched_sbatch(cluster, "--epochs", "3", "--epoch-minutes", "1", "--deadline", "30m",
                                   "--may-pause", "--release-after", "5s", "--provider", node["provider"], "--",
                                   "-c", "2", "--gres=gpu:1", "-o", str(out), str(script))
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"Submitted Slurm job (\d+)", submitted.stdout).group(1)
    daemon_job = f"slurm-{job_id}"
    db = node["config"].state_dir / "carbonsched.sqlite3"

    def first_epoch_ended() -> bool:
        with Store(db, read_only=True) as store:
            return any(e["ended_at"] for e in store.epochs(daemon_job))

    assert wait_until(first_epoch_ended, timeout_s=180, interval_s=0.02), out.read_text() if out.exists() else ""
    # Stopped (SIGSTOP) in epoch 1, the trainer cannot finish before its pause; Slurm's requeue
    # sends it SIGCONT and SIGTERM, and it checkpoints mid-run.
    with Store(db, read_only=True) as store:
        trainer_pid = store.job(daemon_job)["pid"]
    os.kill(trainer_pid, signal.SIGSTOP)
    try:
        # The job holds both CPUs: this one waits for them.
        filler_out = tmp_path / "filler.out"
        filler = cluster.run("sbatch", "--parsable", "-c", "1", "-o", str(filler_out), "--wrap",
                             "echo ran $(date +%s.%N)").stdout.strip()
        assert cluster.job_state(filler) == "PENDING"
        # Dirty from now for 25 s: the plan pauses the job that long, more than its 5 s release-after.
        pause_planned_at = time.time()
        new_forecast(node, clean_from_s=25, clean_for_s=900)
        assert wait_until(lambda: cluster.job_state(job_id) != "RUNNING", timeout_s=60), cluster.job(job_id)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer_pid, signal.SIGCONT)

    assert cluster.wait_state(job_id, ("COMPLETED", "FAILED", "CANCELLED"), timeout_s=240) == "COMPLETED", (
        out.read_text())
    assert cluster.wait_state(filler, ("COMPLETED", "FAILED")) == "COMPLETED"
    text = out.read_text()
    parts = begins(out)
    assert sorted(parts) == [0, 1], text  # one requeue
    filler_ran = float(re.search(r"ran (\S+)", filler_out.read_text()).group(1))
    assert pause_planned_at < filler_ran < parts[1]  # the CPUs were free in the gap
    assert parts[1] >= pause_planned_at + 25 - 2.0, text  # began again no earlier than the pause's end
    assert "resuming the run in" in text and "interrupted: checkpoint saved" in text and "done: 3 epochs" in text
    assert text.count("epoch 0:") == 1  # the second part went on from the checkpoint, not from the start

    with Store(db, read_only=True) as store:
        job, pauses, epochs = store.job(daemon_job), store.pauses(daemon_job), store.epochs(daemon_job)
    assert job["status"] == "completed" and job["release_after_s"] == 5.0
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and all(e["ended_at"] for e in epochs)
    assert any(p["started_at"] < filler_ran and p["ended_at"] >= parts[1] - 1.0 for p in pauses), pauses

    reference = tmp_path / "reference"
    done = subprocess.run([str(GREENTRAINER), "train", *TRAIN_OPTIONS, "--limit", "400", "--scheme", "full",
                           "--epochs", "3", "--rho", "1", "--output-dir", str(reference)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = torch.load(run_dir / "checkpoint" / "model.pt", weights_only=True)
    uninterrupted = torch.load(reference / "checkpoint" / "model.pt", weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)


def test_jobs_planned_together_by_the_daemon_a_later_submission_moves_an_earlier_pending_job(cluster, node, tmp_path):
    """One GPU in the partition (the daemon's partition_gpus): the clean hour goes to the job that
    needs it more, and the job planned into it before is moved out of it in Slurm."""
    new_forecast(node, clean_from_s=600, clean_for_s=3600)
    script = tmp_path / "wait.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    common = ("--socket", str(node["config"].socket), "--epochs", "1", "--epoch-minutes", "60", "--may-pause")
    first = carbonsched_sbatch(cluster, *common, "--deadline", "10h", "--power-w", "200", "--", "-o", "/dev/null",
                               str(script))
    assert first.returncode == 0, first.stderr
    first_id = re.search(r"Submitted Slurm job (\d+)", first.stdout).group(1)
    assert int(re.search(r"\(in (\d+) s\)", first.stdout).group(1)) >= 540  # alone: into the clean hour
    second = carbonsched_sbatch(cluster, *common, "--deadline", "80m", "--power-w", "400", "--", "-o", "/dev/null",
                                str(script))
    assert second.returncode == 0, second.stderr
    second_id = re.search(r"Submitted Slurm job (\d+)", second.stdout).group(1)
    assert int(re.search(r"\(in (\d+) s\)", second.stdout).group(1)) >= 540
    assert f"Slurm job {first_id} now begins at" in second.stdout
    try:  # moved to now (the dirty minutes before the clean hour): Slurm starts it at once
        assert cluster.wait_state(first_id, ("RUNNING",), timeout_s=60) == "RUNNING"
        assert cluster.job(second_id)["Reason"] == "BeginTime"
    finally:
        cluster.run("scancel", first_id, second_id, check=False)
