"""Each op's reply from a real daemon has the shape its type in carbonsched.protocol declares, and
DaemonClient's typed methods return it."""

from __future__ import annotations

import os
import time
import typing

import pytest

from carbonsched.client import DaemonClient
from carbonsched.protocol import OPS, REPLIES, JobPlan, JobRow, StatusDecision, StatusIntensity, StatusJob, StatusPolicy

from daemon_helpers import configured_daemon, short_dir, wait_until

ENVELOPE = {"v", "ok", "id"}


def shape_problems(reply: typing.Mapping[str, object], reply_type: type, where: str) -> list[str]:
    """Keys ``reply`` lacks or has beyond ``reply_type``'s declaration (the envelope aside)."""
    declared = reply_type.__required_keys__ | reply_type.__optional_keys__
    keys = set(reply) - ENVELOPE
    missing, undeclared = reply_type.__required_keys__ - keys, keys - declared
    return ([f"{where}: missing {sorted(missing)}"] if missing else []) + (
        [f"{where}: undeclared {sorted(undeclared)}"] if undeclared else [])


def test_every_op_has_a_reply_type():
    assert set(REPLIES) == set(OPS)
    assert all(typing.is_typeddict(reply_type) for reply_type in REPLIES.values())


@pytest.fixture(scope="module")
def daemon():
    with short_dir() as d:
        with configured_daemon(d, "partition_gpus = 2\n") as proc:
            yield proc


def test_replies_from_a_real_daemon_match_their_types(daemon):
    problems: list[str] = []
    with DaemonClient(daemon.socket, timeout_s=10.0) as client:
        assert wait_until(lambda: client.status()["intensity"] is not None, 30)
        job_id = client.job_start("opt-125m", "green", devices=["cpu"])
        assert job_id is not None
        replies: dict[str, typing.Mapping[str, object] | None] = {
            "ping": client.ping(),
            "rho": client.rho_reply(job_id),
            "job.start": client.call("job.start", model="opt-125m", scheme="green", pid=os.getpid(), job_id=job_id),
            "epoch.start": client.epoch_start(job_id, 0, 0.5),
            "epoch.end": client.epoch_end(job_id, 0, 0.5, 0.5, wall_s=0.2, train_loss=1.5),
            "status": client.status(),
            "jobs": client.jobs(limit=5),
            "job.end": client.job_end(job_id),
            "override": client.override(0.7, ttl_s=60.0),
            "reload": client.reload(),
        }
        submitted = client.plan_submit(deadline=time.time() + 6 * 3600, epochs=2.0, epoch_seconds=600.0)
        replies["plan.submit"] = submitted
        replies["plan.bind"] = client.plan_bind(submitted["plan_id"], "4242")
        assert client.override(None)["override"] is None
    assert set(replies) == set(OPS)
    for op, reply in replies.items():
        assert reply is not None, op
        problems += shape_problems(reply, REPLIES[op], op)
    status = replies["status"]
    problems += shape_problems(status["intensity"], StatusIntensity, "status.intensity")
    problems += shape_problems(status["policy"], StatusPolicy, "status.policy")
    problems += shape_problems(status["last_decision"], StatusDecision, "status.last_decision")
    problems += [p for job in status["jobs_running"] for p in shape_problems(job, StatusJob, "status.jobs_running")]
    problems += [p for job in replies["jobs"]["jobs"] for p in shape_problems(job, JobRow, "jobs.jobs")]
    assert problems == []


def test_a_deadline_jobs_plan_in_the_jobs_reply_matches_its_type(daemon):
    with DaemonClient(daemon.socket, timeout_s=10.0) as client:
        reply = client.call("job.start", model="m", scheme="green", pid=os.getpid(), deadline=time.time() + 3600,
                            epochs=2.0, epoch_seconds=60.0)
        job_id = reply["job_id"]
        try:
            def current_row() -> JobRow:
                (found,) = [j for j in client.jobs()["jobs"] if j["job_id"] == job_id]
                return found

            assert wait_until(lambda: current_row()["plan"] is not None, 30)
            row = current_row()
            assert shape_problems(row, JobRow, "jobs.jobs") == []
            assert shape_problems(row["plan"], JobPlan, "jobs.jobs.plan") == []
        finally:
            client.job_end(job_id)
