"""Whether a client's pids are this daemon's view of its processes, or a container's own.

A trainer in a container sends pids of its own pid namespace; NVML lists host pids, so those
never match. The kernel tells the daemon the sender's pid in the daemon's namespace
(SO_PEERCRED); its /proc/PID/ns/pid link names the namespace the sender lives in.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def pid_namespace(pid: int | str, proc_root: Path = PROC) -> str | None:
    """The pid namespace of process ``pid`` ("self": this one), e.g. 'pid:[4026531836]'; None
    when /proc does not say (gone, or another user's process without ptrace access)."""
    try:
        return os.readlink(proc_root / str(pid) / "ns" / "pid")
    except OSError:
        return None


def sent_pids_are_ours(peer_pid: int, sent_pid: int, proc_root: Path = PROC) -> bool:
    """Whether the pids a client sent are in this daemon's pid namespace: the sender's namespace
    is ours when /proc lets us compare; else, whether the pid it sent is the one the kernel
    reports for it (a container's pid differs from its host pid)."""
    ours, theirs = pid_namespace("self", proc_root), pid_namespace(peer_pid, proc_root)
    if ours is not None and theirs is not None:
        return ours == theirs
    return peer_pid == sent_pid
