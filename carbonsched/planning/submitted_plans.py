"""The plans a daemon handed out to `carbonsched sbatch --socket`, planned together under the
partition's GPU count (``partition_gpus`` in its config) and re-planned at each submission.

Each submission adds a pausable deadline job; all kept jobs whose deadline has not passed are
planned again with :func:`~carbonsched.planning.capacity.plan_jointly` over the daemon's slots
(its reading, forecast and history), each with the work its last plan had not yet done by now. A
job that has not begun yet gets its new plan's first running instant as its begin time; one whose
Slurm job id is known (``plan.bind``) and whose begin moved is listed, so that the daemon moves
its ``StartTime`` in Slurm. A job that has begun keeps running under its node's daemon; here it
only takes its share of the GPUs. Plans live in memory: a daemon restart forgets them.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from carbonsched.planning.capacity import CapacityJob, JointPlan, plan_jointly
from carbonsched.planning.model import CostModel, Job, Slot
from carbonsched.planning.planner import fastest_mix, running_s_of

MOVED_MIN_S = 1.0  # a begin time moved by less is left alone

__all__ = ["SubmittedPlans", "Submission"]


@dataclass
class _Kept:
    job: Job  # deadline_s: unix seconds (absolute)
    cost: CostModel
    need_s: float
    segments: tuple[tuple[float, float], ...] = ()  # unix seconds
    slurm_job_id: str | None = None

    @property
    def begin_s(self) -> float:
        return self.segments[0][0] if self.segments else self.job.deadline_s

    def done_by(self, at_s: float) -> float:
        return sum(max(0.0, min(end, at_s) - start) for start, end in self.segments)


@dataclass(frozen=True)
class Submission:
    """The new job's id and plan (unix seconds), and the bound Slurm jobs whose begin moved."""

    plan_id: str
    begin_s: float
    finish_s: float
    expected_carbon_g: float
    mean_rho: float
    feasible: bool
    moved: tuple[tuple[str, float], ...]  # (Slurm job id, new begin, unix s)


class SubmittedPlans:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept] = {}

    def submit(self, job: Job, cost: CostModel, now_s: float, slots_until: Callable[[float], Sequence[Slot]],
               gpus: int) -> Submission:
        """Add ``job`` (its ``deadline_s`` in seconds from ``now_s``) and re-plan every kept job
        with at most ``gpus`` at a time, over ``slots_until(horizon_s)`` (seconds from ``now_s``
        to the last kept deadline)."""
        absolute = dataclasses.replace(job, deadline_s=now_s + job.deadline_s)
        with self._lock:
            self._kept = {pid: k for pid, k in self._kept.items() if k.job.deadline_s > now_s}
            plan_id = uuid.uuid4().hex[:12]
            self._kept[plan_id] = _Kept(absolute, cost, running_s_of(fastest_mix(job, cost), cost))
            before = {pid: k.begin_s for pid, k in self._kept.items()}
            horizon_s = max(k.job.deadline_s for k in self._kept.values()) - now_s
            joint = plan_jointly(self._present(now_s), slots_until(horizon_s), gpus)
            moved = self._apply(joint, now_s, before)
            new = joint.plans[plan_id]
            kept = self._kept[plan_id]
            return Submission(plan_id, kept.begin_s, now_s + new.finish_s, new.expected_carbon_g, new.mean_rho,
                              joint.feasible, tuple(moved))

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def bind(self, plan_id: str, slurm_job_id: str) -> bool:
        """Note the Slurm job a plan was submitted as; False for an unknown (or expired) plan."""
        with self._lock:
            kept = self._kept.get(plan_id)
            if kept is None:
                return False
            kept.slurm_job_id = slurm_job_id
            return True

    def _present(self, now_s: float) -> list[CapacityJob]:
        """Every kept job with the work its plan has not done by now, as seen from now."""
        present = []
        for pid, kept in self._kept.items():
            left_s = kept.need_s - kept.done_by(now_s) if kept.segments else kept.need_s
            share = max(1e-9, left_s / kept.need_s)
            job = dataclasses.replace(kept.job, epochs=kept.job.epochs * share, deadline_s=kept.job.deadline_s - now_s)
            present.append(CapacityJob(pid, 0.0, job, kept.cost))
        return present

    def _apply(self, joint: JointPlan, now_s: float, before: dict[str, float]) -> list[tuple[str, float]]:
        moved = []
        for pid, plan in joint.plans.items():
            kept = self._kept[pid]
            begun = bool(kept.segments) and before[pid] <= now_s
            done = tuple((s, min(e, now_s)) for s, e in kept.segments if s < now_s)
            kept.segments = done + tuple((now_s + s.start_s, now_s + s.end_s) for s in plan.segments)
            if not begun and kept.slurm_job_id and abs(kept.begin_s - before[pid]) >= MOVED_MIN_S:
                moved.append((kept.slurm_job_id, kept.begin_s))
        return moved
