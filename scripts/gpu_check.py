"""GPU check: train a random-init model of a real shape on CUDA and write a markdown report.

    make gpu-check                                        # OPT-350M shape, bf16-mixed, on CUDA
    python scripts/gpu_check.py --shape llama-1b          # a Llama-style 1.1B shape instead
    python scripts/gpu_check.py --device cpu --tiny       # the same code on a tiny model, on the CPU
    python scripts/gpu_check.py --device cpu --tiny --fsdp-procs 2 --fsdp-only   # the FSDP case on gloo

Full fine-tuning and GreenTrainer at ρ ∈ {0.4, 0.7, 1.0} × frozen-state keep/offload/drop train
on the embedded task (built-in tokenizer; the model keeps its real vocabulary size, only the
tokenizer's ids occur). ρ comes from a ``carbonsched run`` daemon started here with a constant
policy (rewritten and reloaded with SIGHUP for each ρ), through ``DaemonRhoSource``, which also
reports every epoch to it; energy per epoch is then read with ``carbonsched report --format json``.

Reported per run: median optimizer-step time (synchronised) against full fine-tuning's, next to
the FLOPs ratio; peak memory of the training steps (``torch.cuda.max_memory_allocated``, reset
right after each epoch's selection; on the CPU the process's peak RSS) and of the selection's
importance pass; optimizer state on the training device; the daemon's energy and carbon per epoch.
Without CUDA (and no ``--device``) it prints one line saying it skipped and exits 0.

The FSDP case (``--strategy fsdp``; every visible GPU, one process each under torchrun; on the CPU
with ``--fsdp-procs N``): full fine-tuning and GreenTrainer ρ 0.5 ``drop``, each rank's epoch peak
memory and AdamW state. With fewer than 2 GPUs it prints one line saying it skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

RHOS = (0.4, 0.7, 1.0)
MODES = ("keep", "offload", "drop")
WARMUP_STEPS = 3  # per run: first steps pay allocator growth and kernel selection
DAEMON_READY_S = 60.0


@dataclass(frozen=True)
class CheckPlan:
    shape: str
    device: str
    precision: str
    batch_size: int
    seq_len: int
    epochs: int
    steps_per_epoch: int
    importance_batches: int
    gradient_checkpointing: bool = False
    rhos: tuple[float, ...] = RHOS
    modes: tuple[str, ...] = MODES


def _opt_350m(vocab_size: int) -> Any:
    import transformers as tf

    return tf.OPTConfig(
        vocab_size=50272, hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
        word_embed_proj_dim=512, do_layer_norm_before=False, max_position_embeddings=2048,
        pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )


def _llama_1b(vocab_size: int) -> Any:
    import transformers as tf

    return tf.LlamaConfig(  # TinyLlama-1.1B's published shape
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def _tiny_opt(vocab_size: int) -> Any:
    import transformers as tf

    return tf.OPTConfig(
        vocab_size=vocab_size, hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, max_position_embeddings=512, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )


SHAPES: dict[str, Callable[[int], Any]] = {"opt-350m": _opt_350m, "llama-1b": _llama_1b, "tiny-opt": _tiny_opt}


# ---------------------------------------------------------------------------- the daemon


def carbonsched_command() -> list[str]:
    beside = Path(sys.executable).parent / "carbonsched"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("carbonsched")
    return [found] if found else [sys.executable, "-m", "carbonsched.cli"]


class Daemon:
    """``carbonsched run`` with a constant policy, as a subprocess of this check."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "run" / "carbonsched.sock"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.status: dict[str, Any] | None = None

    def serve(self, rho: float) -> None:
        """Serve ``rho``: start the daemon with a constant policy, or rewrite the policy and
        reload it (SIGHUP) when it runs; returns once the daemon answers ``rho``."""
        policy = self.workdir / "policy.toml"
        policy.write_text(f'kind = "constant"\nrho = {rho}\nrho_min = {min(rho, 0.34)}\n')
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
        else:
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [*carbonsched_command(), "run", "--socket", str(self.socket), "--state-dir", str(self.state_dir),
                     "--policy", str(policy), "--sample-power-s", "0.5", "--decide-s", "0.5"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                )
        self._wait_for_rho(rho)

    def _wait_for_rho(self, rho: float) -> None:
        from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

        deadline = time.monotonic() + DAEMON_READY_S
        client = DaemonClient(self.socket, timeout_s=2.0)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"carbonsched run exited {self.proc.returncode}; see {self.log_path}")
                try:
                    if abs(float(client.call("rho")["rho"]) - rho) < 1e-9:
                        self.status = client.call("status")
                        return
                except (DaemonUnavailable, DaemonRequestError, KeyError, ValueError):
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"carbonsched run did not serve rho {rho} within {DAEMON_READY_S:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def report(self) -> dict[str, Any]:
        done = subprocess.run(
            [*carbonsched_command(), "report", "--state-dir", str(self.state_dir), "--format", "json"],
            capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"carbonsched report failed: {done.stderr.strip()}")
        return json.loads(done.stdout)


# ---------------------------------------------------------------------------- one training run


@dataclass
class RunResult:
    label: str
    scheme: str
    rho: float | None
    mode: str
    job_id: str
    weights_bytes: int
    step_s: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median_step_s(self) -> float:
        timed = self.step_s[WARMUP_STEPS:] or self.step_s
        return statistics.median(timed)

    def peak(self, key: str = "train_peak_bytes") -> int:
        """The largest peak over the epochs after the first (all epochs when there is one)."""
        later = self.epochs[1:] or self.epochs
        return max(e[key] or 0 for e in later)


def memory_in_use_bytes(device: torch.device) -> int:
    """Allocated tensor bytes on CUDA; the process's resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(plan: CheckPlan, scheme: str, rho: float | None, mode: str, daemon: Daemon, data: tuple,
            workdir: Path) -> RunResult:
    import transformers as tf

    from gt_core.training.callbacks import TrainerCallback
    from gt_core.training.memory import PeakMemory
    from gt_core.rho.daemon_source import DaemonRhoSource
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    tokenizer, train, val = data
    device = torch.device(plan.device)
    label = "full FT" if scheme == "full" else f"green ρ={rho:g} {mode}"
    source = DaemonRhoSource(daemon.socket, model_name=f"gpu-check-{plan.shape}", scheme=scheme, default_rho=1.0)
    torch.manual_seed(0)
    # On the device before the trainer sees it: the trainer profiles the model it is given with one
    # live forward, which would otherwise run on the CPU at the training shape.
    model = tf.AutoModelForCausalLM.from_config(SHAPES[plan.shape](len(tokenizer))).to(device)
    result = RunResult(label, scheme, rho, mode, source.job_id, 0)

    class StepTimedTrainer(GreenTrainer):
        """Times each optimizer step (device synchronised) and writes no checkpoints."""

        def train_step(self, group):
            synchronize(self.device)
            start = time.perf_counter()
            loss = super().train_step(group)
            synchronize(self.device)
            result.step_s.append(time.perf_counter() - start)
            return loss

        def checkpoint(self, rank_rng_states=None) -> Path:
            return self.output_dir

    class PeakAfterSelection(TrainerCallback):
        def on_epoch_start(self, trainer, epoch, reading) -> None:
            probe = PeakMemory(trainer.device)
            self.selection_peak = probe.read()[0]
            probe.reset()

        def on_epoch_end(self, trainer, record) -> None:
            result.epochs.append({
                "epoch": record.epoch, "rho_asked": record.rho_asked, "rho_effective": record.rho_effective,
                "param_share": record.param_share_selected, "tensors": record.tensors_selected,
                "train_peak_bytes": record.peak_memory_bytes, "peak_kind": record.peak_memory_kind,
                "selection_peak_bytes": self.selection_peak, "skipped_steps": record.skipped_steps,
                "state_bytes_on_device": trainer.frozen_state.state_bytes(trainer.device.type),
                "state_bytes": trainer.frozen_state.state_bytes(), "wall_s": record.wall_s,
                "steps": record.steps, "val_loss": record.val_loss,
            })

    cfg = TrainConfig(
        scheme=scheme, lr=1e-4, batch_size=plan.batch_size, epochs=plan.epochs, max_input_length=plan.seq_len,
        max_target_length=32, importance_batches=plan.importance_batches, output_dir=workdir / "runs" / source.job_id,
        progress=False, save_final=False, print_epoch_summary=False, device=plan.device, precision=plan.precision,
        frozen_state=mode, gradient_checkpointing=plan.gradient_checkpointing,
    )
    trainer = StepTimedTrainer(model, tokenizer, train, val, cfg, rho_source=source,
                               callbacks=[PeakAfterSelection()])
    result.weights_bytes = memory_in_use_bytes(device)
    trainer.train()
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_data(plan: CheckPlan) -> tuple:
    """The built-in tokenizer and embedded-task pairs, sources long enough to fill ``seq_len``."""
    from gt_core.data.datasets import Example
    from gt_core.data.embedded_task import embedded_task
    from gt_core.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    n_train = plan.batch_size * plan.steps_per_epoch
    n_val = plan.batch_size * 2
    per_example = max(1, plan.seq_len // 40)
    reports, _ = embedded_task(n_train=(n_train + n_val) * per_example, n_val=0, seed=11)
    pairs = [
        Example(" ".join(r.source for r in reports[i : i + per_example]), reports[i].target)
        for i in range(0, len(reports), per_example)
    ]
    return tokenizer, pairs[:n_train], pairs[n_train:]


# ---------------------------------------------------------------------------- the FSDP case

FSDP_RHO = 0.5


def fsdp_skip_reason(device: torch.device, procs: int) -> str | None:
    """The one line saying why the FSDP case does not run here, or None when it runs."""
    if procs >= 2:
        return None
    if device.type == "cuda":
        return (f"gpu-check: FSDP case skipped: it needs 2 or more CUDA devices (torchrun, one process per GPU), "
                f"found {torch.cuda.device_count()}")
    return "gpu-check: FSDP case skipped: on the CPU it runs only when asked (--fsdp-procs 2: gloo processes)"


def run_fsdp_case(plan: CheckPlan, procs: int, workdir: Path) -> list[dict[str, Any]]:
    """Full fine-tuning and GreenTrainer ρ 0.5 ``drop`` under ``--strategy fsdp`` with ``procs``
    processes (this script under torchrun, :func:`fsdp_worker`); every rank's epochs."""
    out = workdir / "fsdp"
    out.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({**plan.__dict__, "rhos": list(plan.rhos), "modes": list(plan.modes)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           str(Path(__file__).resolve()), "--fsdp-worker", spec, str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if "Error" in line][-1:] or [f"exit {done.returncode}"]
        raise RuntimeError(f"FSDP case failed: {tail[0].strip()}")
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]


def fsdp_worker(spec: str, out: Path) -> None:
    """One rank of the FSDP case: each scheme trains a fresh random-init model of the shape."""
    import transformers as tf

    from gt_core.training.callbacks import TrainerCallback
    from gt_core.distributed.data_parallel import dist_env, trainer_class
    from gt_core.distributed.sharding import local_part
    from gt_core.training.trainer import TrainConfig

    values = json.loads(spec)
    plan = CheckPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    torch.set_num_threads(1)
    env = dist_env()
    tokenizer, train, val = check_data(plan)
    cls = trainer_class("fsdp")

    class NoCheckpoints(cls):
        def checkpoint(self, rank_rng_states=None) -> Path:
            return self.output_dir

    epochs: list[dict[str, Any]] = []

    class PerRank(TrainerCallback):
        def __init__(self, scheme: str) -> None:
            self.scheme = scheme

        def on_epoch_end(self, trainer, record) -> None:
            state = sum(local_part(v).numel() * local_part(v).element_size()
                        for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step")
            epochs.append({"scheme": self.scheme, "epoch": record.epoch, "rank": env.rank,
                           "peak_bytes": record.peak_memory_bytes, "peak_kind": record.peak_memory_kind,
                           "state_bytes": state, "wall_s": record.wall_s, "rho_effective": record.rho_effective,
                           "tensors": record.tensors_selected})

    for scheme in ("full", "green"):
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(SHAPES[plan.shape](len(tokenizer)))
        cfg = TrainConfig(
            scheme=scheme, rho=FSDP_RHO, lr=1e-4, batch_size=plan.batch_size * env.world_size, epochs=plan.epochs,
            max_input_length=plan.seq_len, max_target_length=32, importance_batches=plan.importance_batches,
            output_dir=out / scheme, progress=False, save_final=False, print_epoch_summary=False,
            precision=plan.precision, frozen_state="drop", gradient_checkpointing=plan.gradient_checkpointing,
        )
        trainer = NoCheckpoints(model, tokenizer, train * env.world_size, val, cfg, callbacks=[PerRank(scheme)])
        trainer.train()
        del trainer, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (out / f"rank{env.rank}.json").write_text(json.dumps(epochs))


def fsdp_report_lines(plan: CheckPlan, procs: int, ranks: list[list[dict[str, Any]]]) -> list[str]:
    rows = []
    for epochs in ranks:
        for e in epochs:
            if e["epoch"] != plan.epochs - 1:
                continue
            label = "full FT" if e["scheme"] == "full" else f"green ρ={FSDP_RHO:g} drop"
            rows.append([label, e["rank"], _mib(e["peak_bytes"]), _mib(e["state_bytes"]), e["tensors"],
                         f"{e['rho_effective']:.3f}", f"{e['wall_s']:.1f}"])
    rows.sort(key=lambda r: (r[0] != "full FT", r[1]))
    return [
        "", f"## FSDP2 (`--strategy fsdp`), {procs} processes", "",
        f"Each rank trains its {plan.batch_size} rows of every global batch of {plan.batch_size * procs}; the "
        "model is sharded with `fully_shard` per block and at the root. Last epoch per rank: the epoch's peak "
        "memory (importance pass included; `max_memory_allocated` on CUDA, VmHWM on the CPU) and this rank's "
        "AdamW state.", "",
        *_table(["run", "rank", "epoch peak MiB", "AdamW state MiB (this rank)", "tensors", "ρ effective", "epoch s"],
                rows),
    ]


# ---------------------------------------------------------------------------- the report


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def flops_ratio(run: RunResult) -> float:
    return statistics.fmean(e["rho_effective"] for e in run.epochs)


def render_report(plan: CheckPlan, runs: list[RunResult], energy: dict[str, Any], meter: Any,
                  environment: dict[str, str], params: int) -> str:
    full = next(r for r in runs if r.scheme == "full")
    device = torch.device(plan.device)
    peak_what = ("`torch.cuda.max_memory_allocated`" if device.type == "cuda"
                 else "the process's peak RSS (VmHWM; CPU smoke run, includes the interpreter)")
    lines = [
        "# GPU check",
        "",
        *(f"- {k}: {v}" for k, v in environment.items()),
        f"- Model: random-init `{plan.shape}` shape, {params / 1e6:.1f} M parameters; precision {plan.precision}; "
        f"batch {plan.batch_size} × {plan.seq_len} tokens; {plan.epochs} epochs × {plan.steps_per_epoch} optimizer "
        f"steps per run; importance on {plan.importance_batches} batch(es); gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}.",
        "",
        "## Step time vs FLOPs",
        "",
        f"Median optimizer-step time (device synchronised, first {WARMUP_STEPS} steps of a run left out) "
        "over full fine-tuning's, next to the modelled FLOPs per step over full fine-tuning's "
        "(ρ effective, mean over epochs).",
        "",
        *_table(["run", "FLOPs / full", "step ms", "step time / full", "params trained (last epoch)"], [
            [r.label, f"{flops_ratio(r):.3f}", f"{1e3 * r.median_step_s:.1f}",
             f"{r.median_step_s / full.median_step_s:.3f}", f"{100 * r.epochs[-1]['param_share']:.1f}%"]
            for r in runs
        ]),
        "",
        "## Peak memory per frozen-state mode",
        "",
        f"Peak of the training steps, measured as {peak_what}, reset right after each epoch's selection; "
        "the largest over the epochs after the first. *Selection peak*: the importance pass. *Weights*: "
        "memory in use once the trainer was built. *× full*: (peak − weights) over full fine-tuning's.",
        "",
        *_table(["run", "weights MiB", "training peak MiB", "× full", "selection peak MiB",
                 "optimizer state on device MiB", "optimizer state MiB"], [
            [r.label, _mib(r.weights_bytes), _mib(r.peak()),
             f"{(r.peak() - r.weights_bytes) / max(1, full.peak() - full.weights_bytes):.2f}",
             _mib(r.peak("selection_peak_bytes")), _mib(r.epochs[-1]["state_bytes_on_device"]),
             _mib(r.epochs[-1]["state_bytes"])]
            for r in runs
        ]),
        "",
        "## Energy per epoch (carbonsched daemon)",
        "",
        "From `carbonsched report --format json` on the daemon's store: the daemon meters the devices and "
        "splits energy by the epoch windows the job reported. *J / step* is the epoch's energy over its "
        "optimizer steps (importance and DP included).",
        "",
    ]
    by_job = {job["job_id"]: job for job in energy.get("jobs", [])}
    rows = []
    for r in runs:
        job = by_job.get(r.job_id)
        for e in (job or {}).get("epochs", []):
            steps = next((x["steps"] for x in r.epochs if x["epoch"] == e["epoch"]), None)
            kwh = e.get("energy_kwh")
            rows.append([
                r.label, e["epoch"], f"{e['rho_asked']:.2f}" if e.get("rho_asked") is not None else "-",
                f"{e['duration_s']:.1f}" if e.get("duration_s") is not None else "-",
                "-" if kwh is None else f"{kwh:.3g}", "-" if e.get("gpu_kwh") is None else f"{e['gpu_kwh']:.3g}",
                "-" if kwh is None or not steps else f"{kwh * 3.6e6 / steps:.1f}",
                "-" if e.get("carbon_g") is None else f"{e['carbon_g']:.3g}",
                e.get("saved_label") or "-",
            ])
        if job is None:
            rows.append([r.label, "-", "-", "-", "not recorded", "-", "-", "-", "-"])
    lines += _table(["run", "epoch", "ρ", "duration s", "energy kWh", "GPU kWh", "J / step", "gCO2e",
                     "saving vs full"], rows)
    lines += ["", "Meter (from `carbonsched status`):", "", "```", json.dumps(meter, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def environment_lines(device: torch.device) -> dict[str, str]:
    env = {"Date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "Python / torch": f"{platform.python_version()} / {torch.__version__}"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["Device"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"
    else:
        env["Device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores): smoke run, not a GPU measurement"
    return env


# ---------------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA, else skip)")
    ap.add_argument("--tiny", action="store_true", help="a tiny OPT and a few steps: a smoke run (works on the CPU)")
    ap.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny-opt"], default="opt-350m")
    ap.add_argument("--precision", default=None, help="fp32, bf16-mixed, fp16-mixed or bf16 (default bf16-mixed)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--report", type=Path, default=None, help="markdown report path (default runs/gpu-check/…)")
    ap.add_argument("--workdir", type=Path, default=None, help="daemon state and runs (default: a temp dir, removed)")
    ap.add_argument("--fsdp-procs", type=int, default=None,
                    help="processes of the FSDP case (default: every CUDA device; on the CPU 0, i.e. skipped)")
    ap.add_argument("--fsdp-only", action="store_true", help="run only the FSDP case")
    ap.add_argument("--fsdp-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace, device: str) -> CheckPlan:
    tiny = args.tiny
    plan = CheckPlan(
        shape="tiny-opt" if tiny else args.shape, device=device, precision=args.precision or "bf16-mixed",
        batch_size=args.batch_size or (2 if tiny else 8), seq_len=args.seq_len or (64 if tiny else 256),
        epochs=args.epochs or 2, steps_per_epoch=args.steps_per_epoch or (2 if tiny else 100),
        importance_batches=1 if tiny else 4, gradient_checkpointing=args.gradient_checkpointing,
    )
    for name in ("batch_size", "seq_len", "epochs", "steps_per_epoch"):
        if getattr(plan, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if plan.seq_len < 48:
        raise ValueError("--seq-len must be >= 48 (the prompt needs room beside a 32-token target)")
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fsdp_worker is not None:
        fsdp_worker(args.fsdp_worker[0], Path(args.fsdp_worker[1]))
        return 0
    if args.device is None and not torch.cuda.is_available():
        print(f"gpu-check: skipped: no CUDA device visible to torch {torch.__version__} "
              f"(use --device cpu --tiny for a smoke run)")
        return 0
    from gt_core.training.device import resolve_device
    from gt_core.training.precision import check_precision

    try:
        device = resolve_device(args.device or "cuda")
        plan = make_plan(args, str(device))
        check_precision(plan.precision)
    except ValueError as exc:
        print(f"gpu-check: error: {exc}", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    report_path = args.report or Path("runs") / "gpu-check" / f"gpu-check-{stamp}.md"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpuchk-", dir="/tmp"))  # short: socket path limit
    workdir.mkdir(parents=True, exist_ok=True)
    procs = args.fsdp_procs if args.fsdp_procs is not None else (torch.cuda.device_count() if device.type == "cuda" else 0)
    skip = fsdp_skip_reason(device, procs)
    if args.fsdp_only:
        if skip is not None:
            print(skip)
            return 0
        text = "\n".join(["# GPU check: FSDP case", "", *(f"- {k}: {v}" for k, v in environment_lines(device).items()),
                          *fsdp_report_lines(plan, procs, run_fsdp_case(plan, procs, workdir))]) + "\n"
        return write_report(report_path, text, workdir, keep_workdir=args.workdir is not None)
    data = check_data(plan)
    daemon = Daemon(workdir)
    runs: list[RunResult] = []
    meter: Any = None
    try:
        for rho in sorted(plan.rhos, reverse=True):
            daemon.serve(rho)
            if not runs:
                runs.append(run_one(plan, "full", None, "keep", daemon, data, workdir))
                print(f"gpu-check: {runs[-1].label}: {1e3 * runs[-1].median_step_s:.1f} ms/step", flush=True)
            for mode in plan.modes:
                runs.append(run_one(plan, "green", rho, mode, daemon, data, workdir))
                print(f"gpu-check: {runs[-1].label}: {1e3 * runs[-1].median_step_s:.1f} ms/step", flush=True)
            meter = meter or (daemon.status or {}).get("meter")
        daemon.stop()
        energy = daemon.report()
    finally:
        daemon.stop()
    params = parameter_count(plan.shape, len(data[0]))
    text = render_report(plan, runs, energy, meter, environment_lines(device), params)
    if skip is None:
        text += "\n".join(fsdp_report_lines(plan, procs, run_fsdp_case(plan, procs, workdir))) + "\n"
    else:
        print(skip)
    return write_report(report_path, text, workdir, keep_workdir=args.workdir is not None)


def write_report(report_path: Path, text: str, workdir: Path, keep_workdir: bool) -> int:
    """Write the report, remove a temporary work directory, say where the report is; exit code 0."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    if not keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"gpu-check: report written to {report_path}")
    return 0


def parameter_count(shape: str, vocab_size: int) -> int:
    """Parameters of a shape, counted on the meta device (no memory)."""
    import transformers as tf

    with torch.device("meta"):
        return sum(p.numel() for p in tf.AutoModelForCausalLM.from_config(SHAPES[shape](vocab_size)).parameters())


if __name__ == "__main__":
    sys.exit(main())
