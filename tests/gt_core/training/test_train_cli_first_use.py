"""`greentrainer train` as a new user meets it: an unreachable daemon, resuming with no other
arguments, bad model directories. Every mistake is one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from gt_core.cli import app

BASE = ["train", "--tiny", "opt", "--limit", "8", "--epochs", "2", "--batch-size", "4",
        "--max-input-length", "48", "--max-target-length", "12", "--importance-batches", "1", "--no-progress"]


def _run(args):
    return CliRunner().invoke(app, args)


def test_unreachable_daemon_is_a_one_line_error_naming_the_socket(tmp_path):
    socket = tmp_path / "wrong.sock"
    result = _run([*BASE, "--rho-from", f"daemon:{socket}", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: carbonsched daemon not reachable at"), result.output
    assert str(socket) in lines[0] and "--daemon-optional" in lines[0]
    assert not (tmp_path / "run").exists()


def test_in_a_login_session_without_a_daemon_of_ones_own_the_error_names_the_service(tmp_path, monkeypatch):
    service_dir = tmp_path / "run-carbonsched"
    service_dir.mkdir()
    monkeypatch.delenv("CARBONSCHED_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("CARBONSCHED_SYSTEM_RUNTIME_DIR", str(service_dir))
    result = _run([*BASE, "--rho-from", "daemon", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert f"not reachable at {service_dir / 'carbonsched.sock'}" in result.output
    assert "start it (sudo systemctl start carbonsched)" in result.output


def test_daemon_optional_trains_on_the_documented_fallback_and_claims_no_job(tmp_path):
    out = tmp_path / "run"
    result = _run([*BASE, "--rho-from", f"daemon:{tmp_path / 'wrong.sock'}", "--daemon-optional", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: carbonsched daemon not reachable" in result.output and "fallback rho 0.50" in result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["rho_asked"] for r in records] == [0.5, 0.5]  # --help's default, not full fine-tuning
    epoch_lines = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("fallback rho" in line for line in epoch_lines), result.output
    done = next(line for line in result.output.splitlines() if line.startswith("done:"))
    assert "carbonsched job" not in done and "not recorded by carbonsched" in done


def test_daemon_optional_without_rho_from_is_refused(tmp_path):
    result = _run([*BASE, "--daemon-optional", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--daemon-optional needs --rho-from daemon" in result.output


def test_resume_alone_reuses_the_saved_arguments_and_flags_given_again_override_them(tmp_path):
    out = tmp_path / "run"
    first = _run([*BASE, "--epochs", "1", "--rho", "0.8", "--output-dir", str(out)])
    assert first.exit_code == 0, first.output
    saved = json.loads((out / "run-args.json").read_text())
    assert saved["tiny"] == "opt" and saved["epochs"] == 1 and saved["rho"] == 0.8

    again = _run(["train", "--resume", str(out), "--epochs", "2"])
    assert again.exit_code == 0, again.output
    assert "note: --epochs 2 overrides the run's 1" in again.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["rho_asked"] == 0.8  # --rho came back too
    assert json.loads((out / "run-args.json").read_text())["epochs"] == 2

    finished = _run(["train", "--resume", str(out)])
    assert finished.exit_code == 0 and "overrides" not in finished.output, finished.output


def _write_jsonl(path, count):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"source": f"report {i}: the pump {i} failed at noon", "target": f"pump {i} failed"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_resume_works_from_another_directory_and_saves_paths_absolute(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _write_jsonl(project / "data" / "train.jsonl", 10)
    _write_jsonl(project / "data" / "val.jsonl", 3)
    monkeypatch.chdir(project)
    first = _run([*BASE, "--epochs", "1", "--data", "data/train.jsonl", "--output-dir", "runs/x"])
    assert first.exit_code == 0, first.output
    saved = json.loads((project / "runs" / "x" / "run-args.json").read_text())
    assert saved["data"] == str(project / "data" / "train.jsonl")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = _run(["train", "--resume", "../project/runs/x", "--epochs", "2", "--val-data", "../project/data/val.jsonl"])
    assert again.exit_code == 0, again.output
    assert "8 training / 1 validation examples" in again.output  # --limit 8 of data/train.jsonl
    saved = json.loads((project / "runs" / "x" / "run-args.json").read_text())
    assert saved["data"] == str(project / "data" / "train.jsonl")
    assert saved["val_data"] == str(project / "data" / "val.jsonl")  # the override, absolute too


def test_a_run_args_file_with_relative_paths_resumes_from_elsewhere_and_says_which_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _write_jsonl(project / "data" / "train.jsonl", 10)
    monkeypatch.chdir(project)
    assert _run([*BASE, "--epochs", "1", "--data", "data/train.jsonl", "--output-dir", "runs/x"]).exit_code == 0
    args_file = project / "runs" / "x" / "run-args.json"
    old_style = {**json.loads(args_file.read_text()), "data": "data/train.jsonl"}  # as older versions wrote it
    args_file.write_text(json.dumps(old_style))

    monkeypatch.chdir(tmp_path)
    again = _run(["train", "--resume", "project/runs/x", "--epochs", "2"])
    assert again.exit_code == 0, again.output
    assert f"has the relative --data data/train.jsonl; using {project / 'data' / 'train.jsonl'}" in again.output
    assert json.loads(args_file.read_text())["data"] == str(project / "data" / "train.jsonl")


def test_resume_with_another_model_is_one_line(tmp_path):
    out = tmp_path / "run"
    assert _run([*BASE, "--epochs", "1", "--output-dir", str(out)]).exit_code == 0
    other = _run(["train", "--resume", str(out), "--tiny", "llama"])
    assert other.exit_code == 2
    assert other.output.count("\n") == 1 and "was trained with --tiny opt" in other.output, other.output

    (out / "run-args.json").unlink()  # a run without saved arguments: the checkpoint itself does not fit
    mismatched = _run([*BASE, "--tiny", "llama", "--epochs", "2", "--resume", str(out)])
    assert mismatched.exit_code == 2
    assert mismatched.output.count("\n") == 1 and "does not fit this model" in mismatched.output, mismatched.output


def _config_only_dir(tmp_path):
    """A directory with a model's config.json and nothing else (no tokenizer, no weights)."""
    from gt_core.models.tiny import tiny_model

    path = tmp_path / "config-only"
    tiny_model("opt").config.save_pretrained(path)
    return path


MODEL_COMMANDS = {
    "train": lambda tmp_path: ["train", "--limit", "8", "--output-dir", str(tmp_path / "run"), "--no-progress"],
    "evaluate": lambda tmp_path: ["evaluate", "--limit", "2"],
    "select": lambda tmp_path: ["select", "--rho", "0.5"],
    "profile": lambda tmp_path: ["profile"],
}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
@pytest.mark.parametrize("make_dir, expected", [
    (lambda tmp_path: tmp_path / "missing" / "model", "': no such directory"),
    (lambda tmp_path: tmp_path, "': not a model directory (no config.json)"),
])
def test_every_command_checks_the_model_directory_first(tmp_path, command, make_dir, expected):
    model_dir = make_dir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model\n")
    result = _run([*MODEL_COMMANDS[command](tmp_path), "--model", str(model_dir)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: model '{model_dir}{expected}", result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_model_directory_without_a_tokenizer_says_so(tmp_path, command):
    model_dir = _config_only_dir(tmp_path)
    result = _run([*MODEL_COMMANDS[command](tmp_path), "--model", str(model_dir)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no tokenizer in {model_dir} (none of tokenizer.json"), result.output


def test_banner_and_show_tell_what_was_trained(tmp_path):
    out = tmp_path / "run"
    result = _run([*BASE, "--rho", "0.8", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    banner = result.output.splitlines()[0]
    assert banner.startswith("train: tiny opt (") and "M parameters) on cpu, fp32" in banner, banner
    assert "8 training / 1 validation examples; scheme green, rho 0.8; 2 epochs (numbered from 0)" in banner, banner

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shown = _run(["show", str(out)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"run {out}: tiny opt, scheme green, 2 epochs planned"
    for record in records:
        head = f"epoch {record['epoch']}: green, rho 0.80 -> {record['rho_effective']:.3f}, {record['tensors_selected']} tensors"
        at = next(i for i, line in enumerate(lines) if line.startswith(head))
        assert lines[at + 1 : at + 1 + len(record["selected"])] == [f"  {name}" for name in record["selected"]]

    missing = _run(["show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "no such directory" in missing.output


def test_select_prints_the_parameter_share_of_each_selected_tensor():
    result = _run(["select", "--tiny", "opt", "--rho", "0.6"])
    assert result.exit_code == 0, result.output
    importance, shape, head, *names = result.output.splitlines()
    assert importance.startswith("importance: uniform") and "not what training would pick" in importance
    assert shape == "profiled at batch 4 x 512 tokens (the model's maximum positions)"  # the tiny config's 512
    assert "% of parameters" in head
    assert all(line.endswith("% of parameters)") for line in names if line.startswith("  "))


def test_select_with_a_runs_saved_importance_picks_what_training_picked(tmp_path):
    out = tmp_path / "run"
    trained = _run([*BASE, "--rho", "0.6", "--output-dir", str(out)])
    assert trained.exit_code == 0, trained.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        saved = out / "importance" / f"epoch-{record['epoch']}.json"
        result = _run(["select", "--tiny", "opt", "--rho", "0.6", "--importance", str(saved), "--json"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["selected"] == record["selected"]
        assert answer["profiled_at"]["from"] == "the run's shape" and answer["importance"] == str(saved)
        text = _run(["select", "--tiny", "opt", "--rho", "0.6", "--importance", str(saved)])
        assert text.output.splitlines()[0] == f"importance: {saved} (epoch {record['epoch']} of the run)"


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "must map tensor names to numbers"),
    ('{"importance": {"no.such.weight": 1.0}}', "names tensors the model does not train: no.such.weight"),
    ('{"lm_head.weight": "high"}', "importance of 'lm_head.weight' is not a number"),
    ("{", "is not valid JSON"),
])
def test_select_bad_importance_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "importance.json"
    path.write_text(content)
    result = _run(["select", "--tiny", "opt", "--rho", "0.5", "--importance", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and expected in result.output, result.output


def test_select_asks_for_a_sequence_length_when_the_config_has_none():
    result = _run(["select", "--tiny", "bloom", "--rho", "0.5"])  # ALiBi: no position table
    assert result.exit_code == 2 and "give --seq-len" in result.output, result.output
    assert _run(["select", "--tiny", "bloom", "--rho", "0.5", "--seq-len", "32"]).exit_code == 0


@pytest.mark.parametrize("command", ["train", "evaluate", "select", "profile", "show"])
def test_help_shows_every_option_name_in_full_at_80_columns(command):
    import typer.main

    result = CliRunner().invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    params = typer.main.get_command(app).commands[command].params
    names = [name for p in params for name in (*p.opts, *p.secondary_opts) if name.startswith("--")]
    assert names and all(name in result.output for name in names), [n for n in names if n not in result.output]
    assert "…" not in result.output


def test_console_and_metrics_number_epochs_alike(tmp_path):
    out = tmp_path / "run"
    result = _run([*BASE, "--rho", "0.8", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    numbers = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    console = [line.split(":")[0] for line in result.output.splitlines() if line.startswith("epoch ")]
    assert console == [f"epoch {n}" for n in numbers] == ["epoch 0", "epoch 1"]


def test_a_rho_schedule_shorter_than_the_run_says_which_epochs_reuse_its_last_value(tmp_path):
    schedule = tmp_path / "rho.txt"
    schedule.write_text("0.9\n")
    result = _run([*BASE, "--epochs", "3", "--rho-schedule", str(schedule), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"warning: --rho-schedule {schedule} has 1 value for 3 epochs: epochs 1-2 reuse its last value 0.9" in result.output
    schedule.write_text("0.9\n0.8\n0.8\n")
    exact = _run([*BASE, "--epochs", "3", "--rho-schedule", str(schedule), "--output-dir", str(tmp_path / "run2")])
    assert exact.exit_code == 0 and "warning" not in exact.output, exact.output


def test_run_args_store_the_default_rho_that_was_used(tmp_path):
    out = tmp_path / "run"
    result = _run([*BASE, "--epochs", "1", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    used = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["rho_asked"]
    assert json.loads((out / "run-args.json").read_text())["rho"] == used


# The model, data and sizes `train --tiny opt --limit 16 --batch-size 4` builds, stopped by SIGTERM
# in its second optimizer step: the checkpoint then holds epoch 0 after 2 of its 4 steps.
_STOPPED_MID_EPOCH = """
import os, signal, sys
from gt_core.data.embedded_task import embedded_task
from gt_core.models.loading import load_model
from gt_core.rho.sources import CallableRho
from gt_core.data.tokenizer import build_tokenizer
from gt_core.training.trainer import GreenTrainer, TrainConfig

def rho(epoch, step):
    if step == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return 0.5

tokenizer = build_tokenizer()
model = load_model(tiny="opt", vocab_size=len(tokenizer), tie_word_embeddings=False)
train, val = embedded_task(seed=0)
config = TrainConfig(epochs=1, batch_size=4, importance_batches=1, reselect="on_change", checkpoint_every=1,
                     max_input_length=48, max_target_length=12, output_dir=sys.argv[1], progress=False, save_final=False)
trainer = GreenTrainer(model, tokenizer, train[:16], val[:2], config, rho_source=CallableRho(rho))
trainer.train()
assert trainer.interrupted
"""


@pytest.mark.slow
def test_resuming_a_mid_epoch_checkpoint_names_the_step(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    stopped = subprocess.run([sys.executable, "-c", _STOPPED_MID_EPOCH, str(out)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert stopped.returncode == 0, stopped.stderr
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)

    resumed = _run([*BASE, "--limit", "16", "--epochs", "1", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 0, step 2 of 4" in resumed.output, resumed.output


@pytest.mark.slow
def test_no_progress_also_silences_the_loading_weights_bar_of_a_local_model(tmp_path):
    import os
    import subprocess
    import sys

    from gt_core.models.loading import load_model
    from gt_core.data.tokenizer import build_tokenizer

    model_dir = tmp_path / "model"
    tokenizer = build_tokenizer()
    load_model(tiny="opt", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = [sys.executable, "-m", "gt_core", "train", "--model", str(model_dir), *BASE[3:], "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    quiet = subprocess.run([*args, "--output-dir", str(tmp_path / "quiet")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr, quiet.stderr
    assert "done:" in quiet.stdout
