"""The Policy base class: common settings, hysteresis, dwell, GPU-power scaling and clamping.

A policy turns :class:`~carbonsched.types.Signals` into a ρ in [rho_min, 1]. Each kind only
supplies a *target* ρ for a known grid intensity; this class does the rest, in this order:

1. intensity unknown → ``fallback_rho`` (default: ``rho_min``; the ``constant`` kind defaults
   to its ``rho``). Otherwise the kind's target ρ.
2. hysteresis (``hysteresis_g_per_kwh``, intensity-driven kinds): the previous target ρ is kept
   while it is still reachable with the intensity moved by up to the margin either way, i.e. a
   threshold has to be crossed by more than the margin before ρ switches.
3. ``[gpu_power]``: when measured GPU power is above ``above_w``, ρ is multiplied by
   ``rho_scale``; unknown power → rule ignored (the reason says so).
4. clamp to [rho_min, 1].
5. dwell (``min_dwell_s``): a new ρ is held back until that many seconds have passed since the
   last change. A clock that went backwards does not hold anything back.

Steps 2 and 5 keep state in the object; :meth:`Policy.decide` updates it, :meth:`Policy.explain`
does not.

Plugin contract (third-party kinds)
-----------------------------------
Register a class under the entry-point group ``carbonsched.policies``; the entry-point name is
the ``kind`` users write in the file::

    [project.entry-points."carbonsched.policies"]
    night_owl = "my_pkg.policies:NightOwlPolicy"

The loaded object must provide ``from_table(table: dict, *, source: PolicySource) -> Policy``
(a classmethod) that returns a :class:`Policy` instance or raises :class:`PolicyFileError`.
Subclassing :class:`Policy` gives that for free: set ``kind``, then implement

- ``configure(self, reader: FieldReader) -> None``: read the kind's own fields through
  ``reader`` (problems get file, line and field; unknown keys are rejected afterwards), and
- ``target(self, intensity_g_per_kwh: float, signals: Signals) -> Target``.

Optional: ``intensity_breakpoints_g_per_kwh(signals)`` (intensities where the target changes
shape; needed for hysteresis to see thresholds), ``rho_is_continuous`` (True when the target is
piecewise-linear in intensity, False when piecewise-constant) and ``default_fallback_rho()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from carbonsched.policies.fields import FieldReader
from carbonsched.policies.problems import PolicyFileError
from carbonsched.policies.source import PolicySource
from carbonsched.times import iso_utc
from carbonsched.types import Decision, Signals

DEFAULT_RHO_MIN = 0.34


def fmt_rho(rho: float) -> str:
    return f"{rho:.2f}"


def fmt_g(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Target:
    """A kind's answer for one intensity: ρ, a one-line reason, and optional explanation lines."""

    rho: float
    reason: str
    detail: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuPowerRule:
    """Multiply ρ by ``rho_scale`` while measured GPU power is above ``above_w`` (W)."""

    above_w: float
    rho_scale: float


@dataclass(frozen=True)
class _State:
    held_target_rho: float | None = None
    last_rho: float | None = None
    last_change_at: datetime | None = None


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9)


class Policy:
    """Base of every policy kind; see the module docstring for the evaluation order."""

    kind: str = ""
    rho_is_continuous: ClassVar[bool] = False

    def __init__(self, *, kind: str, name: str, source_file: str, rho_min: float = DEFAULT_RHO_MIN,
                 min_dwell_s: float = 0.0, hysteresis_g_per_kwh: float = 0.0, fallback_rho: float | None = None,
                 gpu_power: GpuPowerRule | None = None, description: str | None = None):
        self.kind = kind
        self.name = name
        self.source_file = source_file
        self.description = description
        self.rho_min = rho_min
        self.min_dwell_s = min_dwell_s
        self.hysteresis_g_per_kwh = hysteresis_g_per_kwh
        self.gpu_power = gpu_power
        self._fallback_rho = fallback_rho
        self._state = _State()
        # rho_min as read from the file, None when invalid: floors for the kind's ρ fields.
        self._rho_floor: float | None = rho_min

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, source: PolicySource) -> Policy:
        """Build the policy from a parsed TOML table; raises PolicyFileError listing all problems."""
        reader = FieldReader(table, source)
        kind = reader.text("kind") or cls.kind
        name = reader.text("name", default=source.stem)
        description = reader.text("description", default=None)
        rho_min = reader.rho("rho_min", default=DEFAULT_RHO_MIN)
        min_dwell_s = reader.number("min_dwell_s", default=0.0, low=0.0)
        hysteresis = reader.number("hysteresis_g_per_kwh", default=0.0, low=0.0)
        fallback_rho = reader.rho("fallback_rho", default=None, floor=rho_min)
        gpu_power = None
        gpu_table = reader.table_field("gpu_power")
        if gpu_table is not None:
            above_w = gpu_table.number("above_w", low=0.0, low_open=True)
            rho_scale = gpu_table.number("rho_scale", low=0.0, low_open=True, high=1.0)
            if above_w is not None and rho_scale is not None:
                gpu_power = GpuPowerRule(above_w, rho_scale)
        policy = cls(kind=kind, name=name or source.stem, source_file=source.display,
                     rho_min=rho_min if rho_min is not None else DEFAULT_RHO_MIN,
                     min_dwell_s=min_dwell_s or 0.0, hysteresis_g_per_kwh=hysteresis or 0.0,
                     fallback_rho=fallback_rho, gpu_power=gpu_power, description=description)
        policy._rho_floor = rho_min
        policy.configure(reader)
        reader.reject_unknown()
        if reader.problems:
            raise PolicyFileError(reader.problems)
        return policy

    def read_rho(self, reader: FieldReader, key: str, **kwargs: Any) -> float | None:
        """Read a ρ field of this kind: must lie in [rho_min, 1]."""
        return reader.rho(key, floor=self._rho_floor, **kwargs)

    def configure(self, reader: FieldReader) -> None:
        """Read the kind's own fields. Kinds override this."""

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        raise NotImplementedError

    def intensity_breakpoints_g_per_kwh(self, signals: Signals) -> Sequence[float]:
        return ()

    def default_fallback_rho(self) -> float:
        return self.rho_min

    @property
    def fallback_rho(self) -> float:
        return self._fallback_rho if self._fallback_rho is not None else self.default_fallback_rho()

    # ---- deciding ------------------------------------------------------------------------------

    def decide(self, signals: Signals) -> Decision:
        """ρ for ``signals``; remembers it for hysteresis and dwell. Call with increasing ``now``."""
        decision, _lines, self._state = self._evaluate(signals, self._state)
        return decision

    def explain(self, signals: Signals) -> str:
        """Multi-line account of how :meth:`decide` would reach its ρ now (state is not changed)."""
        decision, lines, _state = self._evaluate(signals, self._state)
        return "\n".join(lines + [f"=> ρ {fmt_rho(decision.rho)}"])

    def reset(self) -> None:
        """Forget hysteresis and dwell history."""
        self._state = _State()

    def _evaluate(self, signals: Signals, state: _State) -> tuple[Decision, list[str], _State]:
        reasons: list[str] = []
        lines = [f"policy '{self.name}' (kind {self.kind}) from {self.source_file}", _describe_inputs(signals)]
        intensity = signals.intensity_g_per_kwh
        if intensity is None:
            rho = self.fallback_rho
            reasons.append(f"grid intensity unknown: fallback_rho {fmt_rho(rho)}")
            lines.append(f"intensity: unknown, so fallback_rho {fmt_rho(rho)} is used")
        else:
            target = self.target(intensity, signals)
            rho = target.rho
            reasons.append(target.reason)
            lines.append(f"{self.kind}: {target.reason}")
            lines.extend(f"  {line}" for line in target.detail)
            held = state.held_target_rho
            if self.hysteresis_g_per_kwh > 0:
                if held is not None and not _same(held, rho) and self._reachable(held, intensity, signals):
                    note = (f"hysteresis keeps ρ {fmt_rho(held)}: intensity is within "
                            f"{fmt_g(self.hysteresis_g_per_kwh)} gCO2e/kWh of where it gives that ρ")
                    reasons.append(note)
                    lines.append(note)
                    rho = held
                else:
                    lines.append(f"hysteresis: {fmt_g(self.hysteresis_g_per_kwh)} gCO2e/kWh margin, no hold")
            state = replace(state, held_target_rho=rho)

        if self.gpu_power is not None:
            rule, power_w = self.gpu_power, signals.gpu_power_w
            if power_w is None:
                note = f"GPU power unknown: [gpu_power] rule (above {fmt_g(rule.above_w)} W) ignored"
                reasons.append(note)
                lines.append(note)
            elif power_w > rule.above_w:
                note = (f"GPU power {power_w:.0f} W > {fmt_g(rule.above_w)} W: ρ × {fmt_g(rule.rho_scale)} "
                        f"= {fmt_rho(rho * rule.rho_scale)}")
                rho *= rule.rho_scale
                reasons.append(note)
                lines.append(note)
            else:
                lines.append(f"GPU power {power_w:.0f} W <= {fmt_g(rule.above_w)} W: no scaling")

        clamped = min(1.0, max(self.rho_min, rho))
        if not _same(clamped, rho):
            note = f"clamped to [{fmt_rho(self.rho_min)}, 1]: {fmt_rho(clamped)}"
            reasons.append(note)
            lines.append(note)
        rho = clamped

        last = state.last_rho
        if last is not None and not _same(rho, last) and self.min_dwell_s > 0 and state.last_change_at is not None:
            elapsed_s = (signals.now - state.last_change_at).total_seconds()
            if 0 <= elapsed_s < self.min_dwell_s:
                note = (f"min_dwell_s holds ρ {fmt_rho(last)} instead of {fmt_rho(rho)} "
                        f"({elapsed_s:.0f} s of {fmt_g(self.min_dwell_s)} s since the last change)")
                reasons.append(note)
                lines.append(note)
                rho = last
        if last is None or not _same(rho, last):
            state = replace(state, last_rho=rho, last_change_at=signals.now)
        return Decision(rho=rho, reason="; ".join(reasons), policy=self.name), lines, state

    def _reachable(self, rho: float, intensity: float, signals: Signals) -> bool:
        """Whether the target gives ``rho`` for some intensity within the hysteresis margin."""
        margin = self.hysteresis_g_per_kwh
        points = [intensity - margin]
        points += sorted(b for b in self.intensity_breakpoints_g_per_kwh(signals)
                         if intensity - margin < b < intensity + margin)
        points.append(intensity + margin)
        values = [self.target(x, signals).rho for x in points]
        if self.rho_is_continuous:
            return any(min(a, b) - 1e-9 <= rho <= max(a, b) + 1e-9 for a, b in zip(values, values[1:]))
        return any(_same(v, rho) for v in values)


def _describe_inputs(signals: Signals) -> str:
    def known(value: float | None, unit: str) -> str:
        return "unknown" if value is None else f"{value:g} {unit}"

    parts = [f"intensity {known(signals.intensity_g_per_kwh, 'gCO2e/kWh')}"
             + (f" ({signals.signal})" if signals.signal else ""),
             f"forecast {len(signals.forecast)} points",
             f"history {len(signals.history)} readings",
             f"GPU power {known(signals.gpu_power_w, 'W')}",
             f"carbon used today {known(signals.carbon_used_today_g, 'g')}",
             f"carbon used by job {known(signals.carbon_used_job_g, 'g')}"]
    return f"inputs at {iso_utc(signals.now)}: " + ", ".join(parts)
