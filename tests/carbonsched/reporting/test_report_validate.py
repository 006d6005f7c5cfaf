"""`carbonsched report`'s pure validate step: typed options or the command's one-line usage error,
with no store opened and no file looked at (the --output and --plot paths are checked later)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import pytest

from carbonsched.commands.report_cmd import ReportOptions, ReportOptionsError, validate_report_options


def _validate(**given):
    values = dict(job=None, slurm_job=None, since=None, fmt="table", output=None, plot=None, state_dir=None, include=[])
    return validate_report_options(**{**values, **given})


def test_valid_options_become_a_frozen_typed_value():
    options = _validate(since="2025-01-06", fmt="json", plot=Path("/nowhere/at/all/plot.svg"),
                        include=[Path("a.json"), Path("b")])
    assert isinstance(options, ReportOptions)
    assert options.since == datetime(2025, 1, 6, tzinfo=timezone.utc)  # no offset: UTC
    assert options.include == (Path("a.json"), Path("b")) and options.plot == Path("/nowhere/at/all/plot.svg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fmt = "csv"  # type: ignore[misc]


@pytest.mark.parametrize("given, message", [
    ({"fmt": "xml"}, "--format must be one of table, json, csv, got 'xml'"),
    ({"job": "a", "slurm_job": "7"}, "give --job or --slurm-job, not both"),
    ({"since": "yesterday"}, "--since 'yesterday' is not an ISO 8601 time"),
])
def test_a_bad_option_is_one_line_naming_it(tmp_path, monkeypatch, given, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportOptionsError) as caught:
        _validate(**given)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
