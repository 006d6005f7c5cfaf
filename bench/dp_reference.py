"""The paper's O(N²·T) selection DP (Eq. 7) in plain Python, for benchmarking only.

Works on integer costs. Tensors are indexed from the input (0) to the output (N-1), as in
TensorProfile. ``best[d][t]`` is the best importance of a mask whose deepest (input-most)
selected tensor is d and whose backward cost is ≤ t. Its predecessor is either nothing (pay the
dy path from the output down to d) or the nearest selected tensor e above d (pay the dy path from
e down to d), which is Eq. 7's Case 2 with k_c = e. Unlike the reference implementation, a
predecessor's table entry is "deepest selected is exactly e", so no optimum is lost, and the
input-most tensor is considered too. Pruning as in A.2: budgets above the capacity are never
tabulated, and the walk stops once the dy path alone exceeds the capacity (Eq. 8).
"""

from __future__ import annotations

import math
from typing import Sequence

NEG = -math.inf


def reference_dp(
    q_dw: Sequence[int], q_dy: Sequence[int], importance: Sequence[float], capacity: int
) -> tuple[list[bool], float]:
    """Max Σ importance s.t. Σ_{selected} q_dw + Σ_{j ≥ deepest selected} q_dy ≤ capacity."""
    n = len(q_dw)
    q_dw = [int(x) for x in q_dw]
    q_dy = [int(x) for x in q_dy]
    imp = [float(x) for x in importance]
    best: dict[int, list[float]] = {}
    back: dict[int, list[int]] = {}  # nearest selected tensor above d (-1: none) per budget t
    top_value, top_d, top_t = 0.0, -1, -1
    prefix = 0  # Σ_{j ≥ d} q_dy[j]
    for d in range(n - 1, -1, -1):
        prefix += q_dy[d]
        if prefix > capacity:
            break
        if not imp[d] > 0:
            continue
        row = [NEG] * (capacity + 1)
        ptr = [-1] * (capacity + 1)
        base = prefix + q_dw[d]
        for t in range(base, capacity + 1):
            row[t] = imp[d]
        path = q_dw[d]  # dw of d plus the dy path from e down to d
        for e in range(d + 1, n):
            path += q_dy[e - 1]
            if path > capacity:
                break
            if e not in best:
                continue
            prev = best[e]
            for t in range(path, capacity + 1):
                v = prev[t - path] + imp[d]
                if v > row[t]:
                    row[t] = v
                    ptr[t] = e
        best[d], back[d] = row, ptr
        if row[capacity] > top_value:
            top_value, top_d, top_t = row[capacity], d, capacity
    mask = [False] * n
    d, t = top_d, top_t
    while d >= 0:
        mask[d] = True
        e = back[d][t]
        if e < 0:
            break
        t -= q_dw[d] + sum(q_dy[d:e])
        d = e
    return mask, (sum(imp[i] for i in range(n) if mask[i]) if top_d >= 0 else 0.0)


def floor_quantise(
    t_dw: Sequence[float], t_dy: Sequence[float], backward_budget: float, resolution: int
) -> tuple[list[int], list[int]]:
    """Reference-style quantisation: every cost scaled to ``resolution`` units and floored."""
    unit = backward_budget / resolution
    return [int(math.floor(x / unit)) for x in t_dw], [int(math.floor(x / unit)) for x in t_dy]
