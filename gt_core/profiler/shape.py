"""Profile a model's shape on the meta device: no weights, no arithmetic, any size.

``profile_model`` records one forward pass. On a live model that forward runs for real with every
parameter requiring grad and every intermediate kept, which needs more memory than training. The
FLOPs depend only on shapes, so the same profile comes from a twin of the model built on the meta
device from its config: same class, same parameter names, same tied weights, same train/eval mode
and gradient checkpointing per module. Only when no such twin can be built (a model without a
transformers config, a class that does not rebuild from its config, a structure that differs from
what the config builds) is the live model profiled, and the reason logged.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch

from gt_core.profiler.attention_kernels import attention_kernels_of
from gt_core.profiler.op_rules import UnsupportedOpError
from gt_core.profiler.profile_model import profile_model
from gt_core.profiler.tensor_profile import TensorProfile

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

# Per-module attributes besides ``training`` that change what a forward runs.
_MODE_ATTRIBUTES = ("gradient_checkpointing", "_gradient_checkpointing_func")


class MetaTwinError(RuntimeError):
    """No meta-device twin of a model can be built; the message says why, in one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_config(obj: object) -> bool:
    try:
        from transformers import PretrainedConfig
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, PretrainedConfig)


def model_from_config(config: PretrainedConfig, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The language model of ``config`` on the meta device (seq2seq LM if encoder-decoder, else causal LM).

    ``config`` is a ``transformers.PretrainedConfig``; it is copied, not changed. No parameter
    memory is allocated, so billion-parameter configs build in well under a second. The model is in
    training mode (dropout on), as it is during a training step.
    """
    import transformers as tf

    if not _is_config(config):
        raise TypeError(f"expected a transformers PretrainedConfig, got {type(config).__name__}")
    auto = tf.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else tf.AutoModelForCausalLM
    kwargs = {} if dtype is None else {"dtype": dtype}
    with torch.device("meta"):
        model = auto.from_config(copy.deepcopy(config), **kwargs)
    return model.train()


def _float_dtype(model: torch.nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where the model computes; CPU for a model that is itself on the meta device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.device("cpu") if device.type == "meta" else device


def _structure_difference(live: torch.nn.Module, twin: torch.nn.Module) -> str | None:
    """Why ``twin`` would not profile like ``live`` (names, shapes, tying, module tree), or None."""
    live_params = list(live.named_parameters(remove_duplicate=False))
    twin_params = list(twin.named_parameters(remove_duplicate=False))
    live_names = [(n, tuple(p.shape)) for n, p in live_params]
    twin_names = [(n, tuple(p.shape)) for n, p in twin_params]
    if live_names != twin_names:
        diff = next(
            (f"{a} vs {b}" for a, b in zip(live_names, twin_names) if a != b),
            f"{len(live_names)} vs {len(twin_names)} parameters",
        )
        return f"the config builds different parameters ({diff})"
    if _tie_groups(live_params) != _tie_groups(twin_params):
        return "the config ties different parameters than the model shares"
    if [n for n, _ in live.named_modules()] != [n for n, _ in twin.named_modules()]:
        return "the config builds a different module tree"
    return None


def _tie_groups(named: list[tuple[str, torch.nn.Parameter]]) -> list[int]:
    """For each parameter name, the position of the first name sharing its tensor."""
    first: dict[int, int] = {}
    return [first.setdefault(id(p), i) for i, (_, p) in enumerate(named)]


def _copy_modes(live: torch.nn.Module, twin: torch.nn.Module) -> None:
    for (_, src), (_, dst) in zip(live.named_modules(), twin.named_modules()):
        dst.training = src.training
        for attr in _MODE_ATTRIBUTES:
            if attr in src.__dict__:
                setattr(dst, attr, src.__dict__[attr])


def meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A meta-device copy of ``model``'s architecture that profiles exactly like ``model``.

    Built as ``type(model)`` from ``model.config``, in the model's float dtype, with each module's
    train/eval mode and gradient-checkpointing setting copied. A model already on the meta device
    is returned as is. Raises ``MetaTwinError`` when the twin cannot be built or differs in
    parameter names, shapes, tying or module tree.
    """
    if any(p.is_meta for p in model.parameters()):
        return model
    config = getattr(model, "config", None)
    if not _is_config(config):
        raise MetaTwinError(f"{type(model).__name__} has no transformers config to rebuild it from")
    cls = type(model)
    build = getattr(cls, "_from_config", None)
    if build is None:
        raise MetaTwinError(f"{cls.__name__} cannot be rebuilt from a config (no _from_config)")
    dtype = _float_dtype(model)
    try:
        with torch.device("meta"):
            twin = build(copy.deepcopy(config), **({} if dtype is None else {"dtype": dtype}))
    except Exception as exc:  # any failure of third-party model code means "no twin", never a crash
        raise MetaTwinError(f"{cls.__name__} could not be built from its config: {_one_line(exc)}") from exc
    difference = _structure_difference(model, twin)
    if difference is not None:
        raise MetaTwinError(f"{cls.__name__}: {difference}")
    _copy_modes(model, twin)
    return twin


def profile_model_shape(
    model_or_config: torch.nn.Module | PretrainedConfig,
    batch_size: int,
    seq_len: int,
    target_len: int | None = None,
    count: str = "all",
    device: torch.device | str | None = None,
) -> TensorProfile:
    """``profile_model`` of a model, or of a config, computed on the meta device.

    Given a ``transformers.PretrainedConfig``, profiles the causal LM (or seq2seq LM when
    ``config.is_encoder_decoder``) that the config builds. Given a model, profiles its meta twin
    (see ``meta_twin``): the result has the same tensor names and order, FLOPs, parameter counts and
    exact-cost model as ``profile_model(model, ...)``, without touching the model's weights. If no
    twin can be built, or the twin's forward cannot run on the meta device (an op that reads tensor
    values), the live model is profiled and the reason logged as a warning.

    Attention is priced as the fused kernel torch would pick on the model's device; for a config,
    on ``device`` (default: CPU).

    ``meta["profiled_on"]`` says which: ``"config"``, ``"meta"`` or ``"live"``
    (``meta["fallback_reason"]`` then holds the reason).
    """
    if _is_config(model_or_config):
        with attention_kernels_of(device or "cpu"):
            prof = profile_model(model_from_config(model_or_config), batch_size, seq_len, target_len, count)
        prof.meta["profiled_on"] = "config"
        return prof
    if not isinstance(model_or_config, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module or a transformers PretrainedConfig, got {type(model_or_config).__name__}")
    model = model_or_config
    try:
        twin = meta_twin(model)
        with attention_kernels_of(_device_of(model)):
            prof = profile_model(twin, batch_size, seq_len, target_len, count)
    except UnsupportedOpError:
        raise
    except MetaTwinError as exc:
        reason = str(exc)
    except (RuntimeError, NotImplementedError) as exc:  # the forward needed real values
        reason = f"its forward does not run on the meta device: {_one_line(exc)}"
    else:
        prof.meta["profiled_on"] = "meta"
        return prof
    log.warning("profiling the live model (one real forward and backward graph): %s", reason)
    prof = profile_model(model, batch_size, seq_len, target_len, count)
    prof.meta["profiled_on"] = "live"
    prof.meta["fallback_reason"] = reason
    return prof
