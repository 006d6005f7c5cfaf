"""Benchmark 9: peak training memory per frozen-state mode and ρ, and what ``drop`` does to accuracy.

Memory. Each configuration trains in a fresh process (``python -m bench.memory --one JSON``) on the
CPU, so its peaks are its own. The process runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at
64 KiB: every allocation of that size or more is its own mapping and goes back to the OS when
freed, so the resident set follows the live tensors instead of keeping freed heap. Measured:

* *baseline*: resident set size (``/proc/self/statm``) once the trainer is built (model built,
  profiled and placed, data tokenised; AdamW holds no state yet), after ``malloc_trim``;
* *training peak* of an epoch: the process's ``VmHWM`` (peak RSS), reset (``/proc/self/clear_refs``)
  right after the epoch's selection and read at its end before validation, i.e. over the optimizer
  steps: ``peak_memory_bytes`` of metrics.jsonl with the reset moved from the epoch start to after
  the importance pass;
* *held at epoch start*: ``VmHWM`` from the epoch start to the start of the importance pass (what
  the previous epoch left: its AdamW moments, before the pass drops the unreachable ones);
* *importance pass*: ``VmHWM`` over the pass alone (the selector's ``choose``);
* *epoch peak*: the largest of the three, what the epoch really needs.

Figures are peak minus baseline: what training needs on top of the model itself.

The same configurations also run under ``torchrun --nproc_per_node 2`` with ``--strategy fsdp``
(gloo), measured the same way on each rank.

Runs are two epochs of one optimizer step each under a ρ schedule ``[1.0, ρ]``: the first epoch
trains every tensor (so every tensor has AdamW moments, as after a clean-grid hour), the second
trains the selection at ρ, and its training peak is reported. ``keep`` holds every tensor's moments
then, ``drop`` only the selected tensors'. Full fine-tuning runs the same two epochs with
``--scheme full``. ``offload`` is not run: on the CPU it leaves the moments where they are, so its
rows would repeat ``keep``'s (its saving is device memory, measured by ``make gpu-check``); ρ = 1
is not run either (every tensor is selected, so it is full fine-tuning's row).

Accuracy. ``keep`` vs ``drop`` on the accuracy section's task and model (bench/accuracy.py: the
pre-trained tiny OPT, the same splits and learning rate as GreenTrainer ρ = 0.5 there), at
constant ρ = 0.5 (the ``keep`` runs are the accuracy section's own, reused from its run file) and
under an alternating schedule, several seeds. Both modes answer the same ρ per epoch, so their
FLOPs budgets are equal; the table gives the FLOPs they spent.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from bench.common import RESULTS, ROOT, fmt_pm, machine_line, run_section, table, write_section

MODES = ("keep", "offload", "drop")
MEASURED_MODES = ("keep", "drop")
GOAL_RATIO = 0.40
GOAL_RHO = 0.5
MMAP_THRESHOLD_BYTES = 64 * 1024
SHARDED_PROCS = 2


@dataclass(frozen=True)
class MemoryShape:
    """The decoder and the training shape of the memory runs."""

    hidden: int = 512
    layers: int = 6
    heads: int = 8
    batch_size: int = 4
    seq_len: int = 256
    steps_per_epoch: int = 1
    rhos: tuple[float, ...] = (0.4, 0.5, 0.7)
    modes: tuple[str, ...] = MEASURED_MODES

    @classmethod
    def for_mode(cls, quick: bool) -> "MemoryShape":
        if not quick:
            return cls()
        return cls(hidden=256, layers=2, heads=4, seq_len=128, steps_per_epoch=1, rhos=(0.5,), modes=("drop",))


@dataclass(frozen=True)
class AccuracyPlan:
    seeds: tuple[int, ...] = (0, 1, 2)
    schedules: tuple[tuple[float, ...], ...] = ((0.5,), (0.7, 0.4, 0.7, 0.4))

    @classmethod
    def for_mode(cls, quick: bool) -> "AccuracyPlan":
        return cls(seeds=(0,), schedules=((0.5,),)) if quick else cls()


# ---------------------------------------------------------------------------- one configuration


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS is what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def memory_examples(n: int, seq_len: int) -> list:
    """``n`` pairs from the embedded task, each long enough to fill ``seq_len`` tokens once
    tokenised (the data set cuts the prompt to fit)."""
    from gt_core.data.datasets import Example
    from gt_core.data.embedded_task import embedded_task

    reports, _ = embedded_task(n_train=n * 8, n_val=0, seed=7)
    pairs = []
    for i in range(n):
        group = reports[8 * i : 8 * i + 8]
        pairs.append(Example(source=" ".join(r.source for r in group),
                             target=". ".join(r.target for r in group[:4])))
    return pairs


def measure_one(mode: str, rho: float | None, shape: MemoryShape, steady: bool = False) -> dict[str, Any]:
    """Train one configuration in this process; ``rho=None`` is full fine-tuning. The ρ schedule is
    [1.0, ρ], or [ρ, ρ] when ``steady`` (the previous epoch left only its selection's moments)."""
    import torch

    from gt_core.training.callbacks import TrainerCallback
    from gt_core.distributed.data_parallel import dist_env, is_distributed_launch, trainer_class
    from gt_core.training.memory import PeakMemory
    from gt_core.rho.sources import ScheduleRho
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import TrainConfig

    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    n_train = shape.batch_size * shape.steps_per_epoch
    examples = memory_examples(n_train + shape.batch_size, shape.seq_len)
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=shape.hidden, layers=shape.layers,
                       heads=shape.heads, max_len=shape.seq_len + 8, seed=0)

    selection_peaks: dict[int, int | None] = {}
    pass_peaks: dict[int, tuple[int | None, int | None]] = {}
    state_bytes: dict[int, int] = {}

    class StepPeak(TrainerCallback):
        """Moves the peak-memory reset from the epoch start to after the epoch's selection."""

        def on_epoch_start(self, trainer, epoch, reading) -> None:
            probe = PeakMemory(trainer.device)
            selection_peaks[epoch] = probe.read()[0]
            probe.reset()

        def on_epoch_end(self, trainer, record) -> None:
            state_bytes[record.epoch] = trainer.frozen_state.state_bytes()

    def measure_passes(trainer) -> None:
        """Split the selection window at the importance pass: the peak from the epoch start to the
        pass (what the epoch inherits, before the unreachable moments are dropped) and the pass's own."""
        choose = trainer.selector.choose

        def measured_choose(*args, **kwargs):
            probe = PeakMemory(trainer.device)
            before_pass = probe.read()[0]
            probe.reset()
            selection = choose(*args, **kwargs)
            pass_peaks[kwargs["epoch"]] = (before_pass, probe.read()[0])
            return selection

        trainer.selector.choose = measured_choose

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            scheme="full" if rho is None else "green", lr=1e-4, batch_size=shape.batch_size, epochs=2,
            max_input_length=shape.seq_len, max_target_length=48, importance_batches=1, output_dir=tmp,
            progress=False, save_final=False, print_epoch_summary=False, device="cpu", frozen_state=mode,
        )
        source = None if rho is None else ScheduleRho([rho if steady else 1.0, rho])
        # Under torchrun: --strategy fsdp, each rank its half of every global batch.
        cls = trainer_class("fsdp" if is_distributed_launch() else "ddp")
        trainer = cls(model, tokenizer, examples[:n_train], examples[n_train:], cfg,
                      rho_source=source, callbacks=[StepPeak()])
        if rho is not None:
            measure_passes(trainer)
        lengths = {len(f["input_ids"]) for f in trainer.train_set.features}
        release_freed_memory()
        baseline = rss_bytes()
        records = trainer.train()
    params = sum(p.numel() for p in model.parameters())
    return {
        "mode": mode, "rho": rho, "rank": dist_env().rank, "world_size": dist_env().world_size,
        "baseline_bytes": baseline, "params": params,
        "param_bytes": params * 4, "seq_lens": sorted(lengths),
        "epochs": [
            {"epoch": r.epoch, "rho": r.rho_asked, "train_peak_bytes": r.peak_memory_bytes,
             "peak_kind": r.peak_memory_kind,
             "selection_peak_bytes": max((v for v in (selection_peaks.get(r.epoch), *pass_peaks.get(r.epoch, ()))
                                          if v is not None), default=None),
             "before_pass_peak_bytes": pass_peaks.get(r.epoch, (None, None))[0],
             "pass_peak_bytes": pass_peaks.get(r.epoch, (None, None))[1],
             "optimizer_state_bytes": state_bytes.get(r.epoch), "param_share": r.param_share_selected,
             "tensors": r.tensors_selected, "rho_effective": r.rho_effective}
            for r in records
        ],
    }


def run_fresh(mode: str, rho: float | None, shape: MemoryShape, steady: bool = False) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error",
               MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES), TOKENIZERS_PARALLELISM="false")
    spec = json.dumps({"mode": mode, "rho": rho, "shape": asdict(shape), "steady": steady})
    done = subprocess.run([sys.executable, "-m", "bench.memory", "--one", spec], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise RuntimeError(f"memory run {mode} rho={rho}: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_fresh_sharded(mode: str, rho: float | None, shape: MemoryShape, procs: int = 2) -> list[dict[str, Any]]:
    """One configuration under ``torchrun --nproc_per_node procs`` (``--strategy fsdp``): every rank's run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error",
               MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES), TOKENIZERS_PARALLELISM="false")
    spec = json.dumps({"mode": mode, "rho": rho, "shape": asdict(shape)})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(procs), "-m", "bench.memory", "--one", spec], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if "Error" in line][-1:] or [f"exit {done.returncode}"]
        raise RuntimeError(f"sharded memory run {mode} rho={rho}: {tail[0].strip()}")
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return sorted(runs, key=lambda r: r["rank"])


def over_baseline(run: dict, key: str = "train_peak_bytes", epoch: int = 1) -> int:
    return run["epochs"][epoch][key] - run["baseline_bytes"]


# ---------------------------------------------------------------------------- accuracy


def accuracy_runs(quick: bool, log: Callable[[str], None]) -> tuple[list[dict], float]:
    from bench import accuracy

    plan = AccuracyPlan.for_mode(quick)
    task = accuracy.build_task(quick)
    lr = accuracy.SCHEMES["green-0.5"][2][1]
    reusable: dict[int, dict] = {}
    if accuracy.RUNS_JSON.exists():
        saved = json.loads(accuracy.RUNS_JSON.read_text())
        lr = saved.get("best_lr", {}).get("green-0.5", lr)
        if saved.get("quick") == quick:
            reusable = {r["seed"]: r for r in saved["runs"]
                        if r["key"] == "green-0.5" and r["metric"] == "dw_grad" and r["frozen_state"] == "keep"
                        and r["lr"] == lr}
    runs = []
    for schedule in plan.schedules:
        for seed in plan.seeds:
            for mode in ("keep", "drop"):
                if schedule == (0.5,) and mode == "keep" and seed in reusable:
                    run = dict(reusable[seed], schedule=[0.5])
                    runs.append(run)
                    continue
                run = accuracy.run_one(task, "green-0.5", lr, seed, frozen_state=mode, rho_schedule=schedule)
                run["schedule"] = list(schedule)
                log(f"  accuracy {mode} rho {schedule} seed {seed}: test loss {run['test_loss']:.4f}, "
                    f"ROUGE-L {run['rougeL']:.2f}")
                runs.append(run)
    return runs, lr


def reselected_share(run: dict) -> float:
    """Share of selections (after the first epoch) of tensors trained before but not in the
    previous epoch: what ``drop`` restarts with fresh moments."""
    seen: set[str] = set()
    previous: set[str] = set()
    returning = total = 0
    for epoch in run["epochs"]:
        chosen = set(epoch.get("selected") or [])
        if seen:
            returning += len((chosen & seen) - previous)
            total += len(chosen)
        seen |= chosen
        previous = chosen
    return returning / total if total else 0.0


# ---------------------------------------------------------------------------- report


def _plot(full: dict, runs: list[dict], shape: MemoryShape, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    full_mib = over_baseline(full) / 2**20
    markers = {"keep": "o", "offload": "x", "drop": "s"}
    for mode in shape.modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rho"])
        ax.plot([r["rho"] for r in rs], [over_baseline(r) / 2**20 for r in rs], marker=markers[mode], label=mode)
    ax.plot([1.0], [full_mib], marker="*", color="black", linestyle="none")
    ax.axhline(full_mib, color="black", linewidth=1, label="full fine-tuning")
    ax.axhline(GOAL_RATIO * full_mib, color="grey", linestyle="--", linewidth=1, label=f"goal {GOAL_RATIO:.2f}× full")
    ax.set(xlabel="ρ (second epoch; first epoch at ρ = 1)", ylabel="peak training RSS over the model (MiB)",
           title=f"OPT {shape.layers}×{shape.hidden}, batch {shape.batch_size}×{shape.seq_len}, CPU")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def epoch_peak(run: dict) -> int:
    """The second epoch's peak over the baseline, importance pass included."""
    return max(over_baseline(run), over_baseline(run, "selection_peak_bytes"))


def _mib(run: dict, key: str) -> str:
    return f"{over_baseline(run, key) / 2**20:.0f}"


def _memory_rows(full: dict, runs: list[dict]) -> list[list[object]]:
    full_peak = over_baseline(full)
    rows = [["full FT", "-", f"{over_baseline(full) / 2**20:.0f}", "1.00", "-", "-", "1.00",  # no selection
             f"{full['epochs'][1]['optimizer_state_bytes'] / 2**20:.0f}", "100.0%"]]
    for r in sorted(runs, key=lambda r: (r["rho"], MODES.index(r["mode"]))):
        e = r["epochs"][1]
        rows.append([r["mode"], f"{r['rho']:.1f}", f"{over_baseline(r) / 2**20:.0f}",
                     f"{over_baseline(r) / full_peak:.2f}", _mib(r, "before_pass_peak_bytes"),
                     _mib(r, "pass_peak_bytes"), f"{epoch_peak(r) / full_peak:.2f}",
                     f"{e['optimizer_state_bytes'] / 2**20:.0f}", f"{100 * e['param_share']:.1f}%"])
    return rows


def sharded_table_lines(full: list[dict], runs: list[list[dict]], procs: int) -> list[str]:
    """Per rank under ``--strategy fsdp``: each configuration's peaks on every rank (``runs``: per
    configuration, every rank's run), against the same ranks' full fine-tuning."""
    rows = []
    for config in [full, *sorted(runs, key=lambda rs: (rs[0]["rho"], MODES.index(rs[0]["mode"])))]:
        for run, full_rank in zip(config, full):
            e = run["epochs"][1]
            label = "full FT" if run["rho"] is None else run["mode"]
            rows.append([label, "-" if run["rho"] is None else f"{run['rho']:.1f}", run["rank"],
                         f"{over_baseline(run) / 2**20:.0f}",
                         "-" if run["rho"] is None else _mib(run, "before_pass_peak_bytes"),
                         "-" if run["rho"] is None else _mib(run, "pass_peak_bytes"),
                         f"{(over_baseline(run) if run['rho'] is None else epoch_peak(run)) / over_baseline(full_rank):.2f}",
                         f"{e['optimizer_state_bytes'] / 2**20:.0f}"])
    goal = [rs for rs in runs if rs[0]["mode"] == "drop" and rs[0]["rho"] == GOAL_RHO]
    ratios = [epoch_peak(r) / over_baseline(f) for r, f in zip(goal[0], full)] if goal else []
    pass_ratios = [over_baseline(r, "pass_peak_bytes") / over_baseline(f) for r, f in zip(goal[0], full)] if goal else []
    return [
        f"Per rank under `--strategy fsdp` with {procs} processes (gloo; `torchrun --nproc_per_node {procs}`, the "
        "same global batch, each rank half of it; the same measurement on each rank, over that rank's baseline "
        "once its trainer is built, i.e. with its shard of the weights):",
        "",
        *table(["frozen state", "ρ", "rank", "training peak MiB", "held at epoch start MiB", "importance pass MiB",
                "epoch peak × full FT (same rank)", "AdamW state MiB (this rank)"], rows),
        "",
        (f"At ρ = {GOAL_RHO} with `drop` the epoch peaks at " + " and ".join(f"{r:.2f}×" for r in ratios)
         + " full fine-tuning's on the two ranks, its importance pass at "
         + " and ".join(f"{r:.2f}×" for r in pass_ratios) + "." if ratios else ""),
    ]


def memory_table_lines(full: dict, runs: list[dict]) -> list[str]:
    """The memory table and the goal sentence of the section."""
    full_peak = over_baseline(full)
    goal_runs = [r for r in runs if r["mode"] == "drop" and r["rho"] == GOAL_RHO]
    lines = [
        *table(["frozen state", "ρ", "training peak MiB", "× full FT", "held at epoch start MiB", "importance pass MiB",
                "epoch peak × full FT", "AdamW state MiB", "params trained"], _memory_rows(full, runs)),
        "",
    ]
    if not goal_runs:
        return lines
    goal = goal_runs[0]
    ratio = {key: over_baseline(goal, key) / full_peak
             for key in ("train_peak_bytes", "before_pass_peak_bytes", "pass_peak_bytes")}
    epoch_ratio = epoch_peak(goal) / full_peak
    inherited_state = goal["epochs"][0]["optimizer_state_bytes"]
    rest = over_baseline(goal, "before_pass_peak_bytes") - inherited_state
    bound = max(ratio, key=ratio.get)
    return lines + [
        f"At ρ = {GOAL_RHO} with `drop` the training steps peak at {ratio['train_peak_bytes']:.2f}× full fine-tuning's, "
        f"the importance pass at {ratio['pass_peak_bytes']:.2f}×, and the epoch at {epoch_ratio:.2f}× (goal ≤ "
        f"{GOAL_RATIO:.2f}× for the whole epoch: {'met' if epoch_ratio <= GOAL_RATIO else '**not met**'}). "
        + ("What bounds the epoch is what it starts with (*held at epoch start*, before the pass drops the "
           "moments of tensors the ρ cannot reach): the previous epoch ran at ρ 1, so it left every tensor's AdamW "
           f"moments ({inherited_state / 2**20:.0f} MiB), plus {rest / 2**20:.0f} MiB that are not tensors (torch's "
           "kernels paged in by the first forward and backward: a first forward and backward of this model alone "
           "leaves about 19.5 MiB resident, in the full fine-tuning run as well). "
           if bound == "before_pass_peak_bytes" else "")
        + "The pass scores each tensor as its gradient arrives and frees it, recomputes each transformer block "
        "in its backward (activation checkpointing, eval mode), and scores the Adam update over 64 Ki-element "
        "slices; what it holds is the moments of the tensors the ρ can reach, the blocks' inputs, one block's "
        "recomputation and one gradient (before scoring on arrival: 0.79× at ρ 0.5; before the recomputation "
        "and the slices: 0.55×).",
    ]


def steady_line(full: dict, steady: dict) -> str:
    """The goal configuration after an epoch at the same ρ instead of ρ 1."""
    full_peak = over_baseline(full)
    return (f"After an epoch at the same ρ {steady['rho']} instead of ρ 1 (schedule [{steady['rho']}, {steady['rho']}], "
            f"`drop`), the second epoch starts with {over_baseline(steady, 'before_pass_peak_bytes') / 2**20:.0f} MiB, "
            f"its importance pass peaks at {over_baseline(steady, 'pass_peak_bytes') / 2**20:.0f} MiB and its training "
            f"steps at {over_baseline(steady) / 2**20:.0f} MiB: the epoch at {epoch_peak(steady) / full_peak:.2f}× full "
            "fine-tuning's.")


def _accuracy_rows(runs: list[dict]) -> list[list[object]]:
    rows = []
    schedules = list(dict.fromkeys(tuple(r["schedule"]) for r in runs))
    for schedule in schedules:
        for mode in ("keep", "drop"):
            rs = [r for r in runs if tuple(r["schedule"]) == schedule and r["frozen_state"] == mode]
            rows.append([
                " → ".join(f"{v:g}" for v in schedule), mode, fmt_pm([r["dev_loss"] for r in rs], 3),
                fmt_pm([r["test_loss"] for r in rs], 3), fmt_pm([r["rougeL"] for r in rs], 2),
                f"{sum(r['flops'] / r['flops_full'] for r in rs) / len(rs):.3f}",
                f"{100 * sum(r['param_share'] for r in rs) / len(rs):.1f}%",
                f"{100 * sum(reselected_share(r) for r in rs) / len(rs):.0f}%",
            ])
    return rows


def main(quick: bool = False, log: Callable[[str], None] = print) -> list[str]:
    started = time.perf_counter()
    shape = MemoryShape.for_mode(quick)
    log(f"  full fine-tuning (OPT {shape.layers}x{shape.hidden}) ...")
    full = run_fresh("keep", None, shape)
    runs = []
    for rho in shape.rhos:
        for mode in shape.modes:
            log(f"  {mode} rho {rho} ...")
            runs.append(run_fresh(mode, rho, shape))
    log(f"  drop rho {GOAL_RHO} after an epoch at the same rho ...")
    steady = run_fresh("drop", GOAL_RHO, shape, steady=True)
    log(f"  the same under --strategy fsdp, {SHARDED_PROCS} processes ...")
    sharded_full = run_fresh_sharded("keep", None, shape, SHARDED_PROCS)
    sharded = [run_fresh_sharded(mode, rho, shape, SHARDED_PROCS) for rho in shape.rhos for mode in shape.modes]
    memory_s = time.perf_counter() - started
    acc_runs, acc_lr = accuracy_runs(quick, log)

    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "memory.png"
    _plot(full, runs, shape, png)
    (RESULTS / "memory.json").write_text(json.dumps(
        {"quick": quick, "shape": asdict(shape), "full": full, "runs": runs, "steady": steady,
         "sharded": {"procs": SHARDED_PROCS, "full": sharded_full, "runs": sharded},
         "accuracy_lr": acc_lr, "accuracy": [{k: v for k, v in r.items() if k != "epochs"} |
                                              {"selected_per_epoch": [e.get("selected") for e in r["epochs"]]}
                                              for r in acc_runs]}, indent=1) + "\n")

    plan = AccuracyPlan.for_mode(quick)
    lines = [
        "## 10. Memory: peak training memory per frozen-state mode and ρ",
        "",
        f"Decoder: OPT from `tiny_model` ({shape.layers} layers × {shape.hidden} hidden, {shape.heads} heads, vocab "
        f"{len_vocab()} of the local tokenizer, {full['params'] / 1e6:.1f} M parameters = "
        f"{full['param_bytes'] / 2**20:.0f} MiB in fp32), batch {shape.batch_size} × {shape.seq_len} tokens of "
        f"embedded-task text, fp32 on the CPU, AdamW. Each configuration runs in a fresh process: 2 epochs of "
        f"{shape.steps_per_epoch} optimizer step{'s' if shape.steps_per_epoch != 1 else ''} under the ρ schedule "
        "[1.0, ρ] (every tensor gets AdamW moments "
        "in the first epoch; the second trains the selection at ρ), importance on 1 batch. *Training peak*: the "
        "process's peak resident set (`VmHWM`), reset by `/proc/self/clear_refs` right after the second epoch's "
        "selection and read at its end (before validation), minus the resident set once the trainer was built "
        "(model built, profiled and placed; no optimizer state yet). glibc's `MALLOC_MMAP_THRESHOLD_` is fixed at "
        f"{MMAP_THRESHOLD_BYTES // 1024} KiB so freed tensors leave the resident set. *Held at epoch start*: the "
        "same from the epoch start to the importance pass (what the epoch inherits from the previous one); "
        "*importance pass*: the same over the pass alone (reset as it starts, after the moments of tensors the ρ "
        "cannot reach are dropped); *epoch peak*: the largest of the three. *AdamW state*: bytes of optimizer-"
        "state tensors at the epoch end. `offload` is not run here: on the CPU it keeps the moments where they "
        "are (CPU memory), so its rows would repeat `keep`'s; its saving is device memory, which `make gpu-check` "
        "measures on CUDA. ρ = 1 selects every tensor, so it is the full fine-tuning row (the star in the plot).",
        "",
        *memory_table_lines(full, runs),
        "",
        steady_line(full, steady),
        "",
        *sharded_table_lines(sharded_full, sharded, SHARDED_PROCS),
        "",
        "![peak memory vs rho per frozen-state mode](bench/results/memory.png)",
        "",
        "### `drop` vs `keep`: accuracy at equal ρ",
        "",
        f"The accuracy section's task and pre-trained tiny OPT (section 4), lr {acc_lr:g} (GreenTrainer ρ = 0.5's), "
        f"{', '.join(map(str, plan.seeds))} as seeds, importance Δw·∂L/∂w; the `keep` rows at constant ρ = 0.5 are "
        "section 4's GreenTrainer ρ = 0.5 runs (the same run, constant ρ from the config). Both modes get the same "
        "ρ each epoch; "
        "*FLOPs / full* is what they spent. *Re-selected* is the share of the selections after the first epoch "
        "that picked a tensor trained earlier but frozen in the previous epoch: those restart from fresh "
        "moments under `drop` (and are scored by importance as first steps).",
        "",
        *table(["ρ per epoch", "frozen state", "dev loss", "test loss", "ROUGE-L", "FLOPs / full",
                "params trained (last epoch)", "re-selected"], _accuracy_rows(acc_runs)),
        "",
        machine_line(),
        "",
        f"_Section time: {time.perf_counter() - started:.0f} s (memory runs {memory_s:.0f} s)._",
    ]
    write_section("memory", lines)
    return lines


def len_vocab() -> int:
    from gt_core.data.tokenizer import build_tokenizer

    return len(build_tokenizer())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        spec = json.loads(sys.argv[2])
        shape = MemoryShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["shape"].items()})
        print(json.dumps(measure_one(spec["mode"], spec["rho"], shape, spec.get("steady", False))), flush=True)
    else:
        run_section(main)
