"""Set-ups GreenTrainer's selection cannot run under, refused before the first step with one line.

Selection looks tensors up by name, prices each one from its shape and toggles its
``requires_grad``; the saving is real only if a frozen tensor then costs no weight gradient.
Measured on the CPU (torch 2.13, gloo, 2 processes, tiny Llama):

- FSDP1 (``FullyShardedDataParallel``, even with ``use_orig_params=True``) trains correctly, but
  its flat parameters compute the gradient of a whole wrap unit when any tensor in it trains:
  frozen tensors sharing a unit with selected ones still got gradients (5-12 tensors per epoch),
  so the FLOPs GreenTrainer claims to save are spent. FSDP2 (``fully_shard``) shards each tensor
  on its own and honours ``requires_grad``: ``--strategy fsdp`` (:mod:`gt_core.distributed.fsdp`).
- DeepSpeed ZeRO-3: parameters frozen after ``deepspeed.initialize`` were still updated (all 17
  "frozen" tensors changed), so a selection would not even be what trains.
- A PEFT-wrapped model would have its frozen base weights unfrozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gt_core.distributed.sharding import is_dtensor

if TYPE_CHECKING:
    from collections.abc import Mapping

    from transformers import TrainingArguments


CALLBACK_FSDP2_REASON = (
    "GreenTrainerCallback does not run under FSDP2 (TrainingArguments fsdp_config version 2 or accelerate's FSDP "
    "plugin with fsdp_version 2): it scores importance on rank 0 alone and broadcasts the mask, but every forward "
    "of an FSDP2 model is a collective of all ranks, so the ranks' collectives would not match (a hang or an error); "
    "use DDP with the callback, or greentrainer train --strategy fsdp, whose importance pass runs on every rank"
)


class UnsupportedSetupError(ValueError):
    """The model or launcher set-up cannot run GreenTrainer's selection."""


def check_model_supported(model: torch.nn.Module) -> None:
    """Raise :class:`UnsupportedSetupError` for FSDP, ZeRO-3 or PEFT-wrapped models."""
    kind = type(model).__name__
    if kind == "FullyShardedDataParallel" or any(
        type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()
    ):
        raise UnsupportedSetupError(
            "GreenTrainer does not support FSDP1 (FullyShardedDataParallel): its flat parameters compute the "
            "gradient of a whole wrap unit when any tensor in it trains, so frozen tensors still cost their "
            "gradients; pass the unwrapped model with --strategy fsdp (FSDP2, per-tensor sharding) instead"
        )
    for name, p in model.named_parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_numel"):
            raise UnsupportedSetupError(
                f"GreenTrainer does not support DeepSpeed ZeRO stage 3 (parameter {name} is partitioned): "
                "parameters frozen after deepspeed.initialize are still updated, so the selection would not be "
                "what trains; use ZeRO stage 1 or 2, DDP, or --strategy fsdp"
            )
        if is_dtensor(p):
            raise UnsupportedSetupError(
                f"{name} is already sharded (a DTensor): GreenTrainer takes the unsharded model and shards it itself "
                "with --strategy fsdp (gt_core.distributed.fsdp.FsdpGreenTrainer); " + CALLBACK_FSDP2_REASON
            )
    if _is_peft_model(model):
        raise UnsupportedSetupError(
            "GreenTrainer selects among a model's own tensors and would unfreeze a PeftModel's base weights: "
            "pass the base model, or use --scheme lora/prefix for adapters"
        )


def check_training_args_supported(args: TrainingArguments) -> None:
    """Raise for ``transformers.TrainingArguments`` that shard parameters (FSDP, DeepSpeed ZeRO-3)."""
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None) or {}
        version = config.get("version", config.get("fsdp_version", 1))
        if str(version) == "2":
            raise UnsupportedSetupError(CALLBACK_FSDP2_REASON)
        raise UnsupportedSetupError(
            "GreenTrainerCallback does not support TrainingArguments(fsdp=...) with FSDP1: its flat parameters "
            "compute the gradient of a whole wrap unit when any tensor in it trains, so frozen tensors still cost "
            "their gradients; use DDP, or greentrainer train --strategy fsdp (FSDP2)"
        )
    deepspeed = getattr(args, "deepspeed", None)
    if deepspeed and _zero_stage(deepspeed) == 3:
        raise UnsupportedSetupError(
            "GreenTrainerCallback does not support DeepSpeed ZeRO stage 3: parameters frozen after "
            "deepspeed.initialize are still updated, so the selection would not be what trains; use stage 1 or 2"
        )


def _zero_stage(deepspeed: str | Mapping[str, object] | None) -> int | None:
    config = deepspeed
    if isinstance(deepspeed, str):
        import json
        from pathlib import Path

        try:
            config = json.loads(Path(deepspeed).read_text())
        except (OSError, ValueError):
            return None
    if isinstance(config, dict):
        stage = config.get("zero_optimization", {}).get("stage")
        return int(stage) if isinstance(stage, (int, str)) and str(stage).isdigit() else None
    return None


def _is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
