"""GreenTrainer: fine-tune only the tensors that matter under a FLOPs budget ρ (arXiv 2309.13192).

Public names are loaded lazily so that ``greentrainer --help`` does not import torch; the
``TYPE_CHECKING`` block names the same ones for IDEs and type checkers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
    "DaemonRhoSource": "gt_core.rho_daemon",
    "GreenTrainerCallback": "gt_core.hf_callback",
    "build_tokenizer": "gt_core.tokenizer",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from gt_core.green_selector import GreenSelection, GreenSelector
    from gt_core.hf_callback import GreenTrainerCallback
    from gt_core.importance import compute_importance
    from gt_core.models import ModelLoadError, load_model
    from gt_core.profiler import (
        TensorProfile,
        UnsupportedModuleError,
        UnsupportedOpError,
        profile_model,
        profile_model_shape,
    )
    from gt_core.rho import CallableRho, ConstantRho, RhoReading, RhoSource, ScheduleRho
    from gt_core.rho_daemon import DaemonRhoSource
    from gt_core.selector import InfeasibleBudgetError, Selection, select_tensors
    from gt_core.tiny import tiny_model
    from gt_core.tokenizer import build_tokenizer
    from gt_core.trainer import GreenTrainer, TrainConfig
    from gt_core.training_types import EpochRecord


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gt_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
