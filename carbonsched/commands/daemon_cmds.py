"""`carbonsched run|status|rho|intensity|jobs|override`: the daemon and its socket from the shell."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import NoReturn, Optional, TypeVar

import typer

from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable
from carbonsched.config import ConfigError, DaemonConfig, load_config
from carbonsched.protocol import JobRow, JsonObject, StatusError, StatusReply
from carbonsched.times import TimeFormatError, iso_utc, parse_instant

CONFIG_ENV = "CARBONSCHED_CONFIG"
Reply = TypeVar("Reply")

SocketOption = typer.Option(None, "--socket", help="Daemon socket (default: $CARBONSCHED_SOCKET, else your own daemon's socket while it listens, else the service's /run/carbonsched/).")
JsonOption = typer.Option(False, "--json", help="Print the daemon's reply as JSON.")
TimeoutOption = typer.Option(2.0, "--timeout-s", help="Give up waiting for the daemon after this many seconds.")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(config_file: Optional[Path], **overrides: object) -> DaemonConfig:
    try:
        base = load_config(config_file) if config_file is not None else DaemonConfig()
    except ConfigError as exc:
        _fail(str(exc), 2)
    return base.with_overrides(**overrides)


def _ask(socket_path: Optional[Path], timeout_s: float, ask: Callable[[DaemonClient], Reply]) -> Reply:
    """``ask``'s reply from the daemon at ``socket_path``; exits with one line when there is none."""
    client = DaemonClient(socket_path, timeout_s=timeout_s)
    try:
        return ask(client)
    except DaemonUnavailable as exc:
        if isinstance(exc.__cause__, TimeoutError) or "timed out" in str(exc):
            _fail(f"daemon at {client.socket_path} did not answer within {timeout_s:g} s")
        _fail(f"no daemon at {client.socket_path} (start it: {client.start_hint})")
    except DaemonRequestError as exc:
        _fail(f"{exc.code}: {exc.message}")
    finally:
        client.close()


def _print_json(reply: Mapping[str, object]) -> None:
    typer.echo(json.dumps({k: v for k, v in reply.items() if k not in ("id",)}, indent=2, ensure_ascii=False))


def _num(value: float | None, fmt: str = "{:.1f}", unit: str = "") -> str:
    return "unknown" if value is None else fmt.format(value) + unit


def _current_errors(status: StatusReply) -> list[StatusError]:
    """The status reply's recent errors without reload failures a later successful reload fixed."""
    reloaded_at = status.get("last_reload_at")  # None from a daemon older than reload tracking
    fixed = status.get("reload_error") is None and reloaded_at is not None
    return [
        e for e in status["errors"]
        if not (fixed and e["where"] == "reload" and _error_time(e["at"]) <= _error_time(reloaded_at))
    ]


def _forecast_line(provider: JsonObject) -> str:
    """Where the provider's forecast comes from and how far it reaches, from its describe()."""
    source = provider.get("forecast_source")
    if not source:
        return "none (the current value is taken to hold)"
    line = f"{source}, {_num(provider.get('forecast_hours'), '{:g}', ' h')}"
    if provider.get("forecast_file_error"):
        line += f" (forecast file: {provider['forecast_file_error']})"
    return line


def _error_time(text: str | None) -> datetime:
    """An error's time from the status reply; one that cannot be read sorts last (it stays listed)."""
    try:
        return parse_instant(str(text), "status time")
    except TimeFormatError:
        return datetime.max.replace(tzinfo=timezone.utc)


def job_plan_line(job: JobRow) -> str:
    """A deadline job's plan and pauses in one line (from the ``jobs`` reply)."""
    parts = []
    if job.get("deadline"):
        parts.append(f"deadline {job['deadline']}")
    plan = job.get("plan")
    if plan:
        if plan["pause_until_s"] is not None:
            parts.append(f"paused until {iso_utc(plan['pause_until_s'])}, then ρ {plan['rho']:.2f}")
        else:
            parts.append(f"ρ {plan['rho']:.2f}" + (" (deadline guard)" if plan["guard"] else ""))
            if plan["next_pause_at_s"] is not None:
                parts.append(f"next pause {iso_utc(plan['next_pause_at_s'])} → {iso_utc(plan['next_resume_at_s'])}")
        parts.append(f"{plan['work_left_epochs']:.2f} epochs left, slack {plan['slack_s']:.0f} s")
    parts.append(f"paused {job.get('paused_s') or 0:.0f} s in all")
    return "; ".join(parts)


def run(
    config_file: Optional[Path] = typer.Option(None, "--config", envvar=CONFIG_ENV, help="TOML config file."),
    socket: Optional[Path] = typer.Option(None, "--socket", help="Socket path to listen on."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Directory for the SQLite store."),
    provider: Optional[str] = typer.Option(None, "--provider", help="Provider spec, e.g. 'trace?speedup=600'."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Policy TOML file."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on 127.0.0.1:N."),
    poll_intensity_s: Optional[float] = typer.Option(None, "--poll-intensity-s", min=0.01, help="Intensity polling interval."),
    sample_power_s: Optional[float] = typer.Option(None, "--sample-power-s", min=0.01, help="Power sampling interval."),
    decide_s: Optional[float] = typer.Option(None, "--decide-s", min=0.01, help="ρ decision interval."),
    check_jobs_s: Optional[float] = typer.Option(None, "--check-jobs-s", min=0.01, help="How often to look for jobs whose processes died."),
) -> None:
    """Run the daemon in the foreground (systemd: Type=notify). SIGHUP reloads, SIGTERM stops."""
    from carbonsched.daemon.lifecycle import StartupError, run_daemon

    overrides = dict(
        socket=socket, state_dir=state_dir, provider=provider, policy=policy, metrics_port=metrics_port,
        poll_intensity_s=poll_intensity_s, sample_power_s=sample_power_s, decide_s=decide_s, check_jobs_s=check_jobs_s,
    )
    config = _config(config_file, **overrides)
    try:
        run_daemon(config, cli_overrides=overrides)
    except StartupError as exc:
        _fail(f"cannot start: {exc}")


def status(socket: Optional[Path] = SocketOption, as_json: bool = JsonOption, timeout_s: float = TimeoutOption) -> None:
    """What the daemon is doing: provider, policy, last decision, meter, jobs, errors."""
    r = _ask(socket, timeout_s, DaemonClient.status)
    if as_json:
        return _print_json(r)
    decision, intensity, policy, provider = r["last_decision"], r["intensity"], r["policy"], r["provider"] or {}
    lines = [
        f"daemon     pid {r['pid']}, up {_num(r['uptime_s'], '{:.0f}', ' s')}, version {r['version']}",
        f"provider   {provider.get('name', '?')}: "
        + (f"{_num(intensity['intensity_g_per_kwh'], unit=' gCO2e/kWh')} ({intensity['signal']}, age {intensity['age_s']:.0f} s)"
           if intensity else "unknown"),
        f"forecast   {_forecast_line(provider)}",
        f"policy     {policy['name']} ({policy['kind']}, {policy['file']}), rho_min {policy['rho_min']}",
        "rho        " + (f"{decision['rho']:.3f}: {decision['reason']}" if decision else "unknown: no decision yet"),
    ]
    if r["override"]:
        o = r["override"]
        lines.append(f"override   rho {o['rho']:.3f} until {o['expires_at'] or 'cleared'} (uid {o['uid']})")
    meter_error = r["meter"].get("error")
    lines.append(f"power      GPU {_num(r['gpu_power_w'], unit=' W')}; today {_num(r['carbon_used_today_g'], '{:.2f}', ' gCO2e')}"
                 + (f"; meter: {meter_error}" if meter_error else ""))
    jobs = r["jobs_running"]
    lines.append(f"jobs       {len(jobs)} running" + "".join(f"\n           {j['job_id']} {j['model']} ({j['scheme']}, pid {j['pid']})" for j in jobs))
    if r.get("reload_error"):
        lines.append(f"reload     {r['reload_error']}")
    for e in _current_errors(r)[-5:]:
        lines.append(f"error      {e['at']} {e['where']}: {e['message']}")
    typer.echo("\n".join(lines))


def rho(
    job_id: Optional[str] = typer.Option(None, "--job-id"),
    socket: Optional[Path] = SocketOption,
    as_json: bool = JsonOption,
    timeout_s: float = TimeoutOption,
) -> None:
    """The ρ the daemon gives training jobs now, and why."""
    r = _ask(socket, timeout_s, lambda client: client.rho_reply(job_id or None))
    if as_json:
        return _print_json(r)
    typer.echo(
        f"rho {r['rho']:.3f}{' (override)' if r['override'] else ''} — {r['policy']}: {r['reason']}\n"
        f"intensity {_num(r['intensity_g_per_kwh'], unit=' gCO2e/kWh')} ({r['signal']}, {r['provider']}), "
        f"valid until {r['valid_until']}"
    )


def intensity(
    config_file: Optional[Path] = typer.Option(None, "--config", envvar=CONFIG_ENV, help="TOML config file."),
    provider: Optional[str] = typer.Option(None, "--provider", help="Provider spec (default: the config's)."),
    as_json: bool = JsonOption,
) -> None:
    """Current grid carbon intensity from the configured provider (no daemon needed)."""
    from carbonsched.daemon.lifecycle import build_provider_from
    from carbonsched.types import ProviderError

    config = _config(config_file, provider=provider)
    try:
        reading = build_provider_from(config).current()
    except (ProviderError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        return _print_json({
            "intensity_g_per_kwh": reading.intensity_g_per_kwh, "signal": reading.signal, "provider": reading.provider,
            "zone": reading.zone, "timestamp": iso_utc(reading.timestamp), "fetched_at": iso_utc(reading.fetched_at),
            "estimated": reading.estimated, "age_s": reading.age_s(),
            "forecast": [{"timestamp": iso_utc(p.timestamp), "intensity_g_per_kwh": p.intensity_g_per_kwh} for p in reading.forecast],
        })
    typer.echo(
        f"{reading.intensity_g_per_kwh:.1f} gCO2e/kWh ({reading.signal}) from {reading.provider}"
        f"{' zone ' + reading.zone if reading.zone else ''}, for {iso_utc(reading.timestamp)}"
        f"{' (estimated)' if reading.estimated else ''}"
    )


def jobs(
    status_filter: Optional[str] = typer.Option(None, "--status", help="Only jobs with this status (running, completed, ...)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    socket: Optional[Path] = SocketOption,
    as_json: bool = JsonOption,
    timeout_s: float = TimeoutOption,
) -> None:
    """Training jobs the daemon knows about."""
    r = _ask(socket, timeout_s, lambda client: client.jobs(status_filter, limit))
    if as_json:
        return _print_json(r)
    if not r["jobs"]:
        typer.echo("no jobs")
    for j in r["jobs"]:
        rank = f" rank {j['rank']}/{j['world_size']}" if j.get("world_size") and j.get("rank") is not None else ""
        status = "paused" if j.get("paused") and j["status"] == "running" else j["status"]
        typer.echo(f"{j['job_id']}  {status:<11} {j['model']} ({j['scheme']}) pid {j['pid']} uid {j['uid']}{rank}  "
                   f"{j['started_at']} → {j['ended_at'] or '…'}")
        if j.get("deadline") or j.get("paused_s"):
            typer.echo("    " + job_plan_line(j))


def override(
    value: Optional[float] = typer.Argument(None, metavar="RHO", help="ρ in (0, 1] to serve instead of the policy's."),
    clear: bool = typer.Option(False, "--clear", help="Remove the override."),
    ttl_s: Optional[float] = typer.Option(None, "--ttl-s", help="Override expires after this many seconds."),
    socket: Optional[Path] = SocketOption,
    as_json: bool = JsonOption,
    timeout_s: float = TimeoutOption,
) -> None:
    """Force ρ (daemon's user or root only)."""
    if clear == (value is not None):
        _fail("give either RHO or --clear", 2)
    if value is not None and not 0.0 < value <= 1.0:
        _fail("RHO must be in (0, 1]", 2)
    r = _ask(socket, timeout_s, lambda client: client.override(None if clear else value, ttl_s))
    if as_json:
        return _print_json(r)
    o = r["override"]
    typer.echo("override cleared" if o is None else f"rho {o['rho']:.3f} until {o['expires_at'] or 'cleared'}")


def register(app: typer.Typer) -> None:
    for command in (run, status, rho, intensity, jobs, override):
        app.command()(command)
