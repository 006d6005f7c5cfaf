"""A real daemon in this process (real socket, store and scheduler) over a fake NVML, with
intervals long enough that the test drives sampling and deciding itself."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from carbonsched.config import DaemonConfig, Intervals
from carbonsched.daemon.lifecycle import Daemon
from carbonsched.power import NodeEnergyMeter
from carbonsched.store import Store
from daemon_helpers import short_dir, wait_until
from fake_pynvml import FakeGpu, make_fake_nvml

QUIET = Intervals(poll_intensity_s=3600, sample_power_s=3600, decide_s=3600, check_jobs_s=3600)
GPU0 = FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", bus_id="00000000:07:00.0", energy_mJ=0)
GPU1 = FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", bus_id="00000000:0A:00.0", energy_mJ=0)


def _fake_rapl(root: Path) -> dict[str, Path]:
    """A powercap tree with one package (CPU) and its DRAM domain, as the kernel lays it out."""
    files = {}
    for device, directory, name in (("cpu", root / "intel-rapl:0", "package-0"),
                                    ("ram", root / "intel-rapl:0" / "intel-rapl:0:1", "dram")):
        directory.mkdir(parents=True)
        (directory / "name").write_text(name + "\n")
        (directory / "max_energy_range_uj").write_text("262143328850\n")
        files[device] = directory / "energy_uj"
        files[device].write_text("1000000\n")
    return files


def write_policy(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{body}', encoding="utf-8")
    return path


@dataclass
class RunningDaemon:
    daemon: Daemon
    workdir: Path
    gpus: list[FakeGpu]  # the fake NVML's GPUs: set energy_mJ / processes to change what it reports
    rapl: dict[str, Path]  # "cpu", "ram": the fake RAPL energy_uj files

    def add_rapl_energy_j(self, device: str, joules: float) -> None:
        path = self.rapl[device]
        path.write_text(f"{int(path.read_text()) + int(joules * 1e6)}\n")

    def store(self) -> Store:
        return Store(self.workdir / "state" / "carbonsched.sqlite3", read_only=True)


@contextmanager
def inprocess_daemon(
    policy_body: str = 'kind = "constant"\nrho = 0.7\n',
    *,
    gpus: list[FakeGpu] | None = None,
    store_factory: Callable[[DaemonConfig], Any] | None = None,
    provider: str = "static:DEU",
    intervals: Intervals = QUIET,
    **daemon_kwargs: Any,
) -> Iterator[RunningDaemon]:
    """A started daemon with an intensity reading in force; stopped on exit. ``intervals``: the
    scheduler's (by default long enough that it does nothing the test does not ask for)."""
    with short_dir() as d:
        nvml = make_fake_nvml([FakeGpu(**vars(g)) for g in (gpus if gpus is not None else [GPU0, GPU1])])
        config = DaemonConfig(
            socket=d / "run" / "cs.sock", state_dir=d / "state", provider=provider,
            policy=write_policy(d, "start", policy_body), intervals=intervals,
        )
        rapl = _fake_rapl(d / "powercap")
        kwargs: dict[str, Any] = {
            "meter_factory": lambda: NodeEnergyMeter(nvml, powercap_root=d / "powercap"), **daemon_kwargs,
        }
        if store_factory is not None:
            kwargs["store_factory"] = store_factory
        daemon = Daemon(config, **kwargs)
        daemon.start()
        try:
            assert wait_until(lambda: daemon.status()["intensity"] is not None, 10)
            yield RunningDaemon(daemon, d, nvml.gpus, rapl)
        finally:
            daemon.stop()
