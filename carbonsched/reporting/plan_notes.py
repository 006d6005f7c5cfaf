"""Plain-language notes on a plan's slots, for what its table and plot would otherwise leave puzzling:
a short first slot (now to the forecast's first point) and a slot the plan runs only part of."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from carbonsched.planning import Plan, Slot

# Run time this close to the slot's length counts as the whole slot (float sums of segment lengths).
WHOLE_SLOT_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class PartlyRunSlot:
    """A slot the plan runs for ``run_s`` of its length, from its start, then pauses for the rest."""

    slot: Slot
    run_s: float
    end_of_run_s: float  # seconds from now where the run stops and the pause begins


def first_slot_note(slots: Sequence[Slot], now: datetime) -> str | None:
    """Why the first slot is short, when it is: it runs from now to the forecast's first point (the
    current reading holds until then), not over a whole forecast step. None otherwise."""
    if len(slots) < 2 or slots[0].length_s >= slots[1].length_s:
        return None
    first_point = now + timedelta(seconds=slots[0].end_s)
    return (f"the first slot is the {slots[0].length_s / 60:.1f} min from now to the forecast's first point "
            f"({first_point.strftime('%H:%M')} UTC), at the current reading of {slots[0].intensity_g_per_kwh:g} gCO2e/kWh")


def partly_run_slots(plan: Plan, slots: Sequence[Slot]) -> list[PartlyRunSlot]:
    """The slots in which the plan runs for a while and then pauses before the slot ends (not the
    slot where the job finishes)."""
    found = []
    for slot in slots:
        pieces = [s for s in plan.segments if slot.start_s <= s.start_s < slot.end_s]
        run_s = sum(s.length_s for s in pieces)
        end_of_run_s = max((s.end_s for s in pieces), default=slot.start_s)
        finishes = end_of_run_s >= plan.finish_s - WHOLE_SLOT_TOLERANCE_S  # the job ends there: no pause follows
        if pieces and not finishes and end_of_run_s < slot.end_s - WHOLE_SLOT_TOLERANCE_S:
            found.append(PartlyRunSlot(slot, run_s, end_of_run_s))
    return found


def partly_run_note(part: PartlyRunSlot, now: datetime) -> str:
    start = (now + timedelta(seconds=part.slot.start_s)).strftime("%H:%M")
    return (f"slot {start} runs {part.run_s / 60:.1f} of its {part.slot.length_s / 60:.0f} min, then pauses: "
            "the plan fills the cleanest slots whole and puts what is left of the work at the start of the next "
            "cleanest one")


def slot_notes(plan: Plan, slots: Sequence[Slot], now: datetime) -> list[str]:
    """Every note on ``plan``'s slots, in time order."""
    first = first_slot_note(slots, now)
    return ([first] if first is not None else []) + [partly_run_note(p, now) for p in partly_run_slots(plan, slots)]
