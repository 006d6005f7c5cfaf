"""Turning a parsed spec into a working provider: the kind's builder, then cache, forecast file, chain."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping

import requests

from carbonsched.providers.base import Clock, IntensityProvider, default_clock
from carbonsched.providers.cache import (
    DEFAULT_ERROR_COOLDOWN_S,
    DEFAULT_MAX_ERROR_COOLDOWN_S,
    CachedProvider,
    ReadingCache,
)
from carbonsched.providers.chain import FallbackChain
from carbonsched.providers.declaration import BuildContext, ProviderSpec
from carbonsched.providers.forecast_file import ForecastFileProvider
from carbonsched.providers.registry import declaration_of
from carbonsched.providers.spec import parse_specs


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
    context = BuildContext(env=os.environ if env is None else env, clock=clock or default_clock, sleep=sleep,
                           session_factory=session_factory, rng=rng)
    cache = cache if cache is not None else ReadingCache()
    members: list[CachedProvider | ForecastFileProvider] = []
    for parsed in parse_specs(spec):
        member = _cached(parsed, declaration_of(parsed.kind, parsed.text).build(parsed, context), cache, context.clock)
        forecast_file = parsed.params.get("forecast_file")
        members.append(member if forecast_file is None else
                       ForecastFileProvider(member, forecast_file, clock=context.clock))
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
