import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gt_core.profiler import TensorProfile, profile_model
from gt_core.selection.schemes import (
    apply_lora,
    apply_prefix,
    check_scheme,
    full_flops,
    lora_flops,
    lora_target_names,
    prefix_flops,
    set_trainable,
    topk_layers,
    topk_mask,
)
from gt_core.models.tiny import tiny_model

BATCH, SOURCE_LEN, TARGET_LEN = 2, 16, 8


def _batch(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (BATCH, SOURCE_LEN), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if arch == "t5":
        batch["labels"] = torch.randint(3, 512, (BATCH, TARGET_LEN), generator=g)
    return batch


def _count(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _step_flops(model: torch.nn.Module, batch: dict) -> tuple[float, float]:
    """Measured matmul FLOPs of the forward and the backward of one step."""
    box = {}
    forward = _count(lambda: box.setdefault("loss", model(**batch).loss))
    backward = _count(lambda: box["loss"].backward())
    model.zero_grad(set_to_none=True)
    return forward, backward


def _target_len(arch: str) -> int | None:
    return TARGET_LEN if arch == "t5" else None


def _profile(model: torch.nn.Module, arch: str) -> TensorProfile:
    return profile_model(model, batch_size=BATCH, seq_len=SOURCE_LEN, target_len=_target_len(arch), count="matmul")


def _base_batch_profile(arch: str) -> tuple[torch.nn.Module, dict, TensorProfile]:
    """A tiny 2-layer base model of ``arch``, a batch for it and its matmul profile."""
    base = tiny_model(arch, hidden=64, layers=2)
    return base, _batch(arch), _profile(base, arch)


@pytest.mark.parametrize("arch", ["opt", "gpt2", "t5"])
def test_lora_flops_match_a_flop_counter(arch):
    base, batch, prof = _base_batch_profile(arch)
    predicted = lora_flops(prof, base, r=8, batch_size=BATCH, source_len=SOURCE_LEN, target_len=_target_len(arch))
    model = apply_lora(base, r=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    forward, backward = _step_flops(model, batch)
    assert predicted.forward == pytest.approx(forward, rel=0.10)
    assert predicted.backward == pytest.approx(backward, rel=0.10)
    assert predicted.total < prof.t_full


@pytest.mark.parametrize("arch", ["opt", "gpt2", "t5"])
def test_prefix_flops_match_a_flop_counter(arch):
    base, batch, prof = _base_batch_profile(arch)
    predicted = prefix_flops(prof, base, 8, batch_size=BATCH, source_len=SOURCE_LEN, target_len=_target_len(arch))
    model = apply_prefix(base, num_virtual_tokens=8)
    forward, backward = _step_flops(model, batch)
    assert predicted.forward == pytest.approx(forward, rel=0.10)
    assert predicted.backward == pytest.approx(backward, rel=0.10)
    assert predicted.forward > prof.t_fp


def test_profile_agrees_with_the_flop_counter_on_full_fine_tuning():
    base = tiny_model("opt", hidden=64, layers=2)
    forward, backward = _step_flops(base, _batch("opt"))
    assert full_flops(_profile(base, "opt")).forward == pytest.approx(forward, rel=0.01)
    assert full_flops(_profile(base, "opt")).backward == pytest.approx(backward, rel=0.01)


def test_lora_targets_per_family():
    assert lora_target_names(tiny_model("opt", hidden=32, layers=1)) == ("q_proj", "v_proj")
    assert lora_target_names(tiny_model("llama", hidden=32, layers=1)) == ("q_proj", "v_proj")
    assert lora_target_names(tiny_model("bloom", hidden=32, layers=1)) == ("query_key_value",)
    assert lora_target_names(tiny_model("gpt2", hidden=32, layers=1)) == ("c_attn",)
    assert lora_target_names(tiny_model("t5", hidden=32, layers=1)) == ("q", "v")


def test_topk_full_and_trainable_masks():
    prof = TensorProfile(names=list("abcde"), t_dw=np.ones(5), t_dy=np.ones(5), t_fp=5.0)
    assert topk_mask(prof, 2).tolist() == [False, False, False, True, True]
    assert full_flops(prof).total == prof.t_full == 15.0
    with pytest.raises(ValueError):
        topk_mask(prof, 0)
    with pytest.raises(ValueError, match="unknown scheme 'sparse'"):
        check_scheme("sparse")
    model = tiny_model("qwen2", hidden=32, layers=1)  # tied embeddings: either alias selects the tensor
    set_trainable(model, ["lm_head.weight"])
    assert model.get_input_embeddings().weight.requires_grad
    assert sum(p.requires_grad for p in model.parameters()) == 1
    with pytest.raises(KeyError):
        set_trainable(model, ["nope"])


# ----------------------------------------------------------------------------- FT-Top2 (topk scheme)

OPT_TOP2 = {"model.decoder.embed_tokens.weight", "model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"}
LLAMA_TOP2 = {"lm_head.weight", "model.norm.weight"}


def test_topk_counts_layers_and_puts_a_tied_head_last():
    opt = tiny_model("opt", hidden=32, layers=1)  # LM head tied to the input embedding
    prof = _profile(opt, "opt")
    assert prof.names[0] == "model.decoder.embed_tokens.weight"  # the shared matrix is listed at its first use
    layers = topk_layers(prof, opt)
    assert layers[0] == ["model.decoder.embed_tokens.weight"]
    assert layers[1] == ["model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"]
    assert layers[2] == ["model.decoder.layers.0.fc2.weight", "model.decoder.layers.0.fc2.bias"]
    picked = lambda k: {n for n, m in zip(prof.names, topk_mask(prof, k, opt)) if m}  # noqa: E731
    assert picked(1) == {"model.decoder.embed_tokens.weight"}
    assert picked(2) == OPT_TOP2
    assert picked(3) == OPT_TOP2 | {"model.decoder.layers.0.fc2.weight", "model.decoder.layers.0.fc2.bias"}
    assert topk_mask(prof, 10_000, opt).all()
    # Without the model a tied head cannot be recognised: the profile order alone decides.
    assert {n for n, m in zip(prof.names, topk_mask(prof, 1)) if m} == OPT_TOP2 - {"model.decoder.embed_tokens.weight"}

    llama = tiny_model("llama", hidden=32, layers=1)  # untied head, RMSNorm has a weight only
    prof = _profile(llama, "llama")
    assert {n for n, m in zip(prof.names, topk_mask(prof, 2, llama)) if m} == LLAMA_TOP2


@pytest.mark.parametrize("arch, expected", [("opt", OPT_TOP2), ("llama", LLAMA_TOP2)])
def test_top2_cost_of_the_mask_is_what_the_backward_really_does(arch, expected):
    model = tiny_model(arch, hidden=64, layers=2)
    prof = _profile(model, arch)
    mask = topk_mask(prof, 2, model)
    set_trainable(model, [n for n, m in zip(prof.names, mask) if m])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    forward, backward = _step_flops(model, _batch(arch))
    assert prof.t_fp == pytest.approx(forward, rel=1e-9)
    assert prof.backward(mask) == pytest.approx(backward, rel=1e-9)
    if arch == "opt":
        # The tied head trains the input embedding too: dy runs through every layer down to the
        # embedding, far more than the head's own matmuls (the untied Llama pays only those).
        assert backward > 0.5 * (prof.t_full - prof.t_fp)


@pytest.mark.parametrize("arch, expected", [("opt", OPT_TOP2), ("llama", LLAMA_TOP2)])
def test_top2_scheme_trains_exactly_the_head_and_final_norm(tmp_path, tokenizer, arch, expected):
    from gt_core.data.embedded_task import embedded_task
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    train, val = embedded_task(n_train=8, n_val=2)
    model = tiny_model(arch, vocab_size=len(tokenizer), hidden=32, layers=1)
    config = TrainConfig(scheme="topk", topk=2, epochs=1, lr=1e-2, batch_size=4, max_input_length=32,
                         max_target_length=12, output_dir=tmp_path, progress=False, save_final=False)
    trainer = GreenTrainer(model, tokenizer, train, val, config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    record = trainer.train()[0]
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == expected
    assert changed == expected
    if arch == "opt":
        assert trainer.model.lm_head.weight is trainer.model.get_input_embeddings().weight
    prof = trainer.profile
    mask = np.array([n in expected for n in prof.names])
    assert record.flops_backward == pytest.approx(record.steps * prof.backward(mask), rel=1e-12)
    assert record.flops_forward + record.flops_backward == pytest.approx(record.steps * prof.cost(mask), rel=1e-12)
    assert record.param_share_selected == pytest.approx(prof.param_counts[mask].sum() / prof.param_counts.sum())


@pytest.mark.parametrize("scheme, layout", [("lora", "config.json"), ("prefix", "adapter_config.json")])
def test_lora_and_prefix_runs_save_a_final_model_that_loads_and_evaluates(tmp_path, tokenizer, task, scheme, layout):
    from typer.testing import CliRunner

    from gt_core.cli import app
    from gt_core.models.loading import load_model
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
    config = TrainConfig(scheme=scheme, epochs=1, lr=1e-2, batch_size=4, importance_batches=1, max_input_length=32,
                         max_target_length=12, output_dir=tmp_path / "run", progress=False)
    trainer = GreenTrainer(model, tokenizer, task[0], task[1], config)
    trainer.train()
    final = tmp_path / "run" / "final"
    assert (final / layout).is_file()  # lora: merged plain weights; prefix: adapter + base-model/
    loaded = load_model(str(final)).eval()
    trainer.model.eval()
    ids = torch.tensor([tokenizer("a short text to summarise").input_ids])
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()

    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(final), "--limit", "2", "--num-beams", "1", "--json"])
    assert result.exit_code == 0, result.output
