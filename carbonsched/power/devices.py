"""Which NVML devices a job runs on, from the job's ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from carbonsched.power.nvml import bus_id_key, load_nvml, nvml_error_text, text

log = logging.getLogger(__name__)

_OLD_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/\d+/\d+$")


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
        return _resolve(nvml, cuda_visible_devices, gpus)
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


def _resolve(nvml: Any, spec: str, gpus: list[_Gpu]) -> list[int]:
    in_pci_order = sorted(gpus, key=lambda g: bus_id_key(g.bus_id))
    indices: list[int] = []
    for entry in (e.strip() for e in spec.split(",")):
        gpu = _match(nvml, entry, gpus, in_pci_order)
        if gpu is None:
            log.debug("CUDA_VISIBLE_DEVICES entry %r names no GPU; ignoring it and the rest", entry)
            break
        if gpu.index not in indices:
            indices.append(gpu.index)
    return indices


def _match(nvml: Any, entry: str, gpus: list[_Gpu], in_pci_order: list[_Gpu]) -> _Gpu | None:
    if not entry:
        return None
    if re.fullmatch(r"\d+", entry):
        ordinal = int(entry)
        return in_pci_order[ordinal] if ordinal < len(in_pci_order) else None
    if entry.startswith("MIG-"):
        old = _OLD_MIG.match(entry)
        if old:
            return _by_uuid(old.group(1), gpus)
        return _mig_parent(nvml, entry, gpus)
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
