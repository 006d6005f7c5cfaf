"""Per-tensor backward FLOPs of one training step, and the cost of training any subset of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

ExactBackwardFn = Callable[[np.ndarray], float]


@dataclass
class TensorProfile:
    """FLOPs profile of one training step (one batch), tensors in forward execution order.

    Index 0 is the tensor nearest the input. All quantities are FLOPs (2 per multiply-accumulate).

    ``t_dw[i]``: FLOPs to compute tensor i's weight gradient (paid only when i is trained).
    ``t_dy[i]``: FLOPs of activation-gradient work charged to tensor i (paid when any tensor at or
    before i, i.e. nearer the input, is trained). ``t_fp``: forward FLOPs.

    The additive model ``t_fp + m·t_dw + σ(m)·t_dy`` is exact for "train everything from tensor k
    to the output" masks and an upper bound for any other mask. When the profile was measured from
    a model (``profile_model``), ``exact_backward`` prices any mask on the recorded op graph.
    """

    names: list[str]
    t_dw: np.ndarray
    t_dy: np.ndarray
    t_fp: float
    exact_backward: ExactBackwardFn | None = field(default=None, repr=False, compare=False)
    param_counts: np.ndarray | None = None
    count: str = "all"
    meta: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self.t_dw = np.asarray(self.t_dw, dtype=np.float64)
        self.t_dy = np.asarray(self.t_dy, dtype=np.float64)
        self.t_fp = float(self.t_fp)
        n = len(self.names)
        if self.t_dw.shape != (n,) or self.t_dy.shape != (n,):
            raise ValueError(
                f"t_dw and t_dy must have one entry per tensor ({n}); got {self.t_dw.shape} and {self.t_dy.shape}"
            )
        if np.any(self.t_dw < 0) or np.any(self.t_dy < 0) or self.t_fp < 0:
            raise ValueError("FLOPs must be non-negative")
        if self.param_counts is not None:
            self.param_counts = np.asarray(self.param_counts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def _as_mask(self, mask: Sequence[bool] | np.ndarray) -> np.ndarray:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (len(self.names),):
            raise ValueError(f"mask must have {len(self.names)} entries, got shape {m.shape}")
        return m

    @staticmethod
    def sigma(mask: np.ndarray) -> np.ndarray:
        """Tensors at or after the first selected one (index 0 = input side)."""
        m = np.asarray(mask, dtype=bool)
        return np.logical_or.accumulate(m)

    def additive_backward(self, mask: Sequence[bool] | np.ndarray) -> float:
        """Backward FLOPs of the paper's additive chain model: m·t_dw + σ(m)·t_dy."""
        m = self._as_mask(mask)
        return float(self.t_dw[m].sum() + self.t_dy[self.sigma(m)].sum())

    def additive_cost(self, mask: Sequence[bool] | np.ndarray) -> float:
        """FLOPs of one step under the paper's additive model (forward included)."""
        return self.t_fp + self.additive_backward(mask)

    def backward(self, mask: Sequence[bool] | np.ndarray) -> float:
        """Backward FLOPs of one step training exactly the masked tensors (exact when measured)."""
        m = self._as_mask(mask)
        if self.exact_backward is not None:
            return float(self.exact_backward(m))
        return self.additive_backward(m)

    def cost(self, mask: Sequence[bool] | np.ndarray) -> float:
        """FLOPs of one step (forward + backward) training exactly the masked tensors."""
        return self.t_fp + self.backward(mask)

    @property
    def t_full(self) -> float:
        """FLOPs of one full fine-tuning step (every tensor trained)."""
        return self.cost(np.ones(len(self.names), dtype=bool))

    def single_tensor_costs(self) -> np.ndarray:
        """Step FLOPs of training each tensor alone."""
        n = len(self.names)
        out = np.empty(n)
        for i in range(n):
            m = np.zeros(n, dtype=bool)
            m[i] = True
            out[i] = self.cost(m)
        return out

    def min_feasible_rho(self) -> float:
        """Smallest ρ for which at least one tensor can be trained."""
        if not self.names:
            return float("inf")
        return float(self.single_tensor_costs().min() / self.t_full)
