"""CodeCarbon's CPU and RAM power estimates, without importing the ``codecarbon`` package.

Importing any part of CodeCarbon runs its package ``__init__``, which loads its emissions
tracker and with it pandas: about 55 MiB of a daemon that needs none of it. The estimates
themselves are small: a table of CPU TDPs (CodeCarbon's bundled ``cpu_power.csv``, read here
with the csv module), the rules CodeCarbon uses to match this machine's CPU model name against
it, its load model (10 % of TDP when idle, rising with the cube of the machine's CPU load to
the TDP) and its RAM model (a power per estimated memory module). They are re-stated here so
the daemon's numbers equal CodeCarbon's (tests/carbonsched/power/test_power_cpu.py compares the two for a set
of CPU names, loads and memory sizes). Unlike CodeCarbon, nothing here looks at SLURM: the
daemon meters the whole machine.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
import math
import platform
import re
import subprocess
import time
from pathlib import Path

CPU_TABLE = "data/hardware/cpu_power.csv"
DEFAULT_TDP_PER_THREAD_W = 4.0  # CodeCarbon's guess for a CPU model it does not know
GENERIC_TDP_W = 85.0  # CodeCarbon's TDP when the CPU model cannot be read at all
IDLE_SHARE_OF_TDP = 0.1
LOAD_SHARE_OF_TDP = 0.9  # reached at 100 % load, with the cube of the load
BYTES_PER_GIB = 1024**3
RAM_MODULE_POWER_X86_W = 5.0
RAM_MODULE_POWER_ARM_W = 1.5
RAM_MIN_POWER_ARM_W = 3.0
_CLOCK_SUFFIX = re.compile(r" @\s*\d+\.\d+GHz")


class CodeCarbonMissing(RuntimeError):
    """CodeCarbon (whose data files the estimates use) is not installed."""


def codecarbon_dir() -> Path:
    """Where the codecarbon package lives, found without running its ``__init__``."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise CodeCarbonMissing("codecarbon is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def codecarbon_version() -> str:
    return importlib.metadata.version("codecarbon")


# -- CPU TDP table -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_tdp_table() -> dict[str, str]:
    """CPU model name -> TDP (W) as the table writes it, in the table's order; a name listed
    twice keeps its first TDP. Read as text: a few rows are malformed ("27.29.5")."""
    table: dict[str, str] = {}
    with (codecarbon_dir() / CPU_TABLE).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["Name"], row["TDP"])
    return table


def table_tdp_w(name: str) -> float:
    """The table's TDP (W) for ``name``; ValueError for a malformed entry, as in CodeCarbon."""
    return float(cpu_tdp_table()[name])


def _without_marketing(model: str) -> str:
    """'Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz' -> 'Intel Xeon Gold 6230'."""
    model = model.replace("(R)", "")
    at = model.find(" CPU @ ")
    if at > 0:
        model = model[:at]
    model = model.replace(" CPU", "")
    return _CLOCK_SUFFIX.sub("", model)


def _first_equal_ignoring_case(model: str, names: list[str]) -> str | None:
    wanted = model.lower()
    return next((name for name in names if name.lower() == wanted), None)


def match_cpu_model(model: str, names: list[str] | None = None) -> str | None:
    """The table's name for ``model`` by CodeCarbon's rules: the same name (ignoring case), as
    read or without "(R)", "CPU" and the clock; else the one name whose words contain, or are
    contained in, the model's (several such names: no match)."""
    from rapidfuzz import fuzz, process, utils

    names = list(cpu_tdp_table()) if names is None else names
    exact = _first_equal_ignoring_case(model, names)
    if exact is not None:
        return exact
    short = _without_marketing(model)
    exact = _first_equal_ignoring_case(short, names)
    if exact is not None:
        return exact
    subset_matches = process.extract(
        short, names, processor=utils.default_process, scorer=fuzz.token_set_ratio, score_cutoff=100, limit=2
    )
    return subset_matches[0][0] if len(subset_matches) == 1 else None


def cpu_model_name() -> str | None:
    """The CPU's brand string: the kernel's (``model name`` in /proc/cpuinfo, the same CPUID
    string), else as py-cpuinfo reads it (slow: it runs a subprocess, most of a daemon's start-up)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    import cpuinfo

    info = cpuinfo.get_cpu_info()
    return info.get("brand_raw", "") if info else None


def socket_count() -> int:
    """Physical CPU packages, from lscpu (1 when it cannot tell)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 1
    for line in output.splitlines():
        if "Socket(s):" in line:
            try:
                return int(line.split(":", 1)[1].strip())
            except ValueError:
                return 1
    return 1


def thread_count() -> int:
    import psutil

    return psutil.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_assumptions() -> dict:
    """This machine's CPU TDP as CodeCarbon would estimate it, and how (cached: it runs
    cpuinfo and lscpu)."""
    model = cpu_model_name()
    sockets, threads = socket_count(), thread_count()
    matched = match_cpu_model(model) if model else None
    if not model:
        tdp_w, basis = GENERIC_TDP_W, f"CPU model unknown to CodeCarbon: generic {GENERIC_TDP_W:g} W"
    elif matched is None:
        tdp_w = threads * DEFAULT_TDP_PER_THREAD_W * sockets
        basis = (
            f"CPU model not in CodeCarbon's table: {DEFAULT_TDP_PER_THREAD_W:g} W per thread "
            f"x {threads} threads x {sockets} socket(s)"
        )
    else:
        table_w = table_tdp_w(matched)
        tdp_w, basis = table_w * sockets, f"CodeCarbon CPU table: {table_w} W x {sockets} socket(s)"
    return {
        "estimator": f"codecarbon {codecarbon_version()}, cpu_load mode",
        "cpu_model": model or "Unknown",
        "tdp_w": float(tdp_w),
        "tdp_basis": basis,
        "power_model": "machine-wide, follows total CPU load: 10% of TDP when idle up to TDP at full load",
    }


# -- CPU load model ----------------------------------------------------------------------------


def load_power_w(tdp_w: float, load_percent: float) -> float:
    """Machine CPU power (W) at ``load_percent`` (0-100) of total CPU time busy."""
    return tdp_w * (IDLE_SHARE_OF_TDP + LOAD_SHARE_OF_TDP * ((load_percent / 100.0) ** 3))


def busy_percent(before: tuple, after: tuple) -> float:
    """Share (0-100) of CPU time that was neither idle nor waiting for I/O between two
    ``psutil.cpu_times()`` readings (guest time is already inside user and nice)."""

    def total(times: tuple) -> float:
        return sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)

    def busy(times: tuple) -> float:
        return total(times) - times.idle - getattr(times, "iowait", 0)

    elapsed = total(after) - total(before)
    if elapsed <= 0:
        return 0.0
    return min(max((busy(after) - busy(before)) / elapsed * 100.0, 0.0), 100.0)


class CpuLoadPowerModel:
    """Mean CPU power (W) over a window: each :meth:`sample` prices the load since the previous
    one; :meth:`mean_power_w` weighs them by the time each covers and opens the next window."""

    def __init__(self, tdp_w: float):
        self.tdp_w = tdp_w
        self._last_times: tuple | None = None
        self._last_sample_s: float | None = None
        self._samples: list[tuple[float, float]] = []  # (W, seconds covered)

    def start(self) -> None:
        import psutil

        self._samples = []
        self._last_sample_s = time.perf_counter()
        self._last_times = psutil.cpu_times()

    def sample(self) -> None:
        self._samples.append(self._power_since_last())

    def mean_power_w(self) -> float:
        samples, self._samples = self._samples + [self._power_since_last()], []
        covered_s = sum(seconds for _, seconds in samples)
        if covered_s > 0:
            return sum(power_w * seconds for power_w, seconds in samples) / covered_s
        return sum(power_w for power_w, _ in samples) / len(samples)

    def _power_since_last(self) -> tuple[float, float]:
        import psutil

        if self._last_times is None:  # never started: a short first look, as CodeCarbon takes
            self._last_times = psutil.cpu_times()
            time.sleep(0.05)
        now_times, now_s = psutil.cpu_times(), time.perf_counter()
        load = busy_percent(self._last_times, now_times)
        seconds = now_s - self._last_sample_s if self._last_sample_s is not None else 0.0
        self._last_times, self._last_sample_s = now_times, now_s
        return load_power_w(self.tdp_w, load), seconds


# -- RAM model ---------------------------------------------------------------------------------


def is_arm() -> bool:
    machine = platform.machine().lower()
    return "arm" in machine or "aarch" in machine


def memory_module_count(memory_gb: float) -> int:
    """How many memory modules (DIMMs) ``memory_gb`` of RAM is likely made of."""
    if memory_gb <= 2:
        return 1
    if memory_gb <= 16:
        return 2
    if memory_gb <= 64:
        return 4
    if memory_gb <= 128:
        return 8
    # Servers: at least 8 modules of the largest usual size that gives 8 or more, at most 32.
    for module_gb in (128, 64, 32, 16, 8, 4):
        if module_gb <= memory_gb / 8:
            return min(math.ceil(memory_gb / module_gb), 32)
    return 8


def ram_power_w(memory_gb: float, arm: bool) -> float:
    """RAM power (W): a power per module, each module past the 4th, 8th and 16th counting 90 %,
    80 % and 70 %; at least two x86 modules' worth (3 W on ARM)."""
    per_module_w = RAM_MODULE_POWER_ARM_W if arm else RAM_MODULE_POWER_X86_W
    floor_w = RAM_MIN_POWER_ARM_W if arm else 2 * per_module_w
    modules = memory_module_count(memory_gb)
    power_w = per_module_w * min(modules, 4)
    if modules > 4:
        power_w += per_module_w * 0.9 * (min(modules, 8) - 4)
    if modules > 8:
        power_w += per_module_w * 0.8 * (min(modules, 16) - 8)
    if modules > 16:
        power_w += per_module_w * 0.7 * (modules - 16)
    return max(floor_w, power_w)


def ram_assumptions() -> tuple[float, dict]:
    """This machine's RAM power (W) as CodeCarbon would estimate it, and how."""
    import psutil

    memory_gb = psutil.virtual_memory().total / BYTES_PER_GIB
    power_w = ram_power_w(memory_gb, is_arm())
    return power_w, {
        "estimator": f"codecarbon {codecarbon_version()} RAM power model",
        "memory_gb": round(memory_gb, 1),
        "power_w": round(power_w, 2),
        "power_model": "constant per machine, from total memory size (estimated DIMM count)",
    }
