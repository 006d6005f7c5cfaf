"""Planning with a margin before the deadline, against forecast and epoch-time error. Pure.

A plan that uses every second up to the deadline misses it as soon as an epoch takes a little
longer than estimated. So the planner aims at ``deadline − margin``: ``MARGIN_SHARE`` of the
running time the remaining work needs at its fastest mix (at least ``at_least_s``, the daemon's
decide interval). The daemon's receding horizon and the backtest's ``planner`` both plan through
:func:`plan_with_margin`; the backtest's ``planner-no-margin`` is the same with share 0, which is
how the margin's carbon cost is measured.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from carbonsched.planning.model import CostModel, Job, Slot
from carbonsched.planning.planner import Plan, fastest_mix, plan_min_carbon, running_s_of

MARGIN_SHARE = 0.1
MIN_DEADLINE_S = 1e-3


def running_need_s(job: Job, cost: CostModel) -> float:
    """Seconds of running the job's fastest mix of ρ levels takes (at the mean-ρ floor)."""
    return running_s_of(fastest_mix(job, cost), cost)


def margin_s(job: Job, cost: CostModel, *, share: float = MARGIN_SHARE, at_least_s: float = 0.0) -> float:
    """The seconds kept free before the deadline: ``share`` of the running need, at least ``at_least_s``."""
    return max(share * running_need_s(job, cost), at_least_s)


def plan_with_margin(job: Job, cost: CostModel, slots: Sequence[Slot], *, share: float = MARGIN_SHARE,
                     at_least_s: float = 0.0) -> Plan:
    """:func:`plan_min_carbon` aiming at ``deadline − margin``; the plan keeps the job's real deadline.
    ``feasible`` says whether the work fits before the margin."""
    margin = margin_s(job, cost, share=share, at_least_s=at_least_s) if share > 0 or at_least_s > 0 else 0.0
    aimed = dataclasses.replace(job, deadline_s=max(MIN_DEADLINE_S, job.deadline_s - margin))
    return dataclasses.replace(plan_min_carbon(aimed, cost, slots), job=job)


__all__ = ["MARGIN_SHARE", "margin_s", "plan_with_margin", "running_need_s"]
