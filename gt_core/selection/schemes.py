"""Training schemes (GreenTrainer and the paper's baselines) and the honest FLOPs of one step of each.

All FLOPs count 2 per multiply-accumulate, for one batch of the profiled shape (``b`` sequences of
``n`` tokens), and come from the model's :class:`TensorProfile` plus the extra matmuls a scheme
adds. ``prof.backward(mask)`` prices "these tensors train" (exact when the profile was measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from gt_core.models.traits import is_encoder_decoder
from gt_core.profiler import TensorProfile

if TYPE_CHECKING:
    from pathlib import Path

    from peft import PeftModel
    from transformers import PretrainedConfig

SCHEMES: tuple[str, ...] = ("green", "full", "topk", "lora", "prefix")

# Attention input projections per family, tried in order; the first pair present in the model wins.
_LORA_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),  # OPT, Llama, Qwen2, Mistral
    ("query_key_value",),  # BLOOM, GPT-NeoX (fused QKV)
    ("c_attn",),  # GPT-2 (fused QKV, Conv1D: weight stored as in×out)
    ("q", "v"),  # T5
    ("query", "value"),  # BERT-style
)


@dataclass(frozen=True)
class StepFLOPs:
    """Forward and backward FLOPs of one training step of a scheme."""

    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return scheme


def full_flops(prof: TensorProfile) -> StepFLOPs:
    """Full fine-tuning: forward ``T_fp``, backward ``T_full - T_fp``."""
    return StepFLOPs(prof.t_fp, prof.t_full - prof.t_fp)


def mask_flops(prof: TensorProfile, mask: np.ndarray) -> StepFLOPs:
    """Training exactly the masked tensors: forward ``T_fp``, backward ``prof.backward(mask)``."""
    return StepFLOPs(prof.t_fp, prof.backward(mask))


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def output_head_names(prof: TensorProfile, model: torch.nn.Module | None) -> set[str]:
    """Profile names of the LM head's tensors; a tied head weight appears as the input embedding's name."""
    head = model.get_output_embeddings() if model is not None and hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        return set()
    own = {id(p) for p in head.parameters(recurse=False)}
    profiled = set(prof.names)
    return {
        name for name, param in model.named_parameters(remove_duplicate=False) if id(param) in own and name in profiled
    }


def topk_layers(prof: TensorProfile, model: torch.nn.Module | None = None) -> list[list[str]]:
    """Trainable layers from the output towards the input, each as its tensors' profile names.

    A layer is one module's own tensors (a LayerNorm's weight and bias are one layer), placed by the
    execution order of its last tensor. The LM head is always the layer nearest the output: when it
    is tied to the input embedding, the profile lists the shared matrix once, at its first use (the
    embedding lookup), so ``model`` is needed to recognise it. Without ``model`` the profile order
    alone decides.
    """
    head = output_head_names(prof, model)
    position: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for i, name in enumerate(prof.names):
        key = "<lm head>" if name in head else _module_of(name)
        members.setdefault(key, []).append(name)
        position[key] = len(prof) if name in head else i
    return [members[key] for key in sorted(members, key=position.__getitem__, reverse=True)]


def topk_mask(prof: TensorProfile, k: int, model: torch.nn.Module | None = None) -> np.ndarray:
    """Train the ``k`` layers nearest the output (FT-Top2, ``k = 2``: LM head + final norm).

    Layers are counted as in :func:`topk_layers`: a norm's weight and bias count as one layer, and the
    LM head is the last layer even when its weight is the (tied) input embedding. Training a tied
    head trains the input embedding as well, so the activation gradient must flow back through the
    whole model; ``prof.backward(mask)`` prices exactly that.
    """
    if k < 1:
        raise ValueError(f"topk needs k >= 1, got {k}")
    chosen = {name for layer in topk_layers(prof, model)[:k] for name in layer}
    return np.array([name in chosen for name in prof.names], dtype=bool)


# ----------------------------------------------------------------------------- LoRA


@dataclass(frozen=True)
class AdaptedModule:
    """One base projection an adapter is attached to; ``tokens`` is b·(its input length)."""

    name: str
    d_in: int
    d_out: int
    tokens: int


def _is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 projection, weight is in×out


def _projection_shape(module: torch.nn.Module) -> tuple[int, int]:
    weight = module.weight
    if _is_conv1d(module):
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def lora_target_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Leaf names of the query and value projections of this model (``("q_proj", "v_proj")`` ...)."""
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or _is_conv1d(module)
    }
    for targets in _LORA_TARGETS:
        if all(t in leaves for t in targets):
            return targets
    raise ValueError(f"no query/value projections found for LoRA in {type(model).__name__}")


def _tokens_for(name: str, batch_size: int, source_len: int, target_len: int) -> int:
    # Encoder-decoder: encoder modules and cross-attention K/V read the source; the rest the target.
    if ".decoder." in f".{name}" and not name.endswith(("EncDecAttention.k", "EncDecAttention.v")):
        return batch_size * target_len
    return batch_size * source_len


def adapted_modules(
    model: torch.nn.Module, batch_size: int, source_len: int, target_len: int | None = None
) -> list[AdaptedModule]:
    """The projections LoRA adapts, in registration order, with their shapes and token counts."""
    targets = lora_target_names(model)
    target_len = source_len if target_len is None else target_len
    encoder_decoder = is_encoder_decoder(model)
    out = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "weight"):
            d_in, d_out = _projection_shape(module)
            tokens = (
                _tokens_for(name, batch_size, source_len, target_len) if encoder_decoder else batch_size * source_len
            )
            out.append(AdaptedModule(name, d_in, d_out, tokens))
    return out


def lora_flops(
    prof: TensorProfile, model: torch.nn.Module, r: int, batch_size: int, source_len: int, target_len: int | None = None
) -> StepFLOPs:
    """FLOPs of one LoRA step (``model`` is the base model, before adapters are attached).

    Each adapter ``x A B`` (A: d_in×r, B: r×d_out) over ``t`` tokens costs ``a = 2·t·(d_in·r + r·d_out)``
    forward and ``2a`` backward (weight gradients of A and B, plus the gradient through them).

        forward  = T_fp + Σ a
        backward = prof.backward(m_adapted) - Σ_{adapted} t_dw + Σ 2a

    ``m_adapted`` marks the adapted base weights: their backward graph is the one LoRA needs (dy
    from the output down to the first adapted projection), minus the base weight gradients that
    LoRA never computes.
    """
    modules = adapted_modules(model, batch_size, source_len, target_len)
    index = {name: i for i, name in enumerate(prof.names)}
    mask = np.zeros(len(prof), dtype=bool)
    for m in modules:
        key = f"{m.name}.weight"
        if key not in index:
            raise KeyError(f"profile has no tensor {key!r}")
        mask[index[key]] = True
    adapter = sum(2.0 * m.tokens * (m.d_in * r + r * m.d_out) for m in modules)
    backward = prof.backward(mask) - float(prof.t_dw[mask].sum()) + 2.0 * adapter
    return StepFLOPs(prof.t_fp + adapter, backward)


def apply_lora(model: torch.nn.Module, r: int = 8, alpha: int | None = None, dropout: float = 0.05) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on its query and value projections (peft)."""
    import peft

    targets = lora_target_names(model)
    fan_in_fan_out = any(
        _is_conv1d(module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets
    )
    config = peft.LoraConfig(
        task_type=_task_type(model),
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        fan_in_fan_out=fan_in_fan_out,
    )
    return peft.get_peft_model(model, config)


# ----------------------------------------------------------------------------- prefix tuning


def _task_type(model: torch.nn.Module) -> str:
    return "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM"


def _attention_width(config: PretrainedConfig) -> int:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads")
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    if head_dim is None:
        head_dim = config.hidden_size // heads
    return int(heads * head_dim)


def prefix_flops(
    prof: TensorProfile,
    model: torch.nn.Module,
    num_virtual_tokens: int,
    batch_size: int,
    source_len: int,
    target_len: int | None = None,
) -> StepFLOPs:
    """FLOPs of one prefix-tuning step (``model`` is the base model).

    ``p`` learned key/value tokens join the self-attention of every decoder layer (for T5 only
    the decoder's: that is where peft's prefix lands; measured). With ``q`` queries per
    sequence and attention width ``d`` (heads × head size), a block's extra work is
    ``e = 4·b·q·p·d`` forward (scores and weighted sum) and ``2e`` backward.

        forward  = T_fp + Σ e
        backward = prof.backward(m_q) - Σ_{q} t_dw + Σ 2e

    The prefix is consumed in every layer, so dy must reach the first layer's attention scores:
    that is the graph of training every query projection (the fused QKV one where Q is not a
    tensor of its own), minus their weight gradients. It slightly over-prices the first layer,
    whose query gradient the prefix does not need.
    """
    config = model.config
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    queries = target_len if (encoder_decoder and target_len is not None) else source_len
    if encoder_decoder:
        blocks = int(getattr(config, "num_decoder_layers", None) or config.num_layers)
    else:
        blocks = int(config.num_hidden_layers)
    extra = blocks * 4.0 * batch_size * queries * num_virtual_tokens * _attention_width(config)
    leaf = [n.split(".")[-2] if n.endswith(".weight") and "." in n else "" for n in prof.names]
    queries_only = np.array([x in ("q_proj", "q", "query") for x in leaf])
    mask = queries_only if queries_only.any() else np.array([x in ("query_key_value", "c_attn") for x in leaf])
    if encoder_decoder:
        mask &= np.array([".decoder." in f".{n}" for n in prof.names])
    if not mask.any():
        raise ValueError("profile has no attention projections for prefix tuning")
    backward = prof.backward(mask) - float(prof.t_dw[mask].sum()) + 2.0 * extra
    return StepFLOPs(prof.t_fp + extra, backward)


def apply_prefix(model: torch.nn.Module, num_virtual_tokens: int = 16) -> PeftModel:
    """Wrap ``model`` with prefix tuning (peft, no reparameterisation)."""
    import peft

    config = peft.PrefixTuningConfig(task_type=_task_type(model), num_virtual_tokens=num_virtual_tokens)
    return peft.get_peft_model(model, config)


# ----------------------------------------------------------------------------- masks on a model


def set_trainable(model: torch.nn.Module, names: Iterable[str]) -> None:
    """Exactly the parameters in ``names`` (any alias of a tied weight) require grad."""
    wanted = set(names)
    by_name = dict(model.named_parameters(remove_duplicate=False))
    unknown = wanted - by_name.keys()
    if unknown:
        raise KeyError(f"model has no parameter named {sorted(unknown)[0]!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in wanted:
        by_name[name].requires_grad_(True)


# ----------------------------------------------------------------------------- saving adapted models

BASE_MODEL_DIR = "base-model"  # under a prefix run's final/: the frozen base the adapter attaches to


def is_adapted(model: torch.nn.Module) -> bool:
    """True for a model wrapped by peft (the lora and prefix schemes)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def save_adapted_model(model: PeftModel, directory: str | Path) -> str:
    """Save a peft-wrapped model so that it loads as a whole; returns what was saved.

    LoRA: the merged weights, a plain model directory (``save_pretrained`` layout); the model is
    unmerged again afterwards, so training state is unchanged. Prefix tuning cannot be merged:
    the adapter goes into ``directory`` and the frozen base model into ``directory/base-model``,
    which :func:`gt_core.models.loading.load_model` joins again.
    """
    from pathlib import Path

    import peft

    directory = Path(directory)
    base = model.get_base_model()
    if model.peft_config[model.active_adapter].peft_type == peft.PeftType.LORA:
        model.merge_adapter()
        try:
            merged = {
                key.replace(".base_layer.", "."): tensor
                for key, tensor in base.state_dict().items()
                if ".lora_" not in key
            }
            base.save_pretrained(directory, state_dict=merged)
        finally:
            model.unmerge_adapter()
        return "merged LoRA weights"
    model.save_pretrained(directory)
    base.save_pretrained(directory / BASE_MODEL_DIR)
    return f"prefix adapter + base model in {BASE_MODEL_DIR}/"
