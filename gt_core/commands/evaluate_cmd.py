"""`greentrainer evaluate`: generate summaries with a model and score them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from carbonsched.protocol import JsonObject


class _UsageError(Exception):
    """Bad command-line input, reported as one line on stderr with exit code 2."""


def _load(model: Optional[str], checkpoint: Optional[Path], tiny: Optional[str]) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    from gt_core.models.loading import ModelLoadError, load_model, load_model_and_tokenizer
    from gt_core.data.tokenizer import load_tokenizer

    chosen = [name for name, value in (("--model", model), ("--checkpoint", checkpoint), ("--tiny", tiny)) if value]
    if len(chosen) != 1:
        raise _UsageError("give exactly one of --model, --checkpoint or --tiny")
    try:
        if tiny is not None:
            return load_model(tiny=tiny), load_tokenizer(None, tiny=True)
        return load_model_and_tokenizer(str(checkpoint or model))
    except ModelLoadError as error:
        raise _UsageError(str(error)) from None


def _model_dir(checkpoint: Path) -> Path:
    """``--checkpoint``: a model directory, or a run directory meaning its ``final/``."""
    if not checkpoint.is_dir():
        raise _UsageError(f"checkpoint {str(checkpoint)!r}: no such directory")
    if not (checkpoint / "config.json").exists() and (checkpoint / "final").is_dir():
        return checkpoint / "final"
    return checkpoint


def _run_dir(model_dir: Path) -> Optional[Path]:
    """The run a model directory belongs to (a ``final/`` next to a run-args.json), else None."""
    from gt_core.commands.run_args import RUN_ARGS_FILE

    parent = model_dir.resolve().parent
    return parent if (parent / RUN_ARGS_FILE).is_file() else None


def _examples(
    data: Optional[str], run_dir: Optional[Path], source_field: str, target_field: str, split: str, limit: Optional[int]
) -> tuple[list, str]:
    """The examples to score and, in words, what they are: ``--data``, else the validation
    examples of the checkpoint's run, else the embedded task's validation split."""
    from gt_core.data.datasets import DataError, load_examples
    from gt_core.data.run_data import split_run_data

    try:
        if data is not None:
            examples = load_examples(data, source_field=source_field, target_field=target_field, split=split, limit=limit)
            return examples, f"{data} ({split} split)" if not Path(data).exists() else data
        if run_dir is None:
            run_data = split_run_data(None, None)
            source = f"{run_data.validation_source}; give --data for your own"
        else:
            saved = _saved_run_data(run_dir)
            run_data = split_run_data(
                saved.get("data"), saved.get("val_data"), source_field=saved.get("source_field", "source"),
                target_field=saved.get("target_field", "target"), seed=saved.get("seed", 0),
            )
            source = f"the validation examples of the run in {run_dir}: {run_data.validation_source}"
    except (DataError, ValueError) as error:
        raise _UsageError(str(error)) from None
    examples = run_data.validation[:limit] if limit else run_data.validation
    return examples, source


def _saved_run_data(run_dir: Path) -> JsonObject:
    """The run's saved options, relative paths of older files resolved (and noted on stderr)."""
    from gt_core.commands.run_args import RUN_ARGS_FILE, RunArgsError, load_run_args, resolve_saved_paths

    try:
        saved = load_run_args(run_dir) or {}
    except RunArgsError as error:
        raise _UsageError(str(error)) from None
    for name, kind in (("data", str), ("val_data", str), ("source_field", str), ("target_field", str), ("seed", int)):
        if saved.get(name) is not None and not isinstance(saved[name], kind):
            raise _UsageError(f"{run_dir / RUN_ARGS_FILE}: {name} {saved[name]!r} is not a {kind.__name__}")
    saved, notes = resolve_saved_paths(saved, run_dir)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    return saved


def evaluate(
    model: Optional[str] = typer.Option(None, "--model", help="Pretrained model name or local path."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Directory written by save_pretrained, or a run directory (its final/ is loaded)."
    ),
    tiny: Optional[str] = typer.Option(None, "--tiny", help="Tiny random-init model family (opt, t5, ...)."),
    data: Optional[str] = typer.Option(
        None, "--data",
        help=".jsonl/.json/.csv file or data set name; default: for a run's checkpoint the run's validation "
        "examples (its run-args.json), else the embedded task's validation split.",
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
        if checkpoint is not None:
            checkpoint = _model_dir(checkpoint)
        run_dir = _run_dir(checkpoint) if checkpoint is not None else None
        examples, examples_source = _examples(data, run_dir, source_field, target_field, split, limit)
        loaded_model, tokenizer = _load(model, checkpoint, tiny)
    except _UsageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    # Before generating, so a long evaluation says at once what it scores; stdout stays JSON with --json.
    typer.echo(f"data: {examples_source}; {len(examples)} examples", err=as_json)
    from gt_core.evaluate import evaluate_model, save_predictions as write_predictions

    result = evaluate_model(
        loaded_model, tokenizer, examples, metric=metric, num_beams=num_beams, max_new_tokens=max_new_tokens,
        include_predictions=save_predictions is not None, progress=progress,
    )
    if save_predictions is not None:
        written = write_predictions(save_predictions, examples, result.pop("predictions"))
        typer.echo(f"{written} predictions written to {save_predictions}", err=True)
    if as_json:
        typer.echo(json.dumps({**result, "data": examples_source}, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
