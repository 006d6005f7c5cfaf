"""Choose which tensors to train under a FLOPs budget ρ (GreenTrainer §3.3, A.2), in O(N·T).

Problem (paper Eq. 3/4): maximise Σ m_k·I_k subject to T_fp + m·t_dw + σ(m)·t_dy ≤ ρ·T_full.

Relation to the paper's DP (Eq. 7). The paper tabulates P[k, t] over the top-k tensors and, for
a selected tensor k, tries every nearest selected tensor k_c above it, paying the dy path between
them: O(N²·T). Under the additive model, the dy FLOPs of a mask depend only on its deepest
(input-most) selected tensor d: they are the prefix Σ_{j≥d} t_dy[j]. Every other selected tensor
only adds its t_dw. So for a fixed d the problem is a 0/1 knapsack over the t_dw of the tensors
above d, with capacity (backward budget − dy prefix(d) − t_dw[d]). Walking d from the output
towards the input adds exactly one item (tensor d+1) to that knapsack, so one knapsack table,
updated in place, serves every d: O(N·T) time, one table row of T values, and an N×T bit table of
"item taken at capacity c" back-pointers instead of a mask per subproblem. The walk stops once
the dy prefix alone exceeds the backward budget (the Eq. 8 depth bound), and the table is
truncated to the largest capacity any deeper d can still use, so budgets above it are never
tabulated (the A.2 pruning).

Quantisation (Eq. 9) is done in units of (backward budget / resolution) and rounds costs UP, so a
mask feasible on quantised costs is feasible on exact additive costs. Because rounding up wastes
up to one unit per selected tensor, the capacity is then relaxed by bisection (and a floor-rounded
solve, as the reference does it, is tried too); each relaxed answer is kept only if its real cost
fits. Real cost means ``TensorProfile.cost`` (exact op-graph cost when the profile was measured,
never above the additive cost), called a bounded number of times: the additive cost is checked
first and the exact one only when the additive one does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gt_core.profiler.tensor_profile import TensorProfile

# Bisection steps on the relaxed knapsack capacity, and exact-cost calls spent on greedy filling.
_REFINE_STEPS = 12
_GREEDY_EXACT_CALLS = 16


class InfeasibleBudgetError(ValueError):
    """ρ is below the cost of the cheapest possible training step (forward + one tensor)."""

    def __init__(self, rho: float, min_rho: float) -> None:
        self.rho = float(rho)
        self.min_rho = float(min_rho)
        # Round up so that the printed value is itself feasible.
        shown = math.ceil(self.min_rho * 1e4) / 1e4
        super().__init__(
            f"rho={self.rho:g} is infeasible: training even the cheapest single tensor needs "
            f"rho >= {shown:.4f} for this profile (forward FLOPs alone are always paid)"
        )


@dataclass
class Selection:
    """Result of :func:`select_tensors`. FLOPs are per training step (one batch)."""

    mask: np.ndarray
    names: list[str]
    objective: float
    flops: float
    additive_flops: float
    rho: float
    rho_effective: float
    budget_flops: float
    t_full: float
    stats: dict = field(default_factory=dict, repr=False, compare=False)


def _check_inputs(prof: TensorProfile, importance: Sequence[float] | np.ndarray, rho: float) -> np.ndarray:
    imp = np.asarray(importance, dtype=np.float64)
    if imp.shape != (len(prof),):
        raise ValueError(f"importance must have one value per tensor ({len(prof)}), got shape {imp.shape}")
    if np.isnan(imp).any():
        raise ValueError("importance contains NaN")
    if np.isposinf(imp).any():
        raise ValueError("importance contains +inf")
    if not (isinstance(rho, (int, float, np.floating)) and 0.0 < float(rho) <= 1.0):
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    if len(prof) == 0:
        raise ValueError("profile has no tensors")
    return imp


def dy_prefix(t_dy: np.ndarray) -> np.ndarray:
    """``P[d] = Σ_{j≥d} t_dy[j]``: dy FLOPs paid when d is the deepest selected tensor."""
    return np.cumsum(np.asarray(t_dy, dtype=np.float64)[::-1])[::-1]


def quantise(
    t_dw: np.ndarray, t_dy: np.ndarray, unit: float, capacity: int, mode: str = "ceil"
) -> tuple[np.ndarray, np.ndarray]:
    """Integer costs (t_dw, dy prefix) in units of ``unit`` FLOPs, clipped to capacity + 1.

    ``ceil`` rounds t_dw and the dy prefix up (never optimistic). ``floor`` rounds t_dw and each
    t_dy term down, as the reference implementation does (optimistic; can overshoot the budget).
    """
    t_dw = np.asarray(t_dw, dtype=np.float64)
    t_dy = np.asarray(t_dy, dtype=np.float64)
    big = capacity + 1
    if unit <= 0.0:  # zero budget: only zero-cost work fits
        q_dw = np.where(t_dw > 0, big, 0)
        q_pre = np.where(dy_prefix(t_dy) > 0, big, 0)
        return q_dw.astype(np.int64), q_pre.astype(np.int64)
    if mode == "ceil":
        q_dw = np.ceil(np.minimum(t_dw / unit, big))
        q_pre = np.ceil(np.minimum(dy_prefix(t_dy) / unit, big))
    elif mode == "floor":
        q_dw = np.floor(np.minimum(t_dw / unit, big))
        q_pre = np.minimum(dy_prefix(np.floor(np.minimum(t_dy / unit, big))), big)
    else:
        raise ValueError(f"unknown quantisation mode {mode!r}")
    return q_dw.astype(np.int64), q_pre.astype(np.int64)


def solve_quantised(
    q_dw: np.ndarray, q_prefix: np.ndarray, importance: np.ndarray, capacity: int
) -> tuple[np.ndarray, float]:
    """Exact optimum of the additive problem on integer costs.

    ``q_dw[i]``: integer cost of tensor i's weight gradient; ``q_prefix[d]``: integer dy cost
    when d is the deepest selected tensor (non-decreasing as d moves to the input). Maximises
    Σ importance over masks with q_prefix[deepest] + Σ q_dw ≤ capacity. Tensors with importance
    ≤ 0 (or -inf) are never selected. Returns (mask, objective).
    """
    n = len(q_dw)
    useful = importance > 0
    mask = np.zeros(n, dtype=bool)
    if capacity < 0 or not useful.any():
        return mask, 0.0
    # take[i, c]: tensor i was taken by the knapsack at capacity c when it was added.
    take = np.zeros((n, capacity + 1), dtype=bool)
    table = np.zeros(capacity + 1, dtype=np.float64)  # best value above d with t_dw units ≤ c
    best_value, best_d, best_c = 0.0, -1, -1
    for d in range(n - 1, -1, -1):
        room = capacity - int(q_prefix[d])
        if room < 0:
            break  # Eq. 8: the dy path down to d alone exceeds the budget; deeper is worse.
        if useful[d] and q_dw[d] <= room:
            c = room - int(q_dw[d])
            value = importance[d] + table[c]
            if value > best_value:
                best_value, best_d, best_c = value, d, c
        if d == 0:
            break
        # Deeper candidates can use at most this much; never tabulate above it.
        width = capacity - int(q_prefix[d - 1]) + 1
        if width <= 0:
            break
        table = table[:width]
        if useful[d]:
            w, v = int(q_dw[d]), float(importance[d])
            if w == 0:
                table += v
                take[d, :width] = True
            elif w < width:
                cand = table[: width - w] + v
                taken = cand > table[w:]
                table[w:] = np.where(taken, cand, table[w:])
                take[d, w:width] = taken
    if best_d < 0:
        return mask, 0.0
    mask[best_d] = True
    c = best_c
    for i in range(best_d + 1, n):  # reverse order of insertion into the knapsack
        if take[i, c]:
            mask[i] = True
            c -= int(q_dw[i])
    return mask, float(importance[mask].sum())


class _Pricer:
    """Real (exact when available) step FLOPs of masks, with the additive bound tried first."""

    def __init__(self, prof: TensorProfile, budget: float) -> None:
        self.prof = prof
        self.budget = budget
        self.exact_calls = 0
        self._cache: dict[bytes, float] = {}

    def cost(self, mask: np.ndarray) -> float:
        key = np.packbits(mask).tobytes()
        if key not in self._cache:
            if self.prof.exact_backward is None:
                self._cache[key] = self.prof.additive_cost(mask)
            else:
                self.exact_calls += 1
                self._cache[key] = self.prof.cost(mask)
        return self._cache[key]

    def fits(self, mask: np.ndarray) -> bool:
        if self.prof.additive_cost(mask) <= self.budget:
            return True  # exact ≤ additive
        if self.prof.exact_backward is None:
            return False
        return self.cost(mask) <= self.budget


def _marginal_backward(prof: TensorProfile, mask: np.ndarray) -> np.ndarray:
    """Additive backward FLOPs saved by dropping each selected tensor (inf for unselected)."""
    full = prof.additive_backward(mask)
    out = np.full(len(mask), np.inf)
    for i in np.flatnonzero(mask):
        m = mask.copy()
        m[i] = False
        out[i] = full - prof.additive_backward(m)
    return out


def select_tensors(
    prof: TensorProfile,
    importance: Sequence[float] | np.ndarray,
    rho: float,
    resolution: int = 1000,
) -> Selection:
    """Pick the tensors to train: maximise Σ importance with step FLOPs ≤ ρ·T_full.

    ``importance[i]`` belongs to ``prof.names[i]``; -inf and negative values are never selected,
    NaN raises ValueError. ``resolution`` is the number of quantisation units in the backward
    budget (ρ·T_full − T_fp); the search is exact on the additive model up to that rounding, and
    the returned mask never exceeds the budget in real FLOPs (``prof.cost``).

    Raises ValueError for ρ outside (0, 1] and InfeasibleBudgetError when ρ cannot pay for the
    forward pass plus the cheapest single tensor.
    """
    imp = _check_inputs(prof, importance, rho)
    rho = float(rho)
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    n = len(prof)
    t_full = prof.t_full
    budget = rho * t_full
    pricer = _Pricer(prof, budget)
    stats: dict = {"dp_solves": 0}

    single_additive = prof.t_fp + dy_prefix(prof.t_dy) + prof.t_dw
    singles_exact: np.ndarray | None = None
    if single_additive.min() > budget:
        # Only the exact model can still fit a single tensor: price each one (N exact calls, but
        # only in this narrow band just above the minimum feasible ρ).
        singles_exact = prof.single_tensor_costs()
        pricer.exact_calls += n if prof.exact_backward is not None else 0
        if singles_exact.min() > budget:
            raise InfeasibleBudgetError(rho, float(singles_exact.min() / t_full))

    positive = imp > 0
    candidates: list[np.ndarray] = []
    if positive.any() and pricer.fits(positive):
        candidates.append(positive.copy())  # everything worth training fits: optimal
    else:
        back_budget = budget - prof.t_fp
        unit = max(back_budget, 0.0) / resolution

        def solve(capacity: int, mode: str) -> np.ndarray:
            q_dw, q_pre = quantise(prof.t_dw, prof.t_dy, unit, capacity, mode)
            stats["dp_solves"] += 1
            return solve_quantised(q_dw, q_pre, imp, capacity)[0]

        base = solve(resolution, "ceil")
        candidates.append(base)
        if unit > 0:
            # Rounding up over-charges each selected tensor (and the dy prefix) by < 1 unit, so
            # every truly feasible mask fits within resolution + (#positive + 1) units.
            lo, hi = 0, int(positive.sum()) + 1
            for _ in range(_REFINE_STEPS):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                m = solve(resolution + mid, "ceil")
                if pricer.fits(m):
                    candidates.append(m)
                    lo = mid
                else:
                    hi = mid
            m = solve(resolution, "floor")
            if pricer.fits(m):
                candidates.append(m)
        if singles_exact is not None:
            ok = positive & (singles_exact <= budget)
            if ok.any():
                m = np.zeros(n, dtype=bool)
                m[np.flatnonzero(ok)[np.argmax(imp[ok])]] = True
                candidates.append(m)

    mask = max(candidates, key=lambda m: float(imp[m].sum())).copy()

    # Safety net: the quantised search should never exceed the budget, but floating-point sums
    # could; drop the tensor with the least importance per FLOP saved until it fits.
    while mask.any() and pricer.cost(mask) > budget:
        per_flop = imp / np.maximum(_marginal_backward(prof, mask), 1e-300)
        mask[int(np.argmin(np.where(mask, per_flop, np.inf)))] = False
        stats["repairs"] = stats.get("repairs", 0) + 1

    # Rounding (and exact < additive) leaves slack: fill it greedily by importance.
    exact_left = _GREEDY_EXACT_CALLS
    for i in np.argsort(-imp, kind="stable"):
        if not positive[i] or mask[i]:
            continue
        trial = mask.copy()
        trial[i] = True
        if prof.additive_cost(trial) <= budget:
            mask = trial
        elif prof.exact_backward is not None and exact_left > 0:
            exact_left -= 1
            if pricer.cost(trial) <= budget:
                mask = trial

    flops = pricer.cost(mask)
    stats["exact_calls"] = pricer.exact_calls
    return Selection(
        mask=mask,
        names=[name for name, m in zip(prof.names, mask) if m],
        objective=float(imp[mask].sum()) if mask.any() else 0.0,
        flops=flops,
        additive_flops=prof.additive_cost(mask),
        rho=rho,
        rho_effective=flops / t_full,
        budget_flops=budget,
        t_full=t_full,
        stats=stats,
    )
