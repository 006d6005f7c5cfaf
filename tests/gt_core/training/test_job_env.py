"""What a trainer reads from its environment: the GPUs Slurm gave it, its Slurm job, and the
declaration `carbonsched sbatch` handed it."""

from __future__ import annotations

import pytest

from carbonsched.protocol import JOB_DECLARATION_ENV, encode_job_declaration
from gt_core.training.job_env import cgroup_gpus, declaration_from_env, devices_from_env, slurm_job_fields, slurm_job_name


def no_cgroup() -> list[str]:
    raise AssertionError("the cgroup is read only when nothing else names the GPUs")


def test_slurm_job_gpus_win_over_a_renumbered_cuda_visible_devices():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert devices_from_env(env, cgroup=no_cgroup) == ["2", "3"]


def test_cuda_visible_devices_outside_slurm_or_without_slurm_gpus():
    assert devices_from_env({"CUDA_VISIBLE_DEVICES": "0, 2"}, cgroup=no_cgroup) == ["0", "2"]
    assert devices_from_env({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "GPU-1"}, cgroup=no_cgroup) == ["GPU-1"]
    assert devices_from_env({"SLURM_JOB_GPUS": "1"}, cgroup=no_cgroup) == []  # not in a Slurm job: stale


def test_the_cgroup_device_list_names_the_gpus_of_a_slurm_job_when_nothing_else_does():
    assert devices_from_env({"SLURM_JOB_ID": "7"}, cgroup=lambda: ["1"]) == ["1"]
    assert devices_from_env({}, cgroup=no_cgroup) == []


def test_cgroup_v1_device_list_gives_the_nvidia_minors_below_the_control_device(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("12:memory:/slurm/uid_0/job_7\n4:devices:/slurm/uid_0/job_7/step_batch\n")
    listing = tmp_path / "fs" / "devices" / "slurm" / "uid_0" / "job_7" / "step_batch" / "devices.list"
    listing.parent.mkdir(parents=True)
    listing.write_text("c 1:3 rwm\nc 195:3 rw\nc 195:1 rw\nc 195:255 rw\nb 195:0 r\nc 195:254 rwm\n")
    assert cgroup_gpus(proc, tmp_path / "fs") == ["1", "3", "254"]
    assert cgroup_gpus(tmp_path / "missing", tmp_path / "fs") == []
    proc.write_text("0::/user.slice\n")  # cgroup v2: no device list
    assert cgroup_gpus(proc, tmp_path / "fs") == []


def test_slurm_job_fields_and_name():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    assert slurm_job_fields(env) == {"slurm_job_id": "42", "slurm_nodes": "gpu[01-02]"}
    assert slurm_job_name(env) == "slurm-42"
    assert slurm_job_fields({}) == {} and slurm_job_name({}) is None


def test_declaration_round_trip_and_bad_values_named():
    declared = {"deadline": 1.9e9, "epochs": 4.0, "epoch_seconds": 1800.0, "rho_min": None, "mean_rho": 0.7,
                "may_pause": True}
    env = {JOB_DECLARATION_ENV: encode_job_declaration(declared)}
    assert declaration_from_env(env) == {k: v for k, v in declared.items() if v is not None}
    assert declaration_from_env({}) == {}
    for text, named in (('{"deadline": 1.9e9, "epochs": -1}', "'epochs'"), ("[1]", "JSON object"),
                        ('{"deadline": 1.9e9}', "'deadline' and 'epochs'"), ('{"colour": 1}', "'colour'"),
                        ("{", "JSON object"), ('{"deadline": 1.9e9, "epochs": 2, "mean_rho": NaN}', "NaN")):
        with pytest.raises(ValueError, match=JOB_DECLARATION_ENV) as caught:
            declaration_from_env({JOB_DECLARATION_ENV: text})
        assert named in str(caught.value), text


def test_a_daemon_rho_source_in_a_slurm_job_declares_what_carbonsched_sbatch_planned(monkeypatch):
    from gt_core.rho.daemon_source import DaemonRhoSource

    declared = {"deadline": 1.9e9, "epochs": 3.0, "epoch_seconds": 600.0, "mean_rho": 0.7, "may_pause": True,
                "release_after_s": 900.0}
    for name, value in {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_GPUS": "3",
                        "CUDA_VISIBLE_DEVICES": "0", JOB_DECLARATION_ENV: encode_job_declaration(declared)}.items():
        monkeypatch.setenv(name, value)
    source = DaemonRhoSource("/nonexistent.sock", model_name="m", scheme="green")
    assert source.job_id == "slurm-42" and source.devices == ["3"] and source.may_pause
    assert source.job_fields == {**declared, "slurm_job_id": "42", "slurm_nodes": "n1"}
    given = DaemonRhoSource("/nonexistent.sock", model_name="m", scheme="green", job_id="mine", deadline_s=2e9,
                            epochs=1)
    assert given.job_id == "mine" and given.job_fields["deadline"] == 2e9 and "mean_rho" not in given.job_fields
