"""profile_model's exact cost(mask) against FLOPs torch's FlopCounterMode sees in a real step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gt_core.profiler import profile_model
from gt_core.profiler.profile_model import make_batch
from gt_core.models.tiny import tiny_model

BATCH, SEQ = 2, 16
ARCHS = ["opt", "bloom", "gpt2", "llama", "qwen2", "mistral", "t5"]


def measured_step_flops(model: torch.nn.Module, names: list[str], mask: np.ndarray, target_len: int | None) -> int:
    """Matmul FLOPs of one real forward+backward with exactly the masked tensors trainable."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for name, on in zip(names, mask):
        params[name].requires_grad_(bool(on))
    batch = make_batch(model, BATCH, SEQ, target_len)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def masks_for(n: int, seed: int = 0) -> list[np.ndarray]:
    eye = np.eye(n, dtype=bool)
    rng = np.random.default_rng(seed)
    masks = [np.ones(n, dtype=bool), eye[n - 1]]
    masks += [eye[i] for i in sorted({0, 1, 2, n // 3, n // 2, n // 2 + 1, 2 * n // 3, n - 2})]
    masks.append(np.arange(n) % 3 == 0)  # scattered
    masks.append(np.arange(n) % 5 == 1)
    masks.append(np.arange(n) >= n // 2)  # suffix
    masks.append(eye[0] | eye[n - 1])  # both ends
    masks += [rng.random(n) < p for p in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)]
    return [m for m in masks if m.any()]


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_cost_matches_flop_counter_for_any_mask(arch: str) -> None:
    model = tiny_model(arch)
    target_len = 8 if arch == "t5" else None
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ, target_len=target_len, count="matmul")
    masks = masks_for(len(prof.names))
    assert len(masks) >= 20
    worst = 0.0
    for mask in masks:
        measured = measured_step_flops(model, prof.names, mask, target_len)
        worst = max(worst, abs(prof.cost(mask) - measured) / measured)
    assert worst == 0.0, f"{arch}: worst relative error {worst:.3%}"


@pytest.mark.parametrize("arch", ["opt", "llama", "t5"])
def test_forward_flops_match_flop_counter(arch: str) -> None:
    model = tiny_model(arch)
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ, count="matmul")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**make_batch(model, BATCH, SEQ))
    assert prof.t_fp == counter.get_total_flops()
    assert prof.cost(np.zeros(len(prof.names), dtype=bool)) == prof.t_fp


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2", "t5"])
def test_sdpa_attention_is_counted_like_eager(arch: str) -> None:
    eager = profile_model(tiny_model(arch), batch_size=BATCH, seq_len=SEQ, count="matmul")
    fused = profile_model(tiny_model(arch, attn_implementation="sdpa"), batch_size=BATCH, seq_len=SEQ, count="matmul")
    assert fused.names == eager.names
    assert fused.t_fp == pytest.approx(eager.t_fp, rel=1e-9)
    # The fused backward recomputes the attention scores, so it costs a little more, never less.
    assert eager.t_full <= fused.t_full <= 1.05 * eager.t_full
