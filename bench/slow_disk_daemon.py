"""`carbonsched run` over a store whose commits take FSYNC_MS each (a slow disk), for the
daemon latency benchmark.

    python bench/slow_disk_daemon.py SOCKET STATE_DIR FSYNC_MS

The store double keeps SQLite's real behaviour that matters here: one connection, every call
serialised behind it, and a write returns only once its commit is durable, here FSYNC_MS later.
Reads wait for a commit in progress, as they do on the shared connection. Runs whatever
`carbonsched` is first on PYTHONPATH, so the benchmark can run it against an older tree.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from carbonsched.config import DaemonConfig, Intervals
from carbonsched.daemon.lifecycle import Daemon
from carbonsched.daemon.logsetup import setup_logging
from carbonsched.paths import store_path
from carbonsched.store import Store

WRITES = frozenset({
    "add_intensity", "add_energy", "add_decision", "prune", "start_job", "resume_job", "set_meta", "end_job",
    "start_epoch", "end_epoch",
})
# Short intervals: the periodic work (and its store calls) runs many times per second.
BUSY = Intervals(poll_intensity_s=0.2, sample_power_s=0.05, decide_s=0.1, check_jobs_s=0.2)


class SlowDiskStore:
    def __init__(self, path: Path, fsync_s: float):
        self.real = Store(path)
        self.fsync_s = fsync_s
        self._disk = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.real, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._disk:
                result = value(*args, **kwargs)
                if name in WRITES:
                    time.sleep(self.fsync_s)
                return result

        return call


def main(argv: list[str]) -> None:
    socket_path, state_dir, fsync_ms = Path(argv[0]), Path(argv[1]), float(argv[2])
    setup_logging()
    config = DaemonConfig(provider="trace?speedup=600", socket=socket_path, state_dir=state_dir, intervals=BUSY)
    daemon = Daemon(config, store_factory=lambda cfg: SlowDiskStore(store_path(cfg.state_dir), fsync_ms / 1e3))
    daemon.install_signal_handlers()
    daemon.start()
    daemon.run_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
