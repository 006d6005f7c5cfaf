"""`greentrainer select`: which tensors to train for a FLOPs budget ρ, on a profiled model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from transformers import PretrainedConfig

    from gt_core.selection.importance_file import SavedImportance


class _UsageError(Exception):
    """Bad command-line input, reported as one line on stderr with exit code 2."""


def _shape_source(model: Optional[str], tiny: Optional[str]) -> PretrainedConfig | torch.nn.Module:
    """The config of ``--model`` (only its config.json is read) or the tiny model ``train --tiny``
    trains (sized to the local tokenizer, LM head untied)."""
    if (model is None) == (tiny is None):
        raise _UsageError("give exactly one of --model or --tiny")
    from gt_core.models.loading import ModelLoadError, load_config, load_tiny_for_training

    try:
        return load_config(model) if model is not None else load_tiny_for_training(tiny)[0]
    except ModelLoadError as error:
        raise _UsageError(str(error)) from None


def _shape(
    source: PretrainedConfig | torch.nn.Module, saved: Mapping[str, object], batch_size: Optional[int],
    seq_len: Optional[int], target_len: Optional[int],
) -> tuple[int, int, Optional[int], str]:
    """Batch size, sequence lengths (tokens) and where they come from: the options given, else the
    shape an importance file was profiled at, else batch 4 at the model's maximum positions."""
    from gt_core.models.traits import max_positions

    run_seq_len = _positive_int(saved.get("seq_len"))
    if seq_len is None and run_seq_len is not None:
        batch_size = batch_size or _positive_int(saved.get("batch_size"))
        return batch_size or 4, run_seq_len, target_len or _positive_int(saved.get("target_len")), "the run's shape"
    if seq_len is None:
        seq_len = max_positions(getattr(source, "config", source))
        if seq_len is None:
            raise _UsageError("the model's config names no maximum sequence length (max_position_embeddings); give --seq-len")
        return batch_size or 4, seq_len, target_len, "the model's maximum positions"
    return batch_size or 4, seq_len, target_len, "--seq-len"


def _positive_int(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _importance_line(saved: SavedImportance | None) -> str:
    """The first line: which importance the DP maximised."""
    if saved is None:
        return (
            "importance: uniform (every tensor 1.0), so this is as many tensors as fit, not what training "
            "would pick; give --importance RUN/importance/epoch-E.json for that"
        )
    epoch = f" (epoch {saved.epoch} of the run)" if saved.epoch is not None else ""
    return f"importance: {saved.path}{epoch}"


def _fmt_flops(flops: float) -> str:
    for scale, unit in ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
        if flops >= scale:
            return f"{flops / scale:.3f} {unit}"
    return f"{flops:.0f} FLOPs"


def select(
    rho: float = typer.Option(..., "--rho", help="FLOPs budget as a fraction of full fine-tuning, in (0, 1]."),
    importance: Optional[Path] = typer.Option(
        None, "--importance",
        help="A run's RUN/importance/epoch-E.json or a JSON object {tensor name: importance}; default: every "
        "tensor equally important (as many tensors as fit, not what training would pick).",
    ),
    tiny: Optional[str] = typer.Option(None, "--tiny", help="Tiny random-init model family (opt, llama, t5, ...)."),
    model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path (reads only its config.json)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Batch size the FLOPs are profiled at (default: the run's, else 4)."
    ),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", min=1,
        help="Tokens per sequence, encoder side for T5 (default: the run's from --importance, else the model's "
        "maximum positions).",
    ),
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
        from gt_core.selection.dp import select_tensors

        from gt_core.selection.importance_file import ImportanceFileError, read_importance

        try:
            saved = read_importance(importance) if importance is not None else None
            shape_of_run = saved.profiled_at if saved is not None else {}
            batch_size, seq_len, target_len, shape_from = _shape(source, shape_of_run, batch_size, seq_len, target_len)
            try:
                prof = profile_model_shape(source, batch_size, seq_len, target_len=target_len)
            except (UnsupportedModuleError, UnsupportedOpError, ValueError) as error:
                raise _UsageError(f"cannot profile the model: {str(error).splitlines()[0]}") from None
            values, unlisted = saved.values_for(prof.names) if saved is not None else ([1.0] * len(prof), 0)
        except ImportanceFileError as error:
            raise _UsageError(str(error)) from None
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
    shape = {"batch_size": batch_size, "seq_len": seq_len, "target_len": target_len, "from": shape_from}
    if as_json:
        typer.echo(json.dumps({
            "importance": str(importance) if importance is not None else "uniform",
            "profiled_at": shape,
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
    typer.echo(_importance_line(saved))
    target = f", target {target_len}" if target_len else ""
    typer.echo(f"profiled at batch {batch_size} x {seq_len} tokens{target} ({shape_from})")
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
