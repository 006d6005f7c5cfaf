"""Per-provider caching and error cool-down, so upstream APIs see at most one call per data interval.

:class:`ReadingCache` holds the last good reading per (provider, zone) with the moment it stops
being fresh (fetch time + the reading's ``interval_s``: hourly data → at most 24 upstream calls a
day, or + ``max_age_s`` when that is set). Expired entries are kept, because a fallback chain may
still serve them as stale values.

:class:`CachedProvider` wraps one provider with that cache and with a cool-down after errors:
after a failure it does not call upstream again for ``error_cooldown_s`` (default 30 s), doubling
with each consecutive failure up to ``max_error_cooldown_s`` (default 300 s), and never sooner than
a Retry-After. During a cool-down ``current()`` re-raises the remembered error immediately. The
spec keys ``cooldown_s``, ``max_cooldown_s`` and ``max_age_s`` set these per provider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from carbonsched.providers.base import Clock, IntensityProvider, default_clock
from carbonsched.times import iso_utc
from carbonsched.types import IntensityReading, ProviderError

DEFAULT_ERROR_COOLDOWN_S = 30.0
DEFAULT_MAX_ERROR_COOLDOWN_S = 300.0


@dataclass
class CacheEntry:
    reading: IntensityReading
    stored_at: datetime
    fresh_until: datetime | None  # None: fresh forever


class ReadingCache:
    """Last good reading per (provider name, zone); shareable between providers and rebuilds."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str | None], CacheEntry] = {}

    def get(self, provider: str, zone: str | None) -> CacheEntry | None:
        return self._entries.get((provider, zone))

    def put(
        self, provider: str, zone: str | None, reading: IntensityReading, now: datetime, *, fresh_s: float | None = None
    ) -> CacheEntry:
        """Store ``reading``; it stays fresh for ``fresh_s`` if given, else for its ``interval_s``."""
        fresh_s = reading.interval_s if fresh_s is None else fresh_s
        fresh_until = None if math.isinf(fresh_s) else now + timedelta(seconds=fresh_s)
        entry = CacheEntry(reading, now, fresh_until)
        self._entries[(provider, zone)] = entry
        return entry

    def __len__(self) -> int:
        return len(self._entries)


class CachedProvider(IntensityProvider):
    """Wraps a provider: cached readings while fresh, cool-down after errors.

    Providers marked ``local`` (no network: static data, trace replay) are asked every time, since
    asking costs nothing and their timestamps should stay current; their last reading is still kept.
    """

    def __init__(
        self,
        inner: IntensityProvider,
        *,
        cache: ReadingCache | None = None,
        clock: Clock = default_clock,
        error_cooldown_s: float = DEFAULT_ERROR_COOLDOWN_S,
        max_error_cooldown_s: float = DEFAULT_MAX_ERROR_COOLDOWN_S,
        max_age_s: float | None = None,
    ) -> None:
        self.inner = inner
        self.name, self.kind, self.zone = inner.name, inner.kind, inner.zone
        self.cache = cache if cache is not None else ReadingCache()
        self.clock = clock
        self.error_cooldown_s = error_cooldown_s
        self.max_error_cooldown_s = max_error_cooldown_s
        self.max_age_s = max_age_s  # None: each reading's own interval_s
        self.cache_hits = 0
        self.consecutive_failures = 0
        self.cooldown_until: datetime | None = None
        self.last_error: ProviderError | None = None
        self.last_error_at: datetime | None = None

    @property
    def local(self) -> bool:
        return bool(getattr(self.inner, "local", False))

    def __repr__(self) -> str:
        return f"CachedProvider({self.inner!r})"

    def last_reading(self) -> IntensityReading | None:
        """The last good reading, fresh or not."""
        entry = self.cache.get(self.name, self.zone)
        return entry.reading if entry else None

    def current(self) -> IntensityReading:
        now = self.clock()
        entry = self.cache.get(self.name, self.zone)
        if entry is not None and not self.local and (entry.fresh_until is None or now < entry.fresh_until):
            self.cache_hits += 1
            return entry.reading
        if self.cooldown_until is not None and now < self.cooldown_until and self.last_error is not None:
            wait_s = (self.cooldown_until - now).total_seconds()
            raise ProviderError(
                self.name,
                f"{_message(self.last_error)} (cooling down, next try in {wait_s:.0f} s)",
                retry_after_s=wait_s,
            )
        try:
            reading = self.inner.current()
        except ProviderError as exc:
            self._remember_failure(exc, now)
            raise
        self.consecutive_failures = 0
        self.cooldown_until = None
        self.cache.put(self.name, self.zone, reading, now, fresh_s=self.max_age_s)
        return reading

    def _remember_failure(self, exc: ProviderError, now: datetime) -> None:
        self.consecutive_failures += 1
        cooldown_s = min(self.max_error_cooldown_s, self.error_cooldown_s * 2 ** (self.consecutive_failures - 1))
        if exc.retry_after_s is not None:
            cooldown_s = max(cooldown_s, exc.retry_after_s)
        self.cooldown_until = now + timedelta(seconds=cooldown_s)
        self.last_error, self.last_error_at = exc, now

    def cache_state(self, now: datetime | None = None) -> dict:
        now = now or self.clock()
        entry = self.cache.get(self.name, self.zone)
        if entry is None:
            return {"state": "empty"}
        fresh = entry.fresh_until is None or now < entry.fresh_until
        return {
            "state": "live" if self.local else ("fresh" if fresh else "expired"),
            "value_g_per_kwh": entry.reading.intensity_g_per_kwh,
            "timestamp": iso_utc(entry.reading.timestamp),
            "fetched_at": iso_utc(entry.reading.fetched_at),
            "fresh_until": iso_utc(entry.fresh_until),
            "hits": self.cache_hits,
        }

    def describe(self) -> dict:
        return {
            **self.inner.describe(),
            "last_error": _message(self.last_error) if self.last_error else None,
            "last_error_at": iso_utc(self.last_error_at),
            "consecutive_failures": self.consecutive_failures,
            "cooldown_until": iso_utc(self.cooldown_until),
            "cooldown_s": self.error_cooldown_s,
            "max_cooldown_s": self.max_error_cooldown_s,
            "max_age_s": self.max_age_s,
            "cache": self.cache_state(),
        }


def _message(exc: ProviderError) -> str:
    """The error text without the "provider: " prefix ProviderError adds."""
    text = str(exc)
    prefix = f"{exc.provider}: "
    return text[len(prefix):] if text.startswith(prefix) else text
