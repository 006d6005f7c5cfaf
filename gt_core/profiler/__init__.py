"""Tensor-level FLOPs profiling of a model's training step."""

from gt_core.profiler.tensor_profile import TensorProfile

__all__ = ["TensorProfile"]
