"""Where training runs: device names as users write them, and moving batches there."""

from __future__ import annotations

from typing import Mapping

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """The torch device for ``name``: ``auto`` (or None) is where ``model`` already lives when the
    caller placed it off the CPU, else CUDA when available, else the CPU. ``cuda``/``cuda:N``/
    ``mps`` that this machine lacks is a ValueError naming what is available."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        placed = model_device(model) if model is not None else None
        if placed is not None and placed.type not in ("cpu", "meta"):
            return placed
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {name!r} asked but MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use {DEVICE_CHOICES}")
    return device


def model_device(model: torch.nn.Module) -> torch.device | None:
    """The device of the model's first parameter (None for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return None


def spread_over_devices(model: torch.nn.Module) -> bool:
    """True when the model's parameters live on more than one device (``device_map`` loading):
    such a model is left where it is and batches go to its first parameter's device."""
    return len({p.device for p in model.parameters()}) > 1


def to_device(batch: Mapping[str, object], device: torch.device) -> dict[str, object]:
    """``batch`` with every tensor on ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def is_activation_checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation checkpointing is on in a transformers model (either API generation)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def enable_activation_checkpointing(model: torch.nn.Module, **kwargs: object) -> None:
    """Non-reentrant activation checkpointing on a transformers model, without the input-gradient
    hook transformers adds with it: the non-reentrant form needs no input that requires grad, and
    the hook would make every backward run down to the embeddings, paying activation-gradient
    FLOPs below the deepest selected tensor that the selection never priced."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    checkpoint_kwargs = {**kwargs, "use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:  # transformers before 5.x: the older name, which 5.x keeps as a deprecated alias
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
    try:
        model.disable_input_require_grads()
    except AttributeError:  # no hook was registered
        pass
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
