"""The project's time vocabulary: how instants, durations and deadlines are read, and how instants are
written. Every command-line option, wire field, provider reply and file timestamp goes through here.

Instants (:func:`parse_instant`):

- ISO 8601 as :meth:`datetime.fromisoformat` reads it (``2026-03-01T18:00``, ``2026-03-01 18:00:00.5``,
  ``2026-03-01``, ``20260301T1800``), with an offset (``+01:00``), ``Z`` or ``z``;
- without an offset the time is UTC (never the machine's local time: the daemon, the trainer and the
  files they share may live in different time zones);
- or unix seconds, a plain number (ISO 8601 is tried first, so ``20260301`` is a date).

Durations (:func:`parse_duration_s`), always positive: ``30s``, ``90m``, ``8h``, ``2d``, compounds
largest unit first (``1h30m``), ISO 8601 (``PT8H``, ``P1DT2H30M``), and, where the caller says in
which unit, a plain number (``--deadline 24`` is hours, ``--release-after 30`` is minutes).

Deadlines (:func:`parse_deadline_s`): a duration from now, or an instant.

Writing (:func:`iso_utc`): ISO 8601 in UTC with the microseconds Python keeps. The wire and the
daemon's status write the offset as ``+00:00``; the JSON and CSV reports of ``carbonsched report``
write ``Z`` (``zulu=True``), as do the pause log lines. Both forms are read back by :func:`parse_instant`.

Errors are :class:`TimeFormatError` (a ValueError): one line naming the field or option and the text.
Standard library only: gt_core reads the wire's times with it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

INSTANT_FORMS = "an ISO 8601 time (e.g. 2026-03-01T18:00Z; no offset means UTC) or unix seconds"
DURATION_EXAMPLES = "(30s, 90m, 8h, 2d, 1h30m, PT8H)"

_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_COMPOUND = re.compile(rf"(?:(?:{_NUMBER})\s*[dhms]\s*)+", re.IGNORECASE)
_PART = re.compile(rf"({_NUMBER})\s*([dhms])", re.IGNORECASE)
_ISO_DURATION = re.compile(
    rf"P(?:(?P<d>{_NUMBER})D)?(?:T(?=[\d.])(?:(?P<h>{_NUMBER})H)?(?:(?P<m>{_NUMBER})M)?(?:(?P<s>{_NUMBER})S)?)?",
    re.IGNORECASE,
)
_UNIT_NAMES = {3600.0: "hours", 60.0: "minutes", 1.0: "seconds"}


class TimeFormatError(ValueError):
    """A time that cannot be read; the message names the field or option and the text."""


def parse_instant_and_offset(text: str, field: str) -> tuple[datetime, bool]:
    """The instant in ``text`` as an aware UTC datetime, and whether the text gave its offset (an
    offset, ``Z`` or unix seconds; False when it was taken as UTC)."""
    cleaned = str(text).strip()
    iso = cleaned[:-1] + "+00:00" if cleaned.endswith(("Z", "z")) else cleaned
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        pass
    else:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc), False
        return parsed.astimezone(timezone.utc), True
    try:
        unix_s = float(cleaned)
        if math.isfinite(unix_s):
            return datetime.fromtimestamp(unix_s, timezone.utc), True
    except (ValueError, OverflowError, OSError):
        pass
    raise TimeFormatError(f"{field} {text!r} is not {INSTANT_FORMS}")


def parse_instant(text: str, field: str) -> datetime:
    """The instant in ``text`` (ISO 8601, naive = UTC, or unix seconds) as an aware UTC datetime."""
    return parse_instant_and_offset(text, field)[0]


def parse_instant_s(text: str, field: str) -> float:
    """The instant in ``text`` (ISO 8601, naive = UTC, or unix seconds) as unix seconds."""
    return parse_instant(text, field).timestamp()


def _duration_or_none(text: str, bare_unit_s: float | None) -> float | None:
    cleaned = text.strip()
    if bare_unit_s is not None and re.fullmatch(_NUMBER, cleaned):
        return float(cleaned) * bare_unit_s
    if _COMPOUND.fullmatch(cleaned):
        parts = [(float(number), unit.lower()) for number, unit in _PART.findall(cleaned)]
        units = [unit for _, unit in parts]
        if units != sorted(set(units), key=list(_UNIT_S).index):
            return None  # a unit twice, or out of order (30m1h): more likely a typo than meant
        return sum(number * _UNIT_S[unit] for number, unit in parts)
    iso = _ISO_DURATION.fullmatch(cleaned)
    if iso and any(iso.groupdict().values()):
        return sum(float(iso[unit]) * _UNIT_S[unit] for unit in "dhms" if iso[unit])
    return None


def _bare_number_hint(bare_unit_s: float | None) -> str:
    if bare_unit_s is None:
        return ""
    return f"; a plain number is {_UNIT_NAMES.get(bare_unit_s, f'{bare_unit_s:g}-second units')}"


def parse_duration_s(text: str, field: str, *, bare_unit_s: float | None = 1.0) -> float:
    """A positive duration in seconds; a plain number counts ``bare_unit_s`` seconds each (None: refused)."""
    duration_s = _duration_or_none(str(text), bare_unit_s)
    if duration_s is None or not (math.isfinite(duration_s) and duration_s > 0):
        raise TimeFormatError(f"{field} {text!r} is not a positive duration {DURATION_EXAMPLES}"
                              f"{_bare_number_hint(bare_unit_s)}")
    return duration_s


def parse_deadline_s(text: str, field: str, now_s: float, *, bare_unit_s: float | None = None) -> float:
    """A deadline as unix seconds: a duration after ``now_s`` or an instant. A plain number is a
    duration of ``bare_unit_s``-second units, or, with None, unix seconds."""
    duration_s = _duration_or_none(str(text), bare_unit_s)
    if duration_s is not None and math.isfinite(duration_s) and duration_s > 0:
        return now_s + duration_s
    try:
        return parse_instant_s(text, field)
    except TimeFormatError:
        raise TimeFormatError(f"{field} {text!r} is neither a duration {DURATION_EXAMPLES} nor {INSTANT_FORMS}"
                              f"{_bare_number_hint(bare_unit_s)}") from None


def iso_utc(value: datetime | float | None, *, zulu: bool = False) -> str | None:
    """An instant (aware datetime, naive = UTC, or unix seconds) as ISO 8601 in UTC, ending ``+00:00``
    (the wire) or, with ``zulu``, ``Z`` (the reports); None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    else:
        value = datetime.fromtimestamp(value, timezone.utc)
    text = value.astimezone(timezone.utc).isoformat()
    return text[:-len("+00:00")] + "Z" if zulu else text
