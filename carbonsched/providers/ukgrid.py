"""UK National Grid Carbon Intensity API (Great Britain only, no key): average intensity per half hour.

National: ``/intensity`` gives the current half hour; ``actual`` is used when the half hour has
one, else ``forecast`` (and the reading is marked estimated). The forecast comes from
``/intensity/{from}/fw48h`` (the next 48 h, the default) or ``/fw24h`` (``forecast_hours=24``).
Regional (``/regional/regionid/{id}`` or ``/regional/postcode/{pc}``) values are forecasts only, so
regional readings are always estimated; their forecast comes from
``/regional/intensity/{from}/fw48h/regionid/{id}`` (or ``fw24h``, or ``/postcode/{pc}``).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from carbonsched.providers.base import (Clock, IntensityProvider, ProviderSpecError, check_intensity, default_clock,
                                        reply_time)
from carbonsched.providers.declaration import BuildContext, DoctorNote, HttpApi, ProviderKind, ProviderSpec
from carbonsched.types import ForecastPoint, IntensityReading, ProviderError
from carbonsched.providers.http import HttpClient

log = logging.getLogger("carbonsched.providers")

DEFAULT_ROOT = "https://api.carbonintensity.org.uk"
INTERVAL_S = 1800.0
REGION_IDS = range(1, 18)
FORECAST_HOURS = (24, 48)  # the API's forward windows: fw24h, fw48h
DEFAULT_FORECAST_HOURS = 48
OUTWARD_POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")


class UkGridProvider(IntensityProvider):
    kind = "ukgrid"

    def __init__(
        self,
        http: HttpClient,
        *,
        region_id: int | None = None,
        postcode: str | None = None,
        want_forecast: bool = True,
        forecast_hours: int = DEFAULT_FORECAST_HOURS,
        clock: Clock = default_clock,
    ) -> None:
        if region_id is not None and postcode is not None:
            raise ValueError("ukgrid takes a region or a postcode, not both")
        if forecast_hours not in FORECAST_HOURS:
            raise ValueError(f"ukgrid forecast_hours must be one of {FORECAST_HOURS}, got {forecast_hours!r}")
        self.forecast_hours = int(forecast_hours)
        self.http = http
        self.region_id = region_id
        self.postcode = postcode.upper() if postcode else None
        if region_id is not None:
            self.zone = f"region={region_id}"
        elif self.postcode is not None:
            self.zone = f"postcode={self.postcode}"
        else:
            self.zone = None
        self.name = f"ukgrid:{self.zone}" if self.zone else "ukgrid"
        self.http.provider = self.name
        self.want_forecast = want_forecast
        self.clock = clock

    def __repr__(self) -> str:
        return f"UkGridProvider({self.name!r})"

    def current(self) -> IntensityReading:
        if self.zone is None:
            slot = _first(self.name, self.http.get_json("/intensity"), "/intensity")
            value, estimated = self._national_value(slot)
            detail: dict = {}
        else:
            region = _region_block(self.name, self.http.get_json(self._regional_path()))
            slot = _first(self.name, {"data": region.get("data")}, "regional data")
            value, estimated = self._forecast_value(slot), True
            detail = {key: region[key] for key in ("regionid", "shortname", "dnoregion") if key in region}
        timestamp = reply_time(self.name, slot.get("from"), "from")
        intensity = slot.get("intensity") or {}
        if isinstance(intensity, dict) and isinstance(intensity.get("index"), str):
            detail["index"] = intensity["index"]
        return IntensityReading(
            intensity_g_per_kwh=value,
            timestamp=timestamp,
            provider=self.name,
            signal="average",
            fetched_at=self.clock(),
            zone=self.zone or "GB",
            interval_s=INTERVAL_S,
            estimated=estimated,
            forecast=self._forecast(timestamp),
            detail=detail,
        )

    def _regional_path(self) -> str:
        if self.region_id is not None:
            return f"/regional/regionid/{self.region_id}"
        return f"/regional/postcode/{self.postcode}"

    def _national_value(self, slot: dict) -> tuple[float, bool]:
        intensity = slot.get("intensity")
        if not isinstance(intensity, dict):
            raise ProviderError(self.name, "half-hour has no intensity object")
        if intensity.get("actual") is not None:
            return check_intensity(self.name, intensity["actual"], "actual intensity"), False
        return self._forecast_value(slot), True

    def _forecast_value(self, slot: dict) -> float:
        intensity = slot.get("intensity")
        if not isinstance(intensity, dict) or intensity.get("forecast") is None:
            raise ProviderError(self.name, "half-hour has neither actual nor forecast intensity")
        return check_intensity(self.name, intensity["forecast"], "forecast intensity")

    def _forecast(self, start: datetime) -> tuple[ForecastPoint, ...]:
        if not self.want_forecast:
            return ()
        path = self._forecast_path(start.strftime("%Y-%m-%dT%H:%MZ"))
        try:
            if self.zone is None:
                body = self.http.get_json(path)
                slots = body.get("data") if isinstance(body, dict) else None
            else:
                region = _region_block(self.name, self.http.get_json(path))
                slots = region.get("data")
            if not isinstance(slots, list):
                raise ProviderError(self.name, "forecast reply has no list of half-hours")
            return tuple(
                ForecastPoint(reply_time(self.name, slot.get("from"), "from"), self._forecast_value(slot))
                for slot in slots
                if isinstance(slot, dict)
            )
        except ProviderError as exc:
            log.warning("%s: no forecast this time: %s", self.name, exc)
            return ()

    def _forecast_path(self, stamp: str) -> str:
        window = f"fw{self.forecast_hours}h"
        if self.zone is None:
            return f"/intensity/{stamp}/{window}"
        where = f"regionid/{self.region_id}" if self.region_id is not None else f"postcode/{self.postcode}"
        return f"/regional/intensity/{stamp}/{window}/{where}"

    def describe(self) -> dict:
        forecast = {
            "forecast_source": f"ukgrid {self._forecast_path('{from}')}" if self.want_forecast else None,
            "forecast_hours": self.forecast_hours if self.want_forecast else None,
        }
        return {**super().describe(), "signal": "average", "interval_s": INTERVAL_S, **forecast, **self.http.describe()}


def _first(provider: str, body: object, what: str) -> dict:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ProviderError(provider, f"reply to {what} has no half-hour data")
    return data[0]


def _region_block(provider: str, body: object) -> dict:
    """The regional endpoints wrap one region either in a list or directly; accept both."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    if isinstance(data, dict):
        return data
    raise ProviderError(provider, "regional reply has no region data")


API = HttpApi("CARBONSCHED_UKGRID_URL", DEFAULT_ROOT)


def check_zone(spec: ProviderSpec) -> None:
    """No zone (national), ``region=<1-17>`` or ``postcode=<outward code>``."""
    if spec.zone is None:
        return
    text = spec.text
    key, has_eq, value = spec.zone.partition("=")
    if not has_eq or key not in ("region", "postcode"):
        raise ProviderSpecError(f"provider spec {text!r}: ukgrid zone must be region=<1-17> or postcode=<outward code>")
    if key == "region" and not (value.isdigit() and int(value) in REGION_IDS):
        raise ProviderSpecError(f"provider spec {text!r}: ukgrid region must be a number from 1 to 17")
    if key == "postcode" and not OUTWARD_POSTCODE.match(value.upper()):
        raise ProviderSpecError(f"provider spec {text!r}: ukgrid postcode must be an outward code such as RG10")


def build(spec: ProviderSpec, context: BuildContext) -> UkGridProvider:
    key, _, value = (spec.zone or "").partition("=")
    where: dict = {"region_id": int(value)} if key == "region" else {"postcode": value} if key == "postcode" else {}
    return UkGridProvider(context.http_client(spec, API), **where, want_forecast=spec.flag("forecast", True),
                          forecast_hours=spec.whole_hours() or DEFAULT_FORECAST_HOURS, clock=context.clock)


def doctor_note(spec: ProviderSpec) -> DoctorNote | None:
    if spec.zone is not None:
        return None
    return DoctorNote(f"{spec.text!r}: no region given; falling back to the national Great Britain value",
                      "add a region or postcode, e.g. ukgrid:region=13 or ukgrid:postcode=RG10")


PROVIDER = ProviderKind(
    name="ukgrid",
    build=build,
    usage="ukgrid[:region=N]",
    forecast_hours=FORECAST_HOURS,
    http=API,
    check_zone=check_zone,
    doctor_note=doctor_note,
)
