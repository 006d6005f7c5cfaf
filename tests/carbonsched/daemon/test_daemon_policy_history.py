"""The daemon hands a policy the stored readings of its provider and zone as ``Signals.history``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from carbonsched.types import IntensityReading
from inprocess_daemon import inprocess_daemon

HISTORY_POLICY = """kind = "forecast"
history_days = 7
rho_min = 0.4
rho_at_lowest = 1.0
rho_at_highest = 0.4
fallback_rho = 0.55
"""


def test_a_provider_without_forecast_is_ranked_within_the_stored_readings():
    with inprocess_daemon(HISTORY_POLICY, provider="static:DEU") as running:
        daemon = running.daemon
        row = daemon.store.latest_intensity()
        current_g = row["intensity_g_per_kwh"]
        current_at = datetime.fromtimestamp(row["ts"], timezone.utc)
        past = IntensityReading(intensity_g_per_kwh=current_g, timestamp=current_at, provider=row["provider"],
                                signal="average", fetched_at=current_at, zone=row["zone"])
        # Three readings of the same provider and zone in the last days: one cleaner, two dirtier;
        # another zone's cleaner reading and one older than 7 days must not count.
        for hours_ago, delta_g in ((3, -100.0), (30, 100.0), (100, 200.0)):
            at = current_at - timedelta(hours=hours_ago)
            daemon.store.add_intensity(replace(past, timestamp=at, intensity_g_per_kwh=current_g + delta_g))
        daemon.store.add_intensity(replace(past, zone="FRA", timestamp=current_at - timedelta(hours=2),
                                           intensity_g_per_kwh=current_g - 50))
        daemon.store.add_intensity(replace(past, timestamp=current_at - timedelta(days=8),
                                           intensity_g_per_kwh=current_g - 50))

        decision = daemon.work.decide().decision

    # Sorted: current-100, current, current+100, current+200: the current value ranks at 1/3.
    assert decision.rho == pytest.approx(1.0 - 0.6 / 3), decision.reason
    assert "last 7 days' readings" in decision.reason
