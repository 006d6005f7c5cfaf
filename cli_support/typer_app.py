"""Running a typer app as a console entry point with one-line usage errors."""

from __future__ import annotations

from typing import NoReturn

import typer

EXIT_USAGE = 2


def run_app(app: typer.Typer) -> NoReturn:
    """Run ``app``; command-line usage errors become one ``error: ...`` line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # the usage-error family of the click that typer vendors
        if not hasattr(exc, "format_message"):
            raise
        message = exc.format_message()
        if message:  # empty for "no arguments given", where the help text was already printed
            typer.echo(f"error: {message}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(code or 0)
