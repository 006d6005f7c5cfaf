"""Pausing training between steps when the ρ source's plan says so.

A carbonsched daemon plans a job that declared a deadline and ``may_pause``; its ρ answer may
then carry "pause until T" (:attr:`gt_core.rho.sources.RhoReading.pause_until_s`). The trainer
(:class:`gt_core.training.trainer.GreenTrainer`) and the ``transformers.Trainer`` callback
(:class:`gt_core.integrations.hf_callback.GreenTrainerCallback`) call :func:`wait_while_paused` before every
optimizer step. For a source that does not support pausing (every source but a
:class:`~gt_core.rho.daemon_source.DaemonRhoSource` declared ``may_pause``) it returns at once and
nothing changes.

For one that does, the source is asked at most once per ``pause_poll_s`` (a single socket
exchange, skipped while the daemon is backing off), whatever ``reselect`` is: with
``reselect="epoch"`` the trainer asks ρ only when an epoch starts, so this check is what lets a
pause take effect between the steps of an epoch. The ρ of such a check is not applied mid-epoch;
only the pause is.

While paused, nothing is lost: the pause falls between two optimizer steps, the batch about to
run runs after it, and the epoch continues where it stopped. The trainer logs once when it pauses
and once when it resumes, and polls the source every ``pause_poll_s`` (or sooner when the pause
ends before), telling the daemon that it is paused (the daemon records the interval). It resumes

- when the source answers without a pause (told to run: a new plan, an override, a reload);
- when the pause's end has passed (a newer answer may move the end later);
- when the source has not answered for ``pause_max_wait_s`` (the daemon is gone or hung): the job
  never waits on a daemon that is not there to say when to resume;
- when ``should_stop`` says so: GreenTrainer's SIGTERM/SIGINT (it then checkpoints promptly), the
  ``transformers.Trainer``'s ``control.should_training_stop``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol, TypeGuard

from carbonsched.times import iso_utc
from gt_core.rho.sources import RhoReading

log = logging.getLogger("gt_core.pausing")

MIN_SLEEP_S = 0.05
DEFAULT_POLL_S = 2.0
DEFAULT_MAX_WAIT_S = 300.0


class PausableSource(Protocol):
    """A ρ source whose plan may pause the job (:class:`gt_core.rho.daemon_source.DaemonRhoSource`)."""

    supports_pause: bool
    pause_poll_s: float
    pause_max_wait_s: float

    def check_pause(self, *, paused: bool, force: bool = False) -> RhoReading | None: ...


def source_supports_pause(source: object) -> TypeGuard[PausableSource]:
    return bool(getattr(source, "supports_pause", False)) and callable(getattr(source, "check_pause", None))


def wait_while_paused(
    source: object,
    epoch: int,
    step: int,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float | None = None,
    max_wait_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    on_resume: Callable[[float], None] | None = None,
) -> RhoReading | None:
    """Return when training may run its next step (see the module docstring); the source's
    latest reading (None when it was not asked or did not answer). ``on_resume`` hears the
    seconds spent paused, when there was a pause."""
    if not source_supports_pause(source):
        return None
    reading = source.check_pause(paused=False)
    if reading is None or reading.pause_until_s is None:
        return reading
    poll_s = poll_s or getattr(source, "pause_poll_s", DEFAULT_POLL_S)  # a source without them: the defaults
    max_wait_s = getattr(source, "pause_max_wait_s", DEFAULT_MAX_WAIT_S) if max_wait_s is None else max_wait_s
    until_s = reading.pause_until_s
    paused_at = monotonic()
    log.warning("paused before step %d (epoch %d) until %s, as the carbon plan asks (%s)",
                step, epoch, iso_utc(float(int(until_s)), zulu=True), reading.detail.get("reason", "no reason given"))
    silent_since: float | None = None
    why = "told to run"
    while True:
        if should_stop():
            why = "asked to stop"
            break
        sleep(max(MIN_SLEEP_S, min(poll_s, until_s - wall_clock())))
        answer = source.check_pause(paused=True, force=True)
        now_s = wall_clock()
        if answer is None:
            silent_since = monotonic() if silent_since is None else silent_since
            if now_s >= until_s:
                why = "the pause is over (no answer from the daemon)"
                break
            if monotonic() - silent_since >= max_wait_s:
                why = f"no answer from the daemon for {max_wait_s:g} s while paused"
                break
            continue
        silent_since, reading = None, answer
        if answer.pause_until_s is None:
            break
        if answer.pause_until_s <= now_s:
            why = "the pause is over"
            break
        until_s = answer.pause_until_s
    resumed = source.check_pause(paused=False, force=True)
    paused_s = monotonic() - paused_at
    log.warning("resuming at step %d (epoch %d) after %.1f s paused: %s", step, epoch, paused_s, why)
    if on_resume is not None:
        on_resume(paused_s)
    return resumed or reading
