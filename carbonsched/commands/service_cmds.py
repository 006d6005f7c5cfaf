"""`carbonsched service install|uninstall|status`: the daemon as a systemd service."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from carbonsched.service.host import Host
from carbonsched.service.install import (
    DEFAULT_USER, InstallOptions, ProviderChoice, ProviderMissing, checked_provider, chosen_provider, installed_user,
    plan_install, plan_uninstall, require_privileges,
)
from carbonsched.service.plan import Plan, ServiceError
from carbonsched.service.status import service_report
from carbonsched.service.unit import UNIT_NAME

ROOT_ENV = "CARBONSCHED_SERVICE_ROOT"

service_app = typer.Typer(help="Install, remove and inspect the carbonsched systemd service.", no_args_is_help=True)

RootOption = typer.Option(
    Path("/"), "--root", envvar=ROOT_ENV, hidden=True,
    help="Install into this directory tree instead of the machine (no service manager is involved).",
)
DryRunOption = typer.Option(False, "--dry-run", help="Print every file and command; change nothing.")


def _fail(exc: ServiceError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def _carry_out(host: Host, make_plan: Callable[[], Plan], dry_run: bool) -> Plan:
    """Plan, check privileges when something is to change, then run (or only print) the steps."""
    try:
        plan = make_plan()
        if not dry_run and plan.steps:
            require_privileges(host)
        plan.run(host, typer.echo, dry_run=dry_run)
    except ServiceError as exc:
        raise _fail(exc) from None
    return plan


def _provider_choice(host: Host, options: InstallOptions) -> ProviderChoice:
    """The provider to install: named by an option or a config, else asked for on a terminal."""
    try:
        return chosen_provider(host, options)
    except ProviderMissing as missing:
        if not sys.stdin.isatty():
            raise _fail(missing) from None
        typer.echo(f"Which provider? One of {missing.forms}", err=True)
    except ServiceError as exc:
        raise _fail(exc) from None
    typer.echo("provider: ", nl=False, err=True)  # stdout stays for the install's own lines
    answer = sys.stdin.readline()
    try:
        return ProviderChoice(checked_provider(answer, "provider"), "answered here")
    except ServiceError as exc:
        raise _fail(exc) from None


@service_app.command("install")
def install(
    provider: Optional[str] = typer.Option(None, "--provider", help="Where grid intensity comes from, e.g. "
                                           "electricitymaps:DE, static:FRA; 'trace' replays the bundled synthetic "
                                           "trace. Required unless --config or the installed config names one."),
    user: str = typer.Option(DEFAULT_USER, "--user", help="System user and group the daemon runs as."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Install this config instead of the commented default."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Install this policy instead of the default one."),
    dry_run: bool = DryRunOption,
    root: Path = RootOption,
) -> None:
    """Create the user and group, /etc/carbonsched/ (config, policy), the unit; enable and start it."""
    host = Host(root.resolve())
    options = InstallOptions(user=user, config_file=config_file, policy_file=policy_file, provider=provider)
    choice = _provider_choice(host, options)
    typer.echo(choice.describe())
    options = replace(options, provider=choice.spec)
    plan = _carry_out(host, lambda: plan_install(host, options), dry_run)
    if not plan.steps:
        typer.echo(f"nothing to change: {UNIT_NAME} is installed as wanted")
    elif dry_run:
        typer.echo(f"dry run: {len(plan.steps)} step(s) not applied")
    else:
        typer.echo(f"installed {UNIT_NAME} (user {user})")


@service_app.command("uninstall")
def uninstall(
    purge: bool = typer.Option(False, "--purge", help="Also remove /etc/carbonsched, the state (store) and the user."),
    user: Optional[str] = typer.Option(None, "--user", help="The service's user (default: the installed unit's User=)."),
    dry_run: bool = DryRunOption,
    root: Path = RootOption,
) -> None:
    """Stop, disable and remove the unit; keep config, state and user unless --purge."""
    host = Host(root.resolve())
    plan = _carry_out(host, lambda: plan_uninstall(host, user or installed_user(host) or DEFAULT_USER, purge=purge), dry_run)
    if not plan.steps:
        typer.echo(f"nothing to remove: {UNIT_NAME} is not installed")


@service_app.command("status")
def status(root: Path = RootOption) -> None:
    """What is installed and whether it runs; exit 0 when running, 3 when not."""
    try:
        report = service_report(Host(root.resolve()))
    except ServiceError as exc:
        raise _fail(exc) from None
    typer.echo("\n".join(report.lines))
    raise typer.Exit(0 if report.running else 3)


def register(app: typer.Typer) -> None:
    app.add_typer(service_app, name="service")
