"""Parameters sharded by FSDP2 (``fully_shard``): DTensors whose local piece is this rank's shard.

``named_parameters()`` names and ``p.shape`` (the global shape) are those of the unsharded model,
so a name-keyed selection and a meta-device profile apply to a sharded model unchanged. What does
change: ``p.grad`` and the optimizer state are DTensors too, each rank holding its own shard.
"""

from __future__ import annotations

from typing import TypeVar

import torch


def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, or None in a torch built without distributed support."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor

Value = TypeVar("Value")


def is_dtensor(value: object) -> bool:
    """True for a DTensor or a parameter wrapping one."""
    kind = dtensor_type()
    return kind is not None and (isinstance(value, kind) or isinstance(getattr(value, "data", None), kind))


def is_sharded(p: torch.Tensor) -> bool:
    """True when ``p`` is a DTensor split over ranks (some placement is a ``Shard``), as under FSDP2."""
    if not is_dtensor(p):
        return False
    return any(placement.is_shard() for placement in p.placements)


def local_part(value: Value) -> Value:
    """This rank's piece of a DTensor; any other value unchanged."""
    return value.to_local() if is_dtensor(value) else value
