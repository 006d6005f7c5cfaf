"""CPU and RAM energy: RAPL counters where readable, else CodeCarbon's TDP / RAM power models.

RAPL is read straight from the powercap sysfs tree (``intel-rapl:N`` package domains and their
``dram`` sub-domains; AMD Zen CPUs appear under the same name). Since Linux 5.10 ``energy_uj`` is
readable by root only, so on most machines the estimate is what runs; :meth:`CpuRamMeter.status`
spells out the assumptions behind it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from carbonsched.power.nvml import Clock
from carbonsched.types import EnergyReading, utcnow

log = logging.getLogger(__name__)

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_DIR = re.compile(r"^intel-rapl:\d+$")
_SUBDOMAIN_DIR = re.compile(r"^intel-rapl:\d+:\d+$")


# -- RAPL ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    name: str  # "package-0", "dram"
    path: Path  # the domain's directory
    max_energy_range_uJ: int | None  # counter wraps to 0 after this; None if unknown

    @property
    def energy_file(self) -> Path:
        return self.path / "energy_uj"

    def read_uJ(self) -> int:
        return int(self.energy_file.read_text().strip())


@dataclass(frozen=True)
class RaplScan:
    """What the powercap tree offers. ``problem`` says why CPU energy cannot come from RAPL."""

    packages: tuple[RaplDomain, ...]
    dram: tuple[RaplDomain, ...]
    problem: str | None

    @property
    def permission_denied(self) -> bool:
        return self.problem is not None and "permission" in self.problem


def _read_optional_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _unreadable(domains: list[RaplDomain]) -> str | None:
    for domain in domains:
        try:
            domain.read_uJ()
        except PermissionError:
            return f"RAPL files not readable (permission): {domain.energy_file}"
        except (OSError, ValueError) as exc:
            return f"RAPL file unreadable: {domain.energy_file}: {exc}"
    return None


def scan_rapl(root: Path = DEFAULT_POWERCAP_ROOT) -> RaplScan:
    """Find package and DRAM RAPL domains under ``root`` and check that their counters read."""
    root = Path(root)
    tops = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_DIR.match(p.name))
    if not tops:
        return RaplScan((), (), f"no RAPL interface ({root}/intel-rapl:* not present)")
    packages: list[RaplDomain] = []
    dram: list[RaplDomain] = []
    for top in tops:
        name = (top / "name").read_text().strip() if (top / "name").exists() else top.name
        # "psys" (platform) domains also cover the packages: adding them would double count.
        if name.startswith("package"):
            packages.append(RaplDomain(name, top, _read_optional_int(top / "max_energy_range_uj")))
        for sub in sorted(p for p in top.glob("intel-rapl:*") if _SUBDOMAIN_DIR.match(p.name)):
            if (sub / "name").exists() and (sub / "name").read_text().strip() == "dram":
                dram.append(RaplDomain("dram", sub, _read_optional_int(sub / "max_energy_range_uj")))
    problem = _unreadable(packages) if packages else f"no RAPL package domain under {root}"
    readable_dram = tuple(dram) if dram and _unreadable(dram) is None else ()
    return RaplScan(tuple(packages), readable_dram, problem)


class RaplCounter:
    """Sums energy over several RAPL domains across counter wraparounds.

    A counter that wraps more than once between two reads loses energy, so read at least every
    few minutes (a package counter wraps after tens of minutes at full load).
    """

    def __init__(self, domains: tuple[RaplDomain, ...]):
        self._domains = domains
        self._last_uJ: dict[Path, int] = {}
        self.pending_uJ = 0

    def reset(self) -> None:
        self._last_uJ = {d.energy_file: d.read_uJ() for d in self._domains}
        self.pending_uJ = 0

    def update(self) -> None:
        for domain in self._domains:
            current = domain.read_uJ()
            last = self._last_uJ.get(domain.energy_file)
            self._last_uJ[domain.energy_file] = current
            if last is None:
                continue
            if current >= last:
                self.pending_uJ += current - last
            elif domain.max_energy_range_uJ:
                self.pending_uJ += current + domain.max_energy_range_uJ - last
            else:
                log.warning("%s went backwards and its range is unknown; window undercounted", domain.energy_file)

    def take_uJ(self) -> int:
        self.update()
        energy_uJ, self.pending_uJ = self.pending_uJ, 0
        return energy_uJ


# -- CodeCarbon estimates --------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_codecarbon() -> Iterator[None]:
    """CodeCarbon warns about unknown CPUs on every lookup; status() reports that instead."""
    cc_logger = logging.getLogger("codecarbon")
    previous = cc_logger.level
    cc_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        cc_logger.setLevel(previous)


@functools.lru_cache(maxsize=1)
def codecarbon_cpu_assumptions() -> dict:
    """CodeCarbon's TDP lookup for this machine's CPU (slow: it runs cpuinfo, so cached)."""
    import codecarbon
    from codecarbon.core.cpu import DEFAULT_POWER_PER_CORE, TDP
    from codecarbon.core.util import count_cpus, count_physical_cpus
    from codecarbon.external.hardware import POWER_CONSTANT

    with _quiet_codecarbon():
        tdp = TDP()
        sockets = count_physical_cpus()
        threads = count_cpus()
    if tdp.tdp is None:
        tdp_w, basis = float(POWER_CONSTANT), f"CPU model unknown to CodeCarbon: generic {POWER_CONSTANT} W"
    elif tdp.tdp == threads * DEFAULT_POWER_PER_CORE:
        tdp_w = float(tdp.tdp) * sockets
        basis = (
            f"CPU model not in CodeCarbon's table: {DEFAULT_POWER_PER_CORE} W per thread "
            f"x {threads} threads x {sockets} socket(s)"
        )
    else:
        tdp_w, basis = float(tdp.tdp) * sockets, f"CodeCarbon CPU table: {tdp.tdp} W x {sockets} socket(s)"
    return {
        "estimator": f"codecarbon {codecarbon.__version__}, cpu_load mode",
        "cpu_model": tdp.model,
        "tdp_w": tdp_w,
        "tdp_basis": basis,
        "power_model": "machine-wide, follows total CPU load: 10% of TDP when idle up to TDP at full load",
    }


def _codecarbon_cpu(tdp_w: float, cpu_model: str) -> Any:
    from codecarbon.external.hardware import CPU, MODE_CPU_LOAD

    with _quiet_codecarbon():
        return CPU.from_utils(".", MODE_CPU_LOAD, cpu_model, tdp_w, tracking_mode="machine")


def _codecarbon_ram() -> tuple[float, dict]:
    import codecarbon
    from codecarbon.external.ram import RAM

    with _quiet_codecarbon():
        ram = RAM(tracking_mode="machine")
        power_W = ram.total_power().W
        memory_GB = ram.machine_memory_GB
    return power_W, {
        "estimator": f"codecarbon {codecarbon.__version__} RAM power model",
        "memory_gb": round(memory_GB, 1),
        "power_w": round(power_W, 2),
        "power_model": "constant per machine, from total memory size (estimated DIMM count)",
    }


# -- the meter -------------------------------------------------------------------------------------


class CpuRamMeter:
    """Node CPU and RAM energy per window between two :meth:`poll` calls.

    CPU: ``rapl`` readings when the package counters read, else ``tdp_estimate`` (CodeCarbon's
    TDP lookup and load model). RAM: ``rapl`` from DRAM domains when readable, else
    ``codecarbon`` (CodeCarbon's RAM power model times wall time).
    """

    def __init__(self, clock: Clock | None = None, *, powercap_root: Path | str = DEFAULT_POWERCAP_ROOT):
        self._clock = clock or utcnow
        self._lock = threading.Lock()
        self.rapl = scan_rapl(Path(powercap_root))
        self._window_start: datetime | None = None
        self._cpu_status: dict
        self._ram_status: dict
        self._cpu_rapl = RaplCounter(self.rapl.packages) if self.rapl.problem is None else None
        self._ram_rapl = RaplCounter(self.rapl.dram) if self.rapl.dram else None
        self._cc_cpu: Any = None
        self._ram_W: float | None = None

        if self._cpu_rapl is not None:
            self._cpu_status = {"available": True, "source": "rapl", "domains": [d.name for d in self.rapl.packages]}
        else:
            self._cpu_status = {"available": True, "source": "tdp_estimate", "rapl": self.rapl.problem}
            try:
                assumptions = codecarbon_cpu_assumptions()
                self._cc_cpu = _codecarbon_cpu(assumptions["tdp_w"], assumptions["cpu_model"])
                self._cpu_status["assumptions"] = assumptions
            except Exception as exc:  # CodeCarbon missing or failing on odd hardware
                log.warning("CPU energy estimate unavailable: %s", exc)
                self._cpu_status = {
                    "available": False,
                    "reason": f"{self.rapl.problem}; CodeCarbon estimate failed: {exc}",
                }

        if self._ram_rapl is not None:
            self._ram_status = {"available": True, "source": "rapl", "domains": [str(d.path.name) for d in self.rapl.dram]}
        else:
            try:
                self._ram_W, ram_assumptions = _codecarbon_ram()
                self._ram_status = {"available": True, "source": "codecarbon", "assumptions": ram_assumptions}
            except Exception as exc:
                log.warning("RAM energy estimate unavailable: %s", exc)
                self._ram_status = {"available": False, "reason": f"CodeCarbon RAM model failed: {exc}"}

    def status(self) -> dict:
        return {"cpu": dict(self._cpu_status), "ram": dict(self._ram_status)}

    def sample(self, now: datetime | None = None) -> None:
        """Read RAPL counters (catches wraparounds) and take a CPU load sample for the estimate."""
        with self._lock:
            if self._window_start is None:
                return
            self._read_counters(lambda counter: counter.update())
            if self._cc_cpu is not None:
                self._cc_cpu.monitor_power()

    def poll(self, now: datetime | None = None) -> list[EnergyReading]:
        """Close the window at ``now`` and return CPU and RAM energy; the first call returns []."""
        with self._lock:
            now = now or self._clock()
            start, self._window_start = self._window_start, now
            if start is None or now <= start:
                self._open_counters()
                return []
            duration_s = (now - start).total_seconds()
            readings = []
            if self._cpu_rapl is not None:
                energy_J = self._take_J(self._cpu_rapl)
                if energy_J is not None:
                    readings.append(self._reading("cpu", energy_J, start, now, "rapl"))
            elif self._cc_cpu is not None:
                with _quiet_codecarbon():
                    power_W = self._cc_cpu.total_power().W
                readings.append(self._reading("cpu", power_W * duration_s, start, now, "tdp_estimate"))
            if self._ram_rapl is not None:
                energy_J = self._take_J(self._ram_rapl)
                if energy_J is not None:
                    readings.append(self._reading("ram", energy_J, start, now, "rapl"))
            elif self._ram_W is not None:
                readings.append(self._reading("ram", self._ram_W * duration_s, start, now, "codecarbon"))
            return readings

    def close(self) -> None:
        """Nothing to release; present for symmetry with the GPU meter."""

    @staticmethod
    def _reading(device: str, energy_J: float, start: datetime, end: datetime, source: Any) -> EnergyReading:
        return EnergyReading(
            device=device,
            energy_j=energy_J,
            start=start,
            end=end,
            source=source,
            power_w=energy_J / (end - start).total_seconds(),
        )

    def _open_counters(self) -> None:
        self._read_counters(lambda counter: counter.reset())
        if self._cc_cpu is not None:
            with _quiet_codecarbon():
                self._cc_cpu.start()

    def _read_counters(self, action: Any) -> None:
        for counter in (self._cpu_rapl, self._ram_rapl):
            if counter is None:
                continue
            try:
                action(counter)
            except (OSError, ValueError) as exc:
                log.warning("RAPL read failed: %s", exc)

    @staticmethod
    def _take_J(counter: RaplCounter) -> float | None:
        try:
            return counter.take_uJ() / 1e6
        except (OSError, ValueError) as exc:
            log.warning("RAPL read failed: %s", exc)
            return None
