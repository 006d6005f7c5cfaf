"""GPU energy over NVML: the driver's energy counter where the GPU has one, else integrated power.

NVML is reached only through a module object with pynvml's function names, so tests inject a fake
at that boundary. Without pynvml or a driver the meter is *absent*: it says why and measures
nothing; it never invents a number.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from carbonsched.types import EnergyReading, EnergySource, utcnow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

NVML_INSTALL_HINT = "install the NVIDIA driver and the nvidia-ml-py package"


def text(value: Any) -> str:
    """pynvml returns some strings as bytes (ctypes char arrays), others as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def nvml_error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def is_not_supported(nvml: Any, exc: BaseException) -> bool:
    return getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)


def load_nvml(nvml_module: Any = None) -> tuple[Any | None, str | None]:
    """Import pynvml (unless a module is given) and call ``nvmlInit``.

    Returns ``(module, None)`` when NVML is usable, else ``(None, reason)``. NVML's init is
    reference counted, so every successful call must be paired with ``nvmlShutdown``.
    """
    if nvml_module is None:
        try:
            nvml_module = importlib.import_module("pynvml")
        except ImportError as exc:
            return None, f"pynvml not importable ({exc}); {NVML_INSTALL_HINT}"
    try:
        nvml_module.nvmlInit()
    except Exception as exc:  # NVMLError, or OSError from ctypes loading a broken library
        return None, f"NVML: {nvml_error_text(exc)}"
    return nvml_module, None


def bus_id_key(bus_id: str) -> tuple[int, ...] | str:
    """Sort key for a PCI bus id; NVML writes the domain with 8 digits, sysfs/CUDA with 4."""
    try:
        domain, bus, rest = bus_id.lower().split(":")
        device, function = rest.split(".")
        return (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))
    except ValueError:
        return bus_id.lower()


def gpu_name(index: int) -> str:
    """The daemon's name for the GPU with this NVML index (energy readings, job devices)."""
    return f"gpu:{index}"


@dataclass
class GpuDevice:
    """One NVML device and its open measurement window."""

    index: int
    handle: Any
    name: str
    uuid: str
    bus_id: str
    source: EnergySource
    reason: str | None = None
    window_start: datetime | None = None
    counter_mJ: int | None = None
    samples_W: list[tuple[datetime, float]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    @property
    def device(self) -> str:
        return gpu_name(self.index)

    def describe(self) -> dict:
        info = {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "bus_id": self.bus_id,
            "energy_source": self.source,
        }
        if self.reason:
            info["reason"] = self.reason
        return info


def integrate_trapezoid_J(samples_W: list[tuple[datetime, float]], start: datetime, end: datetime) -> float:
    """Energy in J from power samples over ``[start, end]``.

    The first sample's power is held back to ``start`` and the last one forward to ``end``, so a
    window whose edge reading failed is still covered and a nonzero power never yields 0 J.
    """
    points = sorted((t, w) for t, w in samples_W if start <= t <= end)
    if not points:
        return 0.0
    if points[0][0] > start:
        points.insert(0, (start, points[0][1]))
    if points[-1][0] < end:
        points.append((end, points[-1][1]))
    energy_J = 0.0
    for (t0, w0), (t1, w1) in zip(points, points[1:]):
        energy_J += (w0 + w1) / 2.0 * (t1 - t0).total_seconds()
    return energy_J


class GpuMeter:
    """Energy of every NVML-visible GPU, per window between two :meth:`poll` calls.

    Counter GPUs (Volta and newer) give ``nvml_counter`` readings from
    ``nvmlDeviceGetTotalEnergyConsumption``; older ones give ``nvml_power_integrated`` readings,
    the trapezoid integral of ``nvmlDeviceGetPowerUsage`` samples taken at each :meth:`sample`
    and :meth:`poll`. Call :meth:`sample` often (every second or so) on such GPUs. A GPU with
    neither is listed in :meth:`status` and yields no readings.
    """

    def __init__(self, nvml_module: Any = None, clock: Clock | None = None):
        self._clock = clock or utcnow
        self._lock = threading.Lock()
        self._devices: list[GpuDevice] = []
        self._started = False
        self._nvml, self.reason = load_nvml(nvml_module)
        if self._nvml is None:
            log.info("GPU energy not measured: %s", self.reason)
            return
        try:
            count = self._nvml.nvmlDeviceGetCount()
            self._devices = [self._probe(i) for i in range(count)]
        except self._nvml.NVMLError as exc:
            self.reason = f"NVML: device enumeration failed: {nvml_error_text(exc)}"
            self.close()
            return
        if not self._devices:
            self.reason = "NVML: no GPUs found"

    @property
    def available(self) -> bool:
        return self._nvml is not None and any(d.source != "absent" for d in self._devices)

    @property
    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def _probe(self, index: int) -> GpuDevice:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = text(nvml.nvmlDeviceGetName(handle))
        uuid = text(nvml.nvmlDeviceGetUUID(handle))
        bus_id = text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        source: EnergySource = "nvml_counter"
        reason = None
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except nvml.NVMLError as exc:
            source = "nvml_power_integrated"
            if is_not_supported(nvml, exc):
                reason = "no energy counter (needs Volta or newer); power is sampled and integrated"
            else:
                reason = f"energy counter unreadable ({nvml_error_text(exc)}); power is sampled and integrated"
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
            except nvml.NVMLError as power_exc:
                source = "absent"
                reason = (
                    f"neither energy counter nor power reading available "
                    f"({nvml_error_text(exc)}; {nvml_error_text(power_exc)})"
                )
        return GpuDevice(index=index, handle=handle, name=name, uuid=uuid, bus_id=bus_id, source=source, reason=reason)

    # -- raw reads; each returns None when NVML refuses ------------------------------------------

    def _read_counter_mJ(self, dev: GpuDevice) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(dev.handle))
        except self._nvml.NVMLError as exc:
            log.warning("%s: energy counter read failed: %s", dev.device, nvml_error_text(exc))
            return None

    def _read_power_W(self, dev: GpuDevice) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetPowerUsage(dev.handle) / 1000.0
        except self._nvml.NVMLError as exc:
            log.debug("%s: power read failed: %s", dev.device, nvml_error_text(exc))
            return None

    def _read_pids(self, dev: GpuDevice) -> list[int]:
        try:
            return [int(p.pid) for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(dev.handle)]
        except self._nvml.NVMLError as exc:
            log.debug("%s: process list unavailable: %s", dev.device, nvml_error_text(exc))
            return []

    # -- windows ---------------------------------------------------------------------------------

    def _open_window(self, dev: GpuDevice, now: datetime, counter_mJ: int | None, power_W: float | None) -> None:
        dev.window_start = now
        dev.counter_mJ = counter_mJ
        dev.samples_W = [(now, power_W)] if power_W is not None else []
        dev.pids = set(self._read_pids(dev))

    def sample(self, now: datetime | None = None) -> None:
        """Take a power sample on GPUs without a counter and note running processes on all."""
        if self._nvml is None:
            return
        with self._lock:
            if not self._started:
                return
            now = now or self._clock()
            for dev in self._devices:
                if dev.window_start is None:
                    continue
                if dev.source == "nvml_power_integrated":
                    power_W = self._read_power_W(dev)
                    if power_W is not None:
                        dev.samples_W.append((now, power_W))
                dev.pids.update(self._read_pids(dev))

    def poll(self, now: datetime | None = None) -> list[EnergyReading]:
        """Close every GPU's window at ``now``, return its energy, and open the next window.

        The first call only opens the windows and returns ``[]``.
        """
        if self._nvml is None:
            return []
        with self._lock:
            now = now or self._clock()
            first = not self._started
            self._started = True
            readings = []
            for dev in self._devices:
                if dev.source == "absent":
                    continue
                counter_mJ = self._read_counter_mJ(dev) if dev.source == "nvml_counter" else None
                power_W = self._read_power_W(dev) if dev.source == "nvml_power_integrated" else None
                if not first and dev.window_start is not None:
                    reading = self._close_window(dev, now, counter_mJ, power_W)
                    if reading is not None:
                        readings.append(reading)
                self._open_window(dev, now, counter_mJ, power_W)
            return readings

    def _close_window(
        self, dev: GpuDevice, now: datetime, counter_mJ: int | None, power_W: float | None
    ) -> EnergyReading | None:
        start = dev.window_start
        duration_s = (now - start).total_seconds()
        if duration_s <= 0:
            return None
        pids = tuple(sorted(dev.pids | set(self._read_pids(dev))))
        if dev.source == "nvml_counter":
            if counter_mJ is None or dev.counter_mJ is None:
                return None
            if counter_mJ >= dev.counter_mJ:
                energy_J = (counter_mJ - dev.counter_mJ) / 1000.0
            else:
                # Driver reload (or GPU reset) restarted the counter from zero: what it holds now
                # is the energy since then; what was used before the restart in this window is lost.
                log.warning(
                    "%s: energy counter went back from %d to %d mJ (driver reload?); counting from the restart",
                    dev.device, dev.counter_mJ, counter_mJ,
                )
                energy_J = counter_mJ / 1000.0
        else:
            samples = dev.samples_W + ([(now, power_W)] if power_W is not None else [])
            if not samples:
                return None
            energy_J = integrate_trapezoid_J(samples, start, now)
        return EnergyReading(
            device=dev.device,
            energy_j=energy_J,
            start=start,
            end=now,
            source=dev.source,
            power_w=energy_J / duration_s,
            pids=pids,
        )

    # -- instantaneous views ---------------------------------------------------------------------

    def power_w(self) -> float | None:
        """Current total power of all GPUs in W; None when NVML is absent or reports no power."""
        if self._nvml is None:
            return None
        with self._lock:
            values = [w for w in (self._read_power_W(d) for d in self._devices) if w is not None]
        return sum(values) if values else None

    def processes(self) -> dict[int, list[int]]:
        """GPU index → pids of compute processes on it (as NVML sees them: host pids)."""
        if self._nvml is None:
            return {}
        with self._lock:
            return {d.index: sorted(set(self._read_pids(d))) for d in self._devices}

    def status(self) -> dict:
        if self._nvml is None or not self._devices:
            return {"available": False, "reason": self.reason or "NVML: no GPUs found", "devices": []}
        info: dict = {"available": self.available, "devices": [d.describe() for d in self._devices]}
        if not self.available:
            info["reason"] = "no GPU reports energy or power"
        return info

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            self.reason = self.reason or "meter closed"
            try:
                nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", nvml_error_text(exc))
