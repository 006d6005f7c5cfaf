import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gt_core.training.callbacks import TrainerCallback
from gt_core.cli import app
from gt_core.data.datasets import SummarizationDataset
from gt_core.profiler import profile_model
from gt_core.rho.sources import CallableRho
from gt_core.models.tiny import tiny_model
from gt_core.training.trainer import GreenTrainer, TrainConfig

FIELDS = {
    "epoch", "rho_asked", "rho_effective", "tensors_selected", "param_share_selected", "flops_forward",
    "flops_backward", "flops_full", "wall_s", "importance_s", "dp_s", "train_loss", "val_loss",
}


def _trainer(tmp_path, tokenizer, task, rho_source=None, callbacks=(), **overrides) -> GreenTrainer:
    options = dict(
        epochs=2, lr=1e-3, batch_size=4, importance_batches=1, max_input_length=32, max_target_length=12,
        output_dir=tmp_path / "run", progress=False,
    )
    options.update(overrides)
    model = tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1)
    return GreenTrainer(model, tokenizer, task[0], task[1], TrainConfig(**options), rho_source=rho_source, callbacks=callbacks)


def test_frozen_tensors_stay_untouched_and_keep_their_optimizer_state(tmp_path, tokenizer, task):
    box: dict = {}

    def rho(epoch: int, step: int) -> float:
        trainer = box["trainer"]
        if epoch == 1:  # snapshot just before epoch 1's selection
            box["params"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            box["state"] = {n: {k: v.clone() for k, v in trainer.optimizer.state[p].items()}
                            for n, p in trainer.model.named_parameters() if p in trainer.optimizer.state}
            return trainer.min_rho * 1.01
        return 1.0

    trainer = _trainer(tmp_path, tokenizer, task, rho_source=CallableRho(rho))
    box["trainer"] = trainer
    records = trainer.train()

    first, second = (set(s["selected"]) for s in trainer.state.selections)
    assert len(second) < len(first)
    params = dict(trainer.model.named_parameters())
    trained_before_only = first - second
    assert trained_before_only
    for name in trainer.profile.names:
        if name in second:
            assert not torch.equal(params[name], box["params"][name]), name
            continue
        assert torch.equal(params[name], box["params"][name]), name
        if name in trained_before_only:  # its AdamW moments and step count survive for later
            state = trainer.optimizer.state[params[name]]
            for key, value in box["state"][name].items():
                assert torch.equal(state[key], value), (name, key)
    assert records[1].rho_effective <= records[1].rho_asked + 1e-9


class _TrainingObserver(TrainerCallback):
    """Per epoch: the weights at its start and end, and which tensors required grad at each
    training forward (a hook on the model, armed between epoch start and end, counting only
    forwards in train mode with grad enabled)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self._current: dict | None = None

    def on_train_start(self, trainer) -> None:
        trainer.model.register_forward_pre_hook(self._on_forward)

    def _on_forward(self, module, args) -> None:
        if self._current is not None and module.training and torch.is_grad_enabled():
            self._current["trainable"].append(frozenset(n for n, p in module.named_parameters() if p.requires_grad))

    def on_epoch_start(self, trainer, epoch, reading) -> None:
        self._current = {"trainable": [], "start": _weights(trainer.model)}

    def on_epoch_end(self, trainer, record) -> None:
        self._current["end"] = _weights(trainer.model)
        self.epochs.append(self._current)
        self._current = None


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_logged_flops_price_the_trained_tensors_at_the_data_shape_for_every_micro_batch(tmp_path, tokenizer, task):
    """16 examples in batches of 4 are 4 micro-batches per epoch; accumulating 3 gives optimizer
    steps of 3 and 1. The logged FLOPs must be those forwards, each priced by a profile of a
    separately built identical model at the longest tokenised example, training exactly the
    tensors that required grad during the epoch."""
    observer = _TrainingObserver()
    trainer = _trainer(tmp_path, tokenizer, task, rho=0.7, grad_accumulation=3, callbacks=[observer])
    records = trainer.train()

    data = SummarizationDataset(task[0], tokenizer, encoder_decoder=False, max_input_length=32, max_target_length=12)
    longest = max(len(feature["input_ids"]) for feature in data.features)
    reference = profile_model(tiny_model("opt", vocab_size=len(tokenizer), hidden=32, layers=1), batch_size=4, seq_len=longest)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.epoch for r in records] == [line["epoch"] for line in lines] == [0, 1]

    for seen, record, line, selection in zip(observer.epochs, records, lines, trainer.state.selections):
        assert len(seen["trainable"]) == 4 and record.steps == 2
        (trainable,) = set(seen["trainable"])  # one mask for the whole epoch
        assert trainable == set(selection["selected"]) and 0 < len(trainable) < len(reference)
        for name, before in seen["start"].items():
            assert torch.equal(before, seen["end"][name]) == (name not in trainable), name

        mask = np.array([name in trainable for name in reference.names])
        assert record.flops_forward == pytest.approx(4 * reference.t_fp, rel=1e-9)
        assert record.flops_backward == pytest.approx(4 * reference.backward(mask), rel=1e-9)
        assert record.flops_full == pytest.approx(4 * reference.t_full, rel=1e-9)
        assert record.rho_asked == 0.7 and record.rho_effective <= 0.7
        assert record.rho_effective == pytest.approx(reference.cost(mask) / reference.t_full, rel=1e-9)
        share = reference.param_counts[mask].sum() / reference.param_counts.sum()
        assert record.param_share_selected == pytest.approx(share) and record.tensors_selected == len(trainable)

        assert FIELDS <= line.keys()
        for field in ("rho_asked", "rho_effective", "flops_forward", "flops_backward", "flops_full", "train_loss"):
            assert line[field] == pytest.approx(getattr(record, field)), field
        assert np.isfinite(line["val_loss"]) and np.isfinite(line["train_loss"])
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()


@pytest.mark.parametrize("reselect, expected", [("epoch", [0, 4]), (3, [0, 3, 6]), ("on_change", [0, 4, 5])])
def test_reselection_points(tmp_path, tokenizer, task, reselect, expected):
    source = CallableRho(lambda epoch, step: 0.7 if step < 5 else 0.9)
    trainer = _trainer(tmp_path, tokenizer, task, rho_source=source, reselect=reselect, save_final=False)
    trainer.train()
    assert [s["global_step"] for s in trainer.state.selections] == expected


@pytest.mark.parametrize("scheme", ["full", "topk", "lora", "prefix"])
def test_baselines_train_only_their_parameters(tmp_path, tokenizer, task, scheme):
    trainer = _trainer(tmp_path, tokenizer, task, scheme=scheme, epochs=1, save_final=False, lr=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    record = trainer.train()[0]
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    if scheme == "full":
        assert record.rho_effective == pytest.approx(1.0) and record.param_share_selected == 1.0
    else:
        assert record.rho_effective < 1.0
    if scheme in ("lora", "prefix"):
        assert record.param_share_selected < 0.1
    if scheme == "topk":  # FT-Top2 on a tied OPT: the LM head (the shared embedding) and the final norm
        final_norm = {"model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"}
        assert trainable == {"model.decoder.embed_tokens.weight"} | final_norm
    if scheme == "lora":
        assert all("lora_" in n for n in trainable)


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()
BASE = ["train", "--limit", "8", "--epochs", "1", "--max-input-length", "32", "--max-target-length", "12", "--no-progress"]


def test_cli_trains_and_writes_the_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, BASE + ["--tiny", "opt", "--rho", "0.7", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "done: 1 epochs" in result.stdout
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoint" / "state.json").is_file()
    again = runner.invoke(app, BASE + ["--tiny", "opt", "--output-dir", str(out)])
    assert again.exit_code == 2 and "already holds a run" in again.stderr


def _bad_inputs(tmp_path):
    wrong_field = tmp_path / "wrong.jsonl"
    wrong_field.write_text(json.dumps({"article": "a b c", "summary": "a"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    schedule = tmp_path / "schedule.txt"
    schedule.write_text("0.5\n1.5\n")
    return {
        "rho zero": (["--tiny", "opt", "--rho", "0"], "(0, 1]"),
        "rho above one": (["--tiny", "opt", "--rho", "1.5"], "(0, 1]"),
        "infeasible rho": (["--tiny", "opt", "--rho", "0.05"], "needs rho >="),
        "bad schedule": (["--tiny", "opt", "--rho-schedule", str(schedule)], "entry 1"),
        "unknown scheme": (["--tiny", "opt", "--scheme", "sparse"], "unknown scheme 'sparse'"),
        "unknown tiny": (["--tiny", "gpt5"], "unknown tiny architecture"),
        "unknown model": (["--model", str(tmp_path / "no-such-model")], str(tmp_path / "no-such-model")),
        "missing data": (["--tiny", "opt", "--data", str(tmp_path / "missing.jsonl")], "no such file"),
        "wrong field": (["--tiny", "opt", "--data", str(wrong_field)], "missing field 'source'"),
        "empty data": (["--tiny", "opt", "--data", str(empty)], "no examples"),
        "nothing to resume": (["--tiny", "opt", "--resume", str(tmp_path)], "no checkpoint"),
        "no model": ([], "exactly one of --tiny"),
    }


@pytest.mark.parametrize(
    "case",
    ["rho zero", "rho above one", "infeasible rho", "bad schedule", "unknown scheme", "unknown tiny",
     "unknown model", "missing data", "wrong field", "empty data", "nothing to resume", "no model"],
)
def test_cli_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "run"
    result = runner.invoke(app, BASE + args + ["--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_runtime_rho_at_or_below_the_minimum_trains_the_cheapest_step(tmp_path):
    """A daemon may hand out exactly the profile's minimum ρ (or less): the epoch still trains."""
    import numpy as np

    from gt_core.data.embedded_task import embedded_task
    from gt_core.rho.sources import CallableRho
    from gt_core.models.tiny import tiny_model
    from gt_core.data.tokenizer import build_tokenizer
    from gt_core.training.trainer import GreenTrainer, TrainConfig

    tok = build_tokenizer()
    train, val = embedded_task(16, 4)
    model = tiny_model("opt", vocab_size=len(tok), hidden=32, tie_word_embeddings=False)
    holder = {}
    source = CallableRho(lambda epoch, step: holder["min_rho"] if epoch == 0 else 0.01)
    cfg = TrainConfig(scheme="green", lr=1e-3, epochs=2, batch_size=4, output_dir=str(tmp_path / "run"))
    trainer = GreenTrainer(model, tok, train, val, cfg, rho_source=source)
    holder["min_rho"] = trainer.min_rho
    records = trainer.train()
    assert len(records) == 2
    for r in records:
        assert r.tensors_selected >= 1
        assert r.rho_effective <= trainer.min_rho * (1 + 1e-6)
    assert np.isfinite(records[-1].train_loss)


def test_extending_a_finished_run_recomputes_the_lr_schedule_instead_of_training_at_lr_zero(tmp_path, tokenizer, task):
    first = _trainer(tmp_path, tokenizer, task, epochs=1, save_final=False, rho=0.8)
    first.train()
    assert first.optimizer.param_groups[0]["lr"] == 0.0  # a finished linear schedule ends at 0
    extended = _trainer(tmp_path, tokenizer, task, epochs=2, save_final=False, rho=0.8)
    extended.resume(tmp_path / "run")
    steps = extended.steps_per_epoch
    assert extended.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * steps / (2 * steps))
    assert "recomputed over" in extended.resume_note
    before = {n: p.detach().clone() for n, p in extended.model.named_parameters()}
    records = extended.train()
    assert records[1].param_share_selected > 0.05
    assert records[1].fallback is None  # importance was not all zero
    assert any(not torch.equal(before[n], p) for n, p in extended.model.named_parameters())


def test_a_plain_resume_keeps_the_checkpoint_lr(tmp_path, tokenizer, task):
    first = _trainer(tmp_path, tokenizer, task, epochs=2, save_final=False, rho=0.8)
    first.config.epochs = 1  # stop after one epoch of a two-epoch schedule
    first.train()
    lr_saved = first.optimizer.param_groups[0]["lr"]
    resumed = _trainer(tmp_path, tokenizer, task, epochs=2, save_final=False, rho=0.8)
    resumed.resume(tmp_path / "run")
    assert resumed.optimizer.param_groups[0]["lr"] == lr_saved and resumed.resume_note is None


def test_same_seed_same_numbers_with_dropout_whatever_ran_before(tmp_path, tokenizer, task):
    def run(seed: int, noise_before: int) -> list[float]:
        model = tiny_model("gpt2", vocab_size=len(tokenizer), hidden=32, layers=1)  # GPT-2 keeps dropout 0.1
        assert model.config.resid_pdrop > 0
        torch.manual_seed(noise_before)  # the process's RNG state before training differs between runs
        config = TrainConfig(
            epochs=1, lr=1e-3, batch_size=4, importance_batches=1, max_input_length=32, max_target_length=12,
            output_dir=tmp_path / f"run-{seed}-{noise_before}", progress=False, save_final=False, rho=0.8, seed=seed,
        )
        records = GreenTrainer(model, tokenizer, task[0], task[1], config).train()
        return [records[0].train_loss, records[0].val_loss]

    assert run(0, noise_before=1) == run(0, noise_before=2)
    assert run(0, noise_before=1) != run(3, noise_before=1)


def test_epoch_line_reports_a_selection_fallback_and_a_daemon_fallback():
    from gt_core.training.trainer import format_epoch_record
    from gt_core.training.records import EpochRecord

    record = EpochRecord(
        epoch=0, scheme="green", rho_asked=0.5, rho_effective=0.49, tensors_selected=1, param_share_selected=0.0,
        flops_forward=1.0, flops_backward=1.0, flops_full=4.0, wall_s=1.0, importance_s=0.1, dp_s=0.0,
        train_loss=1.0, val_loss=None, steps=1, selections=1, rho_source="daemon-fallback",
        fallback="no tensor had positive finite importance",
    )
    line = format_epoch_record(record)
    assert line.startswith("epoch 0: ")
    assert "[daemon unreachable: fallback rho]" in line
    assert "[selection fallback: no tensor had positive finite importance]" in line
