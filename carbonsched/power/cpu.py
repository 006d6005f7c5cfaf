"""CPU and RAM energy: RAPL counters where readable, else CodeCarbon's TDP / RAM power models
(as :mod:`carbonsched.power.codecarbon_models` states them, without loading CodeCarbon itself).

RAPL is read straight from the powercap sysfs tree (``intel-rapl:N`` package domains and their
``dram`` sub-domains; AMD Zen CPUs appear under the same name). Since Linux 5.10 ``energy_uj`` is
readable by root only, so on most machines the estimate is what runs; :meth:`CpuRamMeter.status`
spells out the assumptions behind it.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from carbonsched.power.codecarbon_models import CpuLoadPowerModel, cpu_assumptions, ram_assumptions
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
        self._cpu_model: CpuLoadPowerModel | None = None
        self._ram_W: float | None = None

        if self._cpu_rapl is not None:
            self._cpu_status = {"available": True, "source": "rapl", "domains": [d.name for d in self.rapl.packages]}
        else:
            self._cpu_status = {"available": True, "source": "tdp_estimate", "rapl": self.rapl.problem}
            try:
                assumptions = cpu_assumptions()
                self._cpu_model = CpuLoadPowerModel(assumptions["tdp_w"])
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
                self._ram_W, ram_basis = ram_assumptions()
                self._ram_status = {"available": True, "source": "codecarbon", "assumptions": ram_basis}
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
            if self._cpu_model is not None:
                self._cpu_model.sample()

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
            elif self._cpu_model is not None:
                power_W = self._cpu_model.mean_power_w()
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
        if self._cpu_model is not None:
            self._cpu_model.start()

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
