"""`greentrainer evaluate`: generate summaries with a model and score them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


class _UsageError(Exception):
    """Bad command-line input, reported as one line on stderr with exit code 2."""


def _load(model: Optional[str], checkpoint: Optional[Path], tiny: Optional[str]) -> tuple[Any, Any]:
    from gt_core.models import ModelLoadError, load_model, load_model_and_tokenizer
    from gt_core.tokenizer import load_tokenizer

    chosen = [name for name, value in (("--model", model), ("--checkpoint", checkpoint), ("--tiny", tiny)) if value]
    if len(chosen) != 1:
        raise _UsageError("give exactly one of --model, --checkpoint or --tiny")
    if checkpoint is not None and not checkpoint.is_dir():
        raise _UsageError(f"checkpoint {str(checkpoint)!r}: no such directory")
    try:
        if tiny is not None:
            return load_model(tiny=tiny), load_tokenizer(None, tiny=True)
        return load_model_and_tokenizer(str(checkpoint or model))
    except ModelLoadError as error:
        raise _UsageError(str(error)) from None


def _examples(data: Optional[str], source_field: str, target_field: str, split: str, limit: Optional[int]) -> list:
    from gt_core.data import DataError, load_examples

    if data is None:
        from gt_core.embedded_task import embedded_task

        _, val = embedded_task()
        return val[:limit] if limit else val
    try:
        return load_examples(
            data, source_field=source_field, target_field=target_field, split=split, limit=limit
        )
    except DataError as error:
        raise _UsageError(str(error)) from None


def evaluate(
    model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Directory written by save_pretrained."),
    tiny: Optional[str] = typer.Option(None, "--tiny", help="Tiny random-init model family (opt, t5, ...)."),
    data: Optional[str] = typer.Option(
        None, "--data", help=".jsonl/.json/.csv file or data set name; default: embedded validation split."
    ),
    source_field: str = typer.Option("source", "--source-field"),
    target_field: str = typer.Option("target", "--target-field"),
    split: str = typer.Option("validation", "--split", help="Split of a data set name or a .json file."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N examples only."),
    num_beams: int = typer.Option(4, "--num-beams", min=1),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    metric: str = typer.Option("rouge", "--metric", help="rouge or exact_match."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    save_predictions: Optional[Path] = typer.Option(
        None, "--save-predictions", help="Write each example's source, reference and generated prediction to this .jsonl file."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="A progress bar on stderr while generating."),
) -> None:
    """Generate summaries with beam search and report ROUGE (or exact match) and validation loss."""
    from gt_core.evaluate import METRICS

    try:
        if metric not in METRICS:
            raise _UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if save_predictions is not None and not save_predictions.parent.is_dir():
            raise _UsageError(f"--save-predictions {save_predictions}: directory {save_predictions.parent} does not exist")
        examples = _examples(data, source_field, target_field, split, limit)
        loaded_model, tokenizer = _load(model, checkpoint, tiny)
    except _UsageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    from gt_core.evaluate import evaluate_model, save_predictions as write_predictions

    result = evaluate_model(
        loaded_model, tokenizer, examples, metric=metric, num_beams=num_beams, max_new_tokens=max_new_tokens,
        include_predictions=save_predictions is not None, progress=progress,
    )
    if save_predictions is not None:
        written = write_predictions(save_predictions, examples, result.pop("predictions"))
        typer.echo(f"{written} predictions written to {save_predictions}", err=True)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
