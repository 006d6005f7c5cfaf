"""Helpers for tests that start several training processes: free ports, a clean launcher
environment, and the 2-process torchrun / ``accelerate launch`` command the docs give."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The launcher flags docs/scaling.md gives for 2 processes (gloo on a CPU-only machine).
ACCELERATE_FLAGS = "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    """This process's environment without a launcher's rank variables, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch(launcher: str, target: list[str], out: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """2 processes of ``target`` (a script and its arguments, or ``-m module ...``) with cwd and
    HF_HOME under ``out``: no user accelerate config is read."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**launch_env(), "HF_HOME": str(out / "hf_home"), **extra_env}
    env.pop("MASTER_ADDR", None)
    port = str(free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]
    else:
        cmd = [str(BIN / "accelerate"), "launch", *ACCELERATE_FLAGS.split(), "--main_process_port", port]
    return subprocess.run([*cmd, *target], env=env, capture_output=True, text=True, timeout=120, cwd=out)
