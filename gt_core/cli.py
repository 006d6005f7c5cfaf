"""`greentrainer` command line: each sub-command lives in its own module under gt_core.commands."""

from __future__ import annotations

import typer

from cli_support.typer_app import run_app
from gt_core.commands import evaluate_cmd, profile_cmd, select_cmd, show_cmd, train_cmd

app = typer.Typer(
    name="greentrainer",
    help="Fine-tune LLMs under a FLOPs budget by training only the tensors that matter.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: rich's boxed tables cut long option names ("--max-input-len…") at 80 columns.
    rich_markup_mode=None,
)

for _module in (profile_cmd, select_cmd, train_cmd, evaluate_cmd, show_cmd):
    _module.register(app)


@app.callback()
def _root() -> None:
    """Keeps sub-command names required even while only one sub-command is registered."""


def main() -> None:
    """Console entry point: command-line usage errors become one ``error: ...`` line, exit code 2."""
    run_app(app)


if __name__ == "__main__":
    main()
