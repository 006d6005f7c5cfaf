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
        offsets, values = self.offsets_s, self.values_g_per_kwh
        first = max(0, bisect.bisect_right(offsets, start_s) - 1)
        last = bisect.bisect_left(offsets, end_s)  # samples first..last-1 start before end_s
        bounds = [*offsets[first + 1:last], min(self.end_s, end_s)] if last > first else []
        slots: list[Slot] = []
        low = max(offsets[first], start_s) if last > first else end_s
        for index, finish in zip(range(first, last), bounds):
            high = min(finish, end_s)
            if high > low:
                slots.append(Slot(low - start_s, high - start_s, values[index]))
            low = high
        return slots

    @property
    def step_s(self) -> float:
        """The series' step: the first sample's length."""
        return (self.offsets_s[1] if len(self.offsets_s) > 1 else self.end_s) - self.offsets_s[0]

    def step_sizes_s(self) -> tuple[float, ...]:
        """Every distinct sample length in the series (seconds), ascending."""
        bounds = (*self.offsets_s, self.end_s)
        return tuple(sorted({round(b - a, 6) for a, b in zip(bounds, bounds[1:])}))

    def step_changes(self) -> list[dict[str, float]]:
        """Where the sample length changes for good (not a single long sample: a gap): each change's
        offset and the lengths before and after (seconds)."""
        bounds = (*self.offsets_s, self.end_s)
        lengths = [round(b - a, 6) for a, b in zip(bounds, bounds[1:])]
        changes = []
        for index in range(1, len(lengths) - 1):
            before, now, after = lengths[index - 1], lengths[index], lengths[index + 1]
            if now != before and now == after:
                changes.append({"at_s": self.offsets_s[index], "from_s": before, "to_s": now})
        return changes

    def window(self, start_s: float | None, end_s: float | None) -> "Series":
        """The part of the series in ``[start_s, end_s)`` (offsets; None: the series' own start or end),
        with its offsets unchanged (so ``origin_s`` still dates them); ValueError when nothing is left."""
        low = self.offsets_s[0] if start_s is None else max(start_s, self.offsets_s[0])
        high = self.end_s if end_s is None else min(end_s, self.end_s)
        slots = self.slots(low, high)
        if not slots:
            raise ValueError("the window holds none of the trace's samples")
        return Series(tuple(low + slot.start_s for slot in slots), tuple(slot.intensity_g_per_kwh for slot in slots),
                      low + slots[-1].end_s, self.origin_s)

    def value_at(self, offset_s: float) -> float:
        """The value holding at ``offset_s`` (the first before the start, the last after the end)."""
        index = max(0, bisect.bisect_right(self.offsets_s, offset_s) - 1)
        return self.values_g_per_kwh[index]


__all__ = ["Series"]
