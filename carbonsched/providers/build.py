"""Turning a parsed spec into a working provider: credentials, API roots, HTTP settings, cache, chain."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from carbonsched.providers import electricitymaps, ukgrid, watttime
from carbonsched.providers.base import Clock, IntensityProvider, ProviderSpecError, default_clock
from carbonsched.providers.cache import (
    DEFAULT_ERROR_COOLDOWN_S,
    DEFAULT_MAX_ERROR_COOLDOWN_S,
    CachedProvider,
    ReadingCache,
)
from carbonsched.providers.chain import FallbackChain
from carbonsched.providers.forecast_file import ForecastFileProvider
from carbonsched.providers.http import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_TRIES,
    DEFAULT_READ_TIMEOUT_S,
    HttpClient,
)
from carbonsched.providers.secrets import credential_hint, read_credential
from carbonsched.providers.spec import ProviderSpec, parse_specs
from carbonsched.providers.static import StaticProvider
from carbonsched.providers.trace import DEFAULT_FORECAST_HOURS, TraceProvider

if TYPE_CHECKING:
    from carbonsched.planning.noise_model import LeadNoiseModel

ROOT_ENV = {
    "electricitymaps": ("CARBONSCHED_ELECTRICITYMAPS_URL", electricitymaps.DEFAULT_ROOT),
    "watttime": ("CARBONSCHED_WATTTIME_URL", watttime.DEFAULT_ROOT),
    "ukgrid": ("CARBONSCHED_UKGRID_URL", ukgrid.DEFAULT_ROOT),
}


def build_provider(
    spec: str,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    session_factory: Callable[[], requests.Session] = requests.Session,
    cache: ReadingCache | None = None,
    rng: random.Random | None = None,
) -> FallbackChain:
    """Build the provider (or fallback chain) a spec describes; raise ProviderSpecError if it is bad.

    ``env`` supplies credentials and API-root overrides (default ``os.environ``); ``clock`` returns
    aware UTC datetimes (default: the wall clock); ``sleep`` is used between retries; ``cache`` may
    be shared across rebuilds (e.g. a config reload) so fresh values are not fetched again.
    """
    env = os.environ if env is None else env
    clock = clock or default_clock
    cache = cache if cache is not None else ReadingCache()
    members: list[CachedProvider | ForecastFileProvider] = []
    for parsed in parse_specs(spec):
        inner = _build_one(parsed, env, clock, sleep, session_factory, rng)
        member = _cached(parsed, inner, cache, clock)
        forecast_file = parsed.params.get("forecast_file")
        members.append(member if forecast_file is None else ForecastFileProvider(member, forecast_file, clock=clock))
    return FallbackChain(members)


def _cached(spec: ProviderSpec, inner: IntensityProvider, cache: ReadingCache, clock: Clock) -> CachedProvider:
    """Wrap ``inner`` with the cache and the cool-down, timed by the spec's cooldown_s/max_cooldown_s/max_age_s."""
    cooldown_s = spec.number("cooldown_s", DEFAULT_ERROR_COOLDOWN_S)
    assert cooldown_s is not None  # a default was given
    # Without an explicit ceiling, a first cool-down longer than the default ceiling is the ceiling.
    max_cooldown_s = spec.number("max_cooldown_s", max(cooldown_s, DEFAULT_MAX_ERROR_COOLDOWN_S))
    return CachedProvider(
        inner,
        cache=cache,
        clock=clock,
        error_cooldown_s=cooldown_s,
        max_error_cooldown_s=max_cooldown_s,
        max_age_s=spec.number("max_age_s", None),
    )


def _build_one(
    spec: ProviderSpec,
    env: Mapping[str, str],
    clock: Clock,
    sleep: Callable[[float], None],
    session_factory: Callable[[], requests.Session],
    rng: random.Random | None,
) -> IntensityProvider:
    if spec.kind == "trace":
        return TraceProvider(spec.zone, speedup=spec.number("speedup", 1.0) or 1.0, clock=clock,
                             time_column=spec.params.get("time_column"),
                             intensity_column=spec.params.get("intensity_column"),
                             forecast_hours=spec.number("forecast_hours", DEFAULT_FORECAST_HOURS) or DEFAULT_FORECAST_HOURS,
                             forecast_noise=spec.number("forecast_noise", 0.0, positive=False) or 0.0,
                             forecast_seed=int(spec.params.get("forecast_seed", "0")),
                             noise_model=_noise_model(spec), noise_model_path=spec.params.get("noise_model", ""))
    if spec.kind == "static":
        return StaticProvider(spec.zone or "", clock=clock)
    want_forecast = spec.flag("forecast", True)
    if spec.kind == "ukgrid":
        http = _http(spec, "ukgrid", env, clock, sleep, session_factory, rng)
        key, _, value = (spec.zone or "").partition("=")
        return _ukgrid(http, key, value, want_forecast, _whole_hours(spec) or ukgrid.DEFAULT_FORECAST_HOURS, clock)
    if spec.kind == "electricitymaps":
        token = read_credential(env, electricitymaps.TOKEN_ENV, electricitymaps.TOKEN_CREDENTIAL)
        if not token:
            raise ProviderSpecError(
                f"{spec.text}: no Electricity Maps API token; "
                + credential_hint(electricitymaps.TOKEN_ENV, electricitymaps.TOKEN_CREDENTIAL)
            )
        http = _http(spec, "electricitymaps", env, clock, sleep, session_factory, rng)
        return electricitymaps.ElectricityMapsProvider(
            http,
            token,
            zone=spec.zone,
            lat=spec.number("lat", None, positive=False),
            lon=spec.number("lon", None, positive=False),
            emission_factor_type=spec.params.get("emission_factor_type"),
            disable_estimations=spec.flag("disable_estimations", False),
            want_forecast=want_forecast,
            forecast_hours=_whole_hours(spec),
            clock=clock,
        )
    if spec.kind == "watttime":
        username = read_credential(env, watttime.USERNAME_ENV, watttime.USERNAME_CREDENTIAL)
        password = read_credential(env, watttime.PASSWORD_ENV, watttime.PASSWORD_CREDENTIAL)
        if not username or not password:
            missing = watttime.USERNAME_ENV if not username else watttime.PASSWORD_ENV
            credential = watttime.USERNAME_CREDENTIAL if not username else watttime.PASSWORD_CREDENTIAL
            raise ProviderSpecError(f"{spec.text}: no WattTime credentials; " + credential_hint(missing, credential))
        http = _http(spec, "watttime", env, clock, sleep, session_factory, rng)
        return watttime.WattTimeProvider(http, username, password, region=spec.zone or "",
                                         forecast_hours=_whole_hours(spec), clock=clock)
    raise ProviderSpecError(f"unknown provider kind {spec.kind!r}")  # parse_specs already refused it


def _noise_model(spec: ProviderSpec) -> LeadNoiseModel | None:
    """The trace's ``noise_model=FILE.json``, read now; a bad file is a ProviderSpecError naming it and the field."""
    # Imported here: the planning modules read their files with the trace reader of this package.
    from carbonsched.planning.noise_model import NoiseModelError, load_noise_model

    path = spec.params.get("noise_model")
    if path is None:
        return None
    try:
        return load_noise_model(Path(path).expanduser())
    except NoiseModelError as exc:
        raise ProviderSpecError(f"provider spec {spec.text!r}: noise_model: {exc}") from None


def _whole_hours(spec: ProviderSpec) -> int | None:
    """The spec's ``forecast_hours`` as whole hours (parse_spec checked it against the API's values)."""
    hours = spec.number("forecast_hours", None)
    return None if hours is None else int(hours)


def _ukgrid(http: HttpClient, key: str, value: str, want_forecast: bool, forecast_hours: int,
            clock: Clock) -> IntensityProvider:
    where: dict = {"region_id": int(value)} if key == "region" else {"postcode": value} if key == "postcode" else {}
    return ukgrid.UkGridProvider(http, **where, want_forecast=want_forecast, forecast_hours=forecast_hours, clock=clock)


def _http(
    spec: ProviderSpec,
    kind: str,
    env: Mapping[str, str],
    clock: Clock,
    sleep: Callable[[float], None],
    session_factory: Callable[[], requests.Session],
    rng: random.Random | None,
) -> HttpClient:
    env_var, default_root = ROOT_ENV[kind]
    root = spec.params.get("base_url") or env.get(env_var) or default_root
    if not root.startswith(("http://", "https://")):
        raise ProviderSpecError(f"{spec.text}: API root {root!r} must start with http:// or https://")
    max_tries = spec.number("max_tries", DEFAULT_MAX_TRIES)
    return HttpClient(
        f"{spec.kind}:{spec.zone}" if spec.zone else spec.kind,
        root,
        clock=clock,
        sleep=sleep,
        rng=rng,
        session=session_factory(),
        connect_timeout_s=spec.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S) or DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s=spec.number("read_timeout_s", DEFAULT_READ_TIMEOUT_S) or DEFAULT_READ_TIMEOUT_S,
        max_tries=int(max_tries or DEFAULT_MAX_TRIES),
    )
