"""Fallback chain: ask providers in order, answer with the first good reading.

Each member is a :class:`CachedProvider` (possibly wrapped by a
:class:`~carbonsched.providers.forecast_file.ForecastFileProvider`), so a member that just failed is in cool-down and is
skipped cheaply (a dead primary is not hammered); once its cool-down ends the chain asks it
first again, so it returns to the primary as soon as the primary recovers. The reading's
``provider`` names the member that answered. When every member fails, the most recent good
reading any member ever gave is returned with ``detail["stale"] = True`` (its age shows in
``timestamp``/``fetched_at``); with none, ProviderError lists each member's error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from carbonsched.providers.base import IntensityProvider
from carbonsched.providers.cache import CachedProvider
from carbonsched.providers.forecast_file import ForecastFileProvider
from carbonsched.types import IntensityReading, ProviderError

log = logging.getLogger("carbonsched.providers")


class FallbackChain(IntensityProvider):
    kind = "chain"

    def __init__(self, members: Sequence[CachedProvider | ForecastFileProvider], *, serve_stale: bool = True) -> None:
        if not members:
            raise ValueError("a fallback chain needs at least one provider")
        self.members = list(members)
        self.zone = self.members[0].zone
        self.name = (
            self.members[0].name if len(self.members) == 1 else f"chain({','.join(m.name for m in self.members)})"
        )
        self.serve_stale = serve_stale
        self.answered_by: str | None = None
        self.stale_served = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"FallbackChain({self.name!r})"

    def current(self) -> IntensityReading:
        errors: list[ProviderError] = []
        for member in self.members:
            try:
                reading = member.current()
            except ProviderError as exc:
                errors.append(exc)
                continue
            if errors:
                log.info("%s: answered by %s after: %s", self.name, member.name, "; ".join(map(str, errors)))
            self.answered_by = member.name
            return reading
        summary = "; ".join(str(exc) for exc in errors)
        self.last_error = summary
        stale = self._latest_good_reading()
        if stale is not None:
            self.stale_served += 1
            self.answered_by = None
            log.warning("%s: all providers failed, serving stale value from %s: %s", self.name, stale.provider, summary)
            return dataclasses.replace(stale, detail={**stale.detail, "stale": True, "errors": [str(e) for e in errors]})
        if len(errors) == 1:
            raise errors[0]
        waits = [exc.retry_after_s for exc in errors if exc.retry_after_s is not None]
        raise ProviderError(
            self.name,
            f"no usable value from any provider: {summary}",
            retry_after_s=min(waits) if len(waits) == len(errors) else None,
        )

    def _latest_good_reading(self) -> IntensityReading | None:
        if not self.serve_stale:
            return None
        readings = [r for r in (m.last_reading() for m in self.members) if r is not None]
        return max(readings, key=lambda r: r.fetched_at, default=None)

    def describe(self) -> dict:
        members = [member.describe() for member in self.members]
        chain_state = {
            "answered_by": self.answered_by,
            "stale_served": self.stale_served,
            "last_chain_error": self.last_error,
        }
        if len(members) == 1:
            return {**members[0], **chain_state}
        # Where the forecast comes from: the member that answered last (the primary before any answer).
        answering = next((m for m in members if m.get("name") == self.answered_by), members[0])
        return {
            "name": self.name,
            "kind": self.kind,
            "zone": self.zone,
            "calls": sum(m.get("calls", 0) for m in members),
            "last_error": self.last_error,
            **chain_state,
            "forecast_source": answering.get("forecast_source"),
            "forecast_hours": answering.get("forecast_hours"),
            "members": members,
        }
