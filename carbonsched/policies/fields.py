"""Typed reading of one TOML table that collects every problem instead of stopping at the first."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from carbonsched.policies.problems import PolicyProblem
from carbonsched.policies.source import PolicySource

_MISSING: Any = object()


def describe_value(value: Any) -> str:
    """How a TOML value is shown in a message: strings quoted, booleans as TOML spells them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _number_text(x: float) -> str:
    return f"{x:g}"


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_number_text(low)}, {_number_text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_number_text(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_number_text(high)}"
    return ""


class FieldReader:
    """Reads fields of ``table`` (found at ``prefix`` in the file) and records problems.

    Each accessor returns the value, the default, or None when the field is invalid (the problem
    is then recorded). ``reject_unknown`` reports every key no accessor asked for.
    """

    def __init__(self, table: Mapping[str, Any], source: PolicySource, prefix: str = "",
                 problems: list[PolicyProblem] | None = None):
        self.table = table
        self.source = source
        self.prefix = prefix
        self.problems: list[PolicyProblem] = problems if problems is not None else []
        self._known: set[str] = set()
        self._children: list[FieldReader] = []

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(self.source.problem(self.path(key), message))

    def has(self, key: str) -> bool:
        return key in self.table

    def _fetch(self, key: str, default: Any) -> Any:
        self._known.add(key)
        if key in self.table:
            return self.table[key]
        if default is _MISSING:
            self.problem(key, "required field is missing")
        return _MISSING

    def number(self, key: str, *, default: Any = _MISSING, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float | None:
        value = self._fetch(key, default)
        if value is _MISSING:
            return None if default is _MISSING else default
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            self.problem(key, f"must be a number {_range_text(low, high, low_open, high_open)}".rstrip()
                         + f", got {describe_value(value)}")
            return None
        return float(value)

    def rho(self, key: str, *, default: Any = _MISSING, floor: float | None = None) -> float | None:
        """A ρ value: in (0, 1], or in [floor, 1] when the policy's rho_min is known."""
        if floor is None:
            return self.number(key, default=default, low=0.0, low_open=True, high=1.0)
        return self.number(key, default=default, low=floor, high=1.0)

    def text(self, key: str, *, default: Any = _MISSING) -> str | None:
        value = self._fetch(key, default)
        if value is _MISSING:
            return None if default is _MISSING else default
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"must be a non-empty string, got {describe_value(value)}")
            return None
        return value

    def table_field(self, key: str, *, required: bool = False) -> FieldReader | None:
        value = self._fetch(key, _MISSING if required else None)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a table, got {describe_value(value)}")
            return None
        return self._child(value, self.path(key))

    def tables_field(self, key: str, *, required: bool = True) -> list[FieldReader] | None:
        """An array of tables (``[[key]]``); each element gets its own reader ``key[i]``."""
        value = self._fetch(key, _MISSING if required else None)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problem(key, f"must be an array of tables ([[{key}]]), got {describe_value(value)}")
            return None
        if not value:
            self.problem(key, "must have at least one entry")
            return None
        return [self._child(v, f"{self.path(key)}[{i}]") for i, v in enumerate(value)]

    def _child(self, table: Mapping[str, Any], prefix: str) -> FieldReader:
        child = FieldReader(table, self.source, prefix, self.problems)
        self._children.append(child)
        return child

    def reject_unknown(self) -> None:
        """Record an 'unknown field' problem for each key nothing asked for, here and in sub-tables."""
        for key in self.table:
            if key in self._known:
                continue
            guess = difflib.get_close_matches(key, sorted(self._known), n=1)
            hint = f"did you mean '{guess[0]}'?" if guess else "allowed: " + ", ".join(sorted(self._known))
            self.problem(key, f"unknown field; {hint}")
        for child in self._children:
            child.reject_unknown()
