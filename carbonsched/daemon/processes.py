"""Is a process still there? (For jobs that end without saying so.)"""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int, proc_root: Path = Path("/proc")) -> bool:
    """True while ``pid`` exists and is not a zombie (a trainer killed under a launcher can stay a
    zombie until the launcher reaps it). A process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return True  # no procfs (or it just exited): os.kill said it exists
    state = stat.rpartition(")")[2].split()[:1]  # the command name may hold spaces and parentheses
    return state not in (["Z"], ["X"])
