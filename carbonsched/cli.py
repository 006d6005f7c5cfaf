"""`carbonsched` command line: each group of sub-commands lives in its own module."""

from __future__ import annotations

import typer

from carbonsched.commands import daemon_cmds, policy_cmds, doctor_cmd

app = typer.Typer(
    name="carbonsched",
    help="Carbon-aware compute budgets (ρ) for GreenTrainer jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (daemon_cmds, policy_cmds, doctor_cmd):
    _module.register(app)


def main() -> None:
    app()
