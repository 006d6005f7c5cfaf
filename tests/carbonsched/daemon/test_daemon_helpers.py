"""The test helpers never leave a daemon running: not when a test fails inside ``short_dir``, not
when a daemon never becomes ready."""

from __future__ import annotations

import pytest

from daemon_helpers import DaemonProcess, short_dir


def test_a_failing_test_inside_short_dir_leaves_no_daemon_running():
    with pytest.raises(AssertionError, match="the test failed"):
        with short_dir() as d:
            daemon = DaemonProcess(d).wait_ready()
            raise AssertionError("the test failed")
    assert daemon.proc.poll() is not None  # killed and reaped


def test_a_daemon_that_is_not_ready_in_time_is_killed_before_the_failure():
    with short_dir() as d:
        daemon = DaemonProcess(d)
        with pytest.raises(AssertionError, match="not ready"):
            daemon.wait_ready(timeout_s=0.0)
        assert daemon.proc.poll() is not None
