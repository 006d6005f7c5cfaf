"""Tensor-level FLOPs profiling of a model's training step."""

from gt_core.profiler.modules import UnsupportedModuleError, register_module_type
from gt_core.profiler.op_rules import UnsupportedOpError, register_op_rule
from gt_core.profiler.profile_model import profile_model
from gt_core.profiler.shape import MetaTwinError, meta_twin, model_from_config, profile_model_shape
from gt_core.profiler.tensor_profile import TensorProfile

__all__ = [
    "MetaTwinError",
    "TensorProfile",
    "UnsupportedModuleError",
    "UnsupportedOpError",
    "meta_twin",
    "model_from_config",
    "profile_model",
    "profile_model_shape",
    "register_module_type",
    "register_op_rule",
]
