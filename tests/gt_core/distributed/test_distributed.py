"""Data-parallel GreenTrainer: sharding and loss weighting units, and a real 2-process torchrun run
(gloo, CPU) against a 1-process run with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gt_core.data.datasets import IGNORE_INDEX, make_loader
from gt_core.distributed.data_parallel import (
    GreenTrainer, RankBatches, dist_env, is_distributed_launch, loss_items, trainer_class,
)
from proc_helpers import BIN, ROOT, free_port, launch_env

pytestmark = pytest.mark.slow

# 2-process vs 1-process: same examples per global step and token-weighted loss, so only float
# summation order differs (measured: 7e-9 after epoch 1, 1.4e-7 after epoch 2).
WEIGHT_TOL = 1e-5
LOSS_RTOL = 1e-6


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": [i + 3, i + 4, i + 5], "labels": [IGNORE_INDEX, i + 4, i + 5]}


@pytest.mark.parametrize("n", [16, 10, 9])
def test_rank_batches_split_the_single_process_batches(n):
    ds = _Rows(n)
    single = [b["input_ids"][:, 0].tolist() for b in make_loader(ds, 4, shuffle=True, seed=7, pad_token_id=0)]
    ranks = []
    for rank in range(2):
        gen = torch.Generator().manual_seed(7)
        ranks.append(list(RankBatches(ds, 4, gen, rank, 2, 0)))
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, expected in enumerate(single):
        parts = [b for b in (ranks[0][k], ranks[1][k]) if (b["labels"] != IGNORE_INDEX).any()]
        assert sum((b["input_ids"][:, 0].tolist() for b in parts), []) == expected
    if n == 9:  # 1 row in the last global batch: rank 1 runs an example whose labels are all ignored
        assert (ranks[1][-1]["labels"] == IGNORE_INDEX).all()


def test_loss_items_counts_the_tokens_the_mean_divides_by():
    batch = {"labels": torch.tensor([[IGNORE_INDEX, 5, 6], [7, 8, IGNORE_INDEX]])}
    assert loss_items(batch, encoder_decoder=False) == 3  # causal shift drops the first column
    assert loss_items(batch, encoder_decoder=True) == 4


def test_env_detection_and_single_process_default(monkeypatch):
    assert dist_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}).rank == 2
    assert is_distributed_launch({"WORLD_SIZE": "2"}) and not is_distributed_launch({})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert trainer_class() is GreenTrainer


def _torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]


def test_two_processes_match_one_process(tmp_path):
    worker = str(ROOT / "tests" / "helpers" / "ddp_worker.py")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, worker, str(one)], check=True, env=launch_env(), capture_output=True, timeout=120)
    run = subprocess.run(_torchrun(worker, str(two)), env=launch_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    selected = []
    for epoch in (0, 1):
        ref = torch.load(one / f"weights_r0_e{epoch}.pt")
        w0 = torch.load(two / f"weights_r0_e{epoch}.pt")
        w1 = torch.load(two / f"weights_r1_e{epoch}.pt")
        assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks disagree"
        diff = max((ref[k] - w0[k]).abs().max().item() for k in ref)
        assert diff < WEIGHT_TOL, diff
        info_one = json.loads((one / f"epoch_r0_e{epoch}.json").read_text())
        info_two = [json.loads((two / f"epoch_r{r}_e{epoch}.json").read_text()) for r in (0, 1)]
        assert info_two[0]["selected"] == info_two[1]["selected"] == info_one["selected"]
        assert info_two[0]["record"]["train_loss"] == pytest.approx(info_one["record"]["train_loss"], rel=LOSS_RTOL)
        assert info_two[0]["record"]["flops_backward"] == info_one["record"]["flops_backward"]
        selected.append(info_one["selected"])
    assert selected[0] != selected[1]  # the ρ schedule changed the mask, so DDP was rebuilt
    overhead = json.loads((two / "overhead_r0.json").read_text())
    assert [o["rebuilt"] for o in overhead] == [True, True]
    # Only rank 0 writes: one metrics file with both epochs, one timing file.
    assert len((two / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((two / "run" / "distributed.jsonl").read_text().splitlines()) == 2


def test_a_rho_below_the_floor_is_clamped_alike_on_every_rank(tmp_path):
    worker = str(ROOT / "tests" / "helpers" / "ddp_worker.py")
    run = subprocess.run(_torchrun(worker, str(tmp_path), "below-floor"), env=launch_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    infos = [json.loads((tmp_path / f"epoch_r{r}_e0.json").read_text()) for r in (0, 1)]
    assert infos[0]["selected"] == infos[1]["selected"] and infos[0]["selected"]
    for info in infos:
        assert info["record"]["rho_clamped_from"] == pytest.approx(1e-4)
        assert info["record"]["rho_asked"] == info["rho_floor"]
        assert info["step_flops"] <= info["rho_floor"] * info["t_full"]


def test_cli_under_torchrun(tmp_path):
    out = tmp_path / "run"
    cmd = _torchrun(
        "-m", "gt_core", "train", "--tiny", "opt", "--limit", "16", "--epochs", "1", "--batch-size", "4",
        "--max-input-length", "64", "--max-target-length", "16", "--rho", "0.6", "--importance-batches", "2",
        "--no-progress", "--output-dir", str(out),
    )
    run = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("done: 1 epochs") == 1  # rank 0 only
    assert run.stdout.count("epoch 0: train loss") == 1
    assert (out / "final").is_dir() and (out / "checkpoint").is_dir()
    assert json.loads((out / "distributed.jsonl").read_text().splitlines()[0])["world_size"] == 2


def test_batch_must_split_evenly(tmp_path):
    worker = tmp_path / "w.py"
    worker.write_text(
        "from gt_core.distributed.data_parallel import trainer_class\n"
        "from gt_core.data.embedded_task import embedded_task\n"
        "from gt_core.models.tiny import tiny_model\nfrom gt_core.data.tokenizer import load_tokenizer\n"
        "from gt_core.training.trainer import TrainConfig\n"
        "tok = load_tokenizer(None, tiny=True)\n"
        "cls = trainer_class()\n"
        "try:\n"
        "    cls(tiny_model('llama', vocab_size=len(tok)), tok, *embedded_task(8, 2), TrainConfig(batch_size=3, max_input_length=96, max_target_length=16))\n"
        "except ValueError as exc:\n"
        "    print('rejected:', exc)\n"
    )
    run = subprocess.run(_torchrun(str(worker)), env=launch_env(), capture_output=True, text=True, timeout=120)
    assert run.stdout.count("rejected: batch size 3 (global) must be a multiple of the 2 processes") == 2, run.stderr[-2000:]
