"""``accelerate launch`` (the installed CLI, explicit flags, no user config) with the command
docs/scaling.md gives: 2 processes on this CPU-only machine, and ``greentrainer train`` finishes
with the same weights and metrics on both ranks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from proc_helpers import ACCELERATE_FLAGS, ROOT, launch

pytestmark = pytest.mark.slow

TRAIN_ARGS = [
    "train", "--tiny", "opt", "--limit", "16", "--epochs", "2", "--batch-size", "4", "--max-input-length", "64",
    "--max-target-length", "16", "--importance-batches", "2", "--no-progress",
]
# Each rank's final weights, records and selections next to the run; otherwise `python -m gt_core`.
RANK_DUMP = '''\
import json, os
from dataclasses import asdict

import torch

from gt_core.cli import main
from gt_core.distributed.data_parallel import DistributedGreenTrainer

_train = DistributedGreenTrainer.train


def _train_and_dump(self):
    records = _train(self)
    out = os.environ["RANK_DUMP_DIR"]
    torch.save(self.model.state_dict(), os.path.join(out, f"weights_r{self.rank}.pt"))
    info = {"world_size": self.world_size, "records": [asdict(r) for r in records],
            "selected": [s["selected"] for s in self.state.selections]}
    with open(os.path.join(out, f"info_r{self.rank}.json"), "w") as f:
        json.dump(info, f)
    return records


DistributedGreenTrainer.train = _train_and_dump
main()
'''
TIMINGS = {"wall_s", "importance_s", "dp_s", "peak_memory_bytes"}  # measured per process


def _documented_command() -> str:
    text = (ROOT / "docs" / "scaling.md").read_text()
    section = text[text.index("## accelerate launch") :]
    block = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    return " ".join(re.sub(r"\\\n", " ", block).split())


def test_docs_give_the_tested_command():
    command = _documented_command()
    assert f"accelerate launch {ACCELERATE_FLAGS} -m gt_core train" in command, command


def test_documented_command_starts_two_processes(tmp_path):
    out = tmp_path / "run"
    run = launch("accelerate", ["-m", "gt_core", *TRAIN_ARGS, "--rho", "0.6", "--output-dir", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("done: 2 epochs") == 1  # rank 0 only
    assert (out / "final").is_dir() and (out / "checkpoint").is_dir()
    timings = [json.loads(line) for line in (out / "distributed.jsonl").read_text().splitlines()]
    assert [(t["rank"], t["world_size"]) for t in timings] == [(0, 2), (0, 2)]


def test_train_ends_with_identical_weights_and_metrics_on_both_ranks(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "rank_dump.py").write_text(RANK_DUMP)
    schedule = tmp_path / "schedule.json"
    schedule.write_text("[0.5, 0.8]")
    out = tmp_path / "run"
    run = launch(
        "accelerate", ["-m", "rank_dump", *TRAIN_ARGS, "--rho-schedule", str(schedule), "--output-dir", str(out)],
        tmp_path, RANK_DUMP_DIR=str(tmp_path),
        # Ahead of, not instead of, the caller's path: the ranks import the gt_core under test.
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "mods"), os.environ.get("PYTHONPATH")])),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    info = [json.loads((tmp_path / f"info_r{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2]
    assert info[0]["selected"] == info[1]["selected"] and info[0]["selected"][0] != info[0]["selected"][1]
    strip = [[{k: v for k, v in rec.items() if k not in TIMINGS} for rec in i["records"]] for i in info]
    assert strip[0] == strip[1] and [r["rho_asked"] for r in strip[0]] == [0.5, 0.8]
    weights = [torch.load(tmp_path / f"weights_r{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_loss"] for m in metrics] == [r["train_loss"] for r in strip[0]]
