import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gt_core.cli import app
from gt_core.data.datasets import SummarizationDataset, make_loader
from gt_core.data.embedded_task import embedded_task
from gt_core.evaluate import evaluate_model, exact_match, generate_predictions, rouge_scores, validation_loss
from gt_core.models.tiny import tiny_model

TRAIN_STEPS = 150


@pytest.fixture(scope="module")
def task():
    return embedded_task(n_train=256, n_val=16)


@pytest.fixture(scope="module")
def trained(tokenizer, task):
    """A tiny OPT trained briefly on the embedded task, with its scores before training."""
    train, val = task
    model = tiny_model("opt")
    before = evaluate_model(model, tokenizer, val, num_beams=1, max_new_tokens=16)
    loader = make_loader(SummarizationDataset(train, tokenizer, encoder_decoder=False), 8, shuffle=True, seed=0, pad_token_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    step = 0
    while step < TRAIN_STEPS:
        for batch in loader:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == TRAIN_STEPS:
                break
    return model, before


def _loader(examples, tokenizer, encoder_decoder=False, batch_size=4):
    dataset = SummarizationDataset(examples, tokenizer, encoder_decoder=encoder_decoder)
    return make_loader(dataset, batch_size, shuffle=False, seed=0, pad_token_id=tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- metrics


def test_rouge_scores():
    assert rouge_scores(["Ida sold 4 bricks"], ["Ida sold 4 bricks"]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    )
    assert rouge_scores(["lanterns"], ["Ida sold 4 bricks"])["rougeL"] == 0.0
    partial = rouge_scores(["Ida sold bricks", "x"], ["Ida sold 4 bricks", "x"])
    # pair 1: P=3/3, R=3/4 -> F1 6/7 for ROUGE-1 and -L; pair 2 is a perfect match.
    assert partial["rouge1"] == pytest.approx(100 * (6 / 7 + 1) / 2)
    assert partial["rouge2"] < partial["rougeL"]
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        rouge_scores([], [])


def test_exact_match_ignores_case_and_spacing():
    assert exact_match(["Ida  sold 4", "pim"], ["ida sold 4", "Pim sold"]) == 50.0


# ----------------------------------------------------------------------------- loss and generation


def test_validation_loss_matches_the_model_loss_and_restores_mode(tokenizer, task):
    model = tiny_model("opt")
    model.train()
    loader = _loader(task[1][:4], tokenizer, batch_size=4)
    expected = model.eval()(**next(iter(loader))).loss.item()
    model.train()
    assert validation_loss(model, loader) == pytest.approx(expected, rel=1e-5)
    assert model.training
    model.eval()
    validation_loss(model, loader)
    assert not model.training


def test_training_improves_loss_and_rouge(trained, tokenizer, task):
    model, before = trained
    after = evaluate_model(model, tokenizer, task[1], num_beams=1, max_new_tokens=16)
    print(f"val loss {before['val_loss']:.3f} -> {after['val_loss']:.3f}, "
          f"ROUGE-L {before['rougeL']:.1f} -> {after['rougeL']:.1f}")
    assert after["val_loss"] < before["val_loss"] - 2.0
    assert after["rougeL"] > before["rougeL"] + 15.0
    assert after["n_examples"] == len(task[1])


def test_batched_left_padded_generation_matches_one_by_one(trained, tokenizer, task):
    model, _ = trained
    examples = task[1][:5]
    batched = generate_predictions(model, tokenizer, examples, encoder_decoder=False, num_beams=2,
                                   max_new_tokens=12, batch_size=5)
    single = [generate_predictions(model, tokenizer, [e], encoder_decoder=False, num_beams=2,
                                   max_new_tokens=12, batch_size=1)[0] for e in examples]
    assert batched == single
    # Only new tokens are decoded: the prompt's cue never appears in a prediction.
    assert all("TL;DR" not in prediction for prediction in batched)


def test_saved_model_loads_back_with_the_same_scores(trained, tokenizer, task, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    kwargs = dict(num_beams=2, max_new_tokens=16, include_predictions=True)
    original = evaluate_model(model, tokenizer, task[1], **kwargs)
    reloaded = evaluate_model(loaded, loaded_tokenizer, task[1], **kwargs)
    assert reloaded["predictions"] == original["predictions"]
    assert reloaded["val_loss"] == pytest.approx(original["val_loss"], rel=1e-5)
    assert reloaded["rougeL"] == pytest.approx(original["rougeL"])
    assert evaluate_model(loaded, loaded_tokenizer, task[1], metric="exact_match", num_beams=1,
                          max_new_tokens=16).keys() >= {"exact_match", "val_loss"}


def test_encoder_decoder_evaluation(tokenizer, task):
    model = tiny_model("t5")
    result = evaluate_model(model, tokenizer, task[1][:3], num_beams=2, max_new_tokens=6, include_predictions=True)
    assert len(result["predictions"]) == 3
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_model(model, tokenizer, task[1][:1], metric="bleu")


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def checkpoint(trained, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint")
    trained[0].save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _data_file(directory: Path, records) -> Path:
    path = directory / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_evaluates_a_checkpoint_on_a_file(checkpoint, task, tmp_path):
    records = [{"report": e.source, "gist": e.target} for e in task[1][:4]]
    data = _data_file(tmp_path, records)
    result = CliRunner().invoke(app, [
        "evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--source-field", "report",
        "--target-field", "gist", "--num-beams", "1", "--max-new-tokens", "16", "--json",
    ])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["n_examples"] == 4
    assert {"rouge1", "rouge2", "rougeL", "val_loss"} <= scores.keys()


@pytest.mark.parametrize("args, message", [
    (["--tiny", "opt", "--data", "{tmp}/missing.jsonl"], "no such file"),
    (["--tiny", "opt", "--data", "{tmp}/val.jsonl", "--source-field", "text"], "missing field 'text'"),
    (["--tiny", "opt", "--data", "{tmp}/empty.jsonl"], "no examples"),
    (["--tiny", "gpt5"], "unknown tiny architecture"),
    (["--checkpoint", "{tmp}/nothing"], "no such directory"),
    (["--model", "{tmp}"], "not a model directory (no config.json)"),
    ([], "exactly one of"),
    (["--tiny", "opt", "--metric", "bleu"], "unknown metric"),
])
def test_cli_bad_input_is_one_error_line_with_exit_code_2(tmp_path, args, message):
    _data_file(tmp_path, [{"source": "s", "target": "t"}])
    (tmp_path / "empty.jsonl").write_text("")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(app, ["evaluate", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_runs_as_a_real_command():
    executable = Path(sys.executable).with_name("greentrainer")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(executable), "evaluate", "--tiny", "opt", "--limit", "4", "--num-beams", "1", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert completed.returncode == 0, completed.stderr
    scores = json.loads(completed.stdout)
    assert scores["n_examples"] == 4 and "val_loss" in scores


def test_cli_saves_predictions_and_shows_progress(tmp_path):
    path = tmp_path / "predictions.jsonl"
    result = CliRunner().invoke(app, ["evaluate", "--tiny", "opt", "--limit", "3", "--num-beams", "1",
                                      "--max-new-tokens", "4", "--json", "--save-predictions", str(path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and all(set(row) == {"source", "reference", "prediction"} for row in rows)
    assert "generating" in result.stderr and "3 predictions written to" in result.stderr
    assert json.loads(result.stdout)["n_examples"] == 3


def test_a_run_checkpoint_is_scored_on_the_runs_own_validation_examples_and_says_so(tmp_path, monkeypatch):
    rows = [{"text": f"report {i}: valve {i} was replaced on monday", "gist": f"valve {i} replaced"} for i in range(20)]
    monkeypatch.chdir(tmp_path)
    _data_file(tmp_path, rows).rename(tmp_path / "mine.jsonl")
    trained = CliRunner().invoke(app, [
        "train", "--tiny", "opt", "--data", "mine.jsonl", "--source-field", "text", "--target-field", "gist",
        "--epochs", "1", "--batch-size", "4", "--max-input-length", "48", "--max-target-length", "12",
        "--importance-batches", "1", "--no-progress", "--output-dir", "run",
    ])
    assert trained.exit_code == 0, trained.output
    monkeypatch.chdir(tmp_path.parent)  # the run's data path must not depend on where evaluate runs

    scored = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "run"), "--num-beams", "1",  # RUN: RUN/final
                                      "--max-new-tokens", "4", "--json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["n_examples"] == 2  # the last tenth of the 20 rows, held out by train
    assert f"the validation examples of the run in {tmp_path / 'run'}" in result["data"]
    assert str(tmp_path / "mine.jsonl") in result["data"]
    assert [line for line in scored.stderr.splitlines() if line.startswith("data: ")] == [f"data: {result['data']}; 2 examples"]

    text = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "run" / "final"), "--num-beams", "1",
                                    "--max-new-tokens", "4", "--no-progress"])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0] == f"data: {result['data']}; 2 examples"


def test_without_data_or_a_run_the_embedded_split_is_named():
    result = CliRunner().invoke(app, ["evaluate", "--tiny", "opt", "--limit", "2", "--num-beams", "1",
                                      "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "data: the embedded task's validation split (seed 0); give --data for your own; 2 examples"
    )


def test_a_run_args_file_with_a_wrong_type_is_one_error_line(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "run-args.json").write_text(json.dumps({"tiny": "opt", "data": 5}))
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'run-args.json'}: data 5 is not a str\n"
