"""A run's ``greentrainer train`` arguments, saved in its output directory and reused on resume.

``OUTPUT_DIR/run-args.json`` holds every option of the run. ``--resume DIR`` alone takes them
all back; an option given again (on the command line or in ``--config``) wins and is announced;
the model is never swapped under a checkpoint.

Local paths (``--data``, ``--val-data``, ``--rho-schedule``, a local ``--model``) are saved
absolute, so a run resumes from any directory. Files written before that hold paths relative to
the directory the run started in, which is not recorded: such a path is looked up relative to the
current directory (where the run was usually started and resumed from), then relative to the run
directory and each directory above it; the first that exists is used and announced. A value
found nowhere stays as it is (it may be a data set or hub model name).
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
# Options naming a local file or directory when one exists (--data and --model may also be names).
PATH_OPTIONS = ("data", "val_data", "rho_schedule", "model")


class RunArgsError(ValueError):
    """The saved arguments cannot be reused; the message is one line."""


def with_absolute_paths(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with each path option that names an existing file or directory (relative to the
    current directory) as an absolute path string."""
    absolute = dict(opts)
    for name in PATH_OPTIONS:
        value = opts.get(name)
        if value is not None and Path(value).exists():
            absolute[name] = str(Path(value).resolve())
    return absolute


def resolve_saved_paths(saved: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """``saved`` with relative path options (files from before absolute paths) made absolute, as the
    module text says; returns it and one note per path resolved so."""
    resolved, notes = dict(saved), []
    for name in PATH_OPTIONS:
        value = saved.get(name)
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        for base in (Path.cwd(), run_dir.resolve(), *run_dir.resolve().parents):
            if (base / value).exists():
                resolved[name] = str((base / value).resolve())
                notes.append(f"{run_dir / RUN_ARGS_FILE} has the relative {_flag(name)} {value}; using {resolved[name]}")
                break
    return resolved, notes


def save_run_args(output_dir: Path, opts: dict[str, Any]) -> Path:
    """Write the run's options to ``output_dir/run-args.json`` (local paths absolute); returns the path."""
    opts = with_absolute_paths(opts)
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

    Relative paths in ``saved`` are resolved first (:func:`resolve_saved_paths`, noted); paths
    given again are compared with the saved ones as absolute paths.

    Raises :class:`RunArgsError` when the model differs from the run's."""
    saved, notes = resolve_saved_paths(saved, Path(opts["resume"]))
    given = with_absolute_paths(opts)
    for name in MODEL_OPTIONS:
        if name in explicit and given.get(name) != saved.get(name):
            other = f"--tiny {saved['tiny']}" if saved.get("tiny") else f"--model {saved.get('model')}"
            raise RunArgsError(
                f"{_flag(name)} {opts.get(name)}: the run in {opts['resume']} was trained with {other}; "
                "resume it with its own model (leave the model options out)"
            )
    params = {p.name: p for p in ctx.command.params}
    merged = dict(opts)
    for name, value in saved.items():
        param = params.get(name)
        if param is None or name in NOT_SAVED:
            continue  # an option this version no longer has
        if name in explicit:
            if given.get(name) != with_absolute_paths({name: param.process_value(ctx, value)}).get(name):
                notes.append(f"{_flag(name)} {_shown(opts.get(name))} overrides the run's {_shown(value)}")
            continue
        merged[name] = param.process_value(ctx, value)
    return merged, notes
