"""Which NVML devices a job runs on, from the job's ``CUDA_VISIBLE_DEVICES`` or the ``devices`` it
sent in ``job.start``."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from carbonsched.power.nvml import bus_id_key, gpu_name, load_nvml, nvml_error_text, text

log = logging.getLogger(__name__)

_OLD_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/\d+/\d+$")
_DAEMON_NAME = re.compile(r"^gpu:\d+$")
_BUS_ID = re.compile(r"^(?:[0-9a-fA-F]{1,8}:)?[0-9a-fA-F]{1,2}:[0-9a-fA-F]{1,2}\.[0-7]$")


@dataclass(frozen=True)
class _Gpu:
    index: int
    uuid: str
    bus_id: str


def job_gpu_indices(cuda_visible_devices: str | None, nvml_module: Any = None) -> list[int]:
    """NVML indices of the GPUs a job with this ``CUDA_VISIBLE_DEVICES`` can use.

    ``None`` (unset) means every GPU; ``""`` means none. Entries may be integer indices, GPU UUIDs
    (``GPU-…``, or a unique prefix of one, as CUDA accepts) and MIG ids (``MIG-<uuid>`` or the old
    ``MIG-GPU-<uuid>/<gi>/<ci>``; a MIG instance maps to its parent GPU). Like CUDA, parsing stops
    at the first entry that names no device.

    Integer indices are CUDA ordinals, which need not equal NVML indices: they are matched in PCI
    bus id order (what ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` gives, and CUDA's default order on nodes
    with identical GPUs). Without NVML the answer is ``[]``.
    """
    if cuda_visible_devices is not None and not cuda_visible_devices.strip():
        return []
    nvml, reason = load_nvml(nvml_module)
    if nvml is None:
        log.debug("job_gpu_indices: %s", reason)
        return []
    try:
        gpus = [_describe(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        if cuda_visible_devices is None:
            return [g.index for g in gpus]
        return _resolve(cuda_visible_devices, gpus, lambda mig: _mig_parent(nvml, mig, gpus))
    except nvml.NVMLError as exc:
        log.warning("job_gpu_indices: NVML failed: %s", nvml_error_text(exc))
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", nvml_error_text(exc))


def _describe(nvml: Any, index: int) -> _Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    return _Gpu(
        index=index,
        uuid=text(nvml.nvmlDeviceGetUUID(handle)),
        bus_id=text(nvml.nvmlDeviceGetPciInfo(handle).busId),
    )


def resolve_job_devices(devices: Sequence[str] | None, nvml_devices: Sequence[Any], nvml_module: Any = None) -> list[str]:
    """The daemon's names (``gpu:N``, N the NVML index) for the devices a job sent in ``job.start``.

    ``nvml_devices`` are the node's GPUs as the meter sees them: objects with ``index``, ``uuid``
    and ``bus_id`` (the daemon's ``meter.gpu.devices``). An entry may be a daemon name ``gpu:N``
    (kept), a CUDA ordinal ``"0"`` (matched in PCI bus id order, as :func:`job_gpu_indices` does), a
    GPU UUID ``GPU-…`` or a unique prefix of one, a MIG id (``MIG-<uuid>`` or
    ``MIG-GPU-<uuid>/<gi>/<ci>``: its parent GPU) or a PCI bus id (``0000:3b:00.0``, NVML's
    8-digit domain, or no domain). Anything else, and any entry when no GPU is known, is kept as
    it was; duplicates are dropped, order is kept. Never raises on what a client sent. NVML is
    only initialised (from ``nvml_module``, default pynvml) to look up a new-style MIG id.
    """
    gpus = [_Gpu(d.index, d.uuid, d.bus_id) for d in nvml_devices or ()]
    in_pci_order = sorted(gpus, key=lambda g: bus_id_key(g.bus_id))
    if isinstance(devices, str):
        entries: list[Any] = devices.split(",")
    else:
        entries = list(devices) if isinstance(devices, Iterable) else []
    names: list[Any] = []
    with _MigLookup(nvml_module, gpus) as mig_parent:
        for entry in entries:
            gpu = _match_job_entry(entry, gpus, in_pci_order, mig_parent) if gpus else None
            name = gpu_name(gpu.index) if gpu is not None else entry
            if name not in names:
                names.append(name)
    return names


def _match_job_entry(
    entry: Any, gpus: list[_Gpu], in_pci_order: list[_Gpu], mig_parent: Callable[[str], _Gpu | None]
) -> _Gpu | None:
    if not isinstance(entry, str):
        return None
    entry = entry.strip()
    if _DAEMON_NAME.match(entry):
        return next((g for g in gpus if gpu_name(g.index) == entry), None)
    if _BUS_ID.match(entry):
        wanted = bus_id_key(entry if entry.count(":") == 2 else "0:" + entry)
        return next((g for g in gpus if bus_id_key(g.bus_id) == wanted), None)
    return _match(entry, gpus, in_pci_order, mig_parent)


class _MigLookup:
    """A MIG id's parent GPU over NVML, initialising NVML only if a MIG id has to be looked up."""

    def __init__(self, nvml_module: Any, gpus: list[_Gpu]) -> None:
        self._module, self._gpus = nvml_module, gpus
        self._nvml: Any = None
        self._tried = False

    def __enter__(self) -> Callable[[str], _Gpu | None]:
        return self._parent

    def _parent(self, mig_uuid: str) -> _Gpu | None:
        if not self._tried:
            self._tried = True
            self._nvml, reason = load_nvml(self._module)
            if self._nvml is None:
                log.debug("cannot look up MIG device %r: %s", mig_uuid, reason)
        if self._nvml is None or not mig_uuid.isascii():
            return None
        return _mig_parent(self._nvml, mig_uuid, self._gpus)

    def __exit__(self, *exc_info: object) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", nvml_error_text(exc))


def _resolve(spec: str, gpus: list[_Gpu], mig_parent: Callable[[str], _Gpu | None]) -> list[int]:
    in_pci_order = sorted(gpus, key=lambda g: bus_id_key(g.bus_id))
    indices: list[int] = []
    for entry in (e.strip() for e in spec.split(",")):
        gpu = _match(entry, gpus, in_pci_order, mig_parent)
        if gpu is None:
            log.debug("CUDA_VISIBLE_DEVICES entry %r names no GPU; ignoring it and the rest", entry)
            break
        if gpu.index not in indices:
            indices.append(gpu.index)
    return indices


def _match(
    entry: str, gpus: list[_Gpu], in_pci_order: list[_Gpu], mig_parent: Callable[[str], _Gpu | None]
) -> _Gpu | None:
    if not entry:
        return None
    if re.fullmatch(r"\d+", entry):
        ordinal = int(entry)
        return in_pci_order[ordinal] if ordinal < len(in_pci_order) else None
    if entry.startswith("MIG-"):
        old = _OLD_MIG.match(entry)
        if old:
            return _by_uuid(old.group(1), gpus)
        return mig_parent(entry)
    return _by_uuid(entry, gpus)


def _by_uuid(uuid: str, gpus: list[_Gpu]) -> _Gpu | None:
    wanted = uuid.lower()
    if not wanted.startswith("gpu-"):
        wanted = "gpu-" + wanted
    exact = [g for g in gpus if g.uuid.lower() == wanted]
    if exact:
        return exact[0]
    prefixed = [g for g in gpus if g.uuid.lower().startswith(wanted)]
    return prefixed[0] if len(prefixed) == 1 else None


def _mig_parent(nvml: Any, mig_uuid: str, gpus: list[_Gpu]) -> _Gpu | None:
    try:
        mig_handle = nvml.nvmlDeviceGetHandleByUUID(mig_uuid.encode())
        parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_handle)
        parent_uuid = text(nvml.nvmlDeviceGetUUID(parent))
    except nvml.NVMLError as exc:
        log.debug("MIG device %s not found: %s", mig_uuid, nvml_error_text(exc))
        return None
    return _by_uuid(parent_uuid, gpus)
