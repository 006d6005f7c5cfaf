"""GreenTrainerCallback inside a real ``transformers.Trainer`` with 2 CPU processes (gloo), started
by ``torch.distributed.run`` and by ``accelerate launch``: same mask on every rank, rank-identical
weights, frozen tensors untouched, and a clear error on every rank (not a hang) for DDP settings
that cannot work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from proc_helpers import ROOT, launch

pytestmark = pytest.mark.slow

WORKER = ROOT / "tests" / "helpers" / "hf_ddp_worker.py"
SCHEDULE = [0.5, 0.8]  # as in the worker


def _run(out: Path, mode: str, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    return launch(launcher, [str(WORKER), str(out), mode], out)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_ranks_select_the_same_tensors_and_stay_identical(tmp_path, launcher):
    run = _run(tmp_path, "ok", launcher)
    assert run.returncode == 0, run.stderr[-4000:]
    info = [json.loads((tmp_path / f"info_r{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(tmp_path / f"weights_r{r}.pt") for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2]
    assert [i["wrapper"] for i in info] == ["DistributedDataParallel"] * 2

    # Same selection on both ranks, read back from requires_grad; the schedule changed it.
    assert info[0]["trainable"] == info[1]["trainable"]
    assert [sorted(h["selected"]) for h in info[0]["history"]] == info[0]["trainable"]
    assert [h["gt_rho"] for h in info[1]["history"]] == SCHEDULE
    sel = [set(t) for t in info[0]["trainable"]]
    assert sel[0] != sel[1] and len(sel[1]) > len(sel[0])

    # Same start, bit-identical after each epoch on both ranks.
    for key in ("initial", "end"):
        assert all(torch.equal(weights[0][key][n], weights[1][key][n]) for n in weights[0][key]), key
    for epoch in (0, 1):
        assert all(torch.equal(weights[0]["starts"][epoch][n], weights[1]["starts"][epoch][n]) for n in weights[0]["end"])

    # Within each epoch exactly the selected tensors moved; never-selected ones equal the initial weights.
    for w in weights:
        ends = [w["starts"][1], w["end"]]
        for epoch, (start, end) in enumerate(zip(w["starts"], ends)):
            for name, before in start.items():
                moved = not torch.equal(before, end[name])
                assert moved == (name in sel[epoch]), f"{name} epoch {epoch}: selected={name in sel[epoch]} moved={moved}"
        never = set(w["initial"]) - sel[0] - sel[1]
        assert never and all(torch.equal(w["initial"][n], w["end"][n]) for n in never)

    logged = [e for e in info[0]["log_history"] if "gt_rho" in e]
    assert [e["gt_rho"] for e in logged] == SCHEDULE
    assert all({"gt_rho_effective", "gt_tensors_selected", "gt_flops_per_step", "gt_flops_full_per_step"} <= e.keys() for e in logged)
    assert any("loss" in e for e in info[0]["log_history"])


def _failed_on_both_ranks(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode != 0, run.stdout[-2000:]
    for rank in (0, 1):
        assert f"[rank{rank}]: " in run.stderr and any(
            line.startswith(f"[rank{rank}]: ") and message in line for line in run.stderr.splitlines()
        ), run.stderr[-4000:]


def test_find_unused_parameters_false_is_refused_before_the_first_step(tmp_path):
    run = _run(tmp_path, "no_find_unused")
    _failed_on_both_ranks(
        run, "ValueError: GreenTrainerCallback with 2 processes needs TrainingArguments(ddp_find_unused_parameters=True)"
    )
    assert "Expected to have finished reduction" not in run.stderr  # stopped before DDP's own error


def test_static_graph_is_refused(tmp_path):
    run = _run(tmp_path, "static_graph")
    _failed_on_both_ranks(run, "needs TrainingArguments(ddp_static_graph=False)")


def test_rho_source_failing_on_rank_0_stops_every_rank(tmp_path):
    # Only rank 0 asks the ρ source; rank 1 learns of the failure from the broadcast instead of waiting in it.
    run = _run(tmp_path, "rho_fails")
    _failed_on_both_ranks(run, "rho source unreachable")
    assert "tensor selection failed on rank 0 (ConnectionError: rho source unreachable)" in run.stderr


def test_unattached_callback_follows_the_ddp_wrapper_the_trainer_built(tmp_path):
    """Passed as ``Trainer(callbacks=[...])`` the callback cannot see the wrapper, yet it must refuse
    exactly when the Trainer's DDP was built with find_unused_parameters=False, and train otherwise."""
    run = _run(tmp_path, "unattached")
    assert run.returncode == 0, run.stderr[-4000:]
    for rank in (0, 1):
        cases = json.loads((tmp_path / f"unattached_r{rank}.json").read_text())
        assert {case["wrapper"] for case in cases.values()} == {"DistributedDataParallel"}
        for name in ("activation_checkpointing", "explicit_false"):
            assert cases[name]["find_unused_parameters"] is False, name
            assert cases[name]["error"].startswith(
                "GreenTrainerCallback with 2 processes needs TrainingArguments(ddp_find_unused_parameters=True)"
            ), cases[name]["error"]
        unset = cases["unset"]
        assert unset["find_unused_parameters"] is True and unset["error"] is None
        assert unset["selected"] and unset["moved"] == unset["selected"]
