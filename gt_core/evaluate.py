"""Evaluation: beam-search summaries, ROUGE / exact match, and mean validation loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from gt_core.data.datasets import (
    IGNORE_INDEX,
    Example,
    PromptDataset,
    SummarizationDataset,
    make_loader,
    prompt_batches,
)
from gt_core.models.traits import is_encoder_decoder, max_positions, pad_token_id

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    from carbonsched.protocol import JsonObject

METRICS = ("rouge", "exact_match")


def _prompt_budget(model: torch.nn.Module, max_input_length: int, max_new_tokens: int, encoder_decoder: bool) -> int:
    """Decoder-only prompts share the position table with the generated tokens."""
    positions = max_positions(model.config)
    if encoder_decoder or not positions:
        return max_input_length
    return max(1, min(max_input_length, positions - max_new_tokens))


def generate_predictions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    encoder_decoder: bool,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_input_length: int = 512,
    progress: bool = False,
) -> list[str]:
    """Summaries by beam search, one per example, in order. Decoder-only prompts are left-padded
    and only the newly generated tokens are decoded. ``progress`` shows a bar of examples done
    on stderr."""
    from tqdm.auto import tqdm

    budget = _prompt_budget(model, max_input_length, max_new_tokens, encoder_decoder)
    prompts = PromptDataset(examples, tokenizer, encoder_decoder=encoder_decoder, max_input_length=budget)
    pad_id = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    device = next(model.parameters()).device
    bar = tqdm(total=len(examples), desc="generating", unit="example", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for batch in prompt_batches(prompts, batch_size, pad_id):
                batch = {key: value.to(device) for key, value in batch.items()}
                output = model.generate(
                    **batch,
                    num_beams=num_beams,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new_tokens = output if encoder_decoder else output[:, batch["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                predictions.extend(text.strip() for text in texts)
                bar.update(len(texts))
    finally:
        bar.close()
        model.train(was_training)
    return predictions


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("nothing to score")


def rouge_scores(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the pairs, scaled to 0-100."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=use_stemmer)
    totals = dict.fromkeys(names, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for name in names:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percentage (0-100) of predictions equal to their reference, ignoring case and spacing."""
    _check_pairs(predictions, references)
    hits = sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references))
    return 100.0 * hits / len(predictions)


def validation_loss(model: torch.nn.Module, loader: DataLoader) -> float:
    """Mean cross-entropy per target token over ``loader`` (eval mode, no grad; the model's
    train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in loader:
                batch = {key: value.to(device) for key, value in batch.items()}
                labels = batch.pop("labels")
                if is_encoder_decoder(model):
                    logits = model(**batch, labels=labels).logits
                else:
                    logits = model(**batch).logits[:, :-1]
                    labels = labels[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum",
                )
                total += float(loss)
                count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    metric: str = "rouge",
    encoder_decoder: bool | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_input_length: int = 512,
    max_target_length: int = 64,
    include_predictions: bool = False,
    progress: bool = False,
) -> JsonObject:
    """Score generated summaries with ``metric`` and add ``val_loss`` and ``n_examples``.

    ``encoder_decoder`` defaults to the model config. With ``include_predictions`` the result
    also holds the generated texts under ``predictions``. ``progress``: a bar while generating.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not examples:
        raise ValueError("no examples to evaluate")
    if encoder_decoder is None:
        encoder_decoder = is_encoder_decoder(model)
    predictions = generate_predictions(
        model, tokenizer, examples, encoder_decoder=encoder_decoder, num_beams=num_beams,
        max_new_tokens=max_new_tokens, batch_size=batch_size, max_input_length=max_input_length, progress=progress,
    )
    references = [example.target for example in examples]
    result: dict[str, Any] = (
        rouge_scores(predictions, references) if metric == "rouge"
        else {"exact_match": exact_match(predictions, references)}
    )
    dataset = SummarizationDataset(
        examples, tokenizer, encoder_decoder=encoder_decoder,
        max_input_length=max_input_length, max_target_length=max_target_length,
    )
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, pad_token_id=pad_token_id(tokenizer))
    result["val_loss"] = validation_loss(model, loader)
    result["n_examples"] = len(examples)
    if include_predictions:
        result["predictions"] = predictions
    return result


def save_predictions(path: str | Path, examples: Sequence[Example], predictions: Sequence[str]) -> int:
    """Write one JSON line per example: ``source``, ``reference`` and ``prediction``; returns the count."""
    import json

    _check_pairs(predictions, [example.target for example in examples])
    with open(path, "w", encoding="utf-8") as out:
        for example, prediction in zip(examples, predictions):
            row = {"source": example.source, "reference": example.target, "prediction": prediction}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(predictions)
