"""Run every benchmark and write BENCHMARKS.md plus bench/results/*.md and *.png.

    .venv/bin/python -m bench.run_all            # everything (what `make bench` runs)
    .venv/bin/python -m bench.run_all --quick    # fewer repeats/seeds/epochs: a smoke test
    .venv/bin/python -m bench.run_all --only savings --only daemon

Each section writes bench/results/<name>.md; BENCHMARKS.md is then assembled from the section
files present, so ``--only`` refreshes one section and keeps the others' last results. Every number
in those files is written by this code.

Per section, bench/results/run_all_times.md records wall time, CPU time (user + sys of this process
and of the child processes it waited for: ``getrusage`` RUSAGE_SELF + RUSAGE_CHILDREN deltas) and
the 1-minute load average at its start. The benchmarks run one torch thread, so CPU seconds are the
load-independent measure of the time budget (the wall time on an idle 2-core machine is about the
same); a run whose CPU total exceeds the budget gets a warning line there and on stderr.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import sys
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.common import RESULTS, ROOT, cpu_with_children_s

# Section name → result file stem, in report order.
SECTIONS = {
    "flops": "flops_truth",
    "savings": "savings",
    "dp": "dp_speed",
    "accuracy": "accuracy",
    "ablation": "importance_ablation",
    "overhead": "overhead",
    "daemon": "daemon_latency",
    "startup": "daemon_startup",
    "large": "large_models",
    "scheduling": "scheduling",
    "memory": "memory",
    "frontier": "frontier",
    "frontier_why": "frontier_why",
    "frontier_t5": "frontier_t5",
}
RUN_LOG = RESULTS / "run_all_times.md"
# Budget of a complete run in CPU seconds (issue 17: ≤ 30 min full, ≤ 3 min --quick on 2 cores).
BUDGET_CPU_S = {"full": 30 * 60, "quick": 3 * 60}


@dataclass(frozen=True)
class SectionTime:
    """What one section cost: wall s, CPU s (user + sys, this process and its waited-for children),
    and the 1-minute load average when it started."""

    wall_s: float
    cpu_s: float
    load_1min: float | None


def cpu_seconds() -> float:
    """User + sys CPU s so far of this process and of the children it has waited for."""
    return cpu_with_children_s()


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def timed_section(run) -> SectionTime:
    """Run ``run()`` and return its wall and CPU time."""
    load = load_average()
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    run()
    return SectionTime(time.perf_counter() - wall0, cpu_seconds() - cpu0, load)


def budget_warning(cpu_total_s: float, quick: bool) -> str | None:
    """The warning line when ``cpu_total_s`` exceeds the run's CPU budget, else None."""
    mode = "quick" if quick else "full"
    budget = BUDGET_CPU_S[mode]
    if cpu_total_s <= budget:
        return None
    return (f"WARNING: {cpu_total_s / 60:.1f} CPU-min exceeds the {mode}-mode budget of "
            f"{budget / 60:.0f} CPU-min ({cpu_total_s - budget:.0f} CPU-s over).")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _section_name(name: str) -> str:
    """``--only frontier-t5`` names the same section as ``--only frontier_t5``."""
    return name.replace("-", "_")


def _dp(quick: bool) -> None:
    """The selector DP benchmark (bench/bench_selector.py); its report goes to stdout, muted here."""
    from bench import bench_selector

    with redirect_stdout(io.StringIO()):
        bench_selector.main(quick)


def run_section(name: str, quick: bool) -> None:
    if name == "flops":
        from bench import flops_truth

        flops_truth.main(quick)
    elif name == "savings":
        from bench import savings

        savings.main(quick)
    elif name == "dp":
        _dp(quick)
    elif name == "accuracy":
        from bench import accuracy

        accuracy.main(quick, log=_log)
    elif name == "ablation":
        from bench import importance_ablation

        importance_ablation.main(quick, log=_log)
    elif name == "overhead":
        from bench import overhead

        overhead.main(quick, log=_log)
    elif name == "daemon":
        from bench import daemon_latency

        daemon_latency.main(quick)
    elif name == "startup":
        from bench import daemon_startup

        daemon_startup.main(quick)
    elif name == "large":
        from bench import large_models

        large_models.main(quick, log=_log)
    elif name == "scheduling":
        from bench import scheduling

        scheduling.main(quick)
    elif name == "memory":
        from bench import memory

        memory.main(quick, log=_log)
    elif name == "frontier":
        from bench import frontier

        frontier.main(quick, log=_log)
    elif name == "frontier_why":
        from bench import frontier_why

        frontier_why.main(quick, log=_log)
    elif name == "frontier_t5":
        from bench import frontier_t5

        frontier_t5.main(quick, log=_log)
    else:  # pragma: no cover - argparse restricts the names
        raise ValueError(name)


def _dp_section_text() -> list[str]:
    """bench_selector's report, with its headings moved one level down under section 3."""
    text = (RESULTS / "dp_speed.md").read_text().strip().splitlines()
    out = ["## 3. Tensor-selection DP: speed and quality (from `bench/bench_selector.py`)"]
    for line in text[1:] if text and text[0].startswith("# ") else text:
        out.append("#" + line if line.startswith("## ") else line)
    return out


def assemble() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.run_all`); do not edit by hand. Every number "
        "and plot here is written by the code in `bench/`; per-section copies are in `bench/results/`.",
        "",
    ]
    timing = RUN_LOG.read_text().strip().splitlines() if RUN_LOG.exists() else []
    lines += timing + [""]
    for name, stem in SECTIONS.items():
        path = RESULTS / f"{stem}.md"
        if not path.exists():
            lines += [f"## {name}: not run yet (`python -m bench.run_all --only {name}`)", ""]
            continue
        body = _dp_section_text() if name == "dp" else path.read_text().strip().splitlines()
        lines += body + [""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines).rstrip() + "\n")


def _fmt_load(load: float | None) -> str:
    return "?" if load is None else f"{load:.2f}"


def timing_lines(times: dict[str, SectionTime], quick: bool, only: bool, stamp: str) -> list[str]:
    """The run's record for run_all_times.md: a summary line, a per-section table, and the budget
    warning when the CPU total exceeds it."""
    mode = "quick" if quick else "full"
    what = "selected sections" if only else "all sections"
    wall = sum(t.wall_s for t in times.values())
    cpu = sum(t.cpu_s for t in times.values())
    budget = BUDGET_CPU_S[mode]
    lines = [
        f"Last run ({what}, {mode} mode, {stamp}): {cpu / 60:.1f} CPU-min, {wall / 60:.1f} min wall in total "
        f"(budget of a complete {mode} run: {budget / 60:.0f} CPU-min). CPU time is user + sys of the bench "
        "process and its child processes; the benchmarks run one torch thread, so CPU seconds do not depend on "
        "how loaded the shared machine is, while wall seconds do.",
        "",
        "| section | CPU s | wall s | load average at start |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {t.cpu_s:.0f} | {t.wall_s:.0f} | {_fmt_load(t.load_1min)} |" for name, t in times.items()),
    ]
    warning = budget_warning(cpu, quick)
    return lines + (["", warning] if warning else [])


def _write_times(lines: list[str], only: bool) -> None:
    """Write this run's record; after an ``--only`` run, keep the last complete run's record below it."""
    previous = RUN_LOG.read_text().strip() if RUN_LOG.exists() else ""
    keep = ""
    if only:
        # The record of the last complete run starts "Last run (all sections" right after it,
        # "Last complete run (all sections" once a partial run has been written above it.
        match = re.search(r"^Last (complete )?run \(all sections.*?(?=\n\nLast run|\Z)", previous, flags=re.M | re.S)
        if match:
            keep = re.sub(r"^Last run", "Last complete run", match.group(0))
    RUN_LOG.parent.mkdir(parents=True, exist_ok=True)
    RUN_LOG.write_text("\n\n".join(x for x in ("\n".join(lines), keep) if x) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, one seed, short training (smoke test)")
    ap.add_argument("--only", action="append", choices=list(SECTIONS), metavar="NAME", type=_section_name,
                    help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("carbonsched").setLevel(logging.WARNING)

    names = [n for n in SECTIONS if not args.only or n in args.only]
    times: dict[str, SectionTime] = {}
    for name in names:
        _log(f"[bench] {name} ...")
        times[name] = timed_section(lambda: run_section(name, args.quick))
        _log(f"[bench] {name} done: {times[name].cpu_s:.0f} CPU-s, {times[name].wall_s:.0f} s wall")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = timing_lines(times, args.quick, bool(args.only), stamp)
    _write_times(lines, bool(args.only))
    assemble()
    cpu = sum(t.cpu_s for t in times.values())
    warning = budget_warning(cpu, args.quick)
    if warning:
        _log(f"[bench] {warning}")
    _log(f"[bench] all done: {cpu / 60:.1f} CPU-min, {sum(t.wall_s for t in times.values()) / 60:.1f} min wall; "
         f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
