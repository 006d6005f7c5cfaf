"""How far to trust each slot of a forecast whose error grows with lead time. Pure.

A planner that takes every forecast slot at face value chases the dips that forecast error puts
into the far slots: among many noisy values the lowest is low partly by chance, so a plan that
waits for it too often ends up running in hours that turn out no cleaner, and then later and
dirtier than a plan that ran at once. :func:`expected_slots` replaces each slot's value by what
the forecast says of it once its error is accounted for: in log space, a normal prior around the
window's mean (its spread is the forecast's own spread less the error's share of it) and a normal
measurement with the error's σ at that slot's lead give the posterior mean

    log ĝ = μ + w · (log g − μ),   w = τ² / (τ² + σ(lead)²),

so near slots keep their value and far ones move towards the window's mean as much as their error
exceeds the spread it is set against. The first slot (measured, lead 0) is kept. With σ = 0 at
every lead the slots are returned unchanged.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

from carbonsched.planning.model import Slot

MIN_SIGNAL_VARIANCE = 1e-4  # log² units: a flat forecast still ranks its slots, only barely


class LeadError(Protocol):
    """σ of the log forecast error by lead (:class:`~carbonsched.planning.noise_model.LeadNoiseModel`)."""

    def sigma_at(self, lead_s: float) -> float: ...


def expected_slots(slots: Sequence[Slot], error: LeadError) -> list[Slot]:
    """``slots`` (times from now, the first measured) with each later value shrunk towards the
    window's (length-weighted, log-space) mean by its lead's error (see the module docstring)."""
    if len(slots) < 2:
        return list(slots)
    variances = [error.sigma_at(slot.start_s) ** 2 for slot in slots]
    if not any(variances[1:]):
        return list(slots)
    logs = [math.log(max(slot.intensity_g_per_kwh, 1e-9)) for slot in slots]
    lengths = [slot.length_s for slot in slots]
    total_s = sum(lengths)
    mean = sum(x * s for x, s in zip(logs, lengths)) / total_s
    spread = sum((x - mean) ** 2 * s for x, s in zip(logs, lengths)) / total_s
    signal = max(spread - sum(v * s for v, s in zip(variances, lengths)) / total_s, MIN_SIGNAL_VARIANCE)
    shrunk = [slots[0]]
    for slot, x, variance in zip(slots[1:], logs[1:], variances[1:]):
        if variance == 0:
            shrunk.append(slot)
            continue
        weight = signal / (signal + variance)
        shrunk.append(Slot(slot.start_s, slot.end_s, math.exp(mean + weight * (x - mean))))
    return shrunk


__all__ = ["LeadError", "expected_slots"]
