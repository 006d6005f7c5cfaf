"""GreenTrainerCallback inside a real transformers.Trainer (CPU, 2 epochs, a handful of steps)."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments, TrainerCallback

from gt_core.data.datasets import SummarizationDataset, collate_batch
from gt_core.data.embedded_task import embedded_task
from gt_core.integrations.hf_callback import GreenTrainerCallback
from gt_core.rho.sources import ScheduleRho
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer

SCHEDULE = [0.45, 0.8]


class _Snapshots(TrainerCallback):
    """Weights and trainable names at each epoch start (after the green callback) and at the end."""

    def __init__(self) -> None:
        self.starts: list[tuple[dict, set]] = []
        self.end: dict | None = None
        self.optimizers: list = []

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimizers.append(optimizer)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.starts.append((weights, {n for n, p in model.named_parameters() if p.requires_grad}))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = {n: p.detach().clone() for n, p in model.named_parameters()}


def _setup(tmp_path, attach: bool):
    torch.manual_seed(0)
    tok = load_tokenizer(None, tiny=True)
    model = tiny_model("llama", vocab_size=len(tok), hidden=32, layers=2, heads=4)
    train, _ = embedded_task(n_train=16, n_val=1, seed=2)
    data = SummarizationDataset(train, tok, encoder_decoder=False, max_input_length=96, max_target_length=16)
    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4, learning_rate=3e-3,
        weight_decay=0.1, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
        disable_tqdm=True, seed=0, remove_unused_columns=False,
    )
    snaps = _Snapshots()
    green = GreenTrainerCallback(ScheduleRho(SCHEDULE), importance_batches=2)
    trainer = Trainer(
        model=model, args=args, train_dataset=data,
        data_collator=lambda feats: collate_batch(feats, tok.pad_token_id),
        callbacks=[] if attach else [green],
    )
    if attach:
        green.attach(trainer)
    trainer.add_callback(snaps)  # after the green callback: sees its selection
    return trainer, green, snaps, model


def test_selection_follows_schedule_frozen_tensors_untouched_and_logged(tmp_path):
    trainer, green, snaps, model = _setup(tmp_path, attach=True)
    trainer.train()
    assert snaps.optimizers[0] is snaps.optimizers[1] is trainer.optimizer  # never rebuilt

    assert [h["gt_rho"] for h in green.history] == SCHEDULE
    sel = [set(h["selected"]) for h in green.history]
    assert sel[0] != sel[1] and len(sel[1]) > len(sel[0])
    assert all(h["gt_rho_effective"] <= h["gt_rho"] + 1e-9 for h in green.history)

    # Each epoch trained exactly the selected tensors; the frozen ones did not move by one bit.
    ends = [snaps.starts[1][0], snaps.end]
    for epoch, ((start, trainable), end) in enumerate(zip(snaps.starts, ends)):
        assert trainable == sel[epoch]
        for name, before in start.items():
            if name in trainable:
                assert not torch.equal(before, end[name]), f"{name} selected in epoch {epoch} but unchanged"
            else:
                assert torch.equal(before, end[name]), f"{name} frozen in epoch {epoch} but changed"

    logged = [e for e in trainer.state.log_history if "gt_rho" in e]
    assert [e["gt_rho"] for e in logged] == SCHEDULE
    assert all({"gt_rho_effective", "gt_tensors_selected", "gt_flops_per_step", "epoch", "step"} <= e.keys() for e in logged)
    assert any("loss" in e for e in trainer.state.log_history)  # the Trainer's own logging still runs

    # Each epoch's totals (what a daemon source would be sent): 4 micro-batches of 4 rows per epoch.
    for h in green.history:
        assert h["micro_batches"] == h["steps"] == 4 and h["world_size"] == 1
        assert h["flops_forward"] + h["flops_backward"] == h["gt_flops_per_step"] * 4
        assert h["flops_full"] == h["gt_flops_full_per_step"] * 4 and h["train_loss"] > 0 and h["val_loss"] is None


def test_unattached_callback_logs_into_log_history(tmp_path):
    trainer, green, _, _ = _setup(tmp_path, attach=False)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "gt_rho" in e]
    assert [e["gt_rho"] for e in logged] == SCHEDULE and logged[1]["step"] == 4


def test_train_end_gives_the_model_back_with_the_users_requires_grad_flags(tmp_path):
    trainer, green, snaps, model = _setup(tmp_path, attach=False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(before.values())
    trainer.train()
    assert any(len(trainable) < len(before) for _, trainable in snaps.starts)  # the callback did freeze tensors
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_callback_switches_checkpointing_through_the_current_api_without_future_warnings(tmp_path, tokenizer, task):
    import warnings

    from hf_trainer_helpers import green_hf_trainer

    train, _ = task
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=32, layers=2, heads=2, max_len=128, seed=0)
    green = GreenTrainerCallback(0.7, importance_batches=1)
    trainer = green_hf_trainer(tmp_path, tokenizer, train, model, green, activation_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert green.history  # the callback ran and selected
    assert model.is_activation_checkpointing
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
