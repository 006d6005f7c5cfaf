"""`greentrainer train`'s pure validate step, and the DeadlineJob it hands on to the wire.

Validation takes one value per option and returns a frozen TrainOptions or the same one-line
usage error the command prints; it creates no file and asks no daemon. The deadline job it builds
travels as the same job.start fields as before, and a raw job.start as an older client writes it
is still stored field by field.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from carbonsched.protocol import DECLARATION_FIELDS, DeadlineJob
from daemon_helpers import LineConn
from gt_core.cli import app as greentrainer_app
from gt_core.commands.train_options import OPTION_NAMES, TrainOptions, TrainOptionsError, validate_train_options
from gt_core.rho.daemon_source import DaemonRhoSource
from inprocess_daemon import inprocess_daemon

DEADLINE_UNIX_S = 1_772_388_000.0  # 2026-03-01T18:00Z


def _train_params() -> dict:
    """Every `greentrainer train` option at its default, as the command's parser gives them."""
    command = typer.main.get_command(greentrainer_app).commands["train"]
    context = command.make_context("train", [], resilient_parsing=True)
    return dict(context.params)


def _given(tmp_path: Path, **overrides) -> dict:
    return {**_train_params(), "tiny": "opt", "output_dir": tmp_path / "run", **overrides}


def test_the_options_object_has_one_field_per_command_option():
    assert set(OPTION_NAMES) == set(_train_params())


def test_valid_options_become_a_frozen_typed_value(tmp_path):
    options = validate_train_options(_given(tmp_path, reselect="8", rho=0.3, report_to=["none"]))
    assert isinstance(options, TrainOptions)
    assert options.reselect_every == 8 and options.budget_rho == 0.3 and options.output_dir == tmp_path / "run"
    assert options.report_to == ("none",) and options.deadline_job is None and options.daemon_socket is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 3  # type: ignore[misc]
    assert validate_train_options(_given(tmp_path)).budget_rho == 0.5  # the default ρ


def test_a_daemon_job_with_a_deadline_is_one_deadline_job(tmp_path):
    options = validate_train_options(_given(
        tmp_path, rho_from="daemon:/run/x.sock", deadline="2026-03-01T18:00Z", epochs=3, epoch_seconds=600.0,
        rho_min=0.4, mean_rho=0.7, may_pause=True, release_after_s=900.0, job_id="job-1"))
    assert options.daemon_socket == "/run/x.sock"
    assert options.deadline_job == DeadlineJob(
        deadline_unix_s=DEADLINE_UNIX_S, epochs=3, epoch_s_at_full_rho=600.0, rho_min=0.4, mean_rho=0.7,
        may_pause=True, release_after_s=900.0)


BAD_COMBINATIONS = [
    ({"output_dir": None}, "give --output-dir DIR (or output-dir in --config)"),
    ({"model": "gpt2"}, "give exactly one of --tiny ARCH or --model NAME_OR_PATH"),
    ({"device_map": "auto"}, "--device-map applies to a pretrained --model only"),
    ({"strategy": "zero3"}, "--strategy must be one of ddp, fsdp, got 'zero3'"),
    ({"fsdp_cpu_offload": True}, "--fsdp-wrap and --fsdp-cpu-offload apply to --strategy fsdp only"),
    ({"tiny": "gpt9"}, "unknown tiny architecture 'gpt9'"),
    ({"scheme": "half"}, "unknown scheme 'half'"),
    ({"rho": 0.5, "rho_schedule": Path("s.json")}, "give --rho or --rho-schedule, not both"),
    ({"rho_from": "daemon", "rho_schedule": Path("s.json")}, "give --rho-from or --rho-schedule, not both"),
    ({"deadline": "2026-03-01T18:00Z"}, "--deadline needs --rho-from daemon (the daemon plans the job)"),
    ({"daemon_optional": True}, "--daemon-optional needs --rho-from daemon"),
    ({"job_id": "j"}, "--job-id needs --rho-from daemon"),
    ({"rho_from": "http://x"}, "--rho-from must be 'daemon' or 'daemon:SOCKET', got 'http://x'"),
    ({"rho": 1.5}, "--rho must be in (0, 1], got 1.5"),
    ({"rho_from": "daemon", "job_id": "a b"}, "--job-id 'a b': use 1-64 letters"),
    ({"rho_from": "daemon", "may_pause": True}, "plan a job with a --deadline; give one"),
    ({"rho_from": "daemon", "deadline": "soon"}, "--deadline 'soon' is neither a duration"),
    ({"rho_from": "daemon", "deadline": "2026-03-01T18:00Z", "rho_min": 0.0}, "--rho-min must be in (0, 1], got 0.0"),
    ({"rho_from": "daemon", "deadline": "2026-03-01T18:00Z", "epoch_seconds": -1.0}, "--epoch-seconds must be positive"),
    ({"rho_from": "daemon", "deadline": "2026-03-01T18:00Z", "rho_min": 0.6, "mean_rho": 0.5},
     "--mean-rho 0.5 must be at least --rho-min 0.6"),
    ({"lr": 0.0}, "--lr must be positive, got 0.0"),
    ({"reselect": "often"}, "--reselect must be 'epoch', 'on_change' or a number of steps, got 'often'"),
    ({"reselect": "0"}, "--reselect needs a positive number of steps, got 0"),
    ({"importance_metric": "loss"}, "unknown --importance-metric 'loss'; choose dw_grad, dw or grad"),
]


@pytest.mark.parametrize("overrides, message", BAD_COMBINATIONS)
def test_a_bad_combination_is_one_line_naming_the_option_and_creates_nothing(tmp_path, overrides, message):
    given = _given(tmp_path, **overrides)
    with pytest.raises(TrainOptionsError) as caught:
        validate_train_options(given)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--reselect", "often"], "--reselect must be 'epoch', 'on_change' or a number of steps, got 'often'"),
    (["--rho-from", "daemon:/nonexistent.sock", "--deadline", "2026-03-01T18:00Z", "--rho-min", "0.6",
      "--mean-rho", "0.5"], "--mean-rho 0.5 must be at least --rho-min 0.6"),
])
def test_the_command_prints_the_validation_error_and_exits_2(tmp_path, flags, message):
    result = CliRunner().invoke(greentrainer_app, ["train", "--tiny", "opt", *flags, "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output == f"error: {message}\n", result.output
    assert list(tmp_path.iterdir()) == []


def test_a_deadline_job_checks_its_fields_once_as_job_start_does():
    for fields, message in ((dict(deadline_unix_s=DEADLINE_UNIX_S), "'deadline' and 'epochs' go together"),
                            (dict(rho_min=1.5), "field 'rho_min' must be a number in (0, 1]"),
                            (dict(epochs=2.0, deadline_unix_s=-1.0), "field 'deadline' must be a finite number > 0")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            DeadlineJob(**fields)


def test_the_daemon_source_sends_a_deadline_job_as_the_same_fields_as_before():
    job = DeadlineJob(deadline_unix_s=DEADLINE_UNIX_S, epochs=3, epoch_s_at_full_rho=600.0, rho_min=0.4,
                      may_pause=True, release_after_s=900.0)
    typed = DaemonRhoSource("/nonexistent/cs.sock", model_name="m", scheme="green", deadline_job=job)
    loose = DaemonRhoSource("/nonexistent/cs.sock", model_name="m", scheme="green", deadline_s=DEADLINE_UNIX_S,
                            epochs=3, epoch_seconds=600.0, rho_min=0.4, may_pause=True, release_after_s=900.0)
    assert typed.job_fields == loose.job_fields == {
        "deadline": DEADLINE_UNIX_S, "epochs": 3, "epoch_seconds": 600.0, "rho_min": 0.4, "may_pause": True,
        "release_after_s": 900.0}
    assert typed.supports_pause and DeadlineJob.from_wire(typed.job_fields) == job
    with pytest.raises(ValueError, match="not both"):
        DaemonRhoSource("/nonexistent/cs.sock", model_name="m", scheme="green", deadline_job=job, epochs=3)


def test_a_raw_job_start_as_an_older_client_sends_it_is_stored_field_by_field():
    with inprocess_daemon() as running:
        conn = LineConn(running.daemon.config.socket)
        try:
            reply = conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="old-client",
                             deadline="2026-03-01T18:00Z", epochs=3, epoch_seconds=600, rho_min=0.4, mean_rho=0.7,
                             may_pause=True, release_after_s=900)
            refused = conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="bad",
                               deadline=DEADLINE_UNIX_S, epochs=3, rho_min=0.8, mean_rho=0.5)
        finally:
            conn.close()
        assert reply["ok"], reply
        assert refused["error"] == {"code": "bad_request", "message": "job.start: field 'mean_rho' must be at least 'rho_min'"}
        with running.store() as store:
            job = store.job("old-client")
    stored = {name: job[name] for name in DECLARATION_FIELDS}
    assert stored == {"deadline": DEADLINE_UNIX_S, "epochs": 3.0, "epoch_seconds": 600.0, "rho_min": 0.4,
                      "mean_rho": 0.7, "may_pause": True, "release_after_s": 900.0}
