"""Measure a model's per-tensor FLOPs profile from one recorded forward pass."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from gt_core.models.traits import is_encoder_decoder
from gt_core.profiler.graph import compile_recording
from gt_core.profiler.modules import check_modules
from gt_core.profiler.moe import balanced_routing
from gt_core.profiler.record import ModulePathTracker, OpRecorder
from gt_core.profiler.tensor_profile import TensorProfile

_INPUT_SEED = 1234


def _vocab_size(model: torch.nn.Module) -> int:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(emb, torch.nn.Embedding):
        return int(emb.num_embeddings)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise ValueError("cannot tell the model's vocabulary size (no input embedding, no config.vocab_size)")
    return int(vocab)


def make_batch(
    model: torch.nn.Module, batch_size: int, seq_len: int, target_len: int | None = None
) -> dict[str, torch.Tensor]:
    """A random token batch with labels (deterministic, leaves the global RNG alone)."""
    if batch_size < 1 or seq_len < 1 or (target_len is not None and target_len < 1):
        raise ValueError("batch_size, seq_len and target_len must be positive")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(_INPUT_SEED)
    vocab = _vocab_size(model)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)
    if is_encoder_decoder(model):
        tgt = torch.randint(0, vocab, (batch_size, target_len or seq_len), generator=gen).to(device)
        return {"input_ids": ids, "decoder_input_ids": tgt, "labels": tgt}
    if target_len is not None:
        raise ValueError("target_len only applies to encoder-decoder models")
    return {"input_ids": ids, "labels": ids}


def _loss_of(output: object) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, (tuple, list)) and output:
        loss = output[0]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("the model did not return a scalar loss for a batch with labels")
    return loss


def unique_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters once each (a tied tensor under its first name)."""
    return list(model.named_parameters(remove_duplicate=True))


@contextmanager
def _all_trainable(params: list[torch.nn.Parameter]) -> Iterator[None]:
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


@contextmanager
def one_sequence_per_row() -> Iterator[None]:
    """Tell transformers' mask builder that the profiling batch packs no sequences together.

    Without an attention mask or cache it inspects position ids to detect packing, a check that
    reads tensor values and so cannot run on the meta device. ``make_batch`` rows are one sequence
    each, so the answer is known: no packing.
    """
    try:
        from transformers import masking_utils
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _rng_devices(params: list[torch.nn.Parameter]) -> list[int]:
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def profile_model(
    model: torch.nn.Module,
    batch_size: int = 4,
    seq_len: int = 64,
    target_len: int | None = None,
    count: str = "all",
) -> TensorProfile:
    """Profile one training step of ``model`` on a ``batch_size`` × ``seq_len`` token batch.

    Runs one real forward with loss under a dispatch recorder (all parameters temporarily
    trainable, RNG forked, train/eval mode kept), prices every aten op, and returns a
    ``TensorProfile`` whose tensors are in forward execution order. ``count="matmul"`` counts only
    matmul/attention FLOPs (what ``torch.utils.flop_counter.FlopCounterMode`` counts); ``"all"``
    adds elementwise work. ``target_len`` is the decoder length of encoder-decoder models (default
    ``seq_len``). Parameters the forward never reads are left out (listed in ``meta["unused"]``).
    Mixture-of-experts layers are priced under balanced top-k routing (see ``gt_core.profiler.moe``).

    A model built on the meta device (``with torch.device("meta"): from_config(...)``) profiles the
    same without weights or arithmetic, which makes billion-parameter shapes take well under a second.
    """
    if count not in ("all", "matmul"):
        raise ValueError(f"count must be 'all' or 'matmul', got {count!r}")
    check_modules(model)
    named = unique_parameters(model)
    if not named:
        raise ValueError("the model has no parameters")
    params = [p for _, p in named]
    batch = make_batch(model, batch_size, seq_len, target_len)

    tracker = ModulePathTracker(model)
    recorder = OpRecorder(params, tracker.stack)
    with torch.random.fork_rng(devices=_rng_devices(params)), _all_trainable(params), torch.enable_grad():
        with tracker, balanced_routing(model) as n_routed, one_sequence_per_row(), recorder:
            output = model(**batch)
        loss = _loss_of(output)
    recorder.wrap_custom_function(loss)
    recording = recorder.recording
    recording.loss_value = recorder.value_of(loss)
    del output, loss, recorder

    order = list(recording.first_use)
    compiled = compile_recording(recording, order, count)
    t_dw, t_dy = compiled.additive_vectors()
    used = set(order)
    return TensorProfile(
        names=[named[v][0] for v in order],
        t_dw=t_dw,
        t_dy=t_dy,
        t_fp=compiled.t_fp,
        exact_backward=compiled,
        param_counts=np.array([params[v].numel() for v in order], dtype=np.int64),
        count=count,
        meta={
            "batch_size": batch_size,
            "seq_len": seq_len,
            "target_len": (target_len or seq_len) if is_encoder_decoder(model) else None,
            "model_class": type(model).__name__,
            "n_ops": len(recording.ops),
            "n_cost_groups": len(compiled.group_flops),
            "unused": [name for i, (name, _) in enumerate(named) if i not in used],
            "routed_expert_modules": n_routed,
        },
    )
