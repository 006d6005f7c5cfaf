"""When a planned pause requeues a Slurm job (the Slurm calls themselves: tests/carbonsched/slurm/test_slurm.py)."""

from __future__ import annotations

import threading

from carbonsched.slurm.slurm_cli import admin_comment, parse_job_id, relative_time, sbatch_command
from carbonsched.slurm.release import DEFAULT_RELEASE_AFTER_S, PauseReleaser, releases_for

NOW_S = 1_800_000_000.0
JOB = {"job_id": "slurm-7", "slurm_job_id": "7", "may_pause": 1, "rank": None, "release_after_s": 600.0}


def test_only_a_pausable_slurm_job_paused_longer_than_its_release_after_is_released():
    assert releases_for(JOB, NOW_S + 601, NOW_S)
    assert not releases_for(JOB, NOW_S + 600, NOW_S)
    assert not releases_for(JOB, None, NOW_S)
    assert not releases_for({**JOB, "slurm_job_id": None}, NOW_S + 3600, NOW_S)
    assert not releases_for({**JOB, "may_pause": 0}, NOW_S + 3600, NOW_S)
    assert not releases_for({**JOB, "rank": 1}, NOW_S + 3600, NOW_S)  # only rank 0's daemon
    undeclared = {**JOB, "release_after_s": None}
    assert not releases_for(undeclared, NOW_S + DEFAULT_RELEASE_AFTER_S, NOW_S)
    assert releases_for(undeclared, NOW_S + DEFAULT_RELEASE_AFTER_S + 1, NOW_S)


def test_a_job_whose_requeue_failed_is_not_tried_again_and_keeps_no_released_pause(monkeypatch, tmp_path):
    # A real scontrol (or none at all) with a slurm.conf that names no cluster: the requeue fails.
    (tmp_path / "slurm.conf").write_text("ClusterName=none\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    releaser = PauseReleaser(clock=lambda: NOW_S)
    assert releaser.consider([JOB], {"slurm-7": NOW_S + 3600}) == ["slurm-7"]
    for thread in threading.enumerate():
        if thread.name == "slurm-requeue-7":
            thread.join(timeout=60)
    assert releaser.released_until("slurm-7") is None
    assert releaser.consider([JOB], {"slurm-7": NOW_S + 3600}) == []  # not again for this part of the job
    assert not releaser.came_back("slurm-7")
    assert releaser.consider([JOB], {"slurm-7": NOW_S + 3600}) == ["slurm-7"]  # a new part may be released


def test_sbatch_command_and_record_format():
    command = sbatch_command(["-p", "gpu", "job.sh", "x"], begin_in_s=29.2, deadline_in_s=3600)
    assert command == ["sbatch", "--parsable", "--begin=now+30", "--deadline=now+3600", "-p", "gpu", "job.sh", "x"]
    assert relative_time(-5) == "now+0"
    assert parse_job_id("123\n") == "123" and parse_job_id("45;cluster\n") == "45"
    assert admin_comment(0.0123456789, 5.5) == "carbonsched:energy_kwh=0.0123457,carbon_gco2e=5.5"
    assert " " not in admin_comment(1e-9, 1e9)


def test_a_users_export_list_still_carries_the_declaration():
    from carbonsched.slurm.slurm_cli import exporting

    assert exporting(["-p", "gpu", "job.sh", "--export=X"], "CJ") == ["-p", "gpu", "job.sh", "--export=X"]
    assert exporting(["-p", "gpu", "--export=NONE", "--requeue", "job.sh"], "CJ") == [
        "-p", "gpu", "--export=CJ", "--requeue", "job.sh"]
    assert exporting(["--export=NONE", "job.sh"], "CJ") == ["--export=CJ", "job.sh"]
    assert exporting(["--export=HOME,PATH=/bin", "job.sh"], "CJ") == ["--export=HOME,PATH=/bin,CJ", "job.sh"]
    assert exporting(["--export=ALL,X=1", "job.sh"], "CJ") == ["--export=ALL,X=1", "job.sh"]
    assert exporting(["--export=CJ", "job.sh"], "CJ") == ["--export=CJ", "job.sh"]


def test_sbatch_options_and_the_script_are_told_apart():
    from carbonsched.slurm.slurm_cli import split_sbatch_args

    assert split_sbatch_args(["-p", "gpu", "--requeue", "--time", "10", "-c2", "job.sh", "--deadline", "x"]) == (
        ["-p", "gpu", "--requeue", "--time", "10", "-c2"], ["job.sh", "--deadline", "x"])
    assert split_sbatch_args(["--gres=gpu:1", "--", "job.sh"]) == (["--gres=gpu:1"], ["job.sh"])
    assert split_sbatch_args(["-o", "out"]) == (["-o", "out"], [])
