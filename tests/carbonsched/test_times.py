"""The time vocabulary (carbonsched.times): what reads as an instant, a duration or a deadline, what
is refused and how, and that what the formatter writes reads back as the same instant."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from carbonsched.times import (
    TimeFormatError, iso_utc, parse_deadline_s, parse_duration_s, parse_instant, parse_instant_and_offset,
)

T = datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc)
HOUR_S = 3600.0


@pytest.mark.parametrize("text, expected, has_offset", [
    ("2026-03-01T18:00Z", T, True),
    ("2026-03-01T18:00z", T, True),
    ("2026-03-01 18:00:00z", T, True),
    ("2026-03-01T18:00:00+00:00", T, True),
    ("2026-03-01T19:00+01:00", T, True),
    ("  2026-03-01T18:00  ", T, False),  # no offset: UTC, not the machine's zone
    ("2026-03-01", T - timedelta(hours=18), False),
    ("20260301T1800", T, False),
    ("2026-03-01T18:00:00.250000Z", T + timedelta(milliseconds=250), True),
    (str(T.timestamp()), T, True),
    ("1772388000", T, True),
])
def test_instants_read_as_aware_utc(text, expected, has_offset):
    parsed, offset_given = parse_instant_and_offset(text, "--at")
    assert parsed == expected and parsed.utcoffset() == timedelta(0) and offset_given is has_offset


@pytest.mark.parametrize("text", ["", "tomorrow", "8h", "2026-13-01", "nan", "inf", "2026-03-01T18:00Zulu"])
def test_bad_instants_are_one_line_naming_the_field_and_the_text(text):
    with pytest.raises(TimeFormatError) as caught:
        parse_instant(text, "--since")
    message = str(caught.value)
    assert message.startswith(f"--since {text!r} is not an ISO 8601 time") and "\n" not in message


@pytest.mark.parametrize("text, bare_unit_s, expected_s", [
    ("30s", 1.0, 30.0),
    ("90m", 1.0, 5400.0),
    ("8h", 1.0, 8 * HOUR_S),
    ("8H", 1.0, 8 * HOUR_S),
    ("2d", 1.0, 48 * HOUR_S),
    ("1h30m", 1.0, 5400.0),
    ("1h 30m 15s", 1.0, 5415.0),
    ("1.5h", 1.0, 5400.0),
    ("PT8H", 1.0, 8 * HOUR_S),
    ("pt90m", 1.0, 5400.0),
    ("P1DT2H30M", 1.0, 26.5 * HOUR_S),
    ("P2D", 1.0, 48 * HOUR_S),
    ("45", 1.0, 45.0),
    ("30", 60.0, 1800.0),
    ("24", HOUR_S, 24 * HOUR_S),
])
def test_durations_in_seconds(text, bare_unit_s, expected_s):
    assert parse_duration_s(text, "--release-after", bare_unit_s=bare_unit_s) == expected_s


@pytest.mark.parametrize("text, bare_unit_s", [
    ("0h", 1.0), ("0", 1.0), ("-5m", 1.0), ("30m1h", 1.0), ("1h1h", 1.0), ("8 hours", 1.0), ("P", 1.0),
    ("PT", 1.0), ("P1H", 1.0), ("h", 1.0), ("45", None), ("", 1.0),
])
def test_bad_durations_name_the_option_and_the_text(text, bare_unit_s):
    with pytest.raises(TimeFormatError) as caught:
        parse_duration_s(text, "--release-after", bare_unit_s=bare_unit_s)
    assert str(caught.value).startswith(f"--release-after {text!r} is not a positive duration")


NOW_S = T.timestamp()


@pytest.mark.parametrize("text, bare_unit_s, expected_s", [
    ("8h", None, NOW_S + 8 * HOUR_S),
    ("1h30m", None, NOW_S + 5400),
    ("PT8H", None, NOW_S + 8 * HOUR_S),
    ("2026-03-02T02:00Z", None, NOW_S + 8 * HOUR_S),
    ("2026-03-02T02:00", None, NOW_S + 8 * HOUR_S),
    (str(NOW_S + 60), None, NOW_S + 60),  # a plain number is unix seconds unless the option says a unit
    ("24", HOUR_S, NOW_S + 24 * HOUR_S),
    ("2026-03-01T12:00Z", HOUR_S, NOW_S - 6 * HOUR_S),  # in the past: the caller decides what that means
])
def test_deadlines_are_a_duration_from_now_or_an_instant(text, bare_unit_s, expected_s):
    assert parse_deadline_s(text, "--deadline", NOW_S, bare_unit_s=bare_unit_s) == expected_s


@pytest.mark.parametrize("text, bare_unit_s, hint", [("soon", None, ""), ("tomorrow", HOUR_S, "a plain number is hours")])
def test_bad_deadlines_say_both_forms(text, bare_unit_s, hint):
    with pytest.raises(TimeFormatError) as caught:
        parse_deadline_s(text, "--deadline", NOW_S, bare_unit_s=bare_unit_s)
    message = str(caught.value)
    assert message.startswith(f"--deadline {text!r} is neither a duration (30s, 90m, 8h")
    assert "ISO 8601 time" in message and hint in message


@pytest.mark.parametrize("value, wire, report", [
    (T, "2026-03-01T18:00:00+00:00", "2026-03-01T18:00:00Z"),
    (T.timestamp(), "2026-03-01T18:00:00+00:00", "2026-03-01T18:00:00Z"),
    (T.timestamp() + 0.678901, "2026-03-01T18:00:00.678901+00:00", "2026-03-01T18:00:00.678901Z"),
    (T.astimezone(timezone(timedelta(hours=-5))), "2026-03-01T18:00:00+00:00", "2026-03-01T18:00:00Z"),
    (T.replace(tzinfo=None), "2026-03-01T18:00:00+00:00", "2026-03-01T18:00:00Z"),  # naive = UTC
    (None, None, None),
])
def test_the_formatter_writes_the_wire_and_the_report_forms(value, wire, report):
    assert iso_utc(value) == wire and iso_utc(value, zulu=True) == report


@pytest.mark.parametrize("unix_s", [0.0, 1.5, 1772388000.0, 1772388000.678901, 4102444800.25])
def test_what_the_formatter_writes_reads_back_as_the_same_instant(unix_s):
    for zulu in (False, True):
        written = iso_utc(unix_s, zulu=zulu)
        assert parse_instant(written, "t").timestamp() == unix_s
        assert iso_utc(parse_instant(written, "t"), zulu=zulu) == written
