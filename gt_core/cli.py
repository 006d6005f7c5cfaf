"""`greentrainer` command line: each sub-command lives in its own module under gt_core.commands."""

from __future__ import annotations

import typer

from gt_core.commands import profile_cmd, select_cmd, train_cmd, evaluate_cmd, demo_cmd

app = typer.Typer(
    name="greentrainer",
    help="Fine-tune LLMs under a FLOPs budget by training only the tensors that matter.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (profile_cmd, select_cmd, train_cmd, evaluate_cmd, demo_cmd):
    _module.register(app)


def main() -> None:
    app()
