"""`greentrainer profile`: per-tensor FLOPs of one training step of a model."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Optional

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    import click
    from transformers import PretrainedConfig

    from gt_core.profiler import TensorProfile

_COUNTS = ("all", "matmul")
_PREFIXES = ("", "k", "M", "G", "T", "P", "E")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


class _OneLineErrors(TyperCommand):
    """Report bad command-line arguments as one ``error: ...`` line (exit code 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:  # click's UsageError family; typer vendors click privately
            if not hasattr(exc, "format_message"):
                raise
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)


def _scaled(value: float) -> tuple[float, str]:
    i = 0
    while abs(value) >= 1000 and i < len(_PREFIXES) - 1:
        value /= 1000
        i += 1
    return value, _PREFIXES[i]


def human_flops(flops: float) -> str:
    """FLOPs with an SI prefix, e.g. ``1.2 MFLOPs``."""
    value, prefix = _scaled(float(flops))
    return f"{value:.3g} {prefix}FLOPs"


def human_count(n: float) -> str:
    """A count with an SI prefix, e.g. ``32.8k``."""
    value, prefix = _scaled(float(n))
    return f"{value:.3g}{prefix}"


def _table(prof: TensorProfile) -> str:
    width = max([len("tensor")] + [len(n) for n in prof.names])
    lines = [f"{'#':>4}  {'tensor':<{width}}  {'params':>8}  {'t_dw':>14}  {'t_dy':>14}"]
    for i, name in enumerate(prof.names):
        lines.append(
            f"{i:>4}  {name:<{width}}  {human_count(prof.param_counts[i]):>8}  "
            f"{human_flops(prof.t_dw[i]):>14}  {human_flops(prof.t_dy[i]):>14}"
        )
    lines += [
        "",
        f"tensors           {len(prof.names)} ({human_count(prof.param_counts.sum())} parameters)",
        f"t_fp              {human_flops(prof.t_fp)}  (forward, one batch)",
        f"t_full            {human_flops(prof.t_full)}  (forward + full backward)",
        f"min feasible rho  {prof.min_feasible_rho():.3f}",
    ]
    return "\n".join(lines)


def _memory_table(config: PretrainedConfig, prof: TensorProfile, world_size: int, strategy: str, precision: str, batch_size: int,
                  seq_len: int, as_json: bool) -> str:
    from gt_core.training.memory_plan import PLAN_RHOS, RankMemoryModel

    plans = {
        checkpointing: RankMemoryModel(config, prof, world_size=world_size, strategy=strategy, precision=precision,
                                       batch_size=batch_size, seq_len=seq_len,
                                       gradient_checkpointing=checkpointing).plan()
        for checkpointing in (False, True)
    }
    rows = []
    for plain, checkpointed in zip(plans[False], plans[True]):
        rows.append({"run": plain.label, "weights": plain.weights, "gradients": plain.gradients,
                     "optimizer_state": plain.optimizer_state, "activations": plain.activations,
                     "activations_checkpointed": checkpointed.activations, "transient": plain.transient,
                     "total": plain.total, "total_checkpointed": checkpointed.total})
    if as_json:
        return json.dumps({"world_size": world_size, "strategy": strategy, "precision": precision,
                           "batch_size": batch_size, "seq_len": seq_len, "bytes_per_rank": rows}, indent=2)
    unit, scale = ("GiB", 2**30) if max(r["total"] for r in rows) >= 2**30 else ("MiB", 2**20)
    gib = lambda n: f"{n / scale:.2f}"  # noqa: E731
    width = max(len(r["run"]) for r in rows)
    lines = [
        f"memory per rank ({unit}): {world_size} process{'es' if world_size > 1 else ''}, {strategy}, {precision}, "
        f"global batch {batch_size} x {seq_len} tokens; green rows: the widest selection rho allows, --frozen-state drop",
        f"{'run':<{width}}  {'weights':>8}  {'grads':>8}  {'AdamW':>8}  {'activ.':>8}  {'activ.GC':>8}  "
        f"{'transient':>9}  {'total':>8}  {'total GC':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['run']:<{width}}  {gib(r['weights']):>8}  {gib(r['gradients']):>8}  {gib(r['optimizer_state']):>8}  "
            f"{gib(r['activations']):>8}  {gib(r['activations_checkpointed']):>8}  {gib(r['transient']):>9}  "
            f"{gib(r['total']):>8}  {gib(r['total_checkpointed']):>8}"
        )
    floor = prof.min_feasible_rho()
    lines += [f"(rho {rho:g} is below this profile's feasible floor {floor:.3f}: no rows)" for rho in PLAN_RHOS if rho < floor]
    return "\n".join(lines)


def _as_json(prof: TensorProfile, source: str) -> str:
    doc = {
        "model": source,
        "count": prof.count,
        "batch_size": prof.meta["batch_size"],
        "seq_len": prof.meta["seq_len"],
        "target_len": prof.meta["target_len"],
        "t_fp": prof.t_fp,
        "t_full": prof.t_full,
        "min_feasible_rho": prof.min_feasible_rho(),
        "tensors": [
            {"name": n, "params": int(p), "t_dw": float(dw), "t_dy": float(dy)}
            for n, p, dw, dy in zip(prof.names, prof.param_counts, prof.t_dw, prof.t_dy)
        ],
    }
    return json.dumps(doc, indent=2)


def register(app: typer.Typer) -> None:
    @app.command("profile", cls=_OneLineErrors)
    def profile(
        tiny: Optional[str] = typer.Option(None, "--tiny", help="Tiny random model family (opt, bloom, gpt2, llama, qwen2, mistral, t5)."),
        model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path (reads only its config.json)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Sequences per batch."),
        seq_len: int = typer.Option(64, "--seq-len", help="Tokens per sequence (encoder length for T5)."),
        target_len: Optional[int] = typer.Option(None, "--target-len", help="Decoder length of encoder-decoder models."),
        count: str = typer.Option("all", "--count", help="'all' FLOPs or only 'matmul' FLOPs."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        world_size: Optional[int] = typer.Option(None, "--world-size", help="Print the modelled memory per rank of full fine-tuning and GreenTrainer at rho 0.4/0.5/0.7 with this many processes (--batch-size is then the global batch)."),
        strategy: str = typer.Option("ddp", "--strategy", help="With --world-size: ddp (each rank holds the whole model) | fsdp (sharded over the ranks)."),
        precision: str = typer.Option("fp32", "--precision", help="With --world-size: fp32 | bf16-mixed | bf16."),
    ) -> None:
        """Per-tensor FLOPs of one training step (tensors in forward execution order).

        Profiled on the meta device: no weights are loaded and no arithmetic is done.
        """
        if (tiny is None) == (model is None):
            _fail("give exactly one of --tiny ARCH or --model NAME_OR_PATH")
        if count not in _COUNTS:
            _fail(f"--count must be one of {', '.join(_COUNTS)}, got {count!r}")
        if batch_size < 1 or seq_len < 1 or (target_len is not None and target_len < 1):
            _fail("--batch-size, --seq-len and --target-len must be positive")

        from gt_core.models.loading import ModelLoadError, load_config, load_model
        from gt_core.profiler import UnsupportedModuleError, UnsupportedOpError, profile_model_shape

        try:
            shape_source = load_config(model) if model is not None else load_model(tiny=tiny)
            prof = profile_model_shape(shape_source, batch_size, seq_len, target_len=target_len, count=count)
        except (ModelLoadError, UnsupportedModuleError, UnsupportedOpError, ValueError) as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        source = f"tiny:{tiny}" if tiny is not None else str(model)
        if world_size is None:
            typer.echo(_as_json(prof, source) if as_json else _table(prof))
            return
        if world_size < 1 or strategy not in ("ddp", "fsdp") or precision not in ("fp32", "bf16-mixed", "bf16"):
            _fail("--world-size must be >= 1, --strategy ddp or fsdp, --precision fp32, bf16-mixed or bf16")
        config = shape_source if model is not None else shape_source.config
        try:
            typer.echo(_memory_table(config, prof, world_size, strategy, precision, batch_size, seq_len, as_json))
        except ValueError as exc:
            _fail(str(exc).splitlines()[0])
