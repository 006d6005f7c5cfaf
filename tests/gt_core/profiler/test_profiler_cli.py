"""`greentrainer profile` through typer's CliRunner and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gt_core.cli import app
from gt_core.commands.profile_cmd import human_count, human_flops

runner = CliRunner()


def test_human_units() -> None:
    assert human_flops(0) == "0 FLOPs"
    assert human_flops(1_200_000) == "1.2 MFLOPs"
    assert human_flops(3.5e15) == "3.5 PFLOPs"
    assert human_count(32_768) == "32.8k"


def test_table_lists_tensors_and_totals() -> None:
    result = runner.invoke(app, ["profile", "--tiny", "gpt2", "--batch-size", "2", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "transformer.wte.weight" in out and "transformer.ln_f.bias" in out
    assert out.index("transformer.h.1.mlp.c_proj.weight") < out.index("transformer.ln_f.weight")
    for label in ("t_fp", "t_full", "min feasible rho"):
        assert label in out
    assert "MFLOPs" in out


def test_json_output_matches_profile() -> None:
    from gt_core.profiler import profile_model
    from gt_core.models.tiny import tiny_model

    result = runner.invoke(
        app, ["profile", "--tiny", "t5", "--batch-size", "2", "--seq-len", "8", "--target-len", "4", "--count", "matmul", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    prof = profile_model(tiny_model("t5"), batch_size=2, seq_len=8, target_len=4, count="matmul")
    assert [t["name"] for t in doc["tensors"]] == prof.names
    assert doc["t_fp"] == prof.t_fp and doc["t_full"] == prof.t_full
    assert doc["target_len"] == 4 and doc["count"] == "matmul"


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile"], "exactly one of --tiny"),
        (["profile", "--tiny", "opt", "--model", "x"], "exactly one of --tiny"),
        (["profile", "--tiny", "opt", "--count", "macs"], "--count must be one of"),
        (["profile", "--tiny", "opt", "--batch-size", "0"], "must be positive"),
        (["profile", "--tiny", "opt", "--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["profile", "--tiny", "resnet"], "unknown tiny architecture 'resnet'"),
        (["profile", "--tiny", "opt", "--target-len", "4"], "target_len only applies"),
        (["profile", "--model", "/nonexistent/model-dir"], "model '/nonexistent/model-dir': no such directory"),
    ],
)
def test_bad_arguments_give_one_error_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.slow
def test_real_process() -> None:
    exe = Path(sys.executable).with_name("greentrainer")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [str(exe), "profile", "--tiny", "opt", "--seq-len", "16", "--batch-size", "2"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "model.decoder.final_layer_norm.weight" in done.stdout
    assert "min feasible rho" in done.stdout
    bad = subprocess.run([str(exe), "profile", "--tiny", "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
