"""`greentrainer select`: which tensors to train for a FLOPs budget ρ, on a profiled model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer


class _UsageError(Exception):
    """Bad command-line input, reported as one line on stderr with exit code 2."""


def _shape_source(model: Optional[str], tiny: Optional[str]) -> Any:
    """The config of ``--model`` (only its config.json is read) or the tiny model of ``--tiny``."""
    if (model is None) == (tiny is None):
        raise _UsageError("give exactly one of --model or --tiny")
    from gt_core.models import ModelLoadError, load_config, load_model

    try:
        return load_config(model) if model is not None else load_model(tiny=tiny)
    except ModelLoadError as error:
        raise _UsageError(str(error)) from None


def _read_importance(path: Path, names: list[str]) -> tuple[list[float], int]:
    """Importance per profiled tensor from a {name: value} JSON file; unlisted tensors get -inf."""
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise _UsageError(f"cannot read importance file {str(path)!r}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise _UsageError(f"importance file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise _UsageError(f"importance file {str(path)!r} must map tensor names to numbers")
    known = set(names)
    unknown = [name for name in data if name not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise _UsageError(f"importance file names tensors the model does not train: {shown}")
    bad = [name for name, value in data.items() if isinstance(value, bool) or not isinstance(value, (int, float))]
    if bad:
        raise _UsageError(f"importance of {bad[0]!r} is not a number")
    values = [float(data.get(name, -math.inf)) for name in names]
    return values, sum(name not in data for name in names)


def _fmt_flops(flops: float) -> str:
    for scale, unit in ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
        if flops >= scale:
            return f"{flops / scale:.3f} {unit}"
    return f"{flops:.0f} FLOPs"


def select(
    rho: float = typer.Option(..., "--rho", help="FLOPs budget as a fraction of full fine-tuning, in (0, 1]."),
    importance: Optional[Path] = typer.Option(
        None, "--importance", help="JSON file {tensor name: importance}; default: every tensor equally important."
    ),
    tiny: Optional[str] = typer.Option(None, "--tiny", help="Tiny random-init model family (opt, llama, t5, ...)."),
    model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path (reads only its config.json)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Batch size the FLOPs are profiled at."),
    seq_len: int = typer.Option(64, "--seq-len", min=1, help="Tokens per sequence (encoder side for T5)."),
    target_len: Optional[int] = typer.Option(None, "--target-len", min=1, help="Decoder length (T5 only)."),
    resolution: int = typer.Option(1000, "--resolution", min=1, help="DP quantisation units in the backward budget."),
    as_json: bool = typer.Option(False, "--json", help="Print the selection as JSON."),
) -> None:
    """Choose the tensors to train under a FLOPs budget ρ (GreenTrainer's DP on a profiled model)."""
    try:
        if not 0.0 < rho <= 1.0:
            raise _UsageError(f"--rho must be in (0, 1], got {rho:g}")
        source = _shape_source(model, tiny)

        from gt_core.profiler import UnsupportedModuleError, UnsupportedOpError, profile_model_shape
        from gt_core.selector import select_tensors

        try:
            prof = profile_model_shape(source, batch_size, seq_len, target_len=target_len)
        except (UnsupportedModuleError, UnsupportedOpError, ValueError) as error:
            raise _UsageError(f"cannot profile the model: {str(error).splitlines()[0]}") from None
        if importance is None:
            values, unlisted = [1.0] * len(prof), 0
        else:
            values, unlisted = _read_importance(importance, prof.names)
        try:
            sel = select_tensors(prof, values, rho, resolution=resolution)
        except ValueError as error:  # InfeasibleBudgetError included: its message has the minimum ρ
            raise _UsageError(str(error)) from None
    except _UsageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    counts = dict(zip(prof.names, prof.param_counts.tolist()))
    total = max(sum(counts.values()), 1)
    chosen = sum(counts[name] for name in sel.names)
    if as_json:
        typer.echo(json.dumps({
            "rho": sel.rho,
            "rho_effective": sel.rho_effective,
            "flops": sel.flops,
            "additive_flops": sel.additive_flops,
            "t_full": sel.t_full,
            "t_fp": prof.t_fp,
            "objective": sel.objective,
            "n_tensors": len(prof),
            "selected": sel.names,
            "param_share_selected": chosen / total,
        }, indent=2))
        return
    typer.echo(
        f"selected {len(sel.names)} of {len(prof)} tensors, {100 * chosen / total:.1f}% of parameters "
        f"(importance sum {sel.objective:.6g}):"
    )
    for name in sel.names:
        typer.echo(f"  {name}  ({100 * counts[name] / total:.2f}% of parameters)")
    if unlisted:
        typer.echo(f"{unlisted} tensors not in the importance file were never selected")
    typer.echo(
        f"FLOPs per step: {_fmt_flops(sel.flops)} of {_fmt_flops(sel.t_full)} for full fine-tuning "
        f"(forward {_fmt_flops(prof.t_fp)})"
    )
    typer.echo(f"effective rho: {sel.rho_effective:.4f} (budget {sel.rho:g})")


def register(app: typer.Typer) -> None:
    app.command("select")(select)
