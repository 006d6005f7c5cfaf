"""``--config FILE.toml|yaml``: a command's options from a file; flags on the command line win.

Keys are the option names with ``-`` or ``_`` (``grad-accumulation`` or ``grad_accumulation``),
values of the option's type (lists for repeatable options). An unknown key, a value of the wrong
type or an unreadable file is a usage error naming the file and the key.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

import typer


class ConfigFileError(ValueError):
    """The config file cannot be used; the message names the file and the key."""


def read_config_file(path: Path) -> dict[str, object]:
    """The file's top-level table, keys normalised to ``snake_case``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigFileError(f"--config {path}: use a .toml, .yaml or .yml file")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path}: not valid TOML: {exc}") from None
    except ImportError:
        raise ConfigFileError("--config with YAML needs PyYAML: pip install pyyaml") from None
    except Exception as exc:  # yaml.YAMLError and friends: one line, never a traceback
        if isinstance(exc, ConfigFileError):
            raise
        raise ConfigFileError(f"--config {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a table of option = value")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def apply_config_file(ctx: typer.Context, path: Path, values: dict[str, object], skip: tuple[str, ...] = ("config",)) -> dict[str, object]:
    """``values`` (the command's parameters) with every option not given on the command line
    taken from ``path``. Values are converted and range-checked as the option itself would be."""
    params = {p.name: p for p in ctx.command.params if p.name not in skip}
    merged = dict(values)
    for key, raw in read_config_file(path).items():
        param = params.get(key)
        if param is None:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean {close[0].replace('_', '-')}?)" if close else ""
            raise ConfigFileError(f"--config {path}: unknown option {key.replace('_', '-')!r}{hint}")
        source = ctx.get_parameter_source(key)
        if getattr(source, "name", "") in ("COMMANDLINE", "ENVIRONMENT"):
            continue  # the command line overrides the file
        try:
            if getattr(param, "is_flag", False) and not isinstance(raw, bool):
                raise typer.BadParameter(f"expected true or false, got {raw!r}")
            if getattr(param, "multiple", False) and not isinstance(raw, list):
                raw = [raw]
            merged[key] = param.process_value(ctx, raw)
        except typer.BadParameter as exc:
            raise ConfigFileError(f"--config {path}: {key.replace('_', '-')}: {exc.message}") from None
    return merged
