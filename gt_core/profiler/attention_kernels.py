"""Make ``scaled_dot_product_attention`` on meta tensors run the kernel a real device would run.

torch picks the fused attention kernel (flash, memory-efficient, cuDNN, or the plain math
decomposition) from the device, dtype, shapes and flags. On the meta device it always takes the
math decomposition, whose recorded ops (two batched matmuls, a softmax, a mask add) are priced
differently from a fused kernel's joint backward. While profiling a meta twin of a model that lives
on ``device``, each attention call asks torch which kernel ``device`` would pick for the same
arguments (on one-sequence-batch tensors of the same heads, lengths and dtype) and calls that
kernel's aten op on the meta tensors, as the real dispatcher would.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import _disable_current_modes

aten = torch.ops.aten


def _probe(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An empty tensor like ``t`` on ``device`` with a batch of one (the kernel choice reads shapes and dtype only)."""
    shape = (1,) + tuple(t.shape[1:]) if t.dim() > 0 else ()
    return torch.empty(shape, dtype=t.dtype, device=device, requires_grad=t.requires_grad)


def kernel_choice(
    device: torch.device,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> SDPBackend:
    """The attention kernel torch would run on ``device`` for these arguments.

    Runs outside any active dispatch mode: the probe is not part of the profiled forward.
    """
    with _disable_current_modes():
        return _choice(device, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def _choice(
    device: torch.device, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attn_mask: torch.Tensor | None, dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool,
) -> SDPBackend:
    mask = _probe(attn_mask, device) if attn_mask is not None and attn_mask.dim() == 4 else attn_mask
    if mask is not None and mask.is_meta:
        mask = torch.empty(tuple(mask.shape), dtype=mask.dtype, device=device)
    choice = aten._fused_sdp_choice(
        _probe(query, device), _probe(key, device), _probe(value, device), mask,
        dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa,
    )
    return SDPBackend(choice)


def _fused_attention(
    backend: SDPBackend, device: torch.device, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attn_mask: torch.Tensor | None, dropout_p: float, is_causal: bool, scale: float | None,
) -> torch.Tensor | None:
    """The aten call torch's dispatcher makes for ``backend`` on ``device``, or None for the math path."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if backend == SDPBackend.FLASH_ATTENTION and device.type == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )[0]
    if backend == SDPBackend.FLASH_ATTENTION:
        head_dim = int(query.shape[-1])
        pad = (-head_dim) % 8  # the CUDA flash kernel takes head dims in multiples of 8
        scale = scale if scale is not None else head_dim ** -0.5
        q, k, v = (F.pad(t, (0, pad)) if pad else t for t in (query, key, value))
        out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        return out[..., :head_dim] if pad else out
    if backend == SDPBackend.EFFICIENT_ATTENTION:
        return aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, grad, dropout_p, is_causal, scale=scale
        )[0]
    if backend == SDPBackend.CUDNN_ATTENTION:
        return aten._scaled_dot_product_cudnn_attention(
            query, key, value, attn_mask, grad, dropout_p, is_causal, False, scale=scale
        )[0]
    return None


@contextmanager
def attention_kernels_of(device: torch.device | str) -> Iterator[None]:
    """While inside, attention on meta tensors runs the kernel ``device`` would pick."""
    device = torch.device(device)
    original = F.scaled_dot_product_attention
    choices: dict[tuple, SDPBackend] = {}

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if not query.is_meta:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        signature = tuple(
            (tuple(t.shape), t.dtype, t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        )
        if signature not in choices:
            choices[signature] = kernel_choice(device, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        out = _fused_attention(choices[signature], device, query, key, value, attn_mask, dropout_p, is_causal, scale)
        if out is not None:
            return out
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
