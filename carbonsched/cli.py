"""`carbonsched` command line: each group of sub-commands lives in its own module."""

from __future__ import annotations

import typer

from cli_support.typer_app import run_app
from carbonsched.commands import (
    daemon_cmds, doctor_cmd, forecast_cmds, plan_cmds, policy_cmds, report_cmd, service_cmds, slurm_cmds,
)

app = typer.Typer(
    name="carbonsched",
    help="Carbon-aware compute budgets (ρ) for GreenTrainer jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (daemon_cmds, policy_cmds, doctor_cmd, report_cmd, service_cmds, plan_cmds, forecast_cmds, slurm_cmds):
    _module.register(app)


@app.callback()
def _root() -> None:
    """Keeps sub-command names required even while only one sub-command is registered."""


def main() -> None:
    """Console entry point: command-line usage errors become one ``error: ...`` line, exit code 2."""
    run_app(app)


if __name__ == "__main__":
    main()
