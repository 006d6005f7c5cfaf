"""The one selection pipeline: the clamp rule, non-finite and all-zero importance, and that the
trainer and the transformers callback both select through it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from gt_core.selection.pipeline import GreenSelector, ImportanceBatches, feasible_floor
from gt_core.profiler import TensorProfile
from gt_core.rho.sources import CallableRho, ConstantRho, RhoReading
from gt_core.selection.dp import select_tensors
from gt_core.models.tiny import tiny_model

# A profile where (c / t) * t < c in floating point: c the cheapest single-tensor step, t the full
# step. Clamping to c / t alone gives a budget below the cheapest step (found by a seeded search).
ROUNDING_PROFILE = dict(
    names=["a", "b", "c"],
    t_dw=[72.20275750984729, 2.5831812228336255, 76.03714923328639],
    t_dy=[51.76311360294573, 92.98131785890361, 7.542167175683399],
    t_fp=253.98201108759113,
    param_counts=[10, 20, 30],
)


def rounding_profile() -> TensorProfile:
    return TensorProfile(**ROUNDING_PROFILE)


def test_the_rounding_profile_really_rounds_below_the_cheapest_step():
    prof = rounding_profile()
    cheapest = prof.single_tensor_costs().min()
    assert (cheapest / prof.t_full) * prof.t_full < cheapest
    with pytest.raises(ValueError):  # the naive clamp is infeasible for the DP
        select_tensors(prof, np.ones(3), cheapest / prof.t_full)


def test_feasible_floor_is_the_smallest_float_whose_budget_pays_the_cheapest_step():
    prof = rounding_profile()
    floor = feasible_floor(prof)
    cheapest = prof.single_tensor_costs().min()
    assert floor * prof.t_full >= cheapest
    assert np.nextafter(floor, 0.0) * prof.t_full < cheapest
    select_tensors(prof, np.ones(3), floor)  # feasible: no exception


def test_a_rho_below_the_floor_is_clamped_and_still_selects_a_tensor():
    prof = rounding_profile()
    selector = GreenSelector(prof, ConstantRho(0.01))
    reading = selector.ask(epoch=0, global_step=0)
    assert reading.rho == selector.rho_floor
    assert reading.detail["clamped_from"] == 0.01
    mask = selector._solve(np.array([0.2, 1.0, 0.5]), reading.rho)[0]  # noqa: SLF001 - DP on a synthetic profile
    assert mask.sum() >= 1
    assert prof.cost(mask) <= reading.rho * prof.t_full


def test_known_rho_values_below_the_minimum_are_refused_up_front():
    prof = rounding_profile()
    selector = GreenSelector(prof, ConstantRho(0.5))
    with pytest.raises(ValueError, match="infeasible"):
        selector.check_rho_values([0.9, 0.01])


# ----------------------------------------------------------------------------- on a real model


def _model_and_batches(seed: int = 0):
    model = tiny_model("opt", vocab_size=64, hidden=16, layers=2, heads=2, max_len=32, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 64, (2, 12), generator=gen)
    return model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]


def _profile(model):
    from gt_core.profiler import profile_model

    return profile_model(model, batch_size=2, seq_len=12)


def test_all_zero_importance_is_reported_and_falls_back_to_one_tensor(caplog):
    model, batches = _model_and_batches()
    prof = _profile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every Δw is 0
    selector = GreenSelector(prof, ConstantRho(0.6))
    with caplog.at_level(logging.WARNING, logger="gt_core.green_selector"):
        selection = selector.choose(model, optimizer, ImportanceBatches(batches), RhoReading(0.6, "test"), epoch=0, global_step=0)
    assert selection.mask.sum() == 1
    assert selection.fallback is not None and selection.names[0] in selection.fallback
    assert "learning rate 0" in caplog.text
    assert prof.cost(selection.mask) <= 0.6 * prof.t_full


def test_non_finite_importance_is_counted_and_never_selected(caplog):
    model, batches = _model_and_batches()
    prof = _profile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    victim_name = next(n for n in prof.names if n.endswith("fc2.weight"))
    victim = dict(model.named_parameters())[victim_name]
    victim.register_hook(lambda grad: torch.full_like(grad, float("nan")))  # as an fp16 overflow would
    selector = GreenSelector(prof, ConstantRho(1.0))
    with caplog.at_level(logging.WARNING, logger="gt_core.green_selector"):
        selection = selector.choose(model, optimizer, ImportanceBatches(batches), RhoReading(1.0, "test"), epoch=0, global_step=0)
    assert selection.non_finite == 1
    assert victim_name not in selection.names and selection.names
    assert selection.fallback is None
    assert "not finite" in caplog.text


def test_an_optimizer_that_is_not_adam_gets_one_clear_error():
    model, batches = _model_and_batches()
    prof = _profile(model)
    selector = GreenSelector(prof, ConstantRho(0.6))
    with pytest.raises(ValueError, match="Adam or AdamW, got SGD"):
        selector.choose(model, torch.optim.SGD(model.parameters(), lr=0.1), ImportanceBatches(batches),
                        RhoReading(0.6, "test"), epoch=0, global_step=0)
    grad_only = GreenSelector(prof, ConstantRho(0.6), importance_metric="grad")
    selection = grad_only.choose(model, torch.optim.SGD(model.parameters(), lr=0.1), ImportanceBatches(batches),
                                 RhoReading(0.6, "test"), epoch=0, global_step=0)
    assert selection.mask.any()


def test_trainer_clamps_a_runtime_rho_below_the_floor_to_a_feasible_selection(tmp_path, tokenizer, task):
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    train, _ = task
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=16, layers=2, heads=2, max_len=128, seed=0)
    cfg = TrainConfig(scheme="green", lr=1e-3, batch_size=4, epochs=1, output_dir=tmp_path, progress=False,
                      print_epoch_summary=False, save_final=False)
    trainer = GreenTrainer(model, tokenizer, train[:8], [], cfg, rho_source=CallableRho(lambda e, s: 0.001))
    records = trainer.train()
    assert records[0].rho_asked == trainer.selector.rho_floor
    assert records[0].rho_clamped_from == 0.001
    assert trainer.profile.cost(trainer.trained.mask) <= records[0].rho_asked * trainer.profile.t_full
    assert records[0].selected and len(records[0].selected) == records[0].tensors_selected


def test_hf_callback_clamps_a_runtime_rho_below_the_floor(tmp_path, tokenizer, task):
    from gt_core.integrations.hf_callback import GreenTrainerCallback
    from hf_trainer_helpers import green_hf_trainer

    train, _ = task
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=16, layers=2, heads=2, max_len=128, seed=0)
    green = GreenTrainerCallback(CallableRho(lambda e, s: 0.001), importance_batches=1)
    green_hf_trainer(tmp_path, tokenizer, train, model, green).train()
    entry = green.history[0]
    assert entry["gt_rho"] == green.selector.rho_floor and entry["rho_clamped_from"] == 0.001
    assert entry["selected"] and entry["gt_flops_per_step"] <= entry["gt_rho"] * green.profile.t_full


def test_hf_callback_never_selects_a_tensor_the_user_froze(tmp_path, tokenizer, task):
    from gt_core.integrations.hf_callback import GreenTrainerCallback
    from hf_trainer_helpers import green_hf_trainer

    train, _ = task
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden=16, layers=2, heads=2, max_len=128, seed=0)
    frozen = "lm_head.weight"  # the tensor a 0.9 budget would certainly pick
    model.get_parameter(frozen).requires_grad_(False)
    green = GreenTrainerCallback(0.9, importance_batches=1)
    green_hf_trainer(tmp_path, tokenizer, train, model, green).train()
    assert green.history[0]["selected"] and frozen not in green.history[0]["selected"]
    assert not model.get_parameter(frozen).requires_grad  # and still frozen afterwards
