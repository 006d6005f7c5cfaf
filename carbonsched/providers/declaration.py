"""What a provider module declares to the registry, and what its functions are given.

Each provider module ends with one ``PROVIDER = ProviderKind(...)``: its name (the spec's
``kind``), its own spec options and their types, the forecast horizons its API accepts, its API
root, its credentials, its zone check, its builder and what ``carbonsched doctor`` says about its
location. Spec parsing (:mod:`carbonsched.providers.spec`), building
(:mod:`carbonsched.providers.build`) and ``doctor`` read only these declarations
(:mod:`carbonsched.providers.registry` lists them).

This module imports nothing heavy: the HTTP client is imported when a builder asks for one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from carbonsched.providers.base import Clock, IntensityProvider, ProviderSpecError
from carbonsched.providers.secrets import credential_hint, read_credential

if TYPE_CHECKING:
    import requests

    from carbonsched.providers.http import HttpClient

CACHE_KEYS = frozenset({"cooldown_s", "max_cooldown_s", "max_age_s"})
COMMON_KEYS = frozenset({"forecast_file"})
HTTP_KEYS = frozenset({"base_url", "connect_timeout_s", "read_timeout_s", "max_tries", "forecast"}) | CACHE_KEYS
HTTP_FLAG_KEYS = frozenset({"forecast"})
HTTP_POSITIVE_KEYS = frozenset({"connect_timeout_s", "read_timeout_s", "max_tries"}) | CACHE_KEYS
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ProviderSpec:
    """One parsed ``kind[:zone][?key=value&...]``; ``text`` is the part as written, for messages."""

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

    def whole_hours(self, key: str = "forecast_hours") -> int | None:
        """``key`` as whole hours (parsing checked it against the API's values), or None when not given."""
        hours = self.number(key, None)
        return None if hours is None else int(hours)


@dataclass(frozen=True)
class Credential:
    """A secret read from the environment variable ``env_var`` or the systemd credential ``name``."""

    env_var: str
    name: str

    def read(self, env: Mapping[str, str]) -> str | None:
        return read_credential(env, self.env_var, self.name)

    def hint(self) -> str:
        """Where the missing credential should go (names only, never values)."""
        return credential_hint(self.env_var, self.name)


@dataclass(frozen=True)
class HttpApi:
    """A network provider's API root: ``base_url=`` in the spec, else ``env[root_env]``, else ``default_root``."""

    root_env: str
    default_root: str


@dataclass(frozen=True)
class DoctorNote:
    """A warning ``carbonsched doctor`` prints about a spec, with its one-line fix."""

    message: str
    fix: str


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides the spec: credentials and API roots (``env``), time, HTTP."""

    env: Mapping[str, str]
    clock: Clock
    sleep: Callable[[float], None]
    session_factory: Callable[[], requests.Session]
    rng: random.Random | None = None

    def http_client(self, spec: ProviderSpec, api: HttpApi) -> HttpClient:
        """An HTTP client for ``api`` with the spec's timeouts and retries (the HTTP keys)."""
        from carbonsched.providers.http import (
            DEFAULT_CONNECT_TIMEOUT_S,
            DEFAULT_MAX_TRIES,
            DEFAULT_READ_TIMEOUT_S,
            HttpClient,
        )

        root = spec.params.get("base_url") or self.env.get(api.root_env) or api.default_root
        if not root.startswith(("http://", "https://")):
            raise ProviderSpecError(f"{spec.text}: API root {root!r} must start with http:// or https://")
        max_tries = spec.number("max_tries", DEFAULT_MAX_TRIES)
        return HttpClient(
            f"{spec.kind}:{spec.zone}" if spec.zone else spec.kind,
            root,
            clock=self.clock,
            sleep=self.sleep,
            rng=self.rng,
            session=self.session_factory(),
            connect_timeout_s=spec.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S) or DEFAULT_CONNECT_TIMEOUT_S,
            read_timeout_s=spec.number("read_timeout_s", DEFAULT_READ_TIMEOUT_S) or DEFAULT_READ_TIMEOUT_S,
            max_tries=int(max_tries or DEFAULT_MAX_TRIES),
        )


def no_zone_check(spec: ProviderSpec) -> None:
    """For kinds that take any zone, or none."""


def no_doctor_note(spec: ProviderSpec) -> DoctorNote | None:
    return None


@dataclass(frozen=True)
class ProviderKind:
    """One provider kind, as its module declares it.

    ``options`` are the kind's own spec keys; ``flag_options`` and ``positive_options`` among them
    are checked as true/false and as positive numbers. ``forecast_hours``: the horizons (h) the API
    accepts, a float for "any positive number up to this", or None for no ``forecast_hours`` key.
    ``http``: set for network providers, which then also take the HTTP and cache keys. ``check_zone``
    raises ProviderSpecError for a bad zone (or zone-like option). ``usage``: the form shown when a
    provider must be named, e.g. ``watttime:REGION``.
    """

    name: str
    build: Callable[[ProviderSpec, BuildContext], IntensityProvider]
    usage: str
    options: frozenset[str] = frozenset()
    flag_options: frozenset[str] = frozenset()
    positive_options: frozenset[str] = frozenset()
    forecast_hours: tuple[int, ...] | float | None = None
    http: HttpApi | None = None
    credentials: tuple[Credential, ...] = ()
    check_zone: Callable[[ProviderSpec], None] = no_zone_check
    doctor_note: Callable[[ProviderSpec], DoctorNote | None] = no_doctor_note

    @property
    def keys(self) -> frozenset[str]:
        """Every spec key this kind accepts."""
        keys = COMMON_KEYS | self.options
        if self.forecast_hours is not None:
            keys |= {"forecast_hours"}
        return keys | HTTP_KEYS if self.http is not None else keys

    @property
    def flag_keys(self) -> frozenset[str]:
        return self.flag_options | (HTTP_FLAG_KEYS if self.http is not None else frozenset())

    @property
    def positive_keys(self) -> frozenset[str]:
        return self.positive_options | (HTTP_POSITIVE_KEYS if self.http is not None else frozenset())

    def missing_credentials(self, env: Mapping[str, str]) -> list[Credential]:
        return [credential for credential in self.credentials if not credential.read(env)]


__all__ = [
    "CACHE_KEYS", "COMMON_KEYS", "HTTP_KEYS", "BuildContext", "Credential", "DoctorNote", "HttpApi",
    "ProviderKind", "ProviderSpec", "no_doctor_note", "no_zone_check",
]
