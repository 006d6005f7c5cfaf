"""Log format of the daemon: one line per event on stderr, journald-aware."""

from __future__ import annotations

import logging
import os
import sys


class JournalFormatter(logging.Formatter):
    """One line per record with a sd-daemon(3) priority prefix, so the journal keeps the level."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr. Under journald (JOURNAL_STREAM set) no timestamp and a
    priority prefix instead."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
