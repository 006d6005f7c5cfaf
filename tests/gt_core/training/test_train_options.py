"""`greentrainer train` options for real jobs: --config files (flags override), device and
precision checks, the optimizer/scheduler knobs, trackers, and accelerate's mixed-precision flag."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from gt_core.cli import app

BASE = ["train", "--tiny", "llama", "--limit", "12", "--epochs", "1", "--batch-size", "4",
        "--max-input-length", "64", "--max-target-length", "16", "--importance-batches", "1", "--no-progress"]


def _run(args, env=None):
    return CliRunner().invoke(app, args, env=env)


def _settings(out):
    return json.loads((out / "checkpoint" / "state.json").read_text())["settings"]


def test_config_file_sets_options_and_command_line_flags_override_it(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        f'output-dir = "{out}"\nfrozen_state = "drop"\nscheduler = "cosine"\nweight-decay = 0.0\n'
        'grad-accumulation = 2\nprecision = "bf16-mixed"\nrho = 0.9\n'
    )
    result = _run([*BASE, "--config", str(cfg), "--rho", "0.6"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["rho_asked"] == 0.6  # the flag, not the file's 0.9
    assert record["steps"] == 2 and record["selections"] == 1  # 12 examples / batch 4 / accumulation 2, rounded up
    assert _settings(out) == {"frozen_state": "drop", "precision": "bf16-mixed"}


def test_yaml_config_works_too(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"output_dir: {out}\nfrozen-state: offload\n")
    result = _run([*BASE, "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert _settings(out)["frozen_state"] == "offload"


@pytest.mark.parametrize("text, expected", [
    ('frozen_stat = "drop"\n', "unknown option 'frozen-stat' (did you mean frozen-state?)"),
    ('warmup-steps = "many"\n', "warmup-steps: Input should be a valid integer"),
    ("gradient-checkpointing = 1\n", "gradient-checkpointing: expected true or false"),
    ("[oops\n", "not valid TOML"),
])
def test_bad_config_files_are_one_line_usage_errors(tmp_path, text, expected):
    cfg = tmp_path / "job.toml"
    cfg.write_text(text)
    result = _run([*BASE, "--config", str(cfg), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--precision", "fp16-mixed"], "bf16-mixed on the CPU"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--frozen-state", "forget"], "unknown frozen-state mode 'forget'"),
    (["--scheduler", "step"], "unknown scheduler 'step'"),
    (["--report-to", "comet"], "unknown --report-to 'comet'"),
    (["--device-map", "auto"], "--device-map applies to a pretrained --model only"),
    (["--strategy", "zero3"], "--strategy must be one of ddp, fsdp, got 'zero3'"),
    (["--fsdp-wrap", "LlamaDecoderLayer"], "--fsdp-wrap and --fsdp-cpu-offload apply to --strategy fsdp only"),
    (["--strategy", "fsdp"], "--strategy fsdp shards the model over processes: start it with torchrun"),
])
def test_bad_job_options_are_one_line_usage_errors(tmp_path, flags, expected):
    result = _run([*BASE, *flags, "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, installed or not
    result = _run([*BASE, "--report-to", "wandb", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "pip install wandb" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_tensorboard_gets_every_epoch_scalar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = _run([*BASE, "--epochs", "2", "--report-to", "tensorboard", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"greentrainer/train_loss", "greentrainer/rho_effective", "greentrainer/peak_memory_bytes"} <= tags
    losses = events.Scalars("greentrainer/train_loss")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in losses] == [1, 2]
    assert [e.value for e in losses] == pytest.approx([r["train_loss"] for r in records], rel=1e-6)


def test_accelerate_mixed_precision_is_not_ignored(tmp_path):
    out = tmp_path / "run"
    result = _run([*BASE, "--output-dir", str(out)], env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert result.exit_code == 0, result.output
    assert _settings(out)["precision"] == "bf16-mixed"


def test_gradient_checkpointing_uses_the_current_transformers_api_without_future_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run([*BASE, "--gradient-checkpointing", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
