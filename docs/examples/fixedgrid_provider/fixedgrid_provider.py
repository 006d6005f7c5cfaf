"""A carbonsched provider in one module: a fixed intensity (gCO2e/kWh) per zone, behind a token.

Spec: ``fixedgrid:ZONE[?value_g_per_kwh=N]`` (default 100); token ``FIXEDGRID_TOKEN`` or the
systemd credential ``fixedgrid_token``. Zone ``DOWN`` fails every reading, to show the fallback.
"""

from __future__ import annotations

import math

from carbonsched.providers.base import Clock, IntensityProvider, ProviderSpecError
from carbonsched.providers.declaration import BuildContext, Credential, DoctorNote, ProviderKind, ProviderSpec
from carbonsched.types import IntensityReading, ProviderError

TOKEN = Credential("FIXEDGRID_TOKEN", "fixedgrid_token")


class FixedGridProvider(IntensityProvider):
    kind = "fixedgrid"
    local = True  # no network: asked at every reading, never cached

    def __init__(self, zone: str, value_g_per_kwh: float, clock: Clock) -> None:
        self.zone, self.name = zone, f"fixedgrid:{zone}"
        self.value_g_per_kwh, self.clock = value_g_per_kwh, clock

    def current(self) -> IntensityReading:
        if self.zone == "DOWN":
            raise ProviderError(self.name, "upstream is down")
        now = self.clock()
        return IntensityReading(intensity_g_per_kwh=self.value_g_per_kwh, timestamp=now, provider=self.name,
                                signal="average", fetched_at=now, zone=self.zone, interval_s=math.inf)


def check_zone(spec: ProviderSpec) -> None:
    if spec.zone is None or not spec.zone.isupper():
        raise ProviderSpecError(f"provider spec {spec.text!r}: fixedgrid needs an upper-case zone, e.g. fixedgrid:XX")


def build(spec: ProviderSpec, context: BuildContext) -> FixedGridProvider:
    if not TOKEN.read(context.env):
        raise ProviderSpecError(f"{spec.text}: no fixedgrid token; " + TOKEN.hint())
    return FixedGridProvider(spec.zone or "", spec.number("value_g_per_kwh", 100.0) or 100.0, context.clock)


def doctor_note(spec: ProviderSpec) -> DoctorNote:
    return DoctorNote(f"{spec.text!r} is a fixed value", "use a measured grid for real runs")


PROVIDER = ProviderKind(
    name="fixedgrid",
    build=build,
    usage="fixedgrid:ZONE",
    options=frozenset({"value_g_per_kwh"}),
    positive_options=frozenset({"value_g_per_kwh"}),
    credentials=(TOKEN,),
    check_zone=check_zone,
    doctor_note=doctor_note,
)
