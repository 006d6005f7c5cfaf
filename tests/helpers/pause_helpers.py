"""A sped-up trace that keeps a deadline job paused for its first hours, and what the daemon says
about paused jobs: the set-up the pause tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon_helpers import DaemonProcess, ask_new_conn, wait_until

DIRTY_HOURS, CLEAN_HOURS = 23, 25


def write_trace(directory: Path) -> Path:
    """A trace dirty (500 gCO2e/kWh) for 23 hours, then clean (40) for 25: a job with a deadline
    a day away is planned to wait for the clean hours."""
    path = directory / "trace.csv"
    rows = [f"2026-01-01T{h % 24:02d}:00:00Z" if h < 24 else f"2026-01-02T{h - 24:02d}:00:00Z" for h in
            range(DIRTY_HOURS + CLEAN_HOURS)]
    values = [500] * DIRTY_HOURS + [40] * CLEAN_HOURS
    path.write_text("timestamp,intensity_g_per_kwh\n" + "".join(f"{t},{v}\n" for t, v in zip(rows, values)))
    return path


def paused_job(daemon: DaemonProcess) -> dict[str, Any] | None:
    """The first job ``carbonsched jobs`` lists as paused, else None."""
    reply = ask_new_conn(daemon.socket, op="jobs")
    jobs = reply["jobs"] if reply and reply.get("ok") else []
    return next((j for j in jobs if j["paused"]), None)


def wait_for_reading(daemon: DaemonProcess, timeout_s: float = 30.0) -> bool:
    """Wait until the daemon has an intensity reading, so that a job is planned as it registers."""
    def has_reading() -> bool:
        return (ask_new_conn(daemon.socket, op="rho") or {}).get("intensity_g_per_kwh") is not None

    return wait_until(has_reading, timeout_s, 0.1)
