"""Values that cross module boundaries inside the daemon. Units are in the field names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping, Sequence
from typing import Literal, Union

JsonValue = Union[None, bool, int, float, str, Sequence["JsonValue"], Mapping[str, "JsonValue"]]
"""A value JSON can carry: what crosses the socket and what the store's rows hold."""
JsonObject = dict[str, JsonValue]

SignalType = Literal["average", "marginal"]
EnergySource = Literal["nvml_counter", "nvml_power_integrated", "rapl", "tdp_estimate", "codecarbon", "absent"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ForecastPoint:
    """One intensity value in gCO2e/kWh for the interval starting at ``timestamp`` (UTC): a forecast,
    or a past reading in :attr:`Signals.history`."""

    timestamp: datetime
    intensity_g_per_kwh: float


@dataclass(frozen=True)
class IntensityReading:
    """A grid carbon-intensity value as a provider reported it.

    ``timestamp`` is the start of the interval the value describes (UTC); ``fetched_at`` is when
    this process obtained it. ``signal`` says whether it is an average (grid mix) or a marginal
    (e.g. WattTime MOER) intensity.
    """

    intensity_g_per_kwh: float
    timestamp: datetime
    provider: str
    signal: SignalType
    fetched_at: datetime
    zone: str | None = None
    interval_s: float = 3600.0
    estimated: bool = False
    forecast: tuple[ForecastPoint, ...] = ()
    detail: dict = field(default_factory=dict, compare=False)

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the interval this value describes started."""
        now = now or utcnow()
        return max(0.0, (now - self.timestamp).total_seconds())


class ProviderError(Exception):
    """A carbon-intensity provider could not give a usable value. The message never contains secrets."""

    def __init__(self, provider: str, message: str, *, retry_after_s: float | None = None):
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class EnergyReading:
    """Energy a device used between two instants, in joules, with where the number came from."""

    device: str  # "gpu:0", "cpu", "ram"
    energy_j: float
    start: datetime
    end: datetime
    source: EnergySource
    power_w: float | None = None
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Signals:
    """Everything a policy may look at when choosing ρ."""

    now: datetime
    intensity_g_per_kwh: float | None
    signal: SignalType | None = None
    forecast: tuple[ForecastPoint, ...] = ()
    history: tuple[ForecastPoint, ...] = ()  # past readings of the same provider and zone, oldest first
    gpu_power_w: float | None = None
    carbon_used_today_g: float | None = None
    carbon_used_job_g: float | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """A policy's answer: ρ in [rho_min, 1] and a human-readable reason."""

    rho: float
    reason: str
    policy: str


def finite_or_none(value: object) -> float | None:
    """``value`` as a finite float, or None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
