"""What the environment says about the job a trainer runs in: its GPUs, its Slurm job, and the
deadline declaration ``carbonsched sbatch`` handed it.

GPUs, as the daemon on the node must name them (node-wide ordinals, UUIDs or MIG ids):

1. ``SLURM_JOB_GPUS`` in a Slurm job: Slurm's node-wide indices of the GPUs it allocated. Inside
   a job whose devices are constrained by cgroups ``CUDA_VISIBLE_DEVICES`` is renumbered from 0,
   so it would name another job's GPUs on a shared node;
2. else ``CUDA_VISIBLE_DEVICES``;
3. else, in a Slurm job, the NVIDIA devices its cgroup (v1) allows (``devices.list``: character
   major 195, minors below 255 are GPU ordinals);
4. else none: the daemon counts every GPU of the node.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from carbonsched.protocol import JOB_DECLARATION_ENV, decode_job_declaration

if TYPE_CHECKING:
    from carbonsched.protocol import JsonObject

NVIDIA_MAJOR = 195
NVIDIA_CONTROL_MINOR = 255  # nvidiactl and above are not GPUs

__all__ = ["cgroup_gpus", "declaration_from_env", "devices_from_env", "slurm_job_fields", "slurm_job_name",
           "slurm_restart_count"]


def _split(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def cgroup_gpus(proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """GPU ordinals the process's cgroup v1 device controller allows; [] when it allows all
    devices, when it cannot be read, or under cgroup v2 (no device list to read)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and "devices" in parts[1].split(","):
            try:
                allowed = (cgroup_root / "devices" / parts[2].lstrip("/") / "devices.list").read_text().split("\n")
            except OSError:
                return []
            gpus = []
            for entry in allowed:
                fields = entry.split()
                if len(fields) < 2 or fields[0] != "c":
                    continue
                major, _, minor = fields[1].partition(":")
                if major == str(NVIDIA_MAJOR) and minor.isdigit() and int(minor) < NVIDIA_CONTROL_MINOR:
                    gpus.append(minor)
            return sorted(set(gpus), key=int)
    return []


def devices_from_env(env: Mapping[str, str] | None = None, *, cgroup: Callable[[], list[str]] = cgroup_gpus) -> list[str]:
    """The job's GPUs (see the module docstring for the order); ``cgroup`` reads the device list."""
    env = os.environ if env is None else env
    in_slurm = "SLURM_JOB_ID" in env
    if in_slurm and env.get("SLURM_JOB_GPUS", "").strip():
        return _split(env["SLURM_JOB_GPUS"])
    if "CUDA_VISIBLE_DEVICES" in env:
        return _split(env["CUDA_VISIBLE_DEVICES"])
    return list(cgroup()) if in_slurm else []


def slurm_job_fields(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``slurm_job_id`` and ``slurm_nodes`` for ``job.start`` in a Slurm job; {} outside one."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST", "").strip() or env.get("SLURMD_NODENAME", "").strip()
    return {"slurm_job_id": job_id, **({"slurm_nodes": nodes} if nodes else {})}


def slurm_restart_count(env: Mapping[str, str] | None = None) -> int:
    """How often Slurm has requeued this job (``SLURM_RESTART_COUNT``); 0 outside Slurm or when unreadable."""
    text = (os.environ if env is None else env).get("SLURM_RESTART_COUNT", "").strip()
    return int(text) if text.isdigit() else 0


def slurm_job_name(env: Mapping[str, str] | None = None) -> str | None:
    """The daemon job id of a Slurm job, ``slurm-<SLURM_JOB_ID>``: the same in every part of a
    requeued job and on every node. None outside Slurm."""
    fields = slurm_job_fields(env)
    return f"slurm-{fields['slurm_job_id']}" if fields else None


def declaration_from_env(env: Mapping[str, str] | None = None) -> JsonObject:
    """The declaration ``carbonsched sbatch`` put in :data:`~carbonsched.protocol.JOB_DECLARATION_ENV`
    (``deadline`` in unix s, ``epochs``, ...); {} when unset. ValueError naming the variable and
    field when it cannot be used."""
    text = (os.environ if env is None else env).get(JOB_DECLARATION_ENV, "")
    return decode_job_declaration(text) if text.strip() else {}
