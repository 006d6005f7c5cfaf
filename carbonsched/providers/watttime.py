"""WattTime API v3: marginal operating emissions rate (MOER) for a grid region, every 5 minutes.

Log in at ``{root}/login`` with HTTP basic auth to get a bearer token (kept in memory, renewed
after ``TOKEN_LIFETIME_S`` or once on HTTP 401); then ``/v3/forecast?region=..&signal_type=co2_moer``
whose first point is the current 5-minute interval (``horizon_hours=`` from the spec key
``forecast_hours``, 1-72; without it the parameter is not sent and the API's default of 24 h
applies). Values arrive in lbs CO2/MWh and are
converted to gCO2e/kWh; unknown units are refused rather than guessed. The signal-index endpoint
(a 0-100 percentile) is not an intensity and is not used as one.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

from carbonsched.providers.base import (Clock, IntensityProvider, ProviderSpecError, check_intensity, default_clock,
                                        reply_time)
from carbonsched.providers.declaration import BuildContext, Credential, HttpApi, ProviderKind, ProviderSpec
from carbonsched.providers.http import HttpClient, HttpStatusError
from carbonsched.types import ForecastPoint, IntensityReading, ProviderError

DEFAULT_ROOT = "https://api.watttime.org"
INTERVAL_S = 300.0
TOKEN_LIFETIME_S = 25 * 60  # WattTime tokens last about 30 minutes
USERNAME_ENV, PASSWORD_ENV = "WATTTIME_USERNAME", "WATTTIME_PASSWORD"
USERNAME_CREDENTIAL, PASSWORD_CREDENTIAL = "watttime_username", "watttime_password"
LBS_PER_MWH_TO_G_PER_KWH = 0.453592
UNIT_TO_G_PER_KWH = {
    "lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH,
    "kg_co2_per_mwh": 1.0,
    "g_co2_per_kwh": 1.0,
}
SIGNAL_TYPE = "co2_moer"
MAX_FORECAST_HOURS = 72
API_DEFAULT_FORECAST_HOURS = 24


class WattTimeProvider(IntensityProvider):
    kind = "watttime"

    def __init__(
        self, http: HttpClient, username: str, password: str, *, region: str, forecast_hours: int | None = None,
        clock: Clock = default_clock,
    ) -> None:
        if forecast_hours is not None and not (1 <= forecast_hours <= MAX_FORECAST_HOURS):
            raise ValueError(f"watttime forecast_hours must be 1..{MAX_FORECAST_HOURS}, got {forecast_hours!r}")
        self.forecast_hours = None if forecast_hours is None else int(forecast_hours)
        self.http = http
        self.http.add_secret(username)
        self.http.add_secret(password)
        # A server echoing the Authorization header would show the pair in base64.
        self.http.add_secret(base64.b64encode(f"{username}:{password}".encode()).decode())
        self._auth = (username, password)
        self.zone = region
        self.name = f"watttime:{region}"
        self.http.provider = self.name
        self.clock = clock
        self._token: str | None = None
        self._token_at: datetime | None = None
        self.logins = 0

    def __repr__(self) -> str:
        return f"WattTimeProvider({self.name!r})"

    def current(self) -> IntensityReading:
        params = {"region": self.zone or "", "signal_type": SIGNAL_TYPE}
        if self.forecast_hours is not None:
            params["horizon_hours"] = str(self.forecast_hours)
        body = self._get_authorized("/v3/forecast", params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list) or not body["data"]:
            raise ProviderError(self.name, "reply to /v3/forecast has no data points")
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        units = meta.get("units")
        factor = UNIT_TO_G_PER_KWH.get(units) if isinstance(units, str) else None
        if factor is None:
            raise ProviderError(self.name, f"unknown units {units!r} in /v3/forecast reply; refusing to guess")
        signal_type = meta.get("signal_type", SIGNAL_TYPE)
        if signal_type != SIGNAL_TYPE:
            raise ProviderError(self.name, f"asked for {SIGNAL_TYPE}, got signal_type {signal_type!r}")
        points = tuple(self._point(raw, factor) for raw in body["data"])
        now_point = points[0]
        detail = {"units_upstream": units, "signal_type": signal_type}
        for key in ("generated_at", "region"):
            if isinstance(meta.get(key), str):
                detail[key] = meta[key]
        return IntensityReading(
            intensity_g_per_kwh=now_point.intensity_g_per_kwh,
            timestamp=now_point.timestamp,
            provider=self.name,
            signal="marginal",
            fetched_at=self.clock(),
            zone=self.zone,
            interval_s=INTERVAL_S,
            estimated=True,  # the current MOER is the first step of a model forecast
            forecast=points,
            detail=detail,
        )

    def _point(self, raw: object, factor: float) -> ForecastPoint:
        if not isinstance(raw, dict):
            raise ProviderError(self.name, f"data point is not an object: {raw!r}")
        value = raw.get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = value * factor
        return ForecastPoint(
            timestamp=reply_time(self.name, raw.get("point_time"), "point_time"),
            intensity_g_per_kwh=check_intensity(self.name, value, "MOER"),
        )

    def _get_authorized(self, path: str, params: dict[str, str]) -> object:
        token = self._login_if_needed()
        try:
            return self.http.get_json(path, params=params, headers={"Authorization": f"Bearer {token}"})
        except HttpStatusError as exc:
            if exc.status != 401:
                raise
        token = self._login_if_needed(force=True)  # token expired early: log in again, once
        return self.http.get_json(path, params=params, headers={"Authorization": f"Bearer {token}"})

    def _login_if_needed(self, force: bool = False) -> str:
        now = self.clock()
        if (
            not force
            and self._token is not None
            and self._token_at is not None
            and now - self._token_at < timedelta(seconds=TOKEN_LIFETIME_S)
        ):
            return self._token
        self._token = None
        self.logins += 1
        try:
            body = self.http.get_json("/login", auth=self._auth)
        except HttpStatusError as exc:
            if exc.status in (401, 403):
                raise ProviderError(self.name, "login refused: check the WattTime username and password") from None
            raise
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(self.name, "login reply has no token")
        self.http.add_secret(token)
        self._token, self._token_at = token, now
        return token

    def describe(self) -> dict:
        return {
            **super().describe(),
            "signal": "marginal",
            "interval_s": INTERVAL_S,
            "logged_in": self._token is not None,
            "logins": self.logins,
            "forecast_source": "watttime /v3/forecast",
            "forecast_hours": self.forecast_hours or API_DEFAULT_FORECAST_HOURS,
            **self.http.describe(),
        }


USERNAME = Credential(USERNAME_ENV, USERNAME_CREDENTIAL)
PASSWORD = Credential(PASSWORD_ENV, PASSWORD_CREDENTIAL)
API = HttpApi("CARBONSCHED_WATTTIME_URL", DEFAULT_ROOT)


def check_zone(spec: ProviderSpec) -> None:
    if spec.zone is None:
        raise ProviderSpecError(f"provider spec {spec.text!r}: watttime needs a region, e.g. watttime:CAISO_NORTH")


def build(spec: ProviderSpec, context: BuildContext) -> WattTimeProvider:
    username, password = USERNAME.read(context.env), PASSWORD.read(context.env)
    if not username or not password:
        missing = USERNAME if not username else PASSWORD
        raise ProviderSpecError(f"{spec.text}: no WattTime credentials; " + missing.hint())
    return WattTimeProvider(context.http_client(spec, API), username, password, region=spec.zone or "",
                            forecast_hours=spec.whole_hours(), clock=context.clock)


PROVIDER = ProviderKind(
    name="watttime",
    build=build,
    usage="watttime:REGION",
    forecast_hours=tuple(range(1, MAX_FORECAST_HOURS + 1)),
    http=API,
    credentials=(USERNAME, PASSWORD),
    check_zone=check_zone,
)
