"""Shared helpers for the benchmarks: output paths, markdown tables, statistics, FLOP counting."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far: on a shared machine the wall time
    also counts other people's work, this does not."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_with_children_s() -> float:
    """User + sys CPU s so far of this process (:func:`cpu_s`) and of the children it has waited for."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cpu_s() + children.ru_utime + children.ru_stime


def single_thread() -> None:
    """One intra-op thread: the machine is shared, and ratios measured side by side stay stable."""
    import torch

    torch.set_num_threads(1)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` is one char per column ('l' or 'r'), right by default."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def fmt_pm(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    m, s = mean_std([v * scale for v in values])
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_line() -> str:
    import torch

    load = ""
    try:
        load = " Load average at start of this section: " + Path("/proc/loadavg").read_text().split()[0] + "."
    except OSError:
        pass
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}, torch {torch.__version__}, one torch thread.{load}"
    )


def set_trainable_mask(model, names: Sequence[str], mask: np.ndarray) -> None:
    """Exactly the masked profile tensors trainable; everything else (incl. unprofiled) frozen."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for name, on in zip(names, mask):
        params[name].requires_grad_(bool(on))


def counted_step_flops(model, batch: dict) -> int:
    """Matmul FLOPs torch's FlopCounterMode sees in one real forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(**batch)
        if any(p.requires_grad for p in model.parameters()):
            out.loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def write_section(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_section(main: Callable[[bool], list[str]]) -> None:
    """``python -m bench.<section> [--quick]``: run one section and print its text."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, one seed, short training (smoke test)")
    print("\n".join(main(ap.parse_args().quick)))
