"""`carbonsched doctor`: check measurement, provider credentials and directories on this node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        json_output: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
        socket: Optional[Path] = typer.Option(None, "--socket", help="Daemon socket path to check."),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="State directory to check."),
        provider: Optional[str] = typer.Option(None, "--provider", help="Provider spec, e.g. 'electricitymaps:DE'."),
        check_network: bool = typer.Option(False, "--check-network", help="Also fetch one value from the provider."),
    ) -> None:
        """Check GPU/CPU energy measurement, provider credentials and zone, socket and state dirs.

        Exits 1 when any check fails; warnings alone exit 0.
        """
        from carbonsched.service import doctor as doctor_checks

        checks = doctor_checks.run_checks(
            socket_path=socket, state_dir=state_dir, provider_spec=provider, check_network=check_network
        )
        render = doctor_checks.render_json if json_output else doctor_checks.render_text
        typer.echo(doctor_checks.redact(render(checks), os.environ))
        raise typer.Exit(doctor_checks.exit_code(checks))
