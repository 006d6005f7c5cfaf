"""Numeric precision of training, named as Lightning and accelerate users know it.

``fp32``        everything in float32.
``bf16-mixed``  float32 weights and optimizer state; forward/backward under ``torch.autocast``
                with bfloat16 (runs on CUDA and on the CPU).
``fp16-mixed``  as bf16-mixed with float16, plus a ``GradScaler``: the loss is scaled, gradients
                are unscaled before clipping, and a step whose gradients hold inf/NaN is skipped
                (the scaler then lowers its scale).
``bf16``        weights (and so optimizer state) in bfloat16, no autocast: half the memory of
                fp32 weights, at bf16's precision for updates.

Importance runs under the same autocast as training (gradients summed in float32), so the
selection sees the numbers the training step will see. FLOPs accounting does not depend on it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping

import torch

if TYPE_CHECKING:
    from transformers import TrainingArguments

PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")

# accelerate launch --mixed_precision X exports ACCELERATE_MIXED_PRECISION=X.
_ACCELERATE = {"no": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def precision_from_launcher(env: Mapping[str, str] | None = None) -> str | None:
    """The precision ``accelerate launch --mixed_precision`` asked for, or None when not launched so."""
    value = (os.environ if env is None else env).get("ACCELERATE_MIXED_PRECISION")
    return _ACCELERATE.get(value.strip().lower()) if value else None


@dataclass
class Precision:
    """Autocast, gradient scaling and weight dtype for one precision name on one device."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        check_precision(self.name)
        self.device = torch.device(self.device)
        if self.name == "fp16-mixed" and self.device.type == "cpu":
            raise ValueError("fp16-mixed needs a GPU (CPU autocast runs bf16): use --precision bf16-mixed on the CPU")
        self.scaler: Any = None
        if self.name == "fp16-mixed":
            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(self.name)

    @property
    def weight_dtype(self) -> torch.dtype | None:
        """The dtype model weights are cast to (None: left as loaded)."""
        return torch.bfloat16 if self.name == "bf16" else None

    def autocast(self) -> ContextManager[None]:
        """The forward/backward context (a no-op for fp32 and bf16)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def autocast_factory(self) -> Callable[[], ContextManager[None]] | None:
        return None if self.autocast_dtype is None else self.autocast

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring scaled gradients back to their true size (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """One optimizer step; False when the scaler skipped it (non-finite gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, dict[str, object]]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, dict[str, object]]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def precision_from_training_args(args: TrainingArguments) -> Callable[[], ContextManager[None]] | None:
    """The autocast a ``transformers.TrainingArguments`` run trains under (bf16/fp16 flags), so
    importance can run under the same one; None for fp32."""
    device = torch.device(getattr(args, "device", "cpu"))
    if getattr(args, "bf16", False):
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if getattr(args, "fp16", False):
        return lambda: torch.autocast(device_type=device.type, dtype=torch.float16)
    return None
