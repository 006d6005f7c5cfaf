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
    "load_model": "gt_core.models.loading",
    "ModelLoadError": "gt_core.models.loading",
    "select_tensors": "gt_core.selection.dp",
    "Selection": "gt_core.selection.dp",
    "InfeasibleBudgetError": "gt_core.selection.dp",
    "tiny_model": "gt_core.models.tiny",
    "GreenTrainer": "gt_core.training.trainer",
    "TrainConfig": "gt_core.training.trainer",
    "EpochRecord": "gt_core.training.records",
    "GreenSelector": "gt_core.selection.pipeline",
    "GreenSelection": "gt_core.selection.pipeline",
    "compute_importance": "gt_core.selection.importance",
    "RhoSource": "gt_core.rho.sources",
    "RhoReading": "gt_core.rho.sources",
    "ConstantRho": "gt_core.rho.sources",
    "ScheduleRho": "gt_core.rho.sources",
    "CallableRho": "gt_core.rho.sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gt_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
