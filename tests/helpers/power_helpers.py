"""Helpers for the power-meter tests: an injectable clock and RAPL files read as a normal user."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def read_files_as_unprivileged_user(monkeypatch) -> None:
    """Root ignores file modes: when running as root, make reads of files no one may read fail
    with EACCES, as they do for the unprivileged service user."""
    if os.geteuid() != 0:
        return
    real_read_text = Path.read_text

    def read_text_as_user(self, *args, **kwargs):
        if stat.S_IMODE(self.stat().st_mode) & 0o444 == 0:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text_as_user)
