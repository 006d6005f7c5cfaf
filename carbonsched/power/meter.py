"""One meter per daemon for the whole node: every GPU over NVML, plus CPU and RAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carbonsched.power.cpu import DEFAULT_POWERCAP_ROOT, CpuRamMeter
from carbonsched.power.nvml import Clock, GpuMeter
from carbonsched.types import EnergyReading, utcnow


class NodeEnergyMeter:
    """Energy of this node's devices, per window between two :meth:`poll` calls.

    Holds no lock file or other node-global state: several jobs on one node share one daemon and
    its meter, and the daemon splits readings between jobs (e.g. by :meth:`gpu_processes`).
    """

    def __init__(
        self,
        nvml_module: Any = None,
        cpu_ram: bool = True,
        clock: Clock | None = None,
        *,
        powercap_root: Path | str = DEFAULT_POWERCAP_ROOT,
    ):
        self._clock = clock or utcnow
        self.gpu = GpuMeter(nvml_module, clock=self._clock)
        self.cpu_ram = CpuRamMeter(self._clock, powercap_root=powercap_root) if cpu_ram else None

    def sample(self) -> None:
        """Between polls, as often as every second: GPU power samples, RAPL wrap tracking, CPU load."""
        now = self._clock()
        self.gpu.sample(now)
        if self.cpu_ram is not None:
            self.cpu_ram.sample(now)

    def poll(self) -> list[EnergyReading]:
        """Energy per device since the previous poll; the first poll opens the windows and returns []."""
        now = self._clock()
        readings = self.gpu.poll(now)
        if self.cpu_ram is not None:
            readings += self.cpu_ram.poll(now)
        return readings

    def gpu_power_w(self) -> float | None:
        return self.gpu.power_w()

    def gpu_processes(self) -> dict[int, list[int]]:
        return self.gpu.processes()

    def status(self) -> dict:
        disabled = {"available": False, "reason": "CPU/RAM metering disabled"}
        cpu_ram = self.cpu_ram.status() if self.cpu_ram is not None else {"cpu": disabled, "ram": disabled}
        return {"gpu": self.gpu.status(), **cpu_ram}

    def close(self) -> None:
        self.gpu.close()
        if self.cpu_ram is not None:
            self.cpu_ram.close()
