"""A job's deadline declaration from `greentrainer train` flags over the wire into the store, pause
intervals in the store, and what stays as it was for jobs and sources that never pause."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timezone

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from carbonsched.client import DaemonClient, pause_until_from
from carbonsched.daemon.metrics import DaemonCollector
from carbonsched.protocol import ProtocolError, decode_request, encode_request
from carbonsched.store import MIGRATIONS, Store
from daemon_helpers import LineConn
from gt_core.cli import app as greentrainer_app
from gt_core.rho.pausing import wait_while_paused
from gt_core.rho.sources import ConstantRho, RhoReading
from gt_core.rho.daemon_source import DaemonRhoSource
from inprocess_daemon import inprocess_daemon

DEADLINE = datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc)


def test_job_start_declaration_fields_are_checked_and_deadlines_read_as_unix_seconds():
    base = dict(model="m", scheme="green", pid=1)
    for written in ("2026-03-01T18:00Z", "2026-03-01T19:00+01:00", "2026-03-01T18:00:00", DEADLINE.timestamp()):
        fields = decode_request(encode_request("job.start", **base, deadline=written, epochs=3)).fields
        assert fields["deadline"] == DEADLINE.timestamp() and fields["epochs"] == 3.0
    for field, value, message in (("deadline", "tomorrow", "ISO 8601"), ("deadline", -5, "> 0"),
                                  ("may_pause", 1, "true or false"), ("mean_rho", 1.5, "(0, 1]"),
                                  ("epoch_seconds", 0, "> 0")):
        with pytest.raises(ProtocolError) as caught:
            decode_request(encode_request("job.start", **base, **{field: value}))
        assert f"field '{field}'" in caught.value.message and message in caught.value.message
    with pytest.raises(ProtocolError, match="field 'paused' must be true or false"):
        decode_request(encode_request("rho", job_id="j", paused="yes"))


def test_a_store_of_the_previous_schema_migrates_and_records_pauses(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[:4]) + "PRAGMA user_version = 4;")
    db.execute("INSERT INTO jobs (job_id, model, scheme, started_at) VALUES ('old', 'm', 'green', 1.0)")
    db.commit()
    db.close()
    with Store(path) as store:
        old = store.job("old")
        assert old["deadline"] is None and old["may_pause"] is False and store.pauses("old") == []
        store.declare_job("old", deadline=500.0, epochs=3.0, epoch_seconds=None, rho_min=0.4, mean_rho=0.7, may_pause=True)
        assert store.start_pause("old", 10.0, planned_until=40.0)
        assert not store.start_pause("old", 11.0, planned_until=50.0)  # one open pause at a time
        assert store.end_pause("old", 30.0) and not store.end_pause("old", 31.0)
        assert store.start_pause("old", 60.0, planned_until=None)
        assert store.end_job("old", "completed", 70.0)  # ends the open pause with the job
        job = store.job("old")
        assert (job["deadline"], job["epochs"], job["rho_min"], job["mean_rho"], job["may_pause"]) == (500.0, 3.0, 0.4, 0.7, True)
        assert [(p["started_at"], p["ended_at"], p["planned_until"]) for p in store.pauses("old")] == [
            (10.0, 30.0, 40.0), (60.0, 70.0, None)]


def test_the_daemon_stores_a_declaration_and_refuses_a_deadline_without_epochs():
    with inprocess_daemon() as running:
        conn = LineConn(running.daemon.config.socket)
        try:
            refused = conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="j",
                               deadline="2026-03-01T18:00Z")
            assert refused["error"]["code"] == "bad_request" and "'deadline' and 'epochs' go together" in refused["error"]["message"]
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="plain")["ok"]
            answer = conn.ask(op="rho", job_id="plain")
            assert answer["pause_until"] is None and answer["policy"] != "planner"  # nothing planned
        finally:
            conn.close()
        with running.store() as store:
            assert store.job("j") is None and store.job("plain")["deadline"] is None


def test_daemon_source_sends_the_declaration_and_only_a_pausable_one_is_checked_between_steps():
    source = DaemonRhoSource("/nonexistent/cs.sock", model_name="m", scheme="green", deadline_s=DEADLINE.timestamp(),
                             epochs=3, rho_min=0.4, may_pause=True, pause_poll_s=0.5, timeout_s=0.2)
    assert source.job_fields == {"deadline": DEADLINE.timestamp(), "epochs": 3, "rho_min": 0.4, "may_pause": True}
    assert source.supports_pause
    assert source.check_pause(paused=False) is None  # no daemon: no answer, no pause
    assert wait_while_paused(source, 0, 0) is None
    plain = DaemonRhoSource("/nonexistent/cs.sock", model_name="m", scheme="green")
    assert "deadline" not in plain.job_fields and not plain.supports_pause
    assert wait_while_paused(ConstantRho(0.5), 0, 0) is None
    assert RhoReading(0.5, "constant").pause_until_s is None
    with pytest.raises(ValueError, match="pause_until_s"):
        RhoReading(0.5, "daemon", pause_until_s=float("nan"))


def test_client_reads_pause_until_and_ignores_anything_but_a_number():
    assert pause_until_from(1_772_388_000) == 1_772_388_000.0 and pause_until_from(12.5) == 12.5
    for value in (None, True, "1772388000", float("inf"), [1]):
        assert pause_until_from(value) is None
    with inprocess_daemon() as running:
        client = DaemonClient(running.daemon.config.socket, timeout_s=5)
        answer = client.rho()
        assert answer.source == "daemon" and answer.pause_until_s is None
        client.close()


@pytest.mark.parametrize("flags, expected", [
    (["--deadline", "2026-03-01T18:00Z"], "--deadline needs --rho-from daemon"),
    (["--rho-from", "daemon:/nonexistent.sock", "--deadline", "soon"], "--deadline 'soon' is neither a duration"),
    (["--rho-from", "daemon:/nonexistent.sock", "--deadline", "8h", "--mean-rho", "1.5"],
     "--mean-rho must be in (0, 1]"),  # 8h is a deadline: the options after it are checked
    (["--rho-from", "daemon:/nonexistent.sock", "--may-pause"], "plan a job with a --deadline"),
    (["--rho-from", "daemon:/nonexistent.sock", "--deadline", "2026-03-01T18:00Z", "--mean-rho", "1.5"],
     "--mean-rho must be in (0, 1]"),
])
def test_bad_deadline_options_are_one_line_usage_errors(tmp_path, flags, expected):
    result = CliRunner().invoke(greentrainer_app, ["train", "--tiny", "opt", "--epochs", "1", *flags,
                                                   "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("\n") == 1, result.output


def test_a_planned_job_exports_its_plan_as_metrics_and_lists_it_in_jobs():
    with inprocess_daemon() as running:
        conn = LineConn(running.daemon.config.socket)
        try:
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="d",
                            deadline=time.time() + 7200, epochs=4, epoch_seconds=900, rho_min=0.5, may_pause=True)["ok"]
            (job,) = conn.ask(op="jobs")["jobs"]
            answer = conn.ask(op="rho", job_id="d")
        finally:
            conn.close()
        plan = job["plan"]
        assert plan is not None and answer["policy"] == "planner" and answer["rho"] == plan["rho"]
        assert answer["pause_until"] == plan["pause_until_s"] and plan["work_left_epochs"] == 4
        registry = CollectorRegistry()
        registry.register(DaemonCollector(running.daemon.state))
        samples = {(s.name, s.labels.get("job_id")): s.value
                   for family in text_string_to_metric_families(generate_latest(registry).decode())
                   for s in family.samples}
    assert samples[("carbonsched_job_planned_rho", "d")] == plan["rho"]
    assert samples[("carbonsched_job_paused", "d")] == float(plan["pause_until_s"] is not None)
    assert samples[("carbonsched_job_work_remaining_epochs", "d")] == 4.0
    assert 0 < samples[("carbonsched_job_deadline_slack_seconds", "d")] < 7200 - 4 * 900 * 0.5 + 1
