"""`carbonsched policy check|explain`: validate policy files and show how a ρ is reached."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from carbonsched.commands.daemon_cmds import CONFIG_ENV
from carbonsched.policies import PolicyFileError, PolicyFileUnreadable, PolicySource, policy_from_source
from carbonsched.times import iso_utc, parse_instant
from carbonsched.types import ForecastPoint, Signals, utcnow

policy_app = typer.Typer(help="Check policy files and explain the ρ they give.", no_args_is_help=True)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@policy_app.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="Policy TOML files.")]) -> None:
    """Print 'ok FILE (kind)' or every problem of each file; exit 1 on problems, 2 if unreadable."""
    exit_code = 0
    for path in files:
        try:
            policy = policy_from_source(PolicySource.from_path(path))
        except PolicyFileUnreadable as err:
            typer.echo(f"error: {err}", err=True)
            exit_code = 2
        except PolicyFileError as err:
            typer.echo(str(err))
            exit_code = max(exit_code, 1)
        else:
            typer.echo(f"ok {path} ({policy.kind})")
    raise typer.Exit(exit_code)


DAEMON_ASK_TIMEOUT_S = 1.0


def current_intensity(socket: Optional[Path], provider: Optional[str],
                      config_file: Optional[Path]) -> tuple[Optional[float], str]:
    """The grid intensity now (gCO2e/kWh) and where it came from: the running daemon's latest
    reading, else (no daemon, or ``provider`` given) a reading of the provider; None when neither answers.
    Raises ProviderSpecError for a provider spec that cannot be built."""
    from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

    why_provider = ""
    if provider is None:
        with DaemonClient(socket, timeout_s=DAEMON_ASK_TIMEOUT_S) as client:
            try:
                reading = client.status()["intensity"]
            except (DaemonUnavailable, DaemonRequestError):
                reading, why_provider = None, "no daemon answered"
            if reading is not None:
                return reading["intensity_g_per_kwh"], f"the daemon at {client.socket_path} ({reading['provider']})"
            why_provider = why_provider or "the daemon has no reading yet"
    from carbonsched.commands.plan_cmds import provider_spec
    from carbonsched.providers import build_provider
    from carbonsched.types import ProviderError

    spec = provider_spec(provider, config_file)
    source = f"provider {spec}" + (f" ({why_provider})" if why_provider else "")
    provider_now = build_provider(spec)  # ProviderSpecError: a usage error for the caller
    try:
        return provider_now.current().intensity_g_per_kwh, source
    except (ProviderError, ValueError) as exc:
        return None, f"{source} failed: {exc}"


def _points_known_at(path: Optional[Path], now: datetime, option: str) -> tuple[ForecastPoint, ...]:
    """The points of the forecast file ``path`` as known at ``now`` (of a vintages file: the newest
    issue at or before it); none without a file. A file that cannot be used is a usage error."""
    if path is None:
        return ()
    # Imported only with a file: the providers package loads numpy, which `policy explain` otherwise need not.
    from carbonsched.providers.forecast_csv import ForecastFileError, read_forecast_csv

    try:
        points = read_forecast_csv(path).known_at(now)
    except ForecastFileError as err:
        raise _fail(str(err), 2) from None
    if points is None:
        raise _fail(f"{option} {path}: no forecast issued at or before {iso_utc(now)}", 2)
    return points


@policy_app.command("explain")
def explain(
    file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    intensity: Annotated[Optional[float], typer.Option(
        help="Grid intensity, gCO2e/kWh (omit: the running daemon's current reading, else the provider's).")] = None,
    forecast_file: Annotated[Optional[Path], typer.Option(help="CSV: timestamp,intensity_g_per_kwh (header optional), any forecast_file layout.")] = None,
    history_file: Annotated[Optional[Path], typer.Option(help="CSV of past readings, as --forecast-file "
                                                              "(ranked by a forecast policy's history_days).")] = None,
    gpu_power_w: Annotated[Optional[float], typer.Option(help="Measured GPU power, W.")] = None,
    used_today_g: Annotated[Optional[float], typer.Option(help="Carbon used today, gCO2e.")] = None,
    used_job_g: Annotated[Optional[float], typer.Option(help="Carbon used by the job, gCO2e.")] = None,
    now: Annotated[Optional[str], typer.Option(help="Evaluation time, ISO 8601 (UTC unless an offset is given) or unix seconds (default: now).")] = None,
    socket: Annotated[Optional[Path], typer.Option(
        help="Daemon socket asked for the intensity (default: $CARBONSCHED_SOCKET or the per-user runtime dir).")] = None,
    provider: Annotated[Optional[str], typer.Option(
        help="Provider spec read for the intensity instead of asking the daemon.")] = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", envvar=CONFIG_ENV, help="Daemon TOML config whose provider is read when no daemon answers.")] = None,
    unknown_intensity: Annotated[bool, typer.Option(
        "--unknown-intensity", help="Explain the ρ given while the intensity is unknown (no daemon or provider asked).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the ρ FILE gives for the given signals, and why (a fresh policy: no hysteresis/dwell history)."""
    try:
        policy = policy_from_source(PolicySource.from_path(file))
    except PolicyFileUnreadable as err:
        raise _fail(str(err), 2) from None
    except PolicyFileError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None
    if unknown_intensity and intensity is not None:
        raise _fail("give --intensity or --unknown-intensity, not both", 2)
    intensity_from = "--unknown-intensity" if unknown_intensity else "--intensity"
    if intensity is None and not unknown_intensity:
        from carbonsched.providers import ProviderSpecError

        try:
            intensity, intensity_from = current_intensity(socket, provider, config_file)
        except ProviderSpecError as exc:
            raise _fail(str(exc), 2) from None
    try:
        at: datetime = parse_instant(now, "--now") if now else utcnow()
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    forecast = _points_known_at(forecast_file, at, "--forecast-file")
    history = _points_known_at(history_file, at, "--history-file")
    signals = Signals(now=at, intensity_g_per_kwh=intensity, forecast=forecast, history=history,
                      gpu_power_w=gpu_power_w, carbon_used_today_g=used_today_g, carbon_used_job_g=used_job_g)
    explanation = policy.explain(signals)
    decision = policy.decide(signals)
    if as_json:
        typer.echo(json.dumps({"file": str(file), "policy": decision.policy, "kind": policy.kind,
                               "rho": decision.rho, "rho_min": policy.rho_min, "reason": decision.reason,
                               "intensity_g_per_kwh": intensity, "intensity_from": intensity_from,
                               "explanation": explanation.splitlines()}, ensure_ascii=False))
        return
    if not intensity_from.startswith("--"):
        typer.echo(f"intensity unknown ({intensity_from})" if intensity is None
                   else f"intensity {intensity:g} gCO2e/kWh from {intensity_from}")
    typer.echo(f"ρ {decision.rho:.2f}  ({decision.reason})")
    typer.echo(explanation)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
