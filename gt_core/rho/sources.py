"""Where the budget ρ comes from: a constant, a per-epoch schedule, any callable, or (later) a daemon.

Every source answers ``rho_for(epoch, step)`` with a :class:`RhoReading`. ρ is the share of full
fine-tuning's per-step FLOPs the trainer may spend, in (0, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable


def check_rho(rho: object, *, what: str = "rho") -> float:
    """Return ``rho`` as a float, or raise ValueError unless it lies in (0, 1]."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1], got {rho!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {rho!r}")
    return value


@dataclass(frozen=True)
class RhoReading:
    """One answer of a ρ source: the budget, who decided it, and anything worth logging."""

    rho: float
    source: str
    detail: dict[str, Any] = field(default_factory=dict)
    # Unix seconds until which the source asks the trainer to pause (only a daemon's plan does;
    # see gt_core.rho.pausing); ``rho`` is then the budget to resume with.
    pause_until_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", check_rho(self.rho))
        if self.pause_until_s is not None and not math.isfinite(self.pause_until_s):
            raise ValueError(f"pause_until_s must be finite unix seconds, got {self.pause_until_s!r}")


@runtime_checkable
class RhoSource(Protocol):
    """Anything that can tell the trainer the budget for a given epoch and global step."""

    def rho_for(self, epoch: int, step: int) -> RhoReading: ...


class ConstantRho:
    """The same ρ for the whole run."""

    def __init__(self, rho: float) -> None:
        self.rho = check_rho(rho)

    def rho_for(self, epoch: int, step: int) -> RhoReading:
        return RhoReading(self.rho, "constant")

    def __repr__(self) -> str:
        return f"ConstantRho({self.rho})"


class ScheduleRho:
    """One ρ per epoch (epoch 0 first); the last value repeats for any later epoch."""

    def __init__(self, values: Sequence[float]) -> None:
        values = list(values)
        if not values:
            raise ValueError("a rho schedule needs at least one value")
        self.values = [check_rho(v, what=f"rho schedule entry {i}") for i, v in enumerate(values)]

    @classmethod
    def from_file(cls, path: str | Path) -> "ScheduleRho":
        """Read a JSON list (``[0.5, 0.7]``) or plain text with one value per line (``#`` comments)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read rho schedule {path}: {exc.strerror or exc}") from None
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                values = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not a valid JSON list: {exc.msg} (line {exc.lineno})") from None
            if not isinstance(values, list):
                raise ValueError(f"{path}: expected a JSON list of numbers")
        else:
            values = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                try:
                    values.append(float(line))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a number: {line!r}") from None
        try:
            return cls(values)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def rho_for(self, epoch: int, step: int) -> RhoReading:
        index = min(max(epoch, 0), len(self.values) - 1)
        return RhoReading(self.values[index], "schedule", {"index": index})

    def __repr__(self) -> str:
        return f"ScheduleRho({self.values})"


class CallableRho:
    """ρ from any function ``fn(epoch, step) -> float``."""

    def __init__(self, fn: Callable[[int, int], float], name: str = "callable") -> None:
        self.fn = fn
        self.name = name

    def rho_for(self, epoch: int, step: int) -> RhoReading:
        return RhoReading(check_rho(self.fn(epoch, step), what=f"rho from {self.name}"), self.name)
