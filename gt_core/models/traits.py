"""Small facts about a model or tokenizer, and small model helpers, that several modules need."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

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


def transformer_blocks(model: torch.nn.Module, class_names: list[str] | None = None) -> list[torch.nn.Module]:
    """The model's modules of the classes named ``class_names`` (default: its ``_no_split_modules``,
    the transformer blocks), matched on the class or a base class (``fully_shard`` subclasses them)."""
    if class_names is None:
        class_names = list(getattr(model, "_no_split_modules", None) or [])
    wanted = set(class_names)
    return [m for m in model.modules() if any(kind.__name__ in wanted for kind in type(m).__mro__)]


@contextlib.contextmanager
def forwards_replaced(modules: Sequence[torch.nn.Module],
                      replacement: Callable[[torch.nn.Module], Callable[..., Any]]) -> Iterator[None]:
    """Inside: each module's ``forward`` is ``replacement(module)`` (built from the module as it
    was); afterwards the module's own ``forward`` again (an instance attribute it had is kept)."""
    missing = object()
    saved = [module.__dict__.get("forward", missing) for module in modules]
    for module in modules:
        module.forward = replacement(module)
    try:
        yield
    finally:
        for module, old in zip(modules, saved):
            if old is missing:
                del module.forward
            else:
                module.forward = old
