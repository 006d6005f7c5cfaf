"""The main job end to end on one machine, no network: daemon → ρ per epoch → energy and carbon.

:func:`run_demo` starts ``carbonsched run`` as a subprocess (temporary socket and state dir, the
bundled intensity trace replayed fast, the thresholds policy ``policies/fast-trace.toml``), fine-tunes
the tiny random-init OPT on the embedded task with the daemon as ρ source, prints one row per
epoch, then ``carbonsched report`` of the job, which also writes a PNG plot. The daemon is always
stopped at the end (SIGTERM, then SIGKILL after a grace period), also when training fails.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from carbon_demo.carbonsched_commands import DaemonSubprocess, write_report
from carbon_demo.epoch_table import EpochPrinter
from carbon_demo.errors import DemoError

REPORT_NAME = "report.txt"
PLOT_NAME = "demo.png"

# Trace seconds per wall second. The bundled trace is a daily cycle (about 400 → 125 → 400
# gCO2e/kWh); at this pace one demo epoch (~1.5 s on 2 idle cores) spans about 2.5 hours of it,
# so the policy's thresholds (300, 200) are crossed within 5-6 epochs.
FULL_SPEEDUP = 6000.0
QUICK_SPEEDUP = 3600.0


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
        # 64 steps per epoch: the loss falls from ~5.6 to ~1.6 over 6 epochs in ~10 CPU-s of training.
        return {"n_train": 512, "n_val": 48, "hidden": 128, "layers": 2, "batch_size": 8}


@dataclass
class DemoResult:
    job_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    report: str = ""
    plot: Path | None = None
    state_dir: Path | None = None
    wall_s: float = 0.0


def default_policy() -> Path | None:
    """policies/fast-trace.toml of the source tree; None (the daemon's default policy) when not installed from it."""
    repo_policy = Path(__file__).resolve().parent.parent / "policies" / "fast-trace.toml"
    return repo_policy if repo_policy.is_file() else None


def prepare_out(out: Path) -> Path:
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
    out = prepare_out(Path(options.out))
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
        echo(f"daemon: carbonsched run (pid {daemon.proc.pid}), trace replay x{speedup:g}, "
             f"policy {policy.name if policy is not None else 'default'}, socket {daemon.socket_path}")
        import_training_code()  # ~4 CPU-s of torch/transformers imports, while the daemon starts
        daemon.wait_ready()
        result = train_with_daemon(options, daemon.socket_path, out, echo)
        result.state_dir = state_dir
        result.plot = out / PLOT_NAME
        result.report = write_report(state_dir, result.job_id, out / REPORT_NAME, result.plot)
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


def import_training_code() -> None:
    """Import the training stack (torch, transformers, gt_core's trainer) ahead of its first use."""
    import gt_core.training.trainer  # noqa: F401


def train_with_daemon(options: DemoOptions, socket_path: Path, out: Path, echo: Callable[[str], None]) -> DemoResult:
    """Fine-tune the tiny OPT on the embedded task, asking the daemon at ``socket_path`` for ρ each epoch."""
    import torch

    from gt_core.data.embedded_task import embedded_task
    from gt_core.rho.daemon_source import DaemonRhoSource
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    # One thread: a model this small gains nothing from a second one, and on a busy machine the
    # threads' spin-waits cost 15x the CPU time (150 instead of 10 CPU-s for the 6 epochs).
    torch.set_num_threads(1)
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
