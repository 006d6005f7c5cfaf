"""The plans a daemon hands out to `carbonsched sbatch --socket`, re-planned together at each submission."""

from __future__ import annotations

import pytest

from carbonsched.config import ConfigError, parse_config
from carbonsched.config import DaemonConfig
from carbonsched.planning import CostModel, Job, Slot
from carbonsched.planning.submitted_plans import SubmittedPlans

HOUR_S = 3600.0
NOW_S = 1_800_000_000.0
# Dirty for 10 min, clean for an hour, then dirtier than now.
SLOTS = [Slot(0, 600, 600.0), Slot(600, 600 + HOUR_S, 100.0), Slot(600 + HOUR_S, 20 * HOUR_S, 700.0)]
COST = CostModel(epoch_s_at_full=HOUR_S, running_power_w=300.0)
LOW_POWER = CostModel(epoch_s_at_full=HOUR_S, running_power_w=200.0)
HIGH_POWER = CostModel(epoch_s_at_full=HOUR_S, running_power_w=400.0)


def slots_until(horizon_s: float) -> list[Slot]:
    return [Slot(s.start_s, min(s.end_s, horizon_s), s.intensity_g_per_kwh) for s in SLOTS if s.start_s < horizon_s]


def test_a_second_job_that_needs_the_clean_hour_moves_the_first_bound_one_out_of_it():
    """One GPU: the clean hour is worth more to the second job (more power, a tight deadline); the
    first, bound to Slurm job 101, moves to the dirty minutes now and the hour after."""
    plans = SubmittedPlans()
    loose = plans.submit(Job(epochs=1, deadline_s=10 * HOUR_S, rho_min=1.0, may_pause=True), LOW_POWER, NOW_S,
                         slots_until, 1)
    assert loose.begin_s == NOW_S + 600 and loose.moved == ()
    assert plans.bind(loose.plan_id, "101") and not plans.bind("nope", "102")
    tight = plans.submit(Job(epochs=1, deadline_s=80 * 60, rho_min=1.0, may_pause=True), HIGH_POWER, NOW_S + 10,
                         slots_until_from(10), 1)
    assert tight.begin_s == pytest.approx(NOW_S + 600) and tight.feasible
    ((slurm_job_id, begin_s),) = tight.moved
    assert slurm_job_id == "101" and begin_s == pytest.approx(NOW_S + 10)
    assert len(plans) == 2


def test_with_two_gpus_both_keep_the_clean_hour():
    plans = SubmittedPlans()
    first = plans.submit(Job(epochs=1, deadline_s=10 * HOUR_S, rho_min=1.0, may_pause=True), COST, NOW_S, slots_until, 2)
    plans.bind(first.plan_id, "101")
    second = plans.submit(Job(epochs=1, deadline_s=80 * 60, rho_min=1.0, may_pause=True), COST, NOW_S, slots_until, 2)
    assert first.begin_s == second.begin_s == NOW_S + 600 and second.moved == ()


def test_partition_gpus_in_the_config(tmp_path):
    path = tmp_path / "c.toml"
    assert parse_config({"partition_gpus": 8}, path, DaemonConfig()).partition_gpus == 8
    for bad in (0, 2.5, "8"):
        with pytest.raises(ConfigError, match="partition_gpus"):
            parse_config({"partition_gpus": bad}, path, DaemonConfig())


def slots_until_from(offset_s: float):
    """SLOTS seen ``offset_s`` later."""
    def slots(horizon_s: float) -> list[Slot]:
        shifted = [Slot(max(0.0, s.start_s - offset_s), s.end_s - offset_s, s.intensity_g_per_kwh)
                   for s in SLOTS if s.end_s > offset_s]
        return [Slot(s.start_s, min(s.end_s, horizon_s), s.intensity_g_per_kwh) for s in shifted if s.start_s < horizon_s]
    return slots


def test_plan_submit_over_the_socket_needs_partition_gpus_and_a_sane_declaration():
    import time

    from carbonsched.daemon.lifecycle import Daemon
    from daemon_helpers import LineConn, short_dir, wait_until

    with short_dir() as d:
        for gpus in (None, 2):
            config = DaemonConfig(socket=d / f"cs{gpus}.sock", state_dir=d / f"state{gpus}", provider="static:DEU",
                                  partition_gpus=gpus)
            daemon = Daemon(config, meter_factory=lambda: None)
            daemon.start()
            try:
                conn = LineConn(config.socket)
                deadline = time.time() + 8 * HOUR_S
                answers = []

                def answered() -> bool:  # "unavailable" until the daemon's first reading
                    answers.append(conn.ask(op="plan.submit", deadline=deadline, epochs=2, epoch_seconds=HOUR_S))
                    return answers[-1]["ok"] or answers[-1]["error"]["code"] != "unavailable"

                assert wait_until(answered, timeout_s=30)
                reply = answers[-1]
                if gpus is None:
                    assert not reply["ok"] and "partition_gpus" in reply["error"]["message"]
                    continue
                assert reply["ok"] and reply["gpus"] == 2 and reply["feasible"], reply
                assert reply["begin_s"] == pytest.approx(time.time(), abs=60)  # a flat forecast: now
                bad = conn.ask(op="plan.submit", deadline=time.time() - 10, epochs=2, epoch_seconds=HOUR_S)
                assert not bad["ok"] and bad["error"]["code"] == "bad_request" and "deadline" in bad["error"]["message"]
                far = conn.ask(op="plan.submit", deadline=time.time() + 1e9, epochs=2, epoch_seconds=HOUR_S)
                assert not far["ok"] and "days ahead" in far["error"]["message"]
                mixed = conn.ask(op="plan.submit", deadline=deadline, epochs=2, epoch_seconds=HOUR_S, rho_min=0.8,
                                 mean_rho=0.5)
                assert not mixed["ok"] and "mean_rho" in mixed["error"]["message"]
                bind = conn.ask(op="plan.bind", plan_id="nope", slurm_job_id="1")
                assert not bind["ok"] and "unknown plan_id" in bind["error"]["message"]
                assert conn.ask(op="plan.bind", plan_id=reply["plan_id"], slurm_job_id="7")["ok"]
                conn.close()
            finally:
                daemon.stop()
