"""Load the model to fine-tune: a pretrained one by name or local path, or a tiny random one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from gt_core.models.tiny import TINY_ARCHS, tiny_model

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


class ModelLoadError(RuntimeError):
    """The requested model could not be built or loaded; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' and the hub's progress bars (loading and saving weights) on or off inside
    the block; as they were afterwards."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    if enabled != were_on:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        if enabled != were_on:
            (hf_logging.enable_progress_bar if were_on else hf_logging.disable_progress_bar)()


def load_model(
    model: str | None = None,
    tiny: str | None = None,
    *,
    attn_implementation: str | None = None,
    vocab_size: int | None = None,
    tie_word_embeddings: bool | None = None,
    torch_dtype: torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> torch.nn.Module:
    """Return ``model`` (hub name or local directory) or a tiny random model of family ``tiny``.

    Exactly one of the two must be given. Encoder-decoder checkpoints load as seq2seq LMs, all
    others as causal LMs. With ``HF_HUB_OFFLINE=1`` only local files are used. ``vocab_size``
    sets a tiny model's vocabulary, or resizes a pretrained model's token embeddings.
    ``tie_word_embeddings`` overrides a tiny model's family default (ignored for checkpoints).
    ``torch_dtype`` loads the weights in that dtype (no float32 copy first); ``device_map``
    (e.g. ``"auto"``, needs accelerate) spreads a model that fits no single device over several.
    """
    if (model is None) == (tiny is None):
        raise ModelLoadError("give exactly one of a model name/path or a tiny architecture")
    if vocab_size is not None and vocab_size < 1:
        raise ModelLoadError(f"vocab_size must be positive, got {vocab_size}")
    if tiny is not None:
        built = _load_tiny(tiny, attn_implementation, vocab_size, tie_word_embeddings)
        return built.to(torch_dtype) if torch_dtype is not None else built
    assert model is not None
    return _load_pretrained(model, attn_implementation, vocab_size, torch_dtype, device_map)


def _load_tiny(
    arch: str, attn_implementation: str | None, vocab_size: int | None, tie_word_embeddings: bool | None
) -> torch.nn.Module:
    if arch not in TINY_ARCHS:
        raise ModelLoadError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    kwargs: dict = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    if tie_word_embeddings is not None:
        kwargs["tie_word_embeddings"] = tie_word_embeddings
    try:
        return tiny_model(arch, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot build tiny {arch!r}: {_one_line(exc)}") from exc


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with a slash is a path."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") >= 2 or name.endswith("/")


def local_model_dir(model: str) -> str | None:
    """The local model directory ``model`` names, checked; None for a hub name.

    Raises :class:`ModelLoadError` (one line) when ``model`` is a path but no directory, or a
    directory without ``config.json``."""
    expanded = os.path.expanduser(model)
    if not os.path.isdir(expanded):
        if os.path.exists(expanded):
            raise ModelLoadError(f"model {model!r}: not a directory")
        if _looks_like_path(model):
            raise ModelLoadError(f"model {model!r}: no such directory")
        return None
    if adapter_base_dir(expanded) is not None:
        return expanded
    if not os.path.isfile(os.path.join(expanded, "config.json")):
        raise ModelLoadError(f"model {model!r}: not a model directory (no config.json)")
    return expanded


def adapter_base_dir(directory: str) -> str | None:
    """The base model directory of a saved prefix-tuning run (adapter in ``directory``, base in
    ``directory/base-model``, see :func:`gt_core.selection.schemes.save_adapted_model`); None otherwise."""
    from gt_core.selection.schemes import BASE_MODEL_DIR

    base = os.path.join(directory, BASE_MODEL_DIR)
    has_adapter = os.path.isfile(os.path.join(directory, "adapter_config.json"))
    return base if has_adapter and os.path.isfile(os.path.join(base, "config.json")) else None


def load_model_and_tokenizer(
    model: str, *, torch_dtype: torch.dtype | None = None, device_map: str | dict | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A pretrained model and its tokenizer, checked in the order a user can fix them: the
    directory (or hub name), then the tokenizer, then the weights. Every failure is one
    :class:`ModelLoadError` line."""
    from gt_core.data.tokenizer import TokenizerLoadError, load_tokenizer

    load_config(model)
    try:
        tokenizer = load_tokenizer(os.path.expanduser(model), tiny=False)
    except TokenizerLoadError as exc:
        raise ModelLoadError(str(exc)) from None
    return load_model(model, torch_dtype=torch_dtype, device_map=device_map), tokenizer


def load_tiny_for_training(tiny: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The tiny model ``greentrainer train --tiny`` trains, with its tokenizer.

    The local tokenizer decides the vocabulary; the model is sized to it. Its LM head is untied:
    in a random-init model the tied embedding is most of what there is to learn, and tied it sits
    at the input end where no budget below 1 can reach it."""
    from gt_core.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(None, tiny=True)
    return load_model(tiny=tiny, vocab_size=len(tokenizer), tie_word_embeddings=False), tokenizer


def load_config(model: str) -> PretrainedConfig:
    """The ``transformers`` config of ``model`` (hub name or local directory), nothing else.

    Reads only ``config.json``: a directory holding just that file is enough (no weights, no
    tokenizer). With ``HF_HUB_OFFLINE=1`` only local files are used.
    """
    import transformers as tf

    local = local_model_dir(model)
    name = (adapter_base_dir(local) or local) if local is not None else model
    try:
        return tf.AutoConfig.from_pretrained(name, local_files_only=_offline())
    except (OSError, ValueError, KeyError) as exc:
        where = "" if local is not None else "no such directory, and on the Hugging Face hub: "
        raise ModelLoadError(f"model {model!r} not found: {where}{_one_line(exc)}") from exc


def _load_pretrained(
    name: str, attn_implementation: str | None, vocab_size: int | None,
    torch_dtype: torch.dtype | None = None, device_map: str | dict | None = None,
) -> torch.nn.Module:
    import transformers as tf

    local_only = _offline()
    config = load_config(name)
    name = os.path.expanduser(name)
    adapter_dir, name = (name, base) if (base := adapter_base_dir(name)) is not None else (None, name)
    auto = tf.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else tf.AutoModelForCausalLM
    kwargs: dict = {"config": config, "local_files_only": local_only}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        loaded = auto.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"model {name!r} could not be loaded: {_one_line(exc)}") from exc
    if vocab_size is not None:
        loaded.resize_token_embeddings(vocab_size)
    if adapter_dir is not None:
        import peft

        try:
            loaded = peft.PeftModel.from_pretrained(loaded, adapter_dir)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"adapter in {adapter_dir!r} could not be loaded: {_one_line(exc)}") from exc
    return loaded
