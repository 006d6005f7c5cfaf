"""Electricity Maps API v3: average (grid-mix) carbon intensity for a zone, hourly.

``GET {root}/v3/carbon-intensity/latest?zone=DE`` (or ``lat=&lon=``) with the ``auth-token``
header gives the current value; ``/v3/carbon-intensity/forecast`` gives the forecast, over
``horizonHours`` (6, 24, 48 or 72; spec key ``forecast_hours``; without it the parameter is not sent
and the API's default of 24 h applies). A forecast the account may not see (HTTP 401/403/404, also
for a horizon beyond the plan) is noted once and not asked for again; the current value is still
returned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from carbonsched.providers.base import (Clock, IntensityProvider, ProviderSpecError, check_intensity, default_clock,
                                        reply_time)
from carbonsched.providers.declaration import BuildContext, Credential, HttpApi, ProviderKind, ProviderSpec
from carbonsched.providers.http import HttpClient, HttpStatusError
from carbonsched.types import ForecastPoint, IntensityReading, ProviderError

log = logging.getLogger("carbonsched.providers")

DEFAULT_ROOT = "https://api.electricitymap.org"
INTERVAL_S = 3600.0
TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"
TOKEN_CREDENTIAL = "electricitymaps_token"
_FORECAST_DENIED = (401, 403, 404)
FORECAST_HOURS = (6, 24, 48, 72)  # the values horizonHours accepts
API_DEFAULT_FORECAST_HOURS = 24


class ElectricityMapsProvider(IntensityProvider):
    kind = "electricitymaps"

    def __init__(
        self,
        http: HttpClient,
        token: str,
        *,
        zone: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        emission_factor_type: str | None = None,
        disable_estimations: bool = False,
        want_forecast: bool = True,
        forecast_hours: int | None = None,
        clock: Clock = default_clock,
    ) -> None:
        if zone is None and (lat is None or lon is None):
            raise ValueError("electricitymaps needs a zone or both lat and lon")
        if forecast_hours is not None and forecast_hours not in FORECAST_HOURS:
            raise ValueError(f"electricitymaps forecast_hours must be one of {FORECAST_HOURS}, got {forecast_hours!r}")
        self.forecast_hours = None if forecast_hours is None else int(forecast_hours)
        self.http = http
        self.http.add_secret(token)
        self._token = token
        self.zone = zone
        self.name = f"electricitymaps:{zone}" if zone else f"electricitymaps:{lat},{lon}"
        self.http.provider = self.name
        self._location: dict[str, str] = {"zone": zone} if zone else {"lat": str(lat), "lon": str(lon)}
        self._options: dict[str, str] = {}
        if emission_factor_type:
            self._options["emissionFactorType"] = emission_factor_type
        if disable_estimations:
            self._options["disableEstimations"] = "true"
        self.want_forecast = want_forecast
        self.forecast_unavailable: str | None = None
        self.clock = clock

    def __repr__(self) -> str:
        return f"ElectricityMapsProvider({self.name!r})"

    def current(self) -> IntensityReading:
        body = self._get("/v3/carbon-intensity/latest")
        if not isinstance(body, dict) or "carbonIntensity" not in body:
            raise ProviderError(self.name, "reply to /latest has no carbonIntensity")
        value = check_intensity(self.name, body["carbonIntensity"])
        timestamp = reply_time(self.name, body.get("datetime"), "datetime")
        detail = {
            key: body[key]
            for key in ("emissionFactorType", "estimationMethod", "updatedAt")
            if body.get(key) is not None
        }
        zone = body.get("zone") if isinstance(body.get("zone"), str) else self.zone
        return IntensityReading(
            intensity_g_per_kwh=value,
            timestamp=timestamp,
            provider=self.name,
            signal="average",
            fetched_at=self.clock(),
            zone=zone,
            interval_s=INTERVAL_S,
            estimated=bool(body.get("isEstimated", False)),
            forecast=self._forecast(),
            detail=detail,
        )

    def _forecast(self) -> tuple[ForecastPoint, ...]:
        if not self.want_forecast or self.forecast_unavailable:
            return ()
        try:
            horizon = {} if self.forecast_hours is None else {"horizonHours": str(self.forecast_hours)}
            body = self._get("/v3/carbon-intensity/forecast", with_options=False, extra=horizon)
            points = body.get("forecast") if isinstance(body, dict) else None
            if not isinstance(points, list):
                raise ProviderError(self.name, "reply to /forecast has no forecast list")
            return tuple(
                ForecastPoint(
                    timestamp=reply_time(self.name, point.get("datetime"), "forecast datetime"),
                    intensity_g_per_kwh=check_intensity(self.name, point.get("carbonIntensity"), "forecast value"),
                )
                for point in points
                if isinstance(point, dict)
            )
        except HttpStatusError as exc:
            if exc.status in _FORECAST_DENIED:
                self.forecast_unavailable = f"HTTP {exc.status}"
                log.warning("%s: forecast (%d h) not available to this account (HTTP %d); not asking again",
                            self.name, self.forecast_hours or API_DEFAULT_FORECAST_HOURS, exc.status)
                return ()
            log.warning("%s: no forecast this time: %s", self.name, exc)
            return ()
        except ProviderError as exc:
            log.warning("%s: no forecast this time: %s", self.name, exc)
            return ()

    def _get(self, path: str, *, with_options: bool = True, extra: Mapping[str, str] | None = None) -> object:
        params: Mapping[str, str] = {**self._location, **(self._options if with_options else {}), **(extra or {})}
        return self.http.get_json(path, params=params, headers={"auth-token": self._token})

    def describe(self) -> dict:
        return {
            **super().describe(),
            "signal": "average",
            "interval_s": INTERVAL_S,
            "forecast_unavailable": self.forecast_unavailable,
            "forecast_source": "electricitymaps /v3/carbon-intensity/forecast"
            if self.want_forecast and not self.forecast_unavailable else None,
            "forecast_hours": (self.forecast_hours or API_DEFAULT_FORECAST_HOURS) if self.want_forecast else None,
            **self.http.describe(),
        }


TOKEN = Credential(TOKEN_ENV, TOKEN_CREDENTIAL)
API = HttpApi("CARBONSCHED_ELECTRICITYMAPS_URL", DEFAULT_ROOT)


def check_zone(spec: ProviderSpec) -> None:
    """A zone or a lat/lon point, not both; the point within range; a known emission factor type."""
    text, zone = spec.text, spec.zone
    has_point = "lat" in spec.params or "lon" in spec.params
    if zone is None and not has_point:
        raise ProviderSpecError(f"provider spec {text!r}: electricitymaps needs a zone (electricitymaps:DE) or ?lat=..&lon=..")
    if zone is not None and has_point:
        raise ProviderSpecError(f"provider spec {text!r}: give a zone or lat/lon, not both")
    if has_point:
        for key, limit in (("lat", 90.0), ("lon", 180.0)):
            value = spec.number(key, None, positive=False)
            if value is None or abs(value) > limit:
                raise ProviderSpecError(f"provider spec {text!r}: {key} must be a number within ±{limit:g}")
    factor = spec.params.get("emission_factor_type")
    if factor is not None and factor not in ("lifecycle", "direct"):
        raise ProviderSpecError(f"provider spec {text!r}: emission_factor_type must be lifecycle or direct")


def build(spec: ProviderSpec, context: BuildContext) -> ElectricityMapsProvider:
    token = TOKEN.read(context.env)
    if not token:
        raise ProviderSpecError(f"{spec.text}: no Electricity Maps API token; " + TOKEN.hint())
    return ElectricityMapsProvider(
        context.http_client(spec, API),
        token,
        zone=spec.zone,
        lat=spec.number("lat", None, positive=False),
        lon=spec.number("lon", None, positive=False),
        emission_factor_type=spec.params.get("emission_factor_type"),
        disable_estimations=spec.flag("disable_estimations", False),
        want_forecast=spec.flag("forecast", True),
        forecast_hours=spec.whole_hours(),
        clock=context.clock,
    )


PROVIDER = ProviderKind(
    name="electricitymaps",
    build=build,
    usage="electricitymaps:ZONE",
    options=frozenset({"lat", "lon", "emission_factor_type", "disable_estimations"}),
    flag_options=frozenset({"disable_estimations"}),
    forecast_hours=FORECAST_HOURS,
    http=API,
    credentials=(TOKEN,),
    check_zone=check_zone,
)
