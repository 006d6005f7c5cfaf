"""`carbon-demo` command line: one command, the daemon-driven main job on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from cli_support.typer_app import EXIT_USAGE, run_app

EXIT_DEMO_FAILED = 1

app = typer.Typer(
    name="carbon-demo",
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def demo(
    epochs: int = typer.Option(6, "--epochs", min=1, help="Training epochs (the daemon is asked for ρ before each)."),
    out: Path = typer.Option(Path("demo-out"), "--out", help="Directory for the plot, the report, the run's metrics and kept state."),
    keep_daemon_state: bool = typer.Option(False, "--keep-daemon-state", help="Keep the daemon's SQLite store in OUT/daemon-state."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes and a faster trace: a smoke run in seconds."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (a random-init tiny model needs ~1e-3..2e-3)."),
) -> None:
    """Start a carbonsched daemon, fine-tune a tiny OPT with ρ from it, print energy and carbon per epoch."""
    from carbon_demo.demo import DemoError, DemoOptions, run_demo

    if lr <= 0:
        typer.echo(f"error: --lr must be positive, got {lr}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        run_demo(DemoOptions(epochs=epochs, out=out, keep_daemon_state=keep_daemon_state, quick=quick, lr=lr),
                 echo=typer.echo)
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_DEMO_FAILED)


def main() -> None:
    """Console entry point: command-line usage errors become one ``error: ...`` line, exit code 2."""
    run_app(app)


if __name__ == "__main__":
    main()
