"""Small facts about a model or tokenizer that several modules need."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """True for sequence-to-sequence models (T5, BART): the loss is on the decoder's labels."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the pad token, else end-of-sequence."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad)


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence (tokens) a model's position table holds: its config's
    ``max_position_embeddings`` or ``n_positions``; None when it names none (ALiBi or relative
    positions, as in BLOOM and T5 configs without ``n_positions``)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
