"""Summarisation data: loading (local files or Hugging Face datasets), prompts, tokenised datasets
and deterministic batching for training and generation."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from carbonsched.protocol import JsonValue

    HubRecord = dict[str, JsonValue]  # one row of a Hugging Face data set

IGNORE_INDEX = -100
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")


class DataError(ValueError):
    """Input data cannot be used; the message names the file, line and field where known."""


@dataclass(frozen=True)
class Example:
    source: str
    target: str


# ----------------------------------------------------------------------------- loading


def _field_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return None


def _example_from_record(
    record: object, where: str, source_field: str, target_field: str
) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(record).__name__}")
    texts = []
    for field in (source_field, target_field):
        if field not in record or record[field] is None:
            present = ", ".join(map(str, record)) or "none"
            raise DataError(f"{where}: missing field {field!r} (fields present: {present})")
        text = _field_text(record[field])
        if text is None:
            raise DataError(f"{where}: field {field!r} is not text")
        if not text.strip():
            raise DataError(f"{where}: field {field!r} is empty")
        texts.append(text)
    return Example(source=texts[0], target=texts[1])


def _read_jsonl(path: Path, source_field: str, target_field: str, limit: int | None) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: invalid JSON ({error.msg})") from None
            examples.append(_example_from_record(record, where, source_field, target_field))
    return examples


def _read_json(
    path: Path, source_field: str, target_field: str, split: str, limit: int | None
) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if isinstance(data, dict):
        # Accept {"train": [...], "validation": [...]} and {"data": [...]} layouts.
        key = split if split in data else "data" if "data" in data else None
        if key is None or not isinstance(data[key], list):
            raise DataError(f"{path}: expected a list of records or an object with a {split!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records")
    records = data if limit is None else data[:limit]
    return [
        _example_from_record(record, f"{path}: record {index}", source_field, target_field)
        for index, record in enumerate(records)
    ]


def _read_csv(path: Path, source_field: str, target_field: str, limit: int | None) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for field in (source_field, target_field):
            if field not in header:
                raise DataError(
                    f"{path}:1: missing field {field!r} in CSV header (columns: {', '.join(header) or 'none'})"
                )
        start_line = reader.line_num
        for row in reader:
            if limit is not None and len(examples) >= limit:
                break
            # line_num counts physical lines, so quoted multi-line cells still report the right line.
            where = f"{path}:{start_line + 1}"
            start_line = reader.line_num
            values = {key: value for key, value in row.items() if key is not None}
            examples.append(_example_from_record(values, where, source_field, target_field))
    return examples



def _scitldr_source(record: HubRecord) -> str:
    return " ".join(record["source"])


def _scitldr_target(record: HubRecord) -> str:
    return record["target"][0] if record["target"] else ""


@dataclass(frozen=True)
class _HubShortcut:
    dataset: str
    config: str | None
    source: Callable[[HubRecord], str]
    target: Callable[[HubRecord], str]


HUB_SHORTCUTS: dict[str, _HubShortcut] = {
    "dialogsum": _HubShortcut(
        "knkarthick/dialogsum", None, lambda r: r["dialogue"], lambda r: r["summary"]
    ),
    "scitldr": _HubShortcut("allenai/scitldr", "AIC", _scitldr_source, _scitldr_target),
}


def _read_hub(
    name: str, source_field: str, target_field: str, split: str, limit: int | None
) -> list[Example]:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(
            f"{name!r} is not a local file; loading Hugging Face datasets needs the 'datasets' "
            "package: pip install datasets"
        ) from None
    shortcut = HUB_SHORTCUTS.get(name.lower())
    if shortcut is None:
        shortcut = _HubShortcut(
            name, None, lambda r: _field_text(r.get(source_field)) or "",
            lambda r: _field_text(r.get(target_field)) or "",
        )
    hub_split = split if limit is None else f"{split}[:{limit}]"
    try:
        rows = datasets.load_dataset(shortcut.dataset, shortcut.config, split=hub_split)
    except Exception as error:  # the hub raises many unrelated types; report them uniformly
        raise DataError(f"cannot load data set {name!r} split {split!r}: {error}") from None
    examples = []
    for index, row in enumerate(rows):
        where = f"{name}[{split}] row {index}"
        try:
            record = {source_field: shortcut.source(row), target_field: shortcut.target(row)}
        except (KeyError, IndexError, TypeError) as error:
            raise DataError(f"{where}: missing field {error}") from None
        examples.append(_example_from_record(record, where, source_field, target_field))
    return examples


def load_examples(
    path_or_name: str,
    *,
    source_field: str = "source",
    target_field: str = "target",
    split: str = "train",
    limit: int | None = None,
) -> list[Example]:
    """Read (source, target) pairs from a .jsonl/.json/.csv file or a Hugging Face data set name.

    Known names: "dialogsum" (knkarthick/dialogsum) and "scitldr" (allenai/scitldr, AIC); for
    those the field names are fixed. Raises DataError for unusable or empty data.
    """
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    path = Path(path_or_name)
    looks_local = path.suffix.lower() in LOCAL_SUFFIXES or path.exists()
    if not looks_local:
        examples = _read_hub(path_or_name, source_field, target_field, split, limit)
    elif not path.is_file():
        raise DataError(f"{path}: no such file")
    elif path.suffix.lower() == ".jsonl":
        examples = _read_jsonl(path, source_field, target_field, limit)
    elif path.suffix.lower() == ".json":
        examples = _read_json(path, source_field, target_field, split, limit)
    elif path.suffix.lower() == ".csv":
        examples = _read_csv(path, source_field, target_field, limit)
    else:
        raise DataError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
    if not examples:
        raise DataError(f"{path_or_name}: no examples")
    return examples


# ----------------------------------------------------------------------------- prompts and tokens


def format_prompt(source: str, *, encoder_decoder: bool) -> str:
    """The paper's prompts: "summarize: ..." for T5-style models, "... TL;DR: " otherwise."""
    return f"summarize: {source}" if encoder_decoder else f"{source} TL;DR: "


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _cut_source(tokenizer: PreTrainedTokenizerBase, source: str, keep_tokens: int) -> str:
    """The prefix of ``source`` that spans its first ``keep_tokens`` tokens."""
    if keep_tokens <= 0:
        return ""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if keep_tokens >= len(offsets):
            return source
        return source[: offsets[keep_tokens - 1][1]]
    ids = _ids(tokenizer, source, special=False)
    return tokenizer.decode(ids[:keep_tokens], skip_special_tokens=True)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, source: str, *, encoder_decoder: bool, max_length: int
) -> list[int]:
    """Token ids of the prompt for ``source``, shortening the source (never the prompt words) to fit."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    ids = _ids(tokenizer, format_prompt(source, encoder_decoder=encoder_decoder), special=True)
    if len(ids) <= max_length:
        return ids
    keep = len(_ids(tokenizer, source, special=False)) - (len(ids) - max_length)
    # Token boundaries can shift when the text is re-tokenised, so shrink until it fits.
    while True:
        cut = _cut_source(tokenizer, source, keep)
        ids = _ids(tokenizer, format_prompt(cut, encoder_decoder=encoder_decoder), special=True)
        if len(ids) <= max_length:
            return ids
        if keep <= 0:
            # Even the bare prompt words do not fit: keep their end, which carries the cue.
            return ids[-max_length:]
        keep -= max(1, len(ids) - max_length)


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    return int(tokenizer.eos_token_id)


class SummarizationDataset(Dataset):
    """Tokenised training pairs.

    Decoder-only: ``input_ids`` = prompt + target + eos, ``labels`` = -100 on the prompt, so the
    loss covers the target and eos only; the source is shortened so the whole fits
    ``max_input_length``. Encoder-decoder: ``input_ids`` = prompt (at most ``max_input_length``),
    ``labels`` = target + eos. Targets are cut to ``max_target_length`` tokens before the eos.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: PreTrainedTokenizerBase,
        *,
        encoder_decoder: bool,
        max_input_length: int = 512,
        max_target_length: int = 64,
    ) -> None:
        if max_target_length <= 0:
            raise ValueError("max_target_length must be positive")
        if not encoder_decoder and max_input_length <= max_target_length + 1:
            raise ValueError("max_input_length must leave room for the prompt after the target")
        self.encoder_decoder = encoder_decoder
        eos = _eos_id(tokenizer)
        self.features: list[dict[str, list[int]]] = []
        for example in examples:
            target_ids = _ids(tokenizer, example.target, special=False)[:max_target_length] + [eos]
            if encoder_decoder:
                input_ids = encode_prompt(
                    tokenizer, example.source, encoder_decoder=True, max_length=max_input_length
                )
                self.features.append({"input_ids": input_ids, "labels": target_ids})
            else:
                prompt_ids = encode_prompt(
                    tokenizer, example.source, encoder_decoder=False,
                    max_length=max_input_length - len(target_ids),
                )
                self.features.append({
                    "input_ids": prompt_ids + target_ids,
                    "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
                })

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.features[index]


def _pad(rows: Sequence[Sequence[int]], value: int, *, left: bool) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [
        ([value] * (width - len(row)) + list(row)) if left else (list(row) + [value] * (width - len(row)))
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def collate_batch(features: Sequence[dict[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of features: input_ids with ``pad_token_id``, labels with -100."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    inputs = [feature["input_ids"] for feature in features]
    batch = {
        "input_ids": _pad(inputs, pad_token_id, left=False),
        "attention_mask": _pad([[1] * len(row) for row in inputs], 0, left=False),
    }
    if "labels" in features[0]:
        batch["labels"] = _pad([feature["labels"] for feature in features], IGNORE_INDEX, left=False)
    return batch


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, pad_token_id: int
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (its own generator, no global RNG)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=partial(collate_batch, pad_token_id=pad_token_id),
    )


# ----------------------------------------------------------------------------- generation inputs


class PromptDataset(Dataset):
    """Prompt token ids only, for generation (decoder-only prompts end with the "TL;DR:" cue)."""

    def __init__(
        self, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, *, encoder_decoder: bool, max_input_length: int = 512
    ) -> None:
        self.encoder_decoder = encoder_decoder
        self.prompts = [
            encode_prompt(tokenizer, example.source, encoder_decoder=encoder_decoder, max_length=max_input_length)
            for example in examples
        ]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> list[int]:
        return self.prompts[index]


def collate_prompts(
    prompts: Sequence[Sequence[int]], pad_token_id: int, *, left_pad: bool
) -> dict[str, torch.Tensor]:
    """Pad prompts for ``model.generate``; decoder-only models need ``left_pad=True`` so that
    every row's new tokens start at the same position."""
    if not prompts:
        raise ValueError("cannot collate an empty batch")
    return {
        "input_ids": _pad(prompts, pad_token_id, left=left_pad),
        "attention_mask": _pad([[1] * len(row) for row in prompts], 0, left=left_pad),
    }


def prompt_batches(
    dataset: PromptDataset, batch_size: int, pad_token_id: int
) -> Iterable[dict[str, torch.Tensor]]:
    """Batches of padded prompts in dataset order."""
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield collate_prompts(rows, pad_token_id, left_pad=not dataset.encoder_decoder)
