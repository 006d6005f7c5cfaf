"""A long planned pause of a Slurm job gives its resources back: the job is requeued and begins
again when its plan runs it next.

A paused trainer holds its GPUs idle. For a job that reported a Slurm job id, may pause, and
whose plan pauses it for longer than its ``release_after_s`` (declared at ``job.start``, default
:data:`DEFAULT_RELEASE_AFTER_S`), the daemon instead

1. ``scontrol requeuehold``: Slurm sends the batch script SIGTERM (the trainer checkpoints and
   ends its part of the job as ``interrupted``) and puts the job back in the queue, held;
2. waits until the job is pending, sets its begin time to the pause's planned end
   (``scontrol update StartTime=``) and releases the hold.

The requeued job runs its batch script again; the trainer resumes from its checkpoint under the
same job id (``slurm-<SLURM_JOB_ID>``). The daemon keeps the job's pause open from the requeue
until the job starts again, so the gap is stored as one pause of the same job. Only the part of
the job registered by rank 0 (or a single process) releases it, once per pause. Shorter pauses
stay in the trainer's process. Slurm's answers run in a background thread: a failure is one log
line and the job keeps its in-process pause.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from carbonsched.slurm import slurm_cli as slurm
from carbonsched.times import iso_utc

log = logging.getLogger("carbonsched.slurm")

DEFAULT_RELEASE_AFTER_S = 1800.0
HELD_TIMEOUT_S = 120.0  # the trainer's checkpoint, Slurm's KillWait and the epilog
POLL_S = 0.5
NOT_RELEASED = -1.0  # a requeue that failed: not tried again for this part of the job

__all__ = ["DEFAULT_RELEASE_AFTER_S", "PauseReleaser", "releases_for"]


def releases_for(job: Mapping[str, Any], pause_until_s: float | None, now_s: float) -> bool:
    """Whether a pause until ``pause_until_s`` of this stored job should requeue it."""
    if pause_until_s is None or not job.get("slurm_job_id") or not job.get("may_pause"):
        return False
    if job.get("rank") not in (None, 0):
        return False
    release_after_s = job.get("release_after_s") or DEFAULT_RELEASE_AFTER_S
    return pause_until_s - now_s > release_after_s


class PauseReleaser:
    """The daemon's side: which jobs it requeued, until when, and the Slurm calls that do it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._released: dict[str, float] = {}  # job_id -> planned end of its pause (unix s)
        self._clock = clock

    def consider(self, jobs: Sequence[Mapping[str, Any]], pause_until_by_job: Mapping[str, float | None]) -> list[str]:
        """Requeue each of ``jobs`` (stored rows) whose planned pause is long enough (see
        :func:`releases_for`) and not yet released; returns their ids."""
        now_s = self._clock()
        started = []
        for job in jobs:
            job_id = job["job_id"]
            until_s = pause_until_by_job.get(job_id)
            if not releases_for(job, until_s, now_s):
                continue
            with self._lock:
                if job_id in self._released:
                    continue
                self._released[job_id] = until_s
            log.info("job %s: pause until %s is longer than %g s: requeueing Slurm job %s", job_id,
                     iso_utc(float(int(until_s)), zulu=True),
                     job.get("release_after_s") or DEFAULT_RELEASE_AFTER_S, job["slurm_job_id"])
            threading.Thread(target=self._requeue, args=(job_id, str(job["slurm_job_id"]), until_s),
                             name=f"slurm-requeue-{job['slurm_job_id']}", daemon=True).start()
            started.append(job_id)
        return started

    def released_until(self, job_id: str) -> float | None:
        """The planned end of the pause a requeue of ``job_id`` waits out; None if not released."""
        with self._lock:
            until_s = self._released.get(job_id)
        return None if until_s is None or until_s == NOT_RELEASED else until_s

    def came_back(self, job_id: str) -> bool:
        """The job registered again (its requeued part started); True if it had been released."""
        with self._lock:
            until_s = self._released.pop(job_id, None)
        return until_s is not None and until_s != NOT_RELEASED

    def _requeue(self, job_id: str, slurm_job_id: str, until_s: float) -> None:
        try:
            slurm.requeue_held(slurm_job_id)
        except slurm.SlurmError as exc:
            self._failed(job_id, slurm_job_id, exc)
            return
        try:  # held from here on: whatever happens, the hold is released
            deadline = time.monotonic() + HELD_TIMEOUT_S
            while slurm.job_state(slurm_job_id) != "PENDING":
                if time.monotonic() > deadline:
                    raise slurm.SlurmError(f"job not pending {HELD_TIMEOUT_S:g} s after the requeue")
                time.sleep(POLL_S)
            slurm.set_begin(slurm_job_id, until_s - self._clock())
        except slurm.SlurmError as exc:
            log.warning("job %s: Slurm job %s requeued without its begin time: %s", job_id, slurm_job_id, exc)
        finally:
            try:
                slurm.release(slurm_job_id)
            except slurm.SlurmError as exc:
                log.warning("job %s: Slurm job %s stays held (scontrol release %s by hand): %s", job_id,
                            slurm_job_id, slurm_job_id, exc)
        log.info("job %s: Slurm job %s requeued, to begin again at %s", job_id, slurm_job_id,
                 iso_utc(float(int(until_s)), zulu=True))

    def _failed(self, job_id: str, slurm_job_id: str, exc: Exception) -> None:
        """Not requeued: the job keeps its pause in process, and is not tried again until it registers anew."""
        log.warning("job %s: Slurm job %s not requeued for its pause (it pauses in place): %s", job_id,
                    slurm_job_id, exc)
        with self._lock:
            self._released[job_id] = NOT_RELEASED
