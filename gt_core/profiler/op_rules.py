"""FLOPs rules per aten op: forward FLOPs, and backward FLOPs per differentiable input.

Matmul FLOPs follow ``torch.utils.flop_counter`` exactly (2 FLOPs per multiply-accumulate), so a
profile counted with ``count="matmul"`` matches what ``FlopCounterMode`` measures. Elementwise work
(``count="all"``) uses rough per-element constants; it exists so that norms, activations and the
loss are not priced at zero, not to model any particular kernel.

Backward FLOPs of an input are the work autograd does to compute that input's gradient; autograd
only does it when the input requires grad. ``joint`` is backward work of a fused kernel that is paid
once when any input requires grad (the CPU/GPU attention kernels compute dq, dk and dv together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils import flop_counter as fc

if TYPE_CHECKING:
    from torch._ops import OpOverload, OpOverloadPacket

aten = torch.ops.aten


class UnsupportedOpError(RuntimeError):
    """An aten op on float tensors has no FLOPs rule; pricing it at zero would be silently wrong."""


@dataclass
class OpCost:
    """FLOPs of one recorded op. ``*_mm`` are matmul FLOPs, ``*_el`` elementwise FLOPs.

    ``bwd_mm`` / ``bwd_el`` map an input's position in the op's flat list of float tensor inputs to
    the FLOPs spent on its gradient.
    """

    fwd_mm: float = 0.0
    fwd_el: float = 0.0
    bwd_mm: dict[int, float] = field(default_factory=dict)
    bwd_el: dict[int, float] = field(default_factory=dict)
    joint_mm: float = 0.0
    joint_el: float = 0.0


# An op rule gets the op's args, its flat float tensor inputs and its flat float tensor outputs.
Rule = Callable[[tuple, list[torch.Tensor], list[torch.Tensor]], OpCost]


def _numel(t: object) -> int:
    return int(t.numel()) if isinstance(t, torch.Tensor) else 0


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _out_numel(outs: list[torch.Tensor]) -> int:
    return _numel(outs[0]) if outs else 0


def _positions(inputs: list[torch.Tensor], *tensors: object) -> list[int]:
    """Positions in ``inputs`` of the given tensor objects (identity, not equality)."""
    ids = {id(t) for t in tensors if isinstance(t, torch.Tensor)}
    return [i for i, t in enumerate(inputs) if id(t) in ids]


def _matmul_rule(a_idx: int, b_idx: int, flop_fn: Callable[..., int], extra_idx: int | None = None) -> Rule:
    """mm/bmm and their fused-add variants; each operand's gradient is one matmul of equal size."""

    def rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
        a, b = args[a_idx], args[b_idx]
        flops = float(flop_fn(_shape(a), _shape(b)))
        cost = OpCost(fwd_mm=flops)
        for pos in _positions(inputs, a):
            cost.bwd_mm[pos] = cost.bwd_mm.get(pos, 0.0) + flops
        for pos in _positions(inputs, b):
            cost.bwd_mm[pos] = cost.bwd_mm.get(pos, 0.0) + flops
        if extra_idx is not None and isinstance(args[extra_idx], torch.Tensor):
            n = float(_out_numel(outs))
            cost.fwd_el = n  # the added term
            for pos in _positions(inputs, args[extra_idx]):
                cost.bwd_el[pos] = cost.bwd_el.get(pos, 0.0) + n  # sum over broadcast dims
        return cost

    return rule


def _sdpa_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    q, k, v = args[0], args[1], args[2]
    fwd = float(fc.sdpa_flop_count(_shape(q), _shape(k), _shape(v)))
    bwd = float(fc.sdpa_backward_flop_count(_shape(outs[0]), _shape(q), _shape(k), _shape(v)))
    n_scores = float(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
    # Softmax over the scores: ~5 FLOPs/elem forward, ~3 backward (see _softmax_rule).
    cost = OpCost(fwd_mm=fwd, fwd_el=5 * n_scores, joint_mm=bwd, joint_el=3 * n_scores)
    return cost


def _efficient_attention_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    # _flash_attention_forward / _efficient_attention_forward take (b, s, h, d) layouts.
    q, k, v = args[0], args[1], args[2]
    qs, ks, vs = (_shape(t) for t in (q, k, v))
    q4 = (qs[0], qs[2], qs[1], qs[3])
    k4 = (ks[0], ks[2], ks[1], ks[3])
    v4 = (vs[0], vs[2], vs[1], vs[3])
    fwd = float(fc.sdpa_flop_count(q4, k4, v4))
    bwd = float(fc.sdpa_backward_flop_count((q4[0], q4[1], q4[2], v4[3]), q4, k4, v4))
    n_scores = float(q4[0] * q4[1] * q4[2] * k4[2])
    return OpCost(fwd_mm=fwd, fwd_el=5 * n_scores, joint_mm=bwd, joint_el=3 * n_scores)


def _elementwise_rule(fwd_per_elem: float, bwd_per_elem: float) -> Rule:
    """Pointwise op: work proportional to output elements, for the forward and per input."""

    def rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
        n = float(max(_out_numel(outs), max((_numel(t) for t in inputs), default=0)))
        return OpCost(fwd_el=fwd_per_elem * n, bwd_el={i: bwd_per_elem * n for i in range(len(inputs))})

    return rule


def _first_input_rule(fwd_per_elem: float, bwd_per_elem: float) -> Rule:
    """Work proportional to the first input's elements (reductions, softmax); only it has a gradient."""

    def rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
        if not inputs:
            return OpCost()
        n = float(_numel(args[0]))
        return OpCost(fwd_el=fwd_per_elem * n, bwd_el={pos: bwd_per_elem * n for pos in _positions(inputs, args[0])})

    return rule


def _free_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    return OpCost()


def _expand_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    # Free forward (a view); its backward sums the gradient over the broadcast dimensions.
    extra = float(max(_out_numel(outs) - _numel(args[0]), 0))
    return OpCost(bwd_el={pos: extra for pos in _positions(inputs, args[0])})


def _embedding_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    # Forward is a row gather (free); the weight gradient scatter-adds every output element.
    return OpCost(bwd_el={pos: float(_out_numel(outs)) for pos in _positions(inputs, args[0])})


def _layer_norm_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    x = args[0]
    weight = args[2] if len(args) > 2 else None
    bias = args[3] if len(args) > 3 else None
    n = float(_numel(x))
    cost = OpCost(fwd_el=5 * n)
    for pos in _positions(inputs, x):
        cost.bwd_el[pos] = 8 * n
    for pos in _positions(inputs, weight):
        cost.bwd_el[pos] = 2 * n
    for pos in _positions(inputs, bias):
        cost.bwd_el[pos] = 1 * n
    return cost


def _rms_norm_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    x = args[0]
    weight = args[2] if len(args) > 2 else None
    n = float(_numel(x))
    cost = OpCost(fwd_el=4 * n)
    for pos in _positions(inputs, x):
        cost.bwd_el[pos] = 6 * n
    for pos in _positions(inputs, weight):
        cost.bwd_el[pos] = 2 * n
    return cost


def _nll_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    # Picks one log-probability per target (plus the reduction); the gradient scatters them back.
    n_targets = float(_numel(args[1]))
    return OpCost(fwd_el=n_targets, bwd_el={pos: n_targets for pos in _positions(inputs, args[0])})


def _dropout_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    n = float(_numel(args[0]))
    return OpCost(fwd_el=2 * n, bwd_el={pos: n for pos in _positions(inputs, args[0])})


def _index_add_rule(args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    # self.index_add_(dim, index, source): one add per source element; source's gradient is a gather.
    source = args[3]
    n = float(_numel(source))
    return OpCost(fwd_el=n, bwd_el={pos: n for pos in _positions(inputs, source)})


_RULES: dict[Any, Rule] = {
    aten.mm: _matmul_rule(0, 1, fc.mm_flop),
    aten.addmm: _matmul_rule(1, 2, fc.mm_flop, extra_idx=0),
    aten.bmm: _matmul_rule(0, 1, fc.bmm_flop),
    aten.baddbmm: _matmul_rule(1, 2, fc.bmm_flop, extra_idx=0),
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_rule,
    aten._scaled_dot_product_flash_attention: _sdpa_rule,
    aten._scaled_dot_product_efficient_attention: _sdpa_rule,
    aten._scaled_dot_product_cudnn_attention: _sdpa_rule,
    aten._flash_attention_forward: _efficient_attention_rule,
    aten._efficient_attention_forward: _efficient_attention_rule,
    aten.embedding: _embedding_rule,
    aten.native_layer_norm: _layer_norm_rule,
    aten._softmax: _first_input_rule(5, 3),
    aten._log_softmax: _first_input_rule(5, 3),
    aten._safe_softmax: _first_input_rule(5, 3),
    aten.nll_loss_forward: _nll_rule,
    aten.nll_loss2d_forward: _nll_rule,
    aten.native_dropout: _dropout_rule,
    aten.expand: _expand_rule,
    aten.index_add: _index_add_rule,
    aten.index_add_: _index_add_rule,
}
if hasattr(aten, "_fused_rms_norm"):
    _RULES[aten._fused_rms_norm] = _rms_norm_rule

_REDUCTIONS = (
    "sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "norm",
    "linalg_vector_norm", "logsumexp", "prod", "cumsum", "cumprod", "argmax", "argmin", "any", "all", "topk",
)
for _name in _REDUCTIONS:
    if hasattr(aten, _name):
        _RULES[getattr(aten, _name)] = _first_input_rule(1, 1)

# Data movement, views, constructors and copies: no arithmetic (dtype casts and copies are memory
# traffic, not FLOPs; their backward is the matching move). Listed explicitly so that an op nobody
# thought about raises instead of being priced at zero.
_FREE = (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "unsqueeze",
    "squeeze", "slice", "select", "as_strided", "alias", "split", "split_with_sizes", "chunk", "unbind",
    "narrow", "detach", "clone", "contiguous", "copy_", "_to_copy", "to", "cat", "stack", "lift_fresh",
    "lift_fresh_copy", "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones", "full", "empty", "arange",
    "scalar_tensor", "fill_", "zero_", "repeat", "repeat_interleave", "index_select", "gather", "index",
    "constant_pad_nd", "flip", "roll", "tril", "triu", "masked_select", "bernoulli_", "bernoulli",
    "uniform_", "normal_", "_local_scalar_dense", "item", "unfold", "diagonal", "expand_as",
    "view_as", "movedim", "flatten", "unflatten", "_assert_async", "_assert_tensor_metadata",
    "sym_size", "sym_stride", "sym_numel", "is_nonzero", "equal", "set_", "resize_", "empty_strided",
    "new_empty_strided", "split_copy", "slice_scatter", "select_scatter", "index_put", "index_put_",
    "masked_scatter", "scatter", "nonzero", "one_hot", "_pin_memory", "dim", "size", "stride",
)
for _name in _FREE:
    if hasattr(aten, _name):
        _RULES.setdefault(getattr(aten, _name), _free_rule)

# Pointwise ops default to 1 FLOP/elem forward; a few transcendental ones cost more.
_POINTWISE_FWD = {"pow": 1, "rsqrt": 2, "sqrt": 1, "exp": 1, "tanh": 1, "gelu": 8, "silu": 4, "sigmoid": 4}


def register_op_rule(op: OpOverloadPacket, rule: Rule) -> None:
    """Add or replace the FLOPs rule of an aten op packet (e.g. ``torch.ops.aten.my_op``)."""
    _RULES[op] = rule


def is_free(packet: OpOverloadPacket) -> bool:
    """True for ops registered as pure data movement (zero FLOPs both ways)."""
    return _RULES.get(packet) is _free_rule


def op_cost(func: OpOverload, args: tuple, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> OpCost:
    """FLOPs of one aten op call, or ``UnsupportedOpError`` when it reads float tensors and has no rule."""
    packet = func.overloadpacket
    rule = _RULES.get(packet)
    if rule is not None:
        return rule(args, inputs, outs)
    if torch.Tag.pointwise in func.tags:
        name = packet.__name__.rstrip("_")
        fwd = _POINTWISE_FWD.get(name, 1)
        return _elementwise_rule(fwd, 1)(args, inputs, outs)
    if not inputs:
        return OpCost()
    raise UnsupportedOpError(f"no FLOPs rule for aten op {func}")

