"""The per-rank memory model (``greentrainer profile --world-size``) against the measured per-rank
peak of real CPU runs: one process, and two FSDP2 processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gt_core.training.memory_plan import RankMemoryModel, wrap_units
from gt_core.profiler import profile_model_shape
from gt_core.models.tiny import tiny_model
from gt_core.data.tokenizer import load_tokenizer
from proc_helpers import BIN, ROOT, free_port, launch_env

pytestmark = pytest.mark.slow

TOLERANCE = 0.10


def test_wrap_units_are_the_blocks_and_the_root():
    assert wrap_units(["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.11.x.bias",
                       "lm_head.weight"]) == ["", "model.layers.0", "model.layers.11", ""]


def _plan(world_size: int, seq_len: int) -> RankMemoryModel:
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    from memory_worker import BATCH_SIZE, SHAPE

    model = tiny_model("llama", vocab_size=len(load_tokenizer(None, tiny=True)), **SHAPE)
    profile = profile_model_shape(model, batch_size=BATCH_SIZE, seq_len=seq_len)
    return RankMemoryModel(model.config, profile, world_size=world_size, strategy="fsdp" if world_size > 1 else "ddp",
                           batch_size=BATCH_SIZE, seq_len=seq_len)


def _modelled(world_size: int, seq_len: int, selected: list[str] | None) -> int:
    """Modelled training-step bytes per rank over the weights (which the measured baseline holds)."""
    plan = _plan(world_size, seq_len)
    mask = np.array([selected is None or n in selected for n in plan.names])
    row = plan.training("step", mask, mask)
    return row.total - row.weights


def _modelled_pass(world_size: int, seq_len: int, rho: float, with_state: list[str]) -> int:
    """Modelled importance-pass bytes per rank over the weights, moments held for ``with_state``."""
    plan = _plan(world_size, seq_len)
    row = plan.importance("pass", rho, np.array([n in with_state for n in plan.names]))
    return row.total - row.weights


def test_modelled_per_rank_memory_of_steps_and_importance_passes_is_within_10_percent_of_cpu_runs(tmp_path):
    worker = str(ROOT / "tests" / "helpers" / "memory_worker.py")
    env = dict(launch_env(), MALLOC_MMAP_THRESHOLD_=str(64 * 1024))  # freed tensors leave the resident set
    subprocess.run([sys.executable, worker, str(tmp_path / "one")], check=True, env=env, capture_output=True, timeout=300)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), worker, str(tmp_path / "two")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    for world_size, out, ranks in ((1, tmp_path / "one", (0,)), (2, tmp_path / "two", (0, 1))):
        for rank in ranks:
            info = json.loads((out / f"rank{rank}.json").read_text())
            for epoch in info["epochs"]:  # epoch 0 trains every tensor (ρ 1), epoch 1 the selection at ρ 0.5
                measured = epoch["peak_over_baseline"] - epoch["overhead"]
                modelled = _modelled(world_size, info["seq_len"], epoch["selected"])
                assert modelled == pytest.approx(measured, rel=TOLERANCE), (world_size, rank, modelled, measured)
            # Epoch 1's importance pass at ρ 0.5 (with the moments of the reachable tensors), in one
            # process and per FSDP2 rank. Epoch 0's is the process's first backward, which also pages in
            # torch's kernels (about 14 MB here).
            assert [p["rho"] for p in info["importance_passes"]] == [1.0, 0.5]
            scored = info["importance_passes"][1]
            measured = scored["peak_over_baseline"] - scored["overhead"]
            modelled = _modelled_pass(world_size, info["seq_len"], scored["rho"], scored["with_state"])
            assert modelled == pytest.approx(measured, rel=TOLERANCE), (world_size, rank, modelled, measured)


def test_profile_prints_the_per_rank_plan_and_sharding_halves_the_model_states():
    from typer.testing import CliRunner

    from gt_core.cli import app

    def plan(*flags: str) -> dict:
        result = CliRunner().invoke(app, ["profile", "--tiny", "llama", "--batch-size", "4", "--seq-len", "64",
                                          "--json", *flags])
        assert result.exit_code == 0, result.output
        return {row["run"]: row for row in json.loads(result.output)["bytes_per_rank"]}

    one = plan("--world-size", "1")
    two = plan("--world-size", "2", "--strategy", "fsdp")
    assert list(one) == ["full fine-tuning", "green ρ=0.5 step (drop)", "green ρ=0.5 importance pass",
                         "green ρ=0.7 step (drop)", "green ρ=0.7 importance pass"]  # 0.4 is below this floor
    full_one, full_two = one["full fine-tuning"], two["full fine-tuning"]
    for key in ("weights", "gradients", "optimizer_state"):
        assert full_two[key] == full_one[key] // 2
    assert full_one["total_checkpointed"] < full_one["total"]
    assert one["green ρ=0.5 step (drop)"]["total"] < full_one["total"]
    bad = CliRunner().invoke(app, ["profile", "--tiny", "llama", "--batch-size", "4", "--world-size", "3"])
    assert bad.exit_code == 2 and "must be a multiple of the world size 3" in bad.output
