"""Parsing provider specs: ``kind[:zone][?key=value&...]``, several joined by commas.

The grammar and every key are documented in :mod:`carbonsched.providers`; this module only
splits and checks the text, so every error names the part that is wrong. Network providers also
take the cache keys ``cooldown_s``, ``max_cooldown_s`` and ``max_age_s`` (positive seconds;
``max_cooldown_s`` not below ``cooldown_s``), applied by :func:`carbonsched.providers.build_provider`.
Forecast keys are checked here too: ``forecast_hours`` against what each API accepts,
``forecast_noise`` (a non-negative fraction), ``forecast_seed`` (an integer), ``forecast_file``,
``noise_model`` (not empty, not with ``forecast_noise``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from carbonsched.providers import electricitymaps, trace, ukgrid, watttime
from carbonsched.providers.base import ProviderSpecError

CACHE_KEYS = frozenset({"cooldown_s", "max_cooldown_s", "max_age_s"})
COMMON_KEYS = frozenset({"forecast_file"})
HTTP_KEYS = frozenset({"base_url", "connect_timeout_s", "read_timeout_s", "max_tries", "forecast"}) | CACHE_KEYS
KEYS_BY_KIND: dict[str, frozenset[str]] = {
    "trace": COMMON_KEYS | {"speedup", "time_column", "intensity_column", "forecast_hours", "forecast_noise",
                            "forecast_seed", "noise_model"},
    "static": COMMON_KEYS,
    "electricitymaps": COMMON_KEYS | HTTP_KEYS | {"lat", "lon", "emission_factor_type", "disable_estimations",
                                                  "forecast_hours"},
    "watttime": COMMON_KEYS | HTTP_KEYS | {"forecast_hours"},
    "ukgrid": COMMON_KEYS | HTTP_KEYS | {"forecast_hours"},
}
# The forecast horizons (hours) each upstream API accepts; None: any positive number.
FORECAST_HOURS_ALLOWED: dict[str, tuple[int, ...] | None] = {
    "ukgrid": ukgrid.FORECAST_HOURS,
    "electricitymaps": electricitymaps.FORECAST_HOURS,
    "watttime": tuple(range(1, watttime.MAX_FORECAST_HOURS + 1)),
    "trace": None,
}
KINDS = tuple(KEYS_BY_KIND)
_UK_OUTWARD_POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")
_FLAG_KEYS = frozenset({"forecast", "disable_estimations"})
_POSITIVE_NUMBER_KEYS = frozenset({"speedup", "connect_timeout_s", "read_timeout_s", "max_tries"}) | CACHE_KEYS
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ProviderSpec:
    kind: str
    zone: str | None
    params: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.params:
            return default
        value = self.params[key].strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ProviderSpecError(f"provider spec {self.text!r}: {key}={self.params[key]!r} is not true/false")

    def number(self, key: str, default: float | None, *, positive: bool = True) -> float | None:
        if key not in self.params:
            return default
        try:
            value = float(self.params[key])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (positive and value <= 0):
            kind = "a positive number" if positive else "a number"
            raise ProviderSpecError(f"provider spec {self.text!r}: {key}={self.params[key]!r} is not {kind}")
        return value


def parse_specs(text: str) -> list[ProviderSpec]:
    """Split a comma-separated fallback chain and parse each part."""
    if not isinstance(text, str) or not text.strip():
        raise ProviderSpecError("empty provider spec; expected e.g. 'trace' or 'electricitymaps:DE,static:DEU'")
    return [parse_spec(part, position) for position, part in enumerate(text.split(","), start=1)]


def parse_spec(part: str, position: int = 1) -> ProviderSpec:
    text = part.strip()
    if not text:
        raise ProviderSpecError(f"provider #{position} in the spec is empty (stray comma?)")
    head, _, query = text.partition("?")
    kind, has_zone, zone = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KEYS_BY_KIND:
        raise ProviderSpecError(f"unknown provider kind {kind!r} in {text!r}; known: {', '.join(KINDS)}")
    zone = zone.strip()
    if has_zone and not zone:
        raise ProviderSpecError(f"provider spec {text!r}: empty zone after ':'")
    params = _parse_query(text, query)
    unknown = sorted(set(params) - KEYS_BY_KIND[kind])
    if unknown:
        allowed = ", ".join(sorted(KEYS_BY_KIND[kind])) or "none"
        raise ProviderSpecError(f"provider spec {text!r}: unknown option {unknown[0]!r} for {kind} (allowed: {allowed})")
    spec = ProviderSpec(kind, zone or None, params, text)
    _check_values(spec)
    _check_zone(spec)
    return spec


def _check_values(spec: ProviderSpec) -> None:
    for key in spec.params.keys() & _FLAG_KEYS:
        spec.flag(key, False)
    for key in spec.params.keys() & _POSITIVE_NUMBER_KEYS:
        spec.number(key, None)
    _check_forecast_keys(spec)
    first, longest = spec.number("cooldown_s", None), spec.number("max_cooldown_s", None)
    if first is not None and longest is not None and longest < first:
        raise ProviderSpecError(
            f"provider spec {spec.text!r}: max_cooldown_s={spec.params['max_cooldown_s']!r} "
            f"is less than cooldown_s={spec.params['cooldown_s']!r}"
        )


def _check_forecast_keys(spec: ProviderSpec) -> None:
    text, params = spec.text, spec.params
    if "forecast_hours" in params:
        hours = spec.number("forecast_hours", None)
        allowed = FORECAST_HOURS_ALLOWED[spec.kind]
        if allowed is None and hours is not None and hours > trace.MAX_FORECAST_HOURS:
            raise ProviderSpecError(f"provider spec {text!r}: forecast_hours={params['forecast_hours']!r} is more than "
                                    f"{trace.MAX_FORECAST_HOURS:g}")
        if allowed is not None and hours not in allowed:
            listed = f"{allowed[0]}..{allowed[-1]}" if len(allowed) > 6 else "|".join(map(str, allowed))
            raise ProviderSpecError(f"provider spec {text!r}: forecast_hours={params['forecast_hours']!r} is not one of "
                                    f"{listed} (what the {spec.kind} API accepts)")
    if "forecast_noise" in params:
        spec.number("forecast_noise", None, positive=False)
        if float(params["forecast_noise"]) < 0:
            raise ProviderSpecError(f"provider spec {text!r}: forecast_noise={params['forecast_noise']!r} is not a "
                                    "non-negative fraction (0.1: 10 %)")
    if "forecast_seed" in params:
        try:
            int(params["forecast_seed"])
        except ValueError:
            raise ProviderSpecError(f"provider spec {text!r}: forecast_seed={params['forecast_seed']!r} is not an "
                                    "integer") from None
    if "forecast_file" in params and not params["forecast_file"].strip():
        raise ProviderSpecError(f"provider spec {text!r}: forecast_file is empty")
    if "noise_model" in params:
        if not params["noise_model"].strip():
            raise ProviderSpecError(f"provider spec {text!r}: noise_model is empty")
        if float(params.get("forecast_noise", "0")) > 0:
            raise ProviderSpecError(f"provider spec {text!r}: forecast_noise and noise_model are alternatives: "
                                    "give one")


def _parse_query(text: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ProviderSpecError(f"provider spec {text!r}: options {query!r} are not key=value&key=value") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise ProviderSpecError(f"provider spec {text!r}: option {key!r} given twice")
        if not value:
            raise ProviderSpecError(f"provider spec {text!r}: option {key!r} has no value")
        params[key] = value
    return params


def _check_zone(spec: ProviderSpec) -> None:
    text, zone = spec.text, spec.zone
    if spec.kind == "static":
        if zone is None or not re.fullmatch(r"[A-Za-z]{3}", zone):
            raise ProviderSpecError(f"provider spec {text!r}: static needs an ISO 3166-1 alpha-3 country, e.g. static:FRA")
    elif spec.kind == "watttime":
        if zone is None:
            raise ProviderSpecError(f"provider spec {text!r}: watttime needs a region, e.g. watttime:CAISO_NORTH")
    elif spec.kind == "electricitymaps":
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
    elif spec.kind == "ukgrid" and zone is not None:
        key, has_eq, value = zone.partition("=")
        if not has_eq or key not in ("region", "postcode"):
            raise ProviderSpecError(f"provider spec {text!r}: ukgrid zone must be region=<1-17> or postcode=<outward code>")
        if key == "region" and not (value.isdigit() and 1 <= int(value) <= 17):
            raise ProviderSpecError(f"provider spec {text!r}: ukgrid region must be a number from 1 to 17")
        if key == "postcode" and not _UK_OUTWARD_POSTCODE.match(value.upper()):
            raise ProviderSpecError(f"provider spec {text!r}: ukgrid postcode must be an outward code such as RG10")
