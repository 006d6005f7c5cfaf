"""What happens to the optimizer state (AdamW moments) of tensors not selected this epoch.

``keep``     left where it is (GPU memory stays at full fine-tuning's level over time).
``offload``  moved to CPU memory while frozen, moved back to the parameter's device when the
             tensor is selected again (same numbers as ``keep``, less device memory). On a
             CPU-only run it is the same as ``keep``.
``drop``     freed; a tensor selected again starts with fresh moments (step 0), as a tensor
             trained for the first time does. Importance then scores it as a first step.

AdamW creates a tensor's state lazily, at its first step with a gradient, so tensors never
selected never hold any: under every mode the optimizer holds state only for tensors that trained.
"""

from __future__ import annotations

from typing import Iterable

import torch

from gt_core.distributed.sharding import local_part

FROZEN_STATE_MODES: tuple[str, ...] = ("keep", "offload", "drop")


def check_frozen_state(mode: str) -> str:
    if mode not in FROZEN_STATE_MODES:
        raise ValueError(f"unknown frozen-state mode {mode!r}; choose one of {', '.join(FROZEN_STATE_MODES)}")
    return mode


class FrozenStateManager:
    """Applies a frozen-state mode to ``optimizer`` after each selection."""

    def __init__(self, optimizer: torch.optim.Optimizer, mode: str, offload_device: str | torch.device = "cpu") -> None:
        self.optimizer = optimizer
        self.mode = check_frozen_state(mode)
        self.offload_device = torch.device(offload_device)
        self.offloaded: dict[torch.nn.Parameter, dict[str, torch.device]] = {}

    def update(self, trainable: Iterable[torch.nn.Parameter]) -> None:
        """Bring back the state of ``trainable`` tensors; offload or drop every other tensor's."""
        wanted = set(trainable)
        for p in list(self.optimizer.state.keys()):
            if p in wanted:
                self._restore(p)
            elif self.mode == "drop":
                del self.optimizer.state[p]
                self.offloaded.pop(p, None)
            elif self.mode == "offload":
                self._offload(p)

    def restore_all(self) -> None:
        """Every offloaded tensor back on its device (before a checkpoint is loaded into it)."""
        for p in list(self.offloaded):
            self._restore(p)

    def state_bytes(self, device_type: str | None = None) -> int:
        """Bytes of optimizer-state tensors held by this process (its shards under FSDP2; on
        ``device_type`` only, when given)."""
        total = 0
        for state in self.optimizer.state.values():
            for value in state.values():
                value = local_part(value)
                if isinstance(value, torch.Tensor) and (device_type is None or value.device.type == device_type):
                    total += value.numel() * value.element_size()
        return total

    def _offload(self, p: torch.nn.Parameter) -> None:
        if p in self.offloaded:
            return
        state = self.optimizer.state[p]
        moved: dict[str, torch.device] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != self.offload_device:
                pin = value.device.type == "cuda"
                copy = value.to(self.offload_device, non_blocking=False)
                state[key] = copy.pin_memory() if pin else copy
                moved[key] = value.device
        self.offloaded[p] = moved

    def _restore(self, p: torch.nn.Parameter) -> None:
        moved = self.offloaded.pop(p, None)
        if not moved:
            return
        state = self.optimizer.state[p]
        for key, device in moved.items():
            state[key] = state[key].to(device, non_blocking=True)
