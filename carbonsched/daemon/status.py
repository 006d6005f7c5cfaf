"""The daemon's `status` reply and the one-line status systemd shows."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from carbonsched import PROTOCOL_VERSION, __version__
from carbonsched.daemon.runtime_state import DecisionRecord, RuntimeState, Settings
from carbonsched.store import Store
from carbonsched.times import iso_utc
from carbonsched.types import utcnow


def _safe(what: Callable[[], Any]) -> Any:
    try:
        return what()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _job_rho(record: DecisionRecord | None) -> float | None:
    return record.decision.rho if record is not None else None


def build_status(
    state: RuntimeState, store: Store, *, meter: Any, meter_error: str | None, started_at: datetime,
    uptime_s: float, connections: int,
) -> dict[str, Any]:
    now = utcnow()
    view = state.view(now)
    settings = state.settings
    reading, record = view.reading, view.decision
    provider = _safe(settings.provider.describe) if settings.provider is not None else None
    policy = settings.policy
    meter_status = _safe(meter.status) if meter is not None else {"available": False, "error": meter_error}
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "started_at": iso_utc(started_at),
        "uptime_s": round(uptime_s, 3),
        "config": settings.config.describe(),
        "store": {"path": str(store.path), "schema_version": store.schema_version},
        "provider": provider,
        "intensity": None if reading is None else {
            "intensity_g_per_kwh": reading.intensity_g_per_kwh,
            "signal": reading.signal,
            "provider": reading.provider,
            "zone": reading.zone,
            "timestamp": iso_utc(reading.timestamp),
            "age_s": round(reading.age_s(now), 3),
            "estimated": reading.estimated,
        },
        "intensity_error": view.reading_error,
        "policy": {
            "name": getattr(policy, "name", None),
            "kind": getattr(policy, "kind", None),
            "file": getattr(policy, "source_file", None),
            "rho_min": getattr(policy, "rho_min", None),
        },
        "last_decision": None if record is None else {
            "rho": record.decision.rho,
            "reason": record.decision.reason,
            "policy": record.decision.policy,
            "decided_at": iso_utc(record.decided_at),
            "valid_until": iso_utc(record.valid_until),
        },
        "override": view.override.to_dict() if view.override is not None else None,
        "gpu_power_w": view.gpu_power_w,
        "carbon_used_today_g": view.carbon_today_g,
        "meter": meter_status,
        "jobs_running": [
            {"job_id": j["job_id"], "model": j["model"], "scheme": j["scheme"], "pid": j["pid"], "uid": j["uid"],
             "started_at": iso_utc(j["started_at"]), "rho": _job_rho(view.job_decisions.get(j["job_id"]))}
            for j in store.jobs(status="running")
        ],
        "connections": connections,
        "reload_error": view.reload_error,
        "last_reload_at": iso_utc(view.last_reload_at),
        "errors": view.errors,
    }


def status_line(settings: Settings, record: DecisionRecord | None, reload_error: str | None = None) -> str:
    """systemd's StatusText: ρ, policy and provider, and the last reload's error until a reload
    succeeds (``reload_error`` already says the running configuration is kept)."""
    rho = f"rho {record.decision.rho:.3f}" if record else "no decision yet"
    line = f"{rho}; policy {getattr(settings.policy, 'name', '?')}; provider {getattr(settings.provider, 'name', '?')}"
    return f"{line}; {reload_error}" if reload_error else line
