"""Module types whose parameters the profiler knows how to price, and the check that enforces it."""

from __future__ import annotations

import importlib

import torch

from gt_core.profiler.moe import is_routed_experts

# Resolved lazily so that a transformers version without one of them still works.
_BUILTIN = (
    ("torch.nn", "Linear"),
    ("torch.nn", "Embedding"),
    ("torch.nn", "LayerNorm"),
    ("torch.nn", "RMSNorm"),
    ("transformers.pytorch_utils", "Conv1D"),
    ("transformers.models.llama.modeling_llama", "LlamaRMSNorm"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm"),
    ("transformers.models.mistral.modeling_mistral", "MistralRMSNorm"),
    ("transformers.models.t5.modeling_t5", "T5LayerNorm"),
    ("transformers.models.mixtral.modeling_mixtral", "MixtralRMSNorm"),
    ("transformers.models.mixtral.modeling_mixtral", "MixtralTopKRouter"),
)
_registered: list[type] = []


class UnsupportedModuleError(TypeError):
    """A module owns parameters but its type is not one the profiler has been validated on."""


def register_module_type(cls: type) -> type:
    """Declare that modules of ``cls`` (and subclasses) may own trainable parameters.

    Usable as a class decorator. Their ops must still have FLOPs rules (see ``register_op_rule``).
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"{cls!r} is not a torch.nn.Module subclass")
    if cls not in _registered:
        _registered.append(cls)
    return cls


def supported_module_types() -> tuple[type, ...]:
    """All module classes allowed to own parameters directly."""
    found: list[type] = []
    for module_name, class_name in _BUILTIN:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        found.append(cls)
    return tuple(found + _registered)


def check_modules(model: torch.nn.Module) -> None:
    """Raise ``UnsupportedModuleError`` for the first module that directly owns parameters of an unknown type."""
    allowed = supported_module_types()
    for path, module in model.named_modules():
        owns = next(module.parameters(recurse=False), None) is not None
        if owns and not isinstance(module, allowed) and not is_routed_experts(module):
            where = path or "<root>"
            raise UnsupportedModuleError(
                f"{where}: {type(module).__name__} is not supported (it owns parameters; "
                "register it with gt_core.profiler.register_module_type once its ops have FLOPs rules)"
            )
