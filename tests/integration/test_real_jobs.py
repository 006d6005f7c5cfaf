"""A real fine-tuning job's options, on the CPU: device resolution, bf16 mixed precision (CPU
autocast), pure bf16 weights, gradient checkpointing, frozen optimizer state, guards, peak memory
and checkpoints loaded with map_location."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gt_core.training.device import resolve_device
from gt_core.distributed.guards import UnsupportedSetupError, check_model_supported
from gt_core.rho.sources import ScheduleRho
from gt_core.models.tiny import tiny_model
from gt_core.training.trainer import GreenTrainer, TrainConfig


def _trainer(tmp_path, tokenizer, task, *, rho=0.5, epochs=1, schedule=None, seed=0, **overrides):
    """A tiny Llama (no dropout, so runs compare bit for bit) on 12 examples."""
    train, val = task
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=32, layers=2, heads=2, max_len=128, seed=seed)
    cfg = TrainConfig(scheme="green", rho=rho, lr=3e-3, batch_size=4, epochs=epochs, max_input_length=96,
                      max_target_length=16, importance_batches=2, output_dir=tmp_path, progress=False,
                      print_epoch_summary=False, save_final=False, seed=seed, **overrides)
    source = ScheduleRho(schedule) if schedule else None
    return GreenTrainer(model, tokenizer, train[:12], val[:2], cfg, rho_source=source)


# ----------------------------------------------------------------------------- device


def test_auto_device_is_the_cpu_here_and_a_missing_gpu_is_one_clear_error():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


def test_a_model_on_the_meta_device_is_not_taken_as_placed():
    with torch.device("meta"):
        model = torch.nn.Linear(2, 2)
    assert resolve_device("auto", model) == torch.device("cpu")


# ----------------------------------------------------------------------------- precision


class _DtypeProbe:
    """Forward hooks recording the output dtype of every Linear, split by grad mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: set[torch.dtype] = set()
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def _hook(self, module, inputs, output) -> None:
        self.seen.add(output.dtype)


def test_bf16_mixed_runs_forward_in_bf16_keeps_fp32_weights_and_trains(tmp_path, tokenizer, task):
    trainer = _trainer(tmp_path, tokenizer, task, precision="bf16-mixed")
    probe = _DtypeProbe(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    records = trainer.train()
    assert probe.seen == {torch.bfloat16}  # training, importance and validation all under autocast
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert np.isfinite(records[0].train_loss) and records[0].skipped_steps == 0
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert set(changed) == set(records[0].selected)


def test_fp32_runs_forward_in_fp32(tmp_path, tokenizer, task):
    trainer = _trainer(tmp_path, tokenizer, task)
    probe = _DtypeProbe(trainer.model)
    trainer.train()
    assert probe.seen == {torch.float32}


def test_pure_bf16_casts_the_weights_and_trains(tmp_path, tokenizer, task):
    trainer = _trainer(tmp_path, tokenizer, task, precision="bf16")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    records = trainer.train()
    assert np.isfinite(records[0].train_loss)


def test_fp16_mixed_on_the_cpu_is_refused_with_what_to_use(tmp_path, tokenizer, task):
    with pytest.raises(ValueError, match="bf16-mixed on the CPU"):
        _trainer(tmp_path, tokenizer, task, precision="fp16-mixed")


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="fp32, bf16-mixed, fp16-mixed, bf16"):
        TrainConfig(precision="half")


# ----------------------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_gives_the_same_training_with_frozen_inputs(tmp_path, tokenizer, task):
    plain = _trainer(tmp_path / "plain", tokenizer, task, rho=0.45, epochs=2)
    ckpt = _trainer(tmp_path / "ckpt", tokenizer, task, rho=0.45, epochs=2, gradient_checkpointing=True)
    assert ckpt.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    embedding_output_grad = []
    ckpt.model.get_input_embeddings().register_forward_hook(
        lambda m, i, out: embedding_output_grad.append(out.requires_grad) if m.training else None)  # training steps
    records_plain, records_ckpt = plain.train(), ckpt.train()
    assert embedding_output_grad and not any(embedding_output_grad)  # no unpriced backward to the input
    assert [r.selected for r in records_plain] == [r.selected for r in records_ckpt]
    # the embeddings are frozen at this budget, so a reentrant checkpoint would cut the gradients
    assert not any("embed" in n for n in records_ckpt[0].selected)
    for (name, a), b in zip(plain.model.named_parameters(), ckpt.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name


# ----------------------------------------------------------------------------- frozen optimizer state

SCHEDULE = [0.45, 0.9, 0.45]


def _stateful(trainer) -> set[str]:
    by_param = {p: n for n, p in trainer.model.named_parameters()}
    return {by_param[p] for p in trainer.optimizer.state}


def test_drop_frees_the_state_of_frozen_tensors(tmp_path, tokenizer, task):
    trainer = _trainer(tmp_path, tokenizer, task, epochs=3, schedule=SCHEDULE, frozen_state="drop")
    seen = []

    class Watch:
        def on_train_start(self, t): pass
        def on_epoch_start(self, t, epoch, reading): seen.append((set(t.selection.names), _stateful(t)))
        def on_selection(self, t, selection): pass
        def on_epoch_end(self, t, record): pass
        def on_train_end(self, t, records, status): pass

    trainer.callbacks.append(Watch())
    trainer.train()
    for selected, stateful in seen:
        assert stateful <= selected  # nothing outside the selection holds AdamW moments
    assert seen[1][0] - seen[0][0]  # the 0.9 epoch trained more tensors than the first


def test_drop_frees_unreachable_moments_before_the_importance_pass(tmp_path, tokenizer, task):
    from gt_core.training.callbacks import TrainerCallback
    from gt_core.selection.importance import unreachable_tensors

    trainer = _trainer(tmp_path, tokenizer, task, epochs=2, schedule=[1.0, 0.45], frozen_state="drop")
    seen: list[set[str]] = []

    class FirstForwardOfEpochOne(TrainerCallback):
        """Arms at epoch 0's end: the next forward is epoch 1's importance pass."""

        def on_epoch_end(self, trainer, record) -> None:
            if record.epoch == 0:
                names = {p: n for n, p in trainer.model.named_parameters()}

                def record(module, args) -> None:
                    seen.append({names[p] for p in trainer.optimizer.state})
                    hook.remove()

                hook = trainer.model.register_forward_pre_hook(record)

    trainer.callbacks.append(FirstForwardOfEpochOne())
    trainer.train()
    reachable = {n for n, out in zip(trainer.profile.names, unreachable_tensors(trainer.profile, 0.45)) if not out}
    assert len(reachable) < len(trainer.profile.names)  # epoch 0 at ρ 1 left moments this ρ cannot reach
    assert seen and seen[0] and seen[0] <= reachable


def test_offload_trains_exactly_as_keep(tmp_path, tokenizer, task):
    keep = _trainer(tmp_path / "keep", tokenizer, task, epochs=3, schedule=SCHEDULE, frozen_state="keep")
    offload = _trainer(tmp_path / "off", tokenizer, task, epochs=3, schedule=SCHEDULE, frozen_state="offload")
    keep.train()
    offload.train()
    for (name, a), b in zip(keep.model.named_parameters(), offload.model.parameters()):
        assert torch.equal(a, b), name


def test_drop_restarts_the_moments_of_a_reselected_tensor(tmp_path, tokenizer, task):
    back = [0.9, 0.45, 0.9]  # tensors of epoch 0 frozen in epoch 1, selected again in epoch 2
    keep = _trainer(tmp_path / "keep", tokenizer, task, epochs=3, schedule=back, frozen_state="keep")
    drop = _trainer(tmp_path / "drop", tokenizer, task, epochs=3, schedule=back, frozen_state="drop")
    keep.train()
    drop.train()
    steps_keep = {n: int(keep.optimizer.state[p]["step"]) for n, p in keep.model.named_parameters() if p in keep.optimizer.state}
    steps_drop = {n: int(drop.optimizer.state[p]["step"]) for n, p in drop.model.named_parameters() if p in drop.optimizer.state}
    assert steps_drop and all(steps_drop[n] <= keep_steps for n, keep_steps in steps_keep.items() if n in steps_drop)
    assert any(steps_drop[n] < steps_keep[n] for n in steps_drop if n in steps_keep)


# ----------------------------------------------------------------------------- guards


def test_deepspeed_zero3_parameters_are_refused():
    model = tiny_model("opt", vocab_size=64, hidden=16, layers=1, heads=2)
    next(model.parameters()).ds_id = 0  # what ZeRO-3 partitioning attaches to each parameter
    with pytest.raises(UnsupportedSetupError, match="ZeRO stage 3"):
        check_model_supported(model)


def test_a_peft_model_is_refused_for_green_selection(tmp_path, tokenizer, task):
    from gt_core.selection.schemes import apply_lora

    model = apply_lora(tiny_model("opt", vocab_size=len(tokenizer), hidden=16, layers=1, heads=2), r=2)
    with pytest.raises(UnsupportedSetupError, match="PeftModel"):
        check_model_supported(model)


# ----------------------------------------------------------------------------- memory and checkpoints


def test_every_epoch_records_its_peak_memory(tmp_path, tokenizer, task):
    trainer = _trainer(tmp_path, tokenizer, task, epochs=2)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["peak_memory_kind"] for line in lines] == ["cpu_peak_rss"] * 2
    assert all(line["peak_memory_bytes"] > 50 * 2**20 for line in lines)  # at least the interpreter + torch


def test_checkpoint_tensors_saved_on_a_gpu_load_on_a_cpu_only_machine(tmp_path, tokenizer, task):
    """A checkpoint written on cuda:0 (storages tagged so) must resume here: map_location='cpu'."""
    from torch import serialization

    trainer = _trainer(tmp_path / "a", tokenizer, task, epochs=1)
    trainer.train()
    tag = {"on": True}

    def tag_as_cuda(storage):
        return "cuda:0" if tag["on"] and storage.device.type == "cpu" else None

    serialization.register_package(-1, tag_as_cuda, lambda storage, location: None)
    try:
        trainer.checkpoint()
    finally:
        tag["on"] = False
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "a" / "checkpoint" / "model.pt", weights_only=True)  # as it was loaded before
    again = _trainer(tmp_path / "b", tokenizer, task, epochs=2)
    again.resume(tmp_path / "a")
    assert again.state.epoch == 1 and again.state.settings["frozen_state"] == "keep"
    for (name, a), b in zip(trainer.model.named_parameters(), again.model.parameters()):
        assert torch.equal(a, b), name


def test_hf_trainer_with_reentrant_checkpointing_still_trains_every_selected_tensor(tmp_path, tokenizer, task):
    from gt_core.integrations.hf_callback import GreenTrainerCallback
    from hf_trainer_helpers import green_hf_trainer

    train, _ = task
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=32, layers=2, heads=2, max_len=128, seed=0)
    green = GreenTrainerCallback(0.7, importance_batches=1)  # layers reachable, the embedding not
    trainer = green_hf_trainer(
        tmp_path, tokenizer, train, model, green, learning_rate=3e-3, bf16=True,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    embedding_output_grad = []
    model.get_input_embeddings().register_forward_hook(  # training steps after the first selection
        lambda m, i, out: embedding_output_grad.append(out.requires_grad) if m.training and green.history else None)
    trainer.train()
    selected = green.history[0]["selected"]
    # No backward below the deepest selected tensor: the embedding output never requires grad.
    assert embedding_output_grad and not any(embedding_output_grad)
    assert any(".layers." in n for n in selected)  # tensors inside checkpointed blocks were chosen
    assert not any("embed" in n for n in selected)  # with the embedding (the blocks' input) frozen
    for name in selected:
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), f"{name} selected but untrained"
    assert all(p.requires_grad for p in model.parameters())  # the user's flags are back after training
