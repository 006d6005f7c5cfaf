"""Price mixture-of-experts layers without running their data-dependent routing.

Top-k routing decides at run time which k of the E experts each token visits, through ops whose
output shapes depend on values (``nonzero``, ``where``), which the meta device cannot run and which
would make a profile depend on the random profiling batch. While profiling, every routed-experts
module instead sends the T tokens of a batch to experts round-robin over the T·k (token, slot)
pairs: pair s goes to expert ``s mod E``. Each token still visits k distinct experts (k ≤ E), every
expert gets ⌊T·k/E⌋ or ⌈T·k/E⌉ tokens, i.e. the expected load under balanced routing, and the expert
FLOPs add up to exactly those of T·k token-expert visits. The router still runs and its top-k
weights still scale the expert outputs, so the router's weight gradient is priced too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn import functional as F

from gt_core.models.traits import forwards_replaced


def is_routed_experts(module: torch.nn.Module) -> bool:
    """True for transformers' stacked-experts modules in the layout this module can route.

    That is the ``use_experts_implementation`` layout of Mixtral and its relatives: 3-D
    ``gate_up_proj`` (E, 2·I, H) with [gate; up] concatenated, ``down_proj`` (E, H, I), no biases,
    ``forward(hidden_states, top_k_index, top_k_weights)``.
    """
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, torch.nn.Parameter)
        and isinstance(down, torch.nn.Parameter)
        and gate_up.dim() == 3
        and down.dim() == 3
        and getattr(module, "has_gate", None) is True
        and getattr(module, "has_bias", None) is False
        and getattr(module, "is_concatenated", None) is True
        and getattr(module, "is_transposed", None) is False
        and not getattr(module, "has_post_expert_norm", False)
        and callable(getattr(module, "_apply_gate", None))
    )


def balanced_assignment(n_tokens: int, top_k: int, n_experts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per expert, (token indices, slot indices) of the round-robin routing described above."""
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top-k routing needs 1 <= k <= E, got k={top_k}, E={n_experts}")
    out = []
    for e in range(n_experts):
        pairs = torch.arange(e, max(e, n_tokens * top_k), n_experts)
        out.append((pairs // top_k, pairs % top_k))
    return out


def _balanced_forward(module: torch.nn.Module):
    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        n_tokens, top_k = int(top_k_index.shape[0]), int(top_k_index.shape[-1])
        out = torch.zeros_like(hidden_states)
        for e, (tokens, slots) in enumerate(balanced_assignment(n_tokens, top_k, int(module.gate_up_proj.shape[0]))):
            if tokens.numel() == 0:
                continue
            tokens = tokens.to(hidden_states.device)
            slots = slots.to(hidden_states.device)
            gate_up = F.linear(hidden_states[tokens], module.gate_up_proj[e])
            expert_out = F.linear(module._apply_gate(gate_up), module.down_proj[e])
            expert_out = expert_out * top_k_weights[tokens, slots, None]
            out.index_add_(0, tokens, expert_out.to(out.dtype))
        return out

    return forward


@contextmanager
def balanced_routing(model: torch.nn.Module) -> Iterator[int]:
    """Route every routed-experts module of ``model`` round-robin while inside; yields how many."""
    patched = [m for m in model.modules() if is_routed_experts(m)]
    with forwards_replaced(patched, _balanced_forward):
        yield len(patched)
