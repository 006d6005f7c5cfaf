"""A run's ``greentrainer train`` arguments, saved in its output directory and reused on resume.

``OUTPUT_DIR/run-args.json`` holds every option of the run (paths as strings). ``--resume DIR``
alone takes them all back; an option given again (on the command line or in ``--config``) wins
and is announced; the model is never swapped under a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

RUN_ARGS_FILE = "run-args.json"
# Not part of what a run is: where it resumes from, which file supplied options, where it writes.
NOT_SAVED = ("resume", "config", "output_dir")
MODEL_OPTIONS = ("tiny", "model")


class RunArgsError(ValueError):
    """The saved arguments cannot be reused; the message is one line."""


def save_run_args(output_dir: Path, opts: dict[str, Any]) -> Path:
    """Write the run's options to ``output_dir/run-args.json``; returns the path."""
    saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items() if k not in NOT_SAVED}
    path = output_dir / RUN_ARGS_FILE
    path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_run_args(run_dir: Path) -> dict[str, Any] | None:
    """The options saved in ``run_dir``, None when the run predates the file."""
    path = run_dir / RUN_ARGS_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunArgsError(f"{path}: cannot read the run's saved arguments ({exc})") from None
    if not isinstance(saved, dict):
        raise RunArgsError(f"{path}: expected a JSON object of option values")
    return saved


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)


def merge_resumed_args(
    ctx: typer.Context, saved: dict[str, Any], opts: dict[str, Any], explicit: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """``opts`` with every option not in ``explicit`` taken from ``saved``; returns the merged
    options and one note per explicit option that overrides a different saved value.

    Raises :class:`RunArgsError` when the model differs from the run's."""
    for name in MODEL_OPTIONS:
        if name in explicit and opts.get(name) != saved.get(name):
            other = f"--tiny {saved['tiny']}" if saved.get("tiny") else f"--model {saved.get('model')}"
            raise RunArgsError(
                f"{_flag(name)} {opts.get(name)}: the run in {opts['resume']} was trained with {other}; "
                "resume it with its own model (leave the model options out)"
            )
    params = {p.name: p for p in ctx.command.params}
    merged, notes = dict(opts), []
    for name, value in saved.items():
        param = params.get(name)
        if param is None or name in NOT_SAVED:
            continue  # an option this version no longer has
        if name in explicit:
            if opts.get(name) != param.process_value(ctx, value):
                notes.append(f"{_flag(name)} {_shown(opts.get(name))} overrides the run's {_shown(value)}")
            continue
        merged[name] = param.process_value(ctx, value)
    return merged, notes
