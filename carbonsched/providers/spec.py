"""Parsing provider specs: ``kind[:zone][?key=value&...]``, several joined by commas.

The grammar and every key are documented in docs/providers.md; this module only
splits and checks the text, so every error names the part that is wrong. What each kind accepts
(its options, their types, its forecast horizons, its zone check) is read from its declaration in
:mod:`carbonsched.providers.registry`. Network providers also
take the cache keys ``cooldown_s``, ``max_cooldown_s`` and ``max_age_s`` (positive seconds;
``max_cooldown_s`` not below ``cooldown_s``), applied by :func:`carbonsched.providers.build_provider`.
Forecast keys are checked here too: ``forecast_hours`` against what each API accepts,
``forecast_noise`` (a non-negative fraction), ``forecast_seed`` (an integer), ``forecast_file``,
``noise_model`` (not empty, not with ``forecast_noise``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from carbonsched.providers.base import ProviderSpecError
from carbonsched.providers.declaration import ProviderKind, ProviderSpec
from carbonsched.providers.registry import declaration_of


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
    declared = declaration_of(kind, text)
    zone = zone.strip()
    if has_zone and not zone:
        raise ProviderSpecError(f"provider spec {text!r}: empty zone after ':'")
    params = _parse_query(text, query)
    unknown = sorted(set(params) - declared.keys)
    if unknown:
        allowed = ", ".join(sorted(declared.keys)) or "none"
        raise ProviderSpecError(f"provider spec {text!r}: unknown option {unknown[0]!r} for {kind} (allowed: {allowed})")
    spec = ProviderSpec(kind, zone or None, params, text)
    _check_values(spec, declared)
    declared.check_zone(spec)
    return spec


def _check_values(spec: ProviderSpec, declared: ProviderKind) -> None:
    for key in spec.params.keys() & declared.flag_keys:
        spec.flag(key, False)
    for key in spec.params.keys() & declared.positive_keys:
        spec.number(key, None)
    _check_forecast_keys(spec, declared)
    first, longest = spec.number("cooldown_s", None), spec.number("max_cooldown_s", None)
    if first is not None and longest is not None and longest < first:
        raise ProviderSpecError(
            f"provider spec {spec.text!r}: max_cooldown_s={spec.params['max_cooldown_s']!r} "
            f"is less than cooldown_s={spec.params['cooldown_s']!r}"
        )


def _check_forecast_keys(spec: ProviderSpec, declared: ProviderKind) -> None:
    text, params = spec.text, spec.params
    if "forecast_hours" in params:
        hours = spec.number("forecast_hours", None)
        allowed = declared.forecast_hours
        if isinstance(allowed, (int, float)) and hours is not None and hours > allowed:
            raise ProviderSpecError(f"provider spec {text!r}: forecast_hours={params['forecast_hours']!r} is more than "
                                    f"{allowed:g}")
        if isinstance(allowed, tuple) and hours not in allowed:
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


__all__ = ["ProviderSpec", "parse_spec", "parse_specs"]
