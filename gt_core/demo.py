"""The main job end to end on one machine, no network: daemon → ρ per epoch → energy and carbon.

:func:`run_demo` starts ``carbonsched run`` as a subprocess (temporary socket and state dir, the
bundled intensity trace replayed fast, the thresholds policy ``policies/fast-trace.toml``), fine-tunes
the tiny random-init OPT on the embedded task with the daemon as ρ source, prints one row per
epoch, then the store's report, and writes a PNG plot. The daemon is always stopped at the end
(SIGTERM, then SIGKILL after a grace period), also when training fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from gt_core.callbacks import TrainerCallback
from gt_core.rho import RhoReading

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
STORE_NAME = "carbonsched.sqlite3"

# Trace seconds per wall second. The bundled trace is a daily cycle (about 400 → 125 → 400
# gCO2e/kWh); at this pace one demo epoch (~3 s on 2 cores) spans a few hours of it, so the
# policy's thresholds (300, 200) are crossed within 5-6 epochs.
FULL_SPEEDUP = 4000.0
QUICK_SPEEDUP = 3600.0


class DemoError(Exception):
    """The demo cannot run (daemon does not start, bad output directory); one line for the user."""


@dataclass
class DemoOptions:
    epochs: int = 6
    out: Path = Path("demo-out")
    keep_daemon_state: bool = False
    quick: bool = False
    lr: float = 1e-3
    speedup: float | None = None
    policy: Path | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Model and data sizes: the full demo learns visibly; quick mode only exercises the path."""
        if self.quick:
            return {"n_train": 32, "n_val": 8, "hidden": 64, "layers": 1, "batch_size": 8}
        return {"n_train": 2048, "n_val": 48, "hidden": 128, "layers": 2, "batch_size": 4}


@dataclass
class DemoResult:
    job_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: str = ""
    plot: Path | None = None
    state_dir: Path | None = None
    wall_s: float = 0.0


def default_policy() -> Path:
    """policies/fast-trace.toml of the source tree; the package's default policy when not installed from it."""
    repo_policy = Path(__file__).resolve().parent.parent / "policies" / "fast-trace.toml"
    if repo_policy.is_file():
        return repo_policy
    from carbonsched.policies import default_policy_path

    return default_policy_path()


class DaemonSubprocess:
    """``carbonsched run`` in a child process, logging to a file; ``stop()`` always ends it."""

    def __init__(self, socket_path: Path, state_dir: Path, log_path: Path, *, speedup: float, policy: Path):
        self.socket_path = socket_path
        self.log_path = log_path
        args = [
            sys.executable, "-c", "from carbonsched.cli import main; main()", "run",
            "--socket", str(socket_path), "--state-dir", str(state_dir),
            "--provider", f"trace?speedup={speedup:g}", "--policy", str(policy),
            "--poll-intensity-s", "0.5", "--sample-power-s", "0.5", "--decide-s", "0.5",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 5) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

        deadline = time.monotonic() + timeout_s
        with DaemonClient(self.socket_path, timeout_s=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise DemoError(f"the daemon exited with code {self.proc.returncode}: {self.log_tail(1)}")
                try:
                    if client.call("ping").get("pong"):
                        return
                except (DaemonUnavailable, DaemonRequestError):
                    time.sleep(0.1)
        raise DemoError(f"the daemon did not answer within {timeout_s:g} s; log: {self.log_path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


ROW_HEADER = (
    f"{'epoch':>5}  {'at ask':>6}  {'gCO2e/kWh':>9}  {'rho':>4}  {'tensors':>9}  {'FLOPs':>9}  {'vs full':>7}  "
    f"{'time s':>6}  {'loss':>6}  {'val':>6}  {'kWh':>9}  {'gCO2e':>9}"
)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class EpochPrinter(TrainerCallback):
    """One line per finished epoch: intensity, ρ, tensors trained, FLOPs vs full, time, loss, energy."""

    def __init__(self, source: Any, echo: Callable[[str], None]):
        self.source = source
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self._readings: dict[int, RhoReading | None] = {}

    def on_train_start(self, trainer: Any) -> None:
        self.echo(ROW_HEADER)

    def on_epoch_start(self, trainer: Any, epoch: int, reading: RhoReading | None) -> None:
        self._readings[epoch] = reading

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        reply = self.source.epoch_reports.get(record.epoch) or {}
        reading = self._readings.get(record.epoch)
        intensity = reply.get("mean_intensity_g_per_kwh")  # over the epoch
        at_ask = reading.detail.get("intensity_g_per_kwh") if reading is not None else None  # what ρ was decided on
        energy_j = reply.get("energy_j")
        row = {
            "epoch": record.epoch, "intensity_g_per_kwh": intensity, "intensity_at_ask_g_per_kwh": at_ask, "rho": record.rho_asked,
            "rho_source": record.rho_source, "tensors": record.tensors_selected, "tensors_total": len(trainer.profile),
            "flops": record.flops_forward + record.flops_backward, "flops_share": record.rho_effective,
            "wall_s": record.wall_s, "train_loss": record.train_loss, "val_loss": record.val_loss,
            "energy_kwh": None if energy_j is None else energy_j / 3.6e6, "carbon_g": reply.get("carbon_g"),
        }
        self.rows.append(row)
        tensors = f"{row['tensors']}/{row['tensors_total']}"
        self.echo(
            f"{record.epoch + 1:>5}  {_fmt(at_ask, '6.1f')}  {_fmt(intensity, '9.1f')}  {_fmt(record.rho_asked, '4.2f')}  "
            f"{tensors:>9}  {row['flops']:9.3e}  {record.rho_effective:7.3f}  "
            f"{record.wall_s:6.1f}  {record.train_loss:6.3f}  {_fmt(record.val_loss, '6.3f')}  "
            f"{_fmt(row['energy_kwh'], '9.3e')}  {_fmt(row['carbon_g'], '9.5f')}"
        )


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own previous run
    return out


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo; raises DemoError for problems the user can fix."""
    started = time.monotonic()
    out = _prepare_out(Path(options.out))
    workdir = Path(tempfile.mkdtemp(prefix="gt-demo-", dir="/tmp"))  # short: unix socket paths are limited
    state_dir = out / "daemon-state" if options.keep_daemon_state else workdir / "state"
    if options.keep_daemon_state and state_dir.exists():
        shutil.rmtree(state_dir)
    speedup = options.speedup or (QUICK_SPEEDUP if options.quick else FULL_SPEEDUP)
    policy = options.policy or default_policy()
    daemon = None
    try:
        daemon = DaemonSubprocess(
            workdir / "carbonsched.sock", state_dir, workdir / "daemon.log", speedup=speedup, policy=policy,
        )
        echo(f"daemon: carbonsched run (pid {daemon.proc.pid}), trace replay x{speedup:g}, policy {policy.name}, "
             f"socket {daemon.socket_path}")
        daemon.wait_ready()
        result = _train(options, daemon.socket_path, out, echo)
        result.state_dir = state_dir
        result.report, result.plot = _report(state_dir, result.job_id, out / "demo.png")
        echo("")
        echo(result.report)
        echo("")
        echo(f"plot: {result.plot}")
    finally:
        if daemon is not None:
            code = daemon.stop()
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                echo(f"daemon exited with code {code}; last log lines:\n{daemon.log_tail()}")
        shutil.rmtree(workdir, ignore_errors=True)
    result.wall_s = time.monotonic() - started
    echo(f"demo wall time: {result.wall_s:.1f} s" + (f"; daemon state kept in {state_dir}" if options.keep_daemon_state else ""))
    return result


def _train(options: DemoOptions, socket_path: Path, out: Path, echo: Callable[[str], None]) -> DemoResult:
    import torch

    from gt_core.embedded_task import embedded_task
    from gt_core.rho_daemon import DaemonRhoSource
    from gt_core.tiny import tiny_model
    from gt_core.tokenizer import build_tokenizer
    from gt_core.trainer import GreenTrainer, TrainConfig

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    sizes = options.sizes
    tokenizer = build_tokenizer()
    train, val = embedded_task(n_train=sizes["n_train"], n_val=sizes["n_val"], seed=0)
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=sizes["hidden"], layers=sizes["layers"])
    source = DaemonRhoSource(socket_path, default_rho=1.0, timeout_s=2.0, model_name="tiny-opt", scheme="green")
    printer = EpochPrinter(source, echo)
    config = TrainConfig(
        scheme="green", lr=options.lr, batch_size=sizes["batch_size"], epochs=options.epochs,
        importance_batches=2, max_input_length=96, max_target_length=16, output_dir=out / "run",
        progress=False, save_final=False, print_epoch_summary=False,
    )
    echo(
        f"training: tiny random-init OPT ({sizes['layers']} layers, hidden {sizes['hidden']}), embedded task "
        f"({len(train)} train / {len(val)} val), scheme green, lr {options.lr:g} (a random-init tiny model needs "
        f"~1e-3; the paper's 2e-5 is for pretrained models), AdamW, batch {sizes['batch_size']}, "
        f"{options.epochs} epochs, ρ from the daemon each epoch"
    )
    trainer = GreenTrainer(model, tokenizer, train, val, config, rho_source=source, callbacks=[printer])
    trainer.train()
    return DemoResult(job_id=source.job_id, rows=printer.rows)


def _report(state_dir: Path, job_id: str, plot_path: Path) -> tuple[str, Path]:
    from carbonsched.plot import plot_report
    from carbonsched.report import build_report, format_table
    from carbonsched.store import Store

    with Store(state_dir / STORE_NAME) as store:
        reports = build_report(store, job_id=job_id)
        epochs = [e for r in reports for e in r.epochs if e.started_at is not None]
        samples: Sequence[tuple[float, float]] = []
        if epochs:
            start = min(e.started_at for e in epochs)
            end = max(e.started_at + (e.duration_s or 0.0) for e in epochs)
            rows = store.intensity_samples(start - 3600, end)
            samples = [(max(r["ts"], start), r["intensity_g_per_kwh"]) for r in rows]
            if samples:
                samples = [*samples, (end, samples[-1][1])]
    return format_table(reports), plot_report(reports, samples, plot_path)
