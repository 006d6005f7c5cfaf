"""The provider interface and the checks every provider applies to the numbers it returns."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Callable

from carbonsched.times import TimeFormatError, parse_instant
from carbonsched.types import IntensityReading, ProviderError, utcnow

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime; injected so tests control time."""

MAX_PLAUSIBLE_G_PER_KWH = 5000.0
"""No real grid exceeds this (pure lignite is ~1200 gCO2e/kWh); above it the data is broken."""


class ProviderSpecError(ValueError):
    """A provider spec (or a file it names) is unusable. The message is one line, naming the bad part."""


class IntensityProvider(ABC):
    """Something that can say what the grid's carbon intensity is now.

    ``current()`` returns an :class:`IntensityReading` in gCO2e/kWh (with ``.forecast`` when the
    source has one) or raises :class:`ProviderError`; ``describe()`` returns a JSON-friendly dict
    for status displays and never contains secrets.
    """

    name: str
    kind: str
    zone: str | None = None
    local: bool = False  # True: no network, asking costs nothing (never cached)

    @abstractmethod
    def current(self) -> IntensityReading: ...

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "zone": self.zone}


def check_intensity(provider: str, value: object, what: str = "carbon intensity") -> float:
    """Return ``value`` as a float in gCO2e/kWh, or raise ProviderError("impossible value")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProviderError(provider, f"impossible value for {what}: {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0 or number > MAX_PLAUSIBLE_G_PER_KWH:
        raise ProviderError(
            provider,
            f"impossible value for {what}: {number!r} gCO2e/kWh (expected 0..{MAX_PLAUSIBLE_G_PER_KWH:g})",
        )
    return number


def reply_time(provider: str, text: object, what: str = "timestamp") -> datetime:
    """A time in a provider's reply ("…Z", "…+00:00", "2026-10-18T02:00Z"; :mod:`carbonsched.times`)
    as aware UTC; ProviderError naming the provider and the field otherwise."""
    if not isinstance(text, str) or not text:
        raise ProviderError(provider, f"missing or non-text {what}: {text!r}")
    try:
        return parse_instant(text, what)
    except TimeFormatError as exc:
        raise ProviderError(provider, f"unparseable {exc}") from None


def default_clock() -> datetime:
    return utcnow()
