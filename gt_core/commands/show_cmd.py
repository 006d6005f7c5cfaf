"""`greentrainer show RUN_DIR`: what a run trained, epoch by epoch, from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from carbonsched.protocol import JsonObject


class _UsageError(Exception):
    """Bad command-line input, reported as one line on stderr with exit code 2."""


def read_epoch_records(run_dir: Path) -> list[JsonObject]:
    """The epoch records of ``run_dir/metrics.jsonl`` in order; a usage error names what is wrong."""
    if not run_dir.is_dir():
        raise _UsageError(f"run directory {run_dir}: no such directory")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise _UsageError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return records


def _epoch_lines(record: JsonObject, with_names: bool) -> list[str]:
    rho = record.get("rho_asked")
    head = (
        f"epoch {record['epoch']}: {record.get('scheme', '?')}, rho {'-' if rho is None else f'{rho:.2f}'}"
        f" -> {record.get('rho_effective', float('nan')):.3f}, {record.get('tensors_selected', 0)} tensors"
        f" ({100 * record.get('param_share_selected', 0.0):.1f}% of parameters)"
    )
    notes = [
        f"rho {record['rho_clamped_from']:.3f} raised to the feasible floor" if record.get("rho_clamped_from") else None,
        f"fallback: {record['fallback']}" if record.get("fallback") else None,
        "daemon unreachable: fallback rho" if record.get("rho_source") == "daemon-fallback" else None,
    ]
    lines = [head + "".join(f"; {note}" for note in notes if note)]
    selected = record.get("selected")
    if with_names and selected:
        lines += [f"  {name}" for name in selected]
    elif with_names and selected is None:
        lines.append("  (fixed set of the scheme: no per-tensor selection)")
    return lines


def show(
    run_dir: Path = typer.Argument(..., help="A run's --output-dir."),
    names: bool = typer.Option(True, "--names/--no-names", help="List the selected tensors of every epoch."),
    as_json: bool = typer.Option(False, "--json", help="Print the epoch records as a JSON list."),
) -> None:
    """What a run trained: per epoch ρ asked and achieved, the selected tensors and their parameter share."""
    try:
        records = read_epoch_records(run_dir)
    except _UsageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    args_path = run_dir / "run-args.json"
    if args_path.is_file():
        saved = json.loads(args_path.read_text(encoding="utf-8"))
        model = saved.get("model") or f"tiny {saved.get('tiny')}"
        typer.echo(f"run {run_dir}: {model}, scheme {saved.get('scheme')}, {saved.get('epochs')} epochs planned")
    if not records:
        typer.echo("no epoch finished yet")
    for record in records:
        for line in _epoch_lines(record, names):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("show")(show)
