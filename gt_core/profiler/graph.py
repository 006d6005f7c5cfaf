"""Compile a recorded op graph into exact and additive backward costs over tensor masks.

Every unit of backward work (the gradient of one op input, or a fused kernel's joint backward) is
paid exactly when some trainable tensor is among the parameters that value depends on. So the
exact backward cost of a mask m is ``Σ_g c_g · [anc_g ∩ m ≠ ∅]`` over groups g of work with the same
ancestor-parameter set ``anc_g``. Grouping makes pricing a mask a few vectorised numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gt_core.profiler.record import Recording


@dataclass
class CompiledCosts:
    """Backward work grouped by ancestor set; all costs in FLOPs, tensors in execution order."""

    n_tensors: int
    anc_bits: np.ndarray  # (groups, bytes) uint8, bit j of a row set iff tensor j is an ancestor
    group_flops: np.ndarray  # (groups,) float64
    group_max: np.ndarray  # (groups,) int64, largest ancestor tensor index
    group_single: np.ndarray  # (groups,) int64, the tensor index if the ancestor set is one tensor, else -1
    t_fp: float

    def exact_backward(self, mask: np.ndarray) -> float:
        """Backward FLOPs autograd performs when exactly the masked tensors are trainable."""
        m = np.asarray(mask, dtype=bool)
        if m.shape != (self.n_tensors,):
            raise ValueError(f"mask must have {self.n_tensors} entries, got shape {m.shape}")
        if len(self.group_flops) == 0:
            return 0.0
        packed = np.packbits(m, bitorder="little")
        paid = (self.anc_bits & packed).any(axis=1)
        return float(self.group_flops[paid].sum())

    __call__ = exact_backward

    def suffix_backward(self) -> np.ndarray:
        """F[k] = exact backward FLOPs of training tensors k..N-1 (length N+1, F[N] = 0)."""
        hist = np.bincount(self.group_max, weights=self.group_flops, minlength=self.n_tensors)
        f = np.zeros(self.n_tensors + 1)
        f[:-1] = np.cumsum(hist[::-1])[::-1]
        return f

    def additive_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(t_dw, t_dy) that make the additive model exact on suffix masks.

        t_dw[k] is the work on values derived from tensor k alone; t_dy[k] = F(k) - F(k+1) - t_dw[k]
        is the rest of the work whose deepest ancestor is k. The additive model is an upper bound
        for any mask: a group with ancestor set {k} is paid by both iff m_k; any other group with
        deepest ancestor j is paid exactly only if some selected tensor is ≤ j, and then σ(m)_j = 1,
        so the additive model pays it too.
        """
        n = self.n_tensors
        single = self.group_single >= 0
        t_dw = np.bincount(self.group_single[single], weights=self.group_flops[single], minlength=n)
        f = self.suffix_backward()
        t_dy = f[:-1] - f[1:] - t_dw
        scale = max(float(f[0]), 1.0)
        assert np.all(t_dy >= -1e-9 * scale), "t_dy must be non-negative"
        return t_dw.astype(np.float64), np.maximum(t_dy, 0.0)


def compile_recording(recording: Recording, order: list[int], count: str) -> CompiledCosts:
    """Group the backward work of ``recording`` by ancestor set.

    ``order[j]`` is the parameter (value id) that becomes tensor j. ``count`` is "matmul" (only
    matmul/attention FLOPs, what ``FlopCounterMode`` counts) or "all" (plus elementwise work).
    """
    if count not in ("all", "matmul"):
        raise ValueError(f"count must be 'all' or 'matmul', got {count!r}")
    with_el = count == "all"
    n_values = recording.n_values
    ops = recording.ops

    live = bytearray(n_values)
    if recording.loss_value is not None:
        live[recording.loss_value] = 1
    op_live = bytearray(len(ops))
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.differentiable and any(live[o] for o in op.outputs):
            op_live[i] = 1
            for v in op.inputs:
                live[v] = 1

    anc = [0] * n_values
    for j, v in enumerate(order):
        anc[v] = 1 << j
    groups: dict[int, float] = {}
    t_fp = 0.0
    for i, op in enumerate(ops):
        c = op.cost
        t_fp += c.fwd_mm + (c.fwd_el if with_el else 0.0)
        if not op.differentiable:
            continue
        a = 0
        for v in op.inputs:
            a |= anc[v]
        for v in op.outputs:
            anc[v] = a
        if not op_live[i] or a == 0:
            continue
        for pos, flops in c.bwd_mm.items():
            _add(groups, anc[op.inputs[pos]], flops)
        joint = c.joint_mm
        if with_el:
            for pos, flops in c.bwd_el.items():
                _add(groups, anc[op.inputs[pos]], flops)
            joint += c.joint_el
        _add(groups, a, joint)
    return _pack(groups, len(order), t_fp)


def _add(groups: dict[int, float], key: int, flops: float) -> None:
    if key and flops:
        groups[key] = groups.get(key, 0.0) + flops


def _pack(groups: dict[int, float], n: int, t_fp: float) -> CompiledCosts:
    n_bytes = max((n + 7) // 8, 1)
    keys = list(groups)
    bits = np.zeros((len(keys), n_bytes), dtype=np.uint8)
    for r, key in enumerate(keys):
        bits[r] = np.frombuffer(key.to_bytes(n_bytes, "little"), dtype=np.uint8)
    flops = np.array([groups[k] for k in keys], dtype=np.float64)
    top = np.array([k.bit_length() - 1 for k in keys], dtype=np.int64)
    single = np.array([k.bit_length() - 1 if k & (k - 1) == 0 else -1 for k in keys], dtype=np.int64)
    return CompiledCosts(n, bits, flops, top, single, t_fp)
