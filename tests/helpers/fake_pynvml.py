"""A stand-in for the ``pynvml`` module: same function names, error class and error codes.

Tests build one with :func:`make_fake_nvml` and pass it where the code would import pynvml.
Values are set on the :class:`FakeGpu` objects and change between calls as a test needs.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"Unknown Error {self.value}")


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None = None


@dataclass
class FakePciInfo:
    busId: bytes  # pynvml returns the ctypes char array as bytes


@dataclass
class FakeGpu:
    name: str = "NVIDIA A100-SXM4-40GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: str = "00000000:07:00.0"
    energy_mJ: int | None = 0  # None: no counter (pre-Volta) → NVML_ERROR_NOT_SUPPORTED
    power_mW: int | None = 100_000  # None: NVML_ERROR_NOT_SUPPORTED
    processes: list[FakeProcess] | None = field(default_factory=list)  # None: not supported
    mig_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class _MigHandle:
    parent: FakeGpu


def make_fake_nvml(gpus: list[FakeGpu] | None = None, *, init_error: int | None = None) -> types.ModuleType:
    """A module object with pynvml's names over ``gpus``; ``init_error`` makes ``nvmlInit`` raise it."""
    gpus = list(gpus or [])
    nvml = types.ModuleType("fake_pynvml")
    state = {"init_count": 0, "calls": []}
    nvml.state = state
    nvml.gpus = gpus
    nvml.NVMLError = NVMLError
    for name, value in globals().items():
        if name.startswith("NVML_"):
            setattr(nvml, name, value)

    def initialised() -> None:
        if state["init_count"] <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def nvmlInit() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        state["init_count"] += 1

    def nvmlShutdown() -> None:
        initialised()
        state["init_count"] -= 1

    def nvmlDeviceGetCount() -> int:
        initialised()
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> FakeGpu:
        initialised()
        if not 0 <= index < len(gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpus[index]

    def nvmlDeviceGetHandleByUUID(uuid: bytes | str) -> FakeGpu | _MigHandle:
        initialised()
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in gpus:
            if gpu.uuid == wanted:
                return gpu
            if wanted in gpu.mig_uuids:
                return _MigHandle(gpu)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle: _MigHandle) -> FakeGpu:
        initialised()
        if not isinstance(handle, _MigHandle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle.parent

    def nvmlDeviceGetName(handle: FakeGpu) -> str:
        initialised()
        return handle.name

    def nvmlDeviceGetUUID(handle: FakeGpu) -> str:
        initialised()
        return handle.uuid

    def nvmlDeviceGetPciInfo(handle: FakeGpu) -> FakePciInfo:
        initialised()
        return FakePciInfo(busId=handle.bus_id.encode())

    def nvmlDeviceGetTotalEnergyConsumption(handle: FakeGpu) -> int:
        initialised()
        state["calls"].append("energy")
        if handle.energy_mJ is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle.energy_mJ

    def nvmlDeviceGetPowerUsage(handle: FakeGpu) -> int:
        initialised()
        state["calls"].append("power")
        if handle.power_mW is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle.power_mW

    def nvmlDeviceGetComputeRunningProcesses(handle: FakeGpu) -> list[FakeProcess]:
        initialised()
        if handle.processes is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return list(handle.processes)

    for function in (
        nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetHandleByUUID,
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle, nvmlDeviceGetName, nvmlDeviceGetUUID,
        nvmlDeviceGetPciInfo, nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetPowerUsage,
        nvmlDeviceGetComputeRunningProcesses,
    ):
        setattr(nvml, function.__name__, function)
    return nvml
