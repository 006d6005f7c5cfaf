"""GreenTrainer: fine-tune only the tensors that matter under a FLOPs budget ρ (arXiv 2309.13192).

Public names are loaded lazily so that ``greentrainer --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TensorProfile": "gt_core.profiler",
    "profile_model": "gt_core.profiler",
    "profile_model_shape": "gt_core.profiler",
    "UnsupportedModuleError": "gt_core.profiler",
    "UnsupportedOpError": "gt_core.profiler",
    "load_model": "gt_core.models",
    "ModelLoadError": "gt_core.models",
    "select_tensors": "gt_core.selector",
    "Selection": "gt_core.selector",
    "InfeasibleBudgetError": "gt_core.selector",
    "tiny_model": "gt_core.tiny",
    "GreenTrainer": "gt_core.trainer",
    "TrainConfig": "gt_core.trainer",
    "EpochRecord": "gt_core.training_types",
    "GreenSelector": "gt_core.green_selector",
    "GreenSelection": "gt_core.green_selector",
    "compute_importance": "gt_core.importance",
    "RhoSource": "gt_core.rho",
    "RhoReading": "gt_core.rho",
    "ConstantRho": "gt_core.rho",
    "ScheduleRho": "gt_core.rho",
    "CallableRho": "gt_core.rho",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gt_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
