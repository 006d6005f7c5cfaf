"""Record the aten op graph of one forward pass (ops, float tensor values, module paths, FLOPs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gt_core.profiler.op_rules import OpCost, UnsupportedOpError, op_cost

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from torch._ops import OpOverload

aten = torch.ops.aten

# Ops whose float outputs carry no gradient back to their float inputs.
_NON_DIFFERENTIABLE = {
    getattr(aten, name)
    for name in (
        "detach", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
        "new_zeros", "new_ones", "new_empty", "new_full", "new_empty_strided", "bernoulli_", "bernoulli",
        "uniform_", "normal_", "fill_", "zero_", "_local_scalar_dense", "sign",
    )
    if hasattr(aten, name)
}


@dataclass
class RecordedOp:
    """One aten op call. ``inputs``/``outputs`` are value ids of its float tensors, flat, in order."""

    name: str
    module: str
    inputs: list[int]
    outputs: list[int]
    differentiable: bool
    cost: OpCost


@dataclass
class Recording:
    """The op graph of one forward. Values ``0..n_params-1`` are the parameters (in the given order)."""

    n_params: int
    ops: list[RecordedOp] = field(default_factory=list)
    n_values: int = 0
    first_use: list[int] = field(default_factory=list)  # parameter indices, in order of first use
    loss_value: int | None = None


def _float_tensors(tree: object) -> list[torch.Tensor]:
    """Float tensors of an aten op's args or outputs, in pytree leaf order (lists, tuples, dict values)."""
    found: list[torch.Tensor] = []
    _collect_float_tensors(tree, found)
    return found


def _collect_float_tensors(obj: object, found: list[torch.Tensor]) -> None:
    # A hand-rolled walk: aten arguments only nest lists, tuples and dicts, and this runs once per
    # recorded op, where torch's generic pytree walk was a tenth of the profiling time.
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _collect_float_tensors(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect_float_tensors(item, found)


def _returns_view(func: OpOverload) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class OpRecorder(TorchDispatchMode):
    """Dispatch mode that turns every aten op into a ``RecordedOp``.

    Tensors are identified by ``id()``; every tensor seen is kept alive until the recorder is
    dropped so that ids are not reused. An in-place op gives the mutated tensor (and the other views
    of the same storage) a new value, so the graph stays a DAG of values.
    """

    def __init__(self, params: list[torch.Tensor], module_stack: list[str]) -> None:
        super().__init__()
        self.recording = Recording(n_params=len(params), n_values=len(params))
        self._value_of: dict[int, int] = {id(p): i for i, p in enumerate(params)}
        self._keep: list[torch.Tensor] = list(params)
        self._root: dict[int, int] = {}
        self._views: dict[int, list[torch.Tensor]] = {}
        self._root_tensor: dict[int, torch.Tensor] = {}
        self._seen_params: set[int] = set()
        self._module_stack = module_stack
        self._node_value: dict[Any, int] = {}  # autograd node -> value of the tensor it produced
        self._wrapped: set[int] = set()
        self._nograd_run = (0.0, 0.0)  # (matmul, elementwise) fwd FLOPs of consecutive grad-off ops
        self._nograd_cost: dict[int, tuple[float, float]] = {}

    def value_of(self, tensor: torch.Tensor) -> int | None:
        """Current value id of a tensor seen during recording, or None."""
        return self._value_of.get(id(tensor))

    def _new_value(self, tensor: torch.Tensor) -> int:
        rec = self.recording
        v = rec.n_values
        rec.n_values += 1
        self._value_of[id(tensor)] = v
        self._keep.append(tensor)
        return v

    def _input_value(self, tensor: torch.Tensor) -> int:
        v = self._value_of.get(id(tensor))
        if v is None:
            return self._new_value(tensor)  # a constant: model input, buffer or tensor made outside
        if v < self.recording.n_params and v not in self._seen_params:
            self._seen_params.add(v)
            self.recording.first_use.append(v)
        return v

    def __torch_dispatch__(self, func: OpOverload, types: Collection[type], args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        module = self._module_stack[-1] if self._module_stack else "<top>"
        inputs = _float_tensors((args, kwargs))
        outs = _float_tensors(out)
        try:
            cost = op_cost(func, args, inputs, outs)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"{exc} (ran in module {module!r})") from None
        for t in inputs:
            self.wrap_custom_function(t)
        in_values = [self._input_value(t) for t in inputs]
        for t, v in zip(inputs, in_values):
            if t.grad_fn is not None:
                self._node_value.setdefault(t.grad_fn, v)
        in_ids = {id(t) for t in inputs}
        mutated = [t for t in outs if id(t) in in_ids]
        out_values = [self._new_value(t) for t in outs]
        if mutated and func._schema.is_mutable:
            out_values += self._refresh_aliases(mutated)
        elif _returns_view(func) and inputs and outs:
            base = args[0] if isinstance(args[0], torch.Tensor) else inputs[0]
            root = self._root.get(id(base), id(base))
            self._root_tensor.setdefault(root, base)
            for t in outs:
                self._root[id(t)] = root
                self._views.setdefault(root, []).append(t)
        grad_on = torch.is_grad_enabled()
        if grad_on:
            self._nograd_run = (0.0, 0.0)
        else:
            mm, el = self._nograd_run
            self._nograd_run = (mm + cost.fwd_mm, el + cost.fwd_el)
            for v in out_values:
                self._nograd_cost[v] = self._nograd_run
        self.recording.ops.append(
            RecordedOp(
                name=str(func),
                module=module,
                inputs=in_values,
                outputs=out_values,
                differentiable=grad_on and func.overloadpacket not in _NON_DIFFERENTIABLE,
                cost=cost,
            )
        )
        return out

    def wrap_custom_function(self, tensor: torch.Tensor) -> None:
        """Connect the output of a custom ``torch.autograd.Function`` to that Function's inputs.

        Its forward runs with grad disabled, so the recorded ops inside it look non-differentiable.
        Its backward is arbitrary Python that the recorder cannot see; it is priced as a joint cost
        equal to the forward FLOPs of the grad-disabled ops that produced the output.
        """
        node = tensor.grad_fn
        if not isinstance(node, torch.autograd.function.BackwardCFunction) or id(node) in self._wrapped:
            return
        self._wrapped.add(id(node))
        self._keep.append(node)  # type: ignore[arg-type]  # keeps id(node) unique
        old = self._value_of.get(id(tensor))
        mm, el = self._nograd_cost.get(old, (0.0, 0.0)) if old is not None else (0.0, 0.0)
        inputs = []
        for next_node, _ in node.next_functions:
            if next_node is None:
                continue
            variable = getattr(next_node, "variable", None)
            if isinstance(variable, torch.Tensor):
                v = self._input_value(variable) if id(variable) in self._value_of else None
            else:
                v = self._node_value.get(next_node)
            if v is not None:
                inputs.append(v)
        module = self._module_stack[-1] if self._module_stack else "<top>"
        self.recording.ops.append(
            RecordedOp(
                name=f"autograd.Function {type(node).__name__}",
                module=module,
                inputs=inputs,
                outputs=[self._new_value(tensor)],
                differentiable=True,
                cost=OpCost(joint_mm=mm, joint_el=el),
            )
        )

    def _refresh_aliases(self, mutated: list[torch.Tensor]) -> list[int]:
        """New values for the other views of a storage an in-place op wrote to."""
        new_values = []
        for t in mutated:
            root = self._root.get(id(t), id(t))
            base = self._root_tensor.get(root)
            for alias in ([base] if base is not None else []) + self._views.get(root, []):
                if alias is not t:
                    new_values.append(self._new_value(alias))
        return new_values


class ModulePathTracker:
    """Keeps a stack of the module paths whose forward is running (for error messages)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack: list[str] = []
        self._model = model
        self._handles: list[Any] = []

    def __enter__(self) -> "ModulePathTracker":
        for name, module in self._model.named_modules():
            path = name or "<root>"
            self._handles.append(module.register_forward_pre_hook(self._push(path)))
            self._handles.append(module.register_forward_hook(self._pop(path), always_call=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _push(self, path: str) -> Callable[[torch.nn.Module, tuple[object, ...]], None]:
        def hook(module: torch.nn.Module, args: tuple[object, ...]) -> None:
            self.stack.append(path)

        return hook

    def _pop(self, path: str) -> Callable[[torch.nn.Module, tuple[object, ...], object], None]:
        def hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
            if self.stack and self.stack[-1] == path:
                self.stack.pop()

        return hook

