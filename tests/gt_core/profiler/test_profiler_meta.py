"""profile_model_shape: the meta-device twin (or a config) profiles exactly like the live model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gt_core.cli import app
from gt_core.models.loading import load_model
from gt_core.profiler import TensorProfile, meta_twin, model_from_config, profile_model, profile_model_shape
from gt_core.profiler.moe import balanced_assignment
from gt_core.models.tiny import tiny_model

BATCH, SEQ = 2, 16


def assert_same_profile(live: TensorProfile, shaped: TensorProfile) -> None:
    assert shaped.names == live.names
    assert np.array_equal(shaped.t_dw, live.t_dw) and np.array_equal(shaped.t_dy, live.t_dy)
    assert shaped.t_fp == live.t_fp
    assert np.array_equal(shaped.param_counts, live.param_counts)
    assert shaped.count == live.count
    for key in ("batch_size", "seq_len", "target_len", "model_class", "unused", "n_cost_groups"):
        assert shaped.meta[key] == live.meta[key], key
    rng = np.random.default_rng(0)
    for _ in range(25):  # the exact-cost model, on arbitrary (non-suffix) masks
        mask = rng.random(len(live)) < 0.3
        assert shaped.cost(mask) == live.cost(mask)


@pytest.mark.parametrize("arch", ["opt", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("tied", [True, False])
def test_twin_profiles_exactly_like_the_live_model(arch: str, tied: bool) -> None:
    model = tiny_model(arch, tie_word_embeddings=tied)
    shared = len(list(model.named_parameters(remove_duplicate=False))) > len(list(model.parameters()))
    assert shared == tied
    live = profile_model(model, BATCH, SEQ)
    shaped = profile_model_shape(model, BATCH, SEQ)
    assert shaped.meta["profiled_on"] == "meta"
    assert_same_profile(live, shaped)


@pytest.mark.parametrize("arch", ["llama", "t5", "gpt2"])
@pytest.mark.parametrize("train", [False, True])
def test_fused_attention_and_dropout_match_the_live_device(arch: str, train: bool) -> None:
    # sdpa on CPU runs a fused kernel; on the meta device torch would run the math decomposition.
    model = tiny_model(arch, attn_implementation="sdpa").train(train)
    for mode in (None, "matmul"):
        count = mode or "all"
        assert_same_profile(profile_model(model, BATCH, SEQ, count=count), profile_model_shape(model, BATCH, SEQ, count=count))


def test_gradient_checkpointing_and_no_cache_match() -> None:
    model = tiny_model("llama", attn_implementation="sdpa")
    model.activation_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    shaped = profile_model_shape(model, BATCH, SEQ)
    assert shaped.meta["profiled_on"] == "meta"
    assert_same_profile(profile_model(model, BATCH, SEQ), shaped)


def test_encoder_decoder_target_len() -> None:
    model = tiny_model("t5")
    assert_same_profile(profile_model(model, BATCH, 12, target_len=5), profile_model_shape(model, BATCH, 12, target_len=5))


def test_bf16_model() -> None:
    model = tiny_model("opt").to(torch.bfloat16)
    twin = meta_twin(model)
    assert next(twin.parameters()).dtype == torch.bfloat16
    assert_same_profile(profile_model(model, BATCH, SEQ), profile_model_shape(model, BATCH, SEQ))


def test_model_built_on_the_meta_device_is_priced_as_on_cpu() -> None:
    with torch.device("meta"):
        meta_model = tiny_model("llama", attn_implementation="sdpa")
    assert meta_twin(meta_model) is meta_model
    live = profile_model(tiny_model("llama", attn_implementation="sdpa"), BATCH, SEQ)
    assert_same_profile(live, profile_model_shape(meta_model, BATCH, SEQ))


def test_twin_leaves_the_live_model_alone() -> None:
    model = tiny_model("llama")
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    twin = meta_twin(model)
    assert all(p.is_meta for p in twin.parameters())
    assert [n for n, _ in twin.named_parameters()] == list(before)
    assert twin.lm_head.weight is not twin.model.embed_tokens.weight  # llama does not tie
    profile_model_shape(model, BATCH, SEQ)
    for name, p in model.named_parameters():
        value, flag = before[name]
        assert not p.is_meta and p.grad is None and p.requires_grad == flag
        assert torch.equal(p.detach(), value)


def test_config_profiles_like_the_model_it_builds() -> None:
    for arch in ("opt", "t5"):
        model = tiny_model(arch).train()
        shaped = profile_model_shape(model.config, BATCH, SEQ)
        assert shaped.meta["profiled_on"] == "config"
        assert_same_profile(profile_model(model, BATCH, SEQ), shaped)
    config = tiny_model("gpt2").config
    before = config.to_dict()
    assert all(p.is_meta for p in model_from_config(config).parameters())
    assert config.to_dict() == before


class _NoConfigLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor]:
        logits = self.head(self.embed(input_ids))
        return (nn.functional.cross_entropy(logits.view(-1, 50), labels.view(-1)),)


def test_model_without_config_falls_back_to_the_live_model(caplog: pytest.LogCaptureFixture) -> None:
    model = _NoConfigLM()
    with caplog.at_level(logging.WARNING, logger="gt_core.profiler.shape"):
        shaped = profile_model_shape(model, BATCH, SEQ)
    assert shaped.meta["profiled_on"] == "live"
    assert "no transformers config" in shaped.meta["fallback_reason"]
    assert any("profiling the live model" in r.getMessage() for r in caplog.records)
    assert_same_profile(profile_model(model, BATCH, SEQ), shaped)


def test_model_that_differs_from_its_config_falls_back() -> None:
    model = tiny_model("llama")
    model.model.layers = model.model.layers[:1]  # the config still says two layers
    shaped = profile_model_shape(model, BATCH, SEQ)
    assert shaped.meta["profiled_on"] == "live"
    assert "different parameters" in shaped.meta["fallback_reason"]
    assert_same_profile(profile_model(model, BATCH, SEQ), shaped)


def test_bad_source_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="PretrainedConfig"):
        profile_model_shape({"vocab_size": 10}, BATCH, SEQ)


# ---------------------------------------------------------------- mixture of experts


def _tiny_mixtral_config(experts: int = 4, top_k: int = 2):
    import transformers as tf

    return tf.MixtralConfig(
        vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=64,
    )


@pytest.mark.parametrize("n_tokens, top_k, n_experts", [(32, 2, 4), (7, 2, 8), (5, 3, 3), (1, 1, 8)])
def test_balanced_assignment_spreads_token_slots_evenly(n_tokens: int, top_k: int, n_experts: int) -> None:
    per_expert = balanced_assignment(n_tokens, top_k, n_experts)
    loads = [len(tokens) for tokens, _ in per_expert]
    assert sum(loads) == n_tokens * top_k
    assert max(loads) - min(loads) <= 1
    visits = sorted((int(t), int(s), e) for e, (tokens, slots) in enumerate(per_expert) for t, s in zip(tokens, slots))
    assert [(t, s) for t, s, _ in visits] == [(t, s) for t in range(n_tokens) for s in range(top_k)]
    for t in range(n_tokens):  # k distinct experts per token
        assert len({e for tt, _, e in visits if tt == t}) == top_k


def test_balanced_assignment_rejects_k_above_e() -> None:
    with pytest.raises(ValueError, match="1 <= k <= E"):
        balanced_assignment(4, 3, 2)


def test_mixtral_experts_are_priced_at_k_of_e_tokens() -> None:
    import transformers as tf

    config = _tiny_mixtral_config(experts=4, top_k=2)
    prof = profile_model_shape(config, BATCH, SEQ, count="matmul")
    tokens, hidden, inter, k = BATCH * SEQ, 32, 48, 2
    gate_up = prof.names.index("model.layers.0.mlp.experts.gate_up_proj")
    down = prof.names.index("model.layers.0.mlp.experts.down_proj")
    router = prof.names.index("model.layers.0.mlp.gate.weight")
    # Weight gradient of x·Wᵀ is 2·rows·in·out FLOPs; the experts see tokens·k rows between them.
    assert prof.t_dw[gate_up] == 2 * tokens * k * hidden * (2 * inter)
    assert prof.t_dw[down] == 2 * tokens * k * inter * hidden
    assert prof.t_dw[router] == 2 * tokens * hidden * 4
    assert prof.param_counts[gate_up] == 4 * 2 * inter * hidden

    torch.manual_seed(0)
    live = tf.AutoModelForCausalLM.from_config(config)
    live_prof = profile_model(live, BATCH, SEQ, count="matmul")
    assert_same_profile(live_prof, prof)
    assert_same_profile(live_prof, profile_model_shape(live, BATCH, SEQ, count="matmul"))


def test_expert_flops_follow_top_k_not_expert_count() -> None:
    few = profile_model_shape(_tiny_mixtral_config(experts=2, top_k=1), BATCH, SEQ, count="matmul")
    many = profile_model_shape(_tiny_mixtral_config(experts=8, top_k=1), BATCH, SEQ, count="matmul")
    name = "model.layers.1.mlp.experts.down_proj"
    assert few.t_dw[few.names.index(name)] == many.t_dw[many.names.index(name)]
    assert many.param_counts[many.names.index(name)] == 4 * few.param_counts[few.names.index(name)]


# ---------------------------------------------------------------- CLI reads only the config

runner = CliRunner()


def _profile_json(*args: str) -> dict:
    result = runner.invoke(app, ["profile", *args, "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_profile_and_select_from_a_saved_model_and_from_config_json_alone(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    tiny_model("opt").save_pretrained(saved)
    config_only = tmp_path / "config-only"
    tiny_model("opt").config.save_pretrained(config_only)
    assert sorted(p.name for p in config_only.iterdir()) == ["config.json"]

    # A config is profiled as a training step, dropout included (from_pretrained returns eval mode).
    live = profile_model(load_model(model=str(saved)).train(), BATCH, SEQ)
    for directory in (saved, config_only):
        doc = _profile_json("--model", str(directory))
        assert [t["name"] for t in doc["tensors"]] == live.names
        assert [t["t_dw"] for t in doc["tensors"]] == live.t_dw.tolist()
        assert [t["t_dy"] for t in doc["tensors"]] == live.t_dy.tolist()
        assert doc["t_fp"] == live.t_fp and doc["t_full"] == live.t_full

        result = runner.invoke(app, ["select", "--model", str(directory), "--rho", "0.6", "--batch-size", str(BATCH),
                                     "--seq-len", str(SEQ), "--json"])
        assert result.exit_code == 0, result.output
        chosen = json.loads(result.stdout)
        assert chosen["n_tensors"] == len(live) and chosen["t_full"] == live.t_full
        assert chosen["selected"] and chosen["flops"] <= 0.6 * live.t_full


def test_profile_of_a_broken_config_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    for command in (["profile"], ["select", "--rho", "0.5"]):
        result = runner.invoke(app, [*command, "--model", str(tmp_path)])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0], result.stderr
