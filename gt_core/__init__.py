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
    "load_model": "gt_core.models.loading",
    "load_tiny_for_training": "gt_core.models.loading",
    "embedded_task": "gt_core.data.embedded_task",
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
    "DaemonRhoSource": "gt_core.rho.daemon_source",
    "GreenTrainerCallback": "gt_core.integrations.hf_callback",
    "build_tokenizer": "gt_core.data.tokenizer",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from gt_core.selection.pipeline import GreenSelection, GreenSelector
    from gt_core.integrations.hf_callback import GreenTrainerCallback
    from gt_core.selection.importance import compute_importance
    from gt_core.data.embedded_task import embedded_task
    from gt_core.models.loading import ModelLoadError, load_model, load_tiny_for_training
    from gt_core.profiler import (
        TensorProfile,
        UnsupportedModuleError,
        UnsupportedOpError,
        profile_model,
        profile_model_shape,
    )
    from gt_core.rho.sources import CallableRho, ConstantRho, RhoReading, RhoSource, ScheduleRho
    from gt_core.rho.daemon_source import DaemonRhoSource
    from gt_core.selection.dp import InfeasibleBudgetError, Selection, select_tensors
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig
    from gt_core.training.records import EpochRecord


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gt_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
