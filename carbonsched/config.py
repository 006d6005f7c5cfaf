"""Daemon configuration: a TOML file, embedded defaults, and command-line overrides.

Example::

    provider = "electricitymaps:DE,static:DEU"
    policy = "/etc/carbonsched/policy.toml"
    retention_days = 90
    max_connections = 64
    metrics_port = 9464
    node_name = "gpu-node-07"   # default: the host name; labels this node in multi-node job reports

    [intervals]
    poll_intensity_s = 300
    sample_power_s = 10
    decide_s = 60

    [planning]          # deadline jobs (see carbonsched.planning.job_planner)
    guard = "floor"     # "full": keep the work left at ρ 1 within reach (costs carbon near the deadline)
    switch_share = 0.0  # a fresh plan replaces the one a job follows only when this much cheaper
    forecast_error = "forecast-error.json"  # the provider's error by lead (`carbonsched forecast-error --write-model`)

Relative paths are relative to the config file. A config file anyone may write is refused: it
chooses the policy, hence every job's compute budget.
"""

from __future__ import annotations

import dataclasses
import os
from socket import gethostname
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonsched.paths import default_socket_path, default_state_dir
from carbonsched.planning.model import PlanningInputError
from carbonsched.planning.receding import PlanningSettings


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Intervals:
    poll_intensity_s: float = 300.0
    sample_power_s: float = 10.0
    decide_s: float = 60.0
    check_jobs_s: float = 30.0  # how often running jobs' processes are checked for having died


@dataclass(frozen=True)
class DaemonConfig:
    provider: str | None = None  # None: the provider package's DEFAULT_PROVIDER_SPEC
    policy: Path | None = None  # None: the policy package's default policy file
    socket: Path = field(default_factory=default_socket_path)
    state_dir: Path = field(default_factory=default_state_dir)
    retention_days: float = 90.0
    max_connections: int = 64
    read_timeout_s: float = 30.0
    max_line_bytes: int = 64 * 1024
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    node_name: str = field(default_factory=gethostname)  # names this node's rows in multi-node reports
    intervals: Intervals = field(default_factory=Intervals)
    planning: PlanningSettings = field(default_factory=PlanningSettings)
    partition_gpus: int | None = None  # GPUs of the Slurm partition: `carbonsched sbatch --socket` plans jobs together
    source: Path | None = None  # the file this came from, if any

    def with_overrides(self, **overrides: Any) -> "DaemonConfig":
        """Replace the fields whose override is not None (command-line flags)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        interval_changes = {k: changes.pop(k) for k in list(changes) if k in Intervals.__dataclass_fields__}
        config = dataclasses.replace(self, **changes)
        if interval_changes:
            config = dataclasses.replace(config, intervals=dataclasses.replace(config.intervals, **interval_changes))
        return config

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "policy": str(self.policy) if self.policy else None,
            "socket": str(self.socket),
            "state_dir": str(self.state_dir),
            "retention_days": self.retention_days,
            "max_connections": self.max_connections,
            "metrics_port": self.metrics_port,
            "node_name": self.node_name,
            "intervals": dataclasses.asdict(self.intervals),
            "planning": dataclasses.asdict(self.planning),
            "partition_gpus": self.partition_gpus,
            "source": str(self.source) if self.source else None,
        }


def _positive_number(where: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
        raise ConfigError(f"{where}: must be a number > {minimum:g}")
    return float(value)


def _integer(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: must be an integer in [{low}, {high}]")
    return value


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


def _planning(path: Path, value: Any) -> PlanningSettings:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: planning: must be a table")
    known = PlanningSettings.__dataclass_fields__
    for name in value:
        if name not in known:
            raise ConfigError(f"{path}: planning.{name}: unknown key (known: {', '.join(known)})")
    changes = dict(value)
    share = changes.get("switch_share", 0.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise ConfigError(f"{path}: planning.switch_share: must be a number in [0, 1)")
    if "guard" in changes:
        changes["guard"] = _string(f"{path}: planning.guard", changes["guard"])
    if "forecast_error" in changes:
        from carbonsched.planning.noise_model import NoiseModelError, load_noise_model  # numpy: only when asked

        target = Path(os.path.expanduser(_string(f"{path}: planning.forecast_error", changes["forecast_error"])))
        target = target if target.is_absolute() else path.resolve().parent / target
        try:
            changes["forecast_error"] = load_noise_model(target)
        except (NoiseModelError, OSError) as exc:
            raise ConfigError(f"{path}: planning.forecast_error: {exc}") from None
    try:
        return PlanningSettings(**changes)
    except PlanningInputError as exc:
        raise ConfigError(f"{path}: planning: {exc}") from None


def check_file_not_world_writable(path: Path) -> None:
    st = path.stat()
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(f"{path}: refusing a world-writable config file (chmod o-w {path})")


def load_config(path: Path | str, base: DaemonConfig | None = None) -> DaemonConfig:
    path = Path(path)
    try:
        check_file_not_world_writable(path)
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path, base or DaemonConfig())


def parse_config(data: dict[str, Any], path: Path, base: DaemonConfig) -> DaemonConfig:
    here = path.resolve().parent

    def resolve(value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else here / p

    values: dict[str, Any] = {"source": path}
    intervals = base.intervals
    for key, value in data.items():
        where = f"{path}: {key}"
        if key == "provider":
            values[key] = _string(where, value)
        elif key in ("policy", "socket", "state_dir"):
            values[key] = resolve(_string(where, value))
        elif key == "retention_days":
            values[key] = _positive_number(where, value)
        elif key == "max_connections":
            values[key] = _integer(where, value, 1, 4096)
        elif key == "read_timeout_s":
            values[key] = _positive_number(where, value)
        elif key == "max_line_bytes":
            values[key] = _integer(where, value, 1024, 16 * 1024 * 1024)
        elif key == "metrics_port":
            values[key] = _integer(where, value, 0, 65535) or None
        elif key == "partition_gpus":
            values[key] = _integer(where, value, 1, 1_000_000)
        elif key in ("metrics_addr", "node_name"):
            values[key] = _string(where, value)
        elif key == "intervals":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: must be a table")
            changes = {}
            for name, seconds in value.items():
                if name not in Intervals.__dataclass_fields__:
                    raise ConfigError(
                        f"{path}: intervals.{name}: unknown key (known: {', '.join(Intervals.__dataclass_fields__)})"
                    )
                changes[name] = _positive_number(f"{path}: intervals.{name}", seconds, minimum=0.0)
            intervals = dataclasses.replace(intervals, **changes)
        elif key == "planning":
            values[key] = _planning(path, value)
        else:
            known = [f.name for f in dataclasses.fields(DaemonConfig) if f.name != "source"]
            raise ConfigError(f"{where}: unknown key (known: {', '.join(known)})")
    return dataclasses.replace(base, intervals=intervals, **values)
