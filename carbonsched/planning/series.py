"""An intensity trace as a step function over seconds from its start, cut into planning slots. Pure."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from carbonsched.planning.model import Slot


@dataclass(frozen=True)
class Series:
    """A step function: ``values[i]`` holds from ``offsets_s[i]`` to the next offset (the last to ``end_s``)."""

    offsets_s: tuple[float, ...]
    values_g_per_kwh: tuple[float, ...]
    end_s: float
    origin_s: float = 0.0  # unix seconds of offset 0 (for forecasts issued at absolute times)

    def slots(self, start_s: float, end_s: float) -> list[Slot]:
        """Slots over ``[start_s, end_s)`` (within the series), with times relative to ``start_s``."""
        slots: list[Slot] = []
        index = max(0, bisect.bisect_right(self.offsets_s, start_s) - 1)
        while index < len(self.offsets_s) and self.offsets_s[index] < end_s:
            finish = self.offsets_s[index + 1] if index + 1 < len(self.offsets_s) else self.end_s
            low, high = max(self.offsets_s[index], start_s), min(finish, end_s)
            if high > low:
                slots.append(Slot(low - start_s, high - start_s, self.values_g_per_kwh[index]))
            index += 1
        return slots

    @property
    def step_s(self) -> float:
        """The series' step: the first sample's length."""
        return (self.offsets_s[1] if len(self.offsets_s) > 1 else self.end_s) - self.offsets_s[0]

    def step_sizes_s(self) -> tuple[float, ...]:
        """Every distinct sample length in the series (seconds), ascending."""
        bounds = (*self.offsets_s, self.end_s)
        return tuple(sorted({round(b - a, 6) for a, b in zip(bounds, bounds[1:])}))

    def value_at(self, offset_s: float) -> float:
        """The value holding at ``offset_s`` (the first before the start, the last after the end)."""
        index = max(0, bisect.bisect_right(self.offsets_s, offset_s) - 1)
        return self.values_g_per_kwh[index]


__all__ = ["Series"]
