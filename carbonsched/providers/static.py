"""Static per-country average intensity from the data CodeCarbon ships (no network).

The value is the yearly average ``carbon_intensity`` (gCO2e/kWh) for an ISO 3166-1 alpha-3
country in CodeCarbon's ``data/private_infra/global_energy_mix.json``. It does not change, so the
reading's ``interval_s`` is infinite. List valid codes with ``python -m carbonsched.providers.static``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from datetime import datetime
from functools import lru_cache
from importlib import resources

from carbonsched.providers.base import (
    Clock,
    IntensityProvider,
    ProviderSpecError,
    check_intensity,
    default_clock,
)
from carbonsched.providers.declaration import BuildContext, ProviderKind, ProviderSpec
from carbonsched.types import IntensityReading

ENERGY_MIX_RESOURCE = ("codecarbon", "data/private_infra/global_energy_mix.json")


@lru_cache(maxsize=1)
def load_energy_mix() -> dict[str, dict]:
    """CodeCarbon's per-country table, keyed by ISO-3 code."""
    package, relative = ENERGY_MIX_RESOURCE
    try:
        text = resources.files(package).joinpath(relative).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ProviderSpecError(f"static: cannot read {package}/{relative}: {exc}") from None
    return json.loads(text)


def country_codes() -> list[str]:
    return sorted(code for code, row in load_energy_mix().items() if row.get("carbon_intensity") is not None)


class StaticProvider(IntensityProvider):
    kind = "static"
    local = True

    def __init__(self, country: str, *, clock: Clock = default_clock) -> None:
        code = country.strip().upper()
        row = load_energy_mix().get(code)
        if row is None or row.get("carbon_intensity") is None:
            close = difflib.get_close_matches(code, country_codes(), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ProviderSpecError(
                f"static: unknown country code {country!r}{hint}; use an ISO 3166-1 alpha-3 code "
                "(e.g. FRA, DEU, USA); list them with: python -m carbonsched.providers.static"
            )
        self.zone = code
        self.name = f"static:{code}"
        self.intensity_g_per_kwh = check_intensity(self.name, row["carbon_intensity"])
        self.detail = {
            "country_name": row.get("country_name"),
            "year": row.get("year"),
            "source": "codecarbon global_energy_mix.json",
        }
        self.clock = clock

    def current(self) -> IntensityReading:
        now: datetime = self.clock()
        return IntensityReading(
            intensity_g_per_kwh=self.intensity_g_per_kwh,
            timestamp=now,
            provider=self.name,
            signal="average",
            fetched_at=now,
            zone=self.zone,
            interval_s=math.inf,
            estimated=True,  # a yearly average, not a measurement of this hour
            detail=dict(self.detail),
        )

    def describe(self) -> dict:
        return {**super().describe(), "signal": "average", "interval_s": None, "calls": 0,
                "value_g_per_kwh": self.intensity_g_per_kwh, "forecast_source": None, "forecast_hours": None, **self.detail}


def check_zone(spec: ProviderSpec) -> None:
    if spec.zone is None or not re.fullmatch(r"[A-Za-z]{3}", spec.zone):
        raise ProviderSpecError(f"provider spec {spec.text!r}: static needs an ISO 3166-1 alpha-3 country, e.g. static:FRA")


def build(spec: ProviderSpec, context: BuildContext) -> StaticProvider:
    return StaticProvider(spec.zone or "", clock=context.clock)


PROVIDER = ProviderKind(name="static", build=build, usage="static:ISO3", check_zone=check_zone)


def main() -> None:
    for code in country_codes():
        row = load_energy_mix()[code]
        print(f"{code}\t{row['carbon_intensity']:8.1f} gCO2e/kWh\t{row.get('country_name', '')}")


if __name__ == "__main__":
    main()
