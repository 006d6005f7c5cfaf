"""profile_model: tensor order, tied weights, additive model, side effects, unsupported inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from gt_core.profiler import (
    TensorProfile,
    UnsupportedModuleError,
    UnsupportedOpError,
    profile_model,
    register_module_type,
)
from gt_core.models.tiny import tiny_model

BATCH, SEQ = 2, 16


@pytest.fixture(scope="module")
def profiles() -> dict[str, TensorProfile]:
    return {arch: profile_model(tiny_model(arch), batch_size=BATCH, seq_len=SEQ) for arch in ("opt", "llama", "qwen2", "t5")}


def test_opt_order_is_execution_order_not_registration_order() -> None:
    model = tiny_model("opt")
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ)
    registered = [n for n, _ in model.named_parameters()]
    assert sorted(prof.names) == sorted(registered)
    assert prof.names != registered
    final = prof.names.index("model.decoder.final_layer_norm.weight")
    layer_indices = [i for i, n in enumerate(prof.names) if ".layers." in n]
    assert final > max(layer_indices)
    assert prof.names[0] == "model.decoder.embed_tokens.weight"
    # Within a layer, the attention projections run before the feed-forward ones.
    assert prof.names.index("model.decoder.layers.0.self_attn.v_proj.weight") < prof.names.index(
        "model.decoder.layers.0.fc1.weight"
    )


def test_tied_embedding_appears_once_at_the_input_and_carries_the_head(profiles: dict[str, TensorProfile]) -> None:
    tied, untied = profiles["qwen2"], profiles["llama"]
    assert tied.names[0] == "model.embed_tokens.weight"
    assert "lm_head.weight" not in tied.names
    assert untied.names[-1] == "lm_head.weight"
    vocab, hidden = 512, 64
    head_weight_grad = 2 * BATCH * SEQ * hidden * vocab  # one matmul for the LM head's weight gradient
    assert tied.t_dw[0] >= head_weight_grad
    assert untied.t_dw[0] < head_weight_grad / 10  # only the embedding's row scatter
    assert untied.t_dw[-1] >= head_weight_grad


def test_param_counts_and_totals(profiles: dict[str, TensorProfile]) -> None:
    model = tiny_model("llama")
    prof = profiles["llama"]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    assert prof.param_counts.tolist() == [sizes[n] for n in prof.names]
    assert prof.t_full == pytest.approx(prof.t_fp + prof.t_dw.sum() + prof.t_dy.sum())
    assert 0 < prof.min_feasible_rho() < 1


@pytest.mark.parametrize("arch", ["opt", "llama", "qwen2", "t5"])
def test_additive_model_is_exact_on_suffix_masks(profiles: dict[str, TensorProfile], arch: str) -> None:
    prof = profiles[arch]
    n = len(prof.names)
    for k in range(n + 1):
        mask = np.arange(n) >= k
        assert prof.additive_cost(mask) == pytest.approx(prof.cost(mask), rel=1e-12, abs=1e-6)


@pytest.mark.parametrize("arch", ["opt", "llama", "qwen2", "t5"])
def test_additive_model_bounds_exact_cost_from_above(profiles: dict[str, TensorProfile], arch: str) -> None:
    prof = profiles[arch]
    n = len(prof.names)
    rng = np.random.default_rng(1)
    strictly_above = 0
    for density in (0.02, 0.1, 0.3, 0.6):
        for _ in range(50):
            mask = rng.random(n) < density
            exact, additive = prof.cost(mask), prof.additive_cost(mask)
            assert additive >= exact * (1 - 1e-12)
            strictly_above += additive > exact * (1 + 1e-9)
    assert strictly_above > 0  # parallel Q/K/V branches make the chain model pessimistic somewhere
    assert (prof.t_dw >= 0).all() and (prof.t_dy >= 0).all()


def test_count_all_exceeds_matmul_count() -> None:
    model = tiny_model("opt")
    full = profile_model(model, batch_size=BATCH, seq_len=SEQ, count="all")
    mm = profile_model(model, batch_size=BATCH, seq_len=SEQ, count="matmul")
    assert full.names == mm.names
    assert full.t_fp > mm.t_fp and full.t_full > mm.t_full
    ln = full.names.index("model.decoder.final_layer_norm.bias")
    assert mm.t_dw[ln] == 0 and full.t_dw[ln] > 0
    with pytest.raises(ValueError, match="count"):
        profile_model(model, batch_size=BATCH, seq_len=SEQ, count="macs")


def test_t5_target_length_changes_decoder_cost() -> None:
    model = tiny_model("t5")
    short = profile_model(model, batch_size=BATCH, seq_len=SEQ, target_len=4, count="matmul")
    long = profile_model(model, batch_size=BATCH, seq_len=SEQ, target_len=SEQ, count="matmul")
    assert short.t_fp < long.t_fp
    with pytest.raises(ValueError, match="target_len"):
        profile_model(tiny_model("opt"), batch_size=BATCH, seq_len=SEQ, target_len=4)


@pytest.mark.parametrize("training", [True, False])
def test_profiling_has_no_side_effects(training: bool) -> None:
    model = tiny_model("opt").train(training)
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 == 0)
    before = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    torch.manual_seed(7)
    rng_state = torch.get_rng_state()
    profile_model(model, batch_size=BATCH, seq_len=SEQ)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training is training
    assert [p.requires_grad for p in params] == flags
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, params))
    assert all(p.grad is None for p in params)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class MyGatedThing(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate


def test_unsupported_module_names_class_and_path() -> None:
    model = tiny_model("llama")
    model.model.layers[0].mlp = MyGatedThing(64)
    with pytest.raises(UnsupportedModuleError, match=r"model\.layers\.0\.mlp: MyGatedThing is not supported"):
        profile_model(model, batch_size=BATCH, seq_len=SEQ)


@dataclass
class _Output:
    loss: torch.Tensor


class QRMixer(nn.Module):
    """A parameter-owning module whose op (a QR decomposition) has no FLOPs rule."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, _ = torch.linalg.qr(self.weight)
        return x @ q


class ToyLM(nn.Module):
    def __init__(self, vocab: int = 32, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.mixer = QRMixer(hidden)
        self.head = nn.Linear(hidden, vocab)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> _Output:
        logits = self.head(self.mixer(self.embed(input_ids)))
        return _Output(nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))


def test_op_without_rule_raises_with_op_and_module() -> None:
    register_module_type(QRMixer)
    with pytest.raises(UnsupportedOpError, match=r"linalg_qr.*'mixer'"):
        profile_model(ToyLM(), batch_size=BATCH, seq_len=SEQ)


def test_registered_toy_model_without_exotic_ops_profiles() -> None:
    model = ToyLM()
    model.mixer = nn.Linear(8, 8)
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ, count="matmul")
    assert prof.names == ["embed.weight", "mixer.weight", "mixer.bias", "head.weight", "head.bias"]
    matmul = 2 * BATCH * SEQ * 8
    assert prof.t_fp == matmul * 8 + matmul * 32
    # Training only the mixer weight: its weight gradient and the head's input gradient.
    assert prof.cost(np.array([0, 1, 0, 0, 0], dtype=bool)) == prof.t_fp + matmul * 8 + matmul * 32


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 2


def test_custom_autograd_function_keeps_the_gradient_path() -> None:
    class DoubledLM(ToyLM):
        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> _Output:
            logits = self.head(_Double.apply(self.mixer(self.embed(input_ids))))
            return _Output(nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))

    model = DoubledLM()
    model.mixer = nn.Linear(8, 8)
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ, count="matmul")
    matmul = 2 * BATCH * SEQ * 8
    # Without the Function's edge, the mixer would look disconnected from the loss and cost nothing.
    assert prof.cost(np.array([0, 1, 0, 0, 0], dtype=bool)) == prof.t_fp + matmul * 8 + matmul * 32


def test_parameters_the_forward_never_reads_are_left_out() -> None:
    model = ToyLM()
    model.mixer = nn.Linear(8, 8)
    model.spare = nn.Linear(8, 8)  # registered, never called
    prof = profile_model(model, batch_size=BATCH, seq_len=SEQ)
    assert "spare.weight" not in prof.names
    assert prof.meta["unused"] == ["spare.weight", "spare.bias"]


def test_t5_encoder_tensors_come_before_decoder_tensors(profiles: dict[str, TensorProfile]) -> None:
    names = profiles["t5"].names
    assert names[0] == "shared.weight"
    last_encoder = max(i for i, n in enumerate(names) if n.startswith("encoder."))
    first_decoder = min(i for i, n in enumerate(names) if n.startswith("decoder."))
    assert names[last_encoder] == "encoder.final_layer_norm.weight"
    assert last_encoder < first_decoder
    # Training only an encoder tensor still pays the input gradients of the decoder's cross-attention
    # K/V projections, so it costs more than its own weight gradient.
    k = names.index("encoder.block.1.layer.1.DenseReluDense.wo.weight")
    mask = np.zeros(len(names), dtype=bool)
    mask[k] = True
    prof = profiles["t5"]
    cross_kv_input_grads = 2 * 2 * (2 * BATCH * SEQ * 64 * 64)  # 2 decoder layers x (K, V), d_model = inner = 64
    assert prof.cost(mask) - prof.t_fp >= prof.t_dw[k] + cross_kv_input_grads


@pytest.mark.parametrize("arch", ["opt", "t5"])
def test_meta_device_model_profiles_like_the_real_one(arch: str) -> None:
    with torch.device("meta"):
        meta_model = tiny_model(arch)
    assert next(meta_model.parameters()).is_meta
    real = profile_model(tiny_model(arch), batch_size=BATCH, seq_len=SEQ)
    meta = profile_model(meta_model, batch_size=BATCH, seq_len=SEQ)
    assert meta.names == real.names
    assert meta.t_fp == real.t_fp and meta.t_full == real.t_full
    assert np.array_equal(meta.t_dw, real.t_dw) and np.array_equal(meta.t_dy, real.t_dy)
