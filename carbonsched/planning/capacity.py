"""Planning several pausable deadline jobs together under a partition's GPU count. Pure, no I/O.

Planned one by one, every job puts its running time into the same clean hours; once more jobs want
to run than the partition has GPUs, the scheduler queues the overflow into dirtier hours, or past
a deadline. :func:`plan_jointly` places all of them at once: each job (one GPU) needs the running
time of its fastest ρ mix at its mean-ρ floor (:func:`~carbonsched.planning.planner.fastest_mix`,
as the single-job planner), between its arrival and its deadline less the planner's margin
(:func:`~carbonsched.planning.margin.margin_s`); in each slot at most ``gpus`` jobs run at a time.
Least carbon under those constraints is a transportation problem (job-seconds to slots, a slot
holding ``gpus`` × its length), solved exactly as a min-cost flow (successive shortest paths with
potentials). Within a slot the jobs' seconds are laid out by McNaughton's wrap-around rule, so no
instant has more than ``gpus`` jobs running and no job runs twice at once. Power may differ by job
(its mix's energy over its running time); a job runs at its mix's ρ levels, the higher ones first.

Work that does not fit before the deadlines makes the plan infeasible; it is then placed after
the last deadline, in the slots' order (``late_s`` says how much).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Sequence

from carbonsched.planning.margin import margin_s
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot, carbon_g
from carbonsched.planning.planner import Level, Plan, Segment, expected_carbon_g, fastest_mix, running_s_of
from carbonsched.planning.strategies import intensity_at

EPSILON_S = 1e-7

__all__ = ["CapacityJob", "JointPlan", "job_power_w", "max_concurrent", "plan_jointly", "split_slots"]


@dataclass(frozen=True)
class CapacityJob:
    """A job submitted ``arrival_s`` seconds after time 0; ``job.deadline_s`` counts from its arrival."""

    name: str
    arrival_s: float
    job: Job
    cost: CostModel

    def window(self, slots: Sequence[Slot]) -> tuple[float, float]:
        """When it may run: from its arrival to its deadline less the planner's margin (time 0 based)."""
        end_s = self.arrival_s + self.job.deadline_s - margin_s(self.job, self.cost)
        return self.arrival_s, max(self.arrival_s, end_s)


@dataclass(frozen=True)
class JointPlan:
    """Each job's plan (segments in seconds from time 0), their expected carbon and whether every
    job fits before its deadline at ``gpus`` jobs at a time."""

    plans: dict[str, Plan]
    expected_carbon_g: float
    feasible: bool
    gpus: int
    late_s: dict[str, float] = field(default_factory=dict)  # running seconds placed after the deadlines


def job_power_w(job: Job, cost: CostModel, levels: Sequence[Level] | None = None) -> float:
    """Mean running power (W) of the job's fastest mix: its energy over its running time."""
    levels = fastest_mix(job, cost) if levels is None else levels
    running_s = running_s_of(levels, cost)
    return sum(level.epochs * cost.epoch_energy_j(level.rho) for level in levels) / running_s


class _FlowGraph:
    """A residual graph for min-cost flow with float capacities and non-negative costs."""

    def __init__(self, nodes: int) -> None:
        self.to: list[int] = []
        self.cap: list[float] = []
        self.cost: list[float] = []
        self.out: list[list[int]] = [[] for _ in range(nodes)]

    def add(self, u: int, v: int, capacity: float, cost: float) -> int:
        edge = len(self.to)
        for a, b, c, w in ((u, v, capacity, cost), (v, u, 0.0, -cost)):
            self.out[a].append(len(self.to))
            self.to.append(b)
            self.cap.append(c)
            self.cost.append(w)
        return edge

    def flow(self, edge: int) -> float:
        return self.cap[edge ^ 1]

    def min_cost_flow(self, source: int, sink: int, amount: float) -> float:
        """Send up to ``amount`` from source to sink at least cost; returns what was sent."""
        nodes = len(self.out)
        potential = [0.0] * nodes
        sent = 0.0
        while sent < amount - EPSILON_S:
            dist = [math.inf] * nodes
            via = [-1] * nodes
            dist[source] = 0.0
            heap = [(0.0, source)]
            while heap:
                d, u = heapq.heappop(heap)
                if d > dist[u]:
                    continue
                for edge in self.out[u]:
                    if self.cap[edge] <= EPSILON_S:
                        continue
                    v = self.to[edge]
                    nd = d + self.cost[edge] + potential[u] - potential[v]
                    if nd < dist[v] - 1e-15:
                        dist[v], via[v] = nd, edge
                        heapq.heappush(heap, (nd, v))
            if dist[sink] == math.inf:
                break
            for node in range(nodes):
                if dist[node] < math.inf:
                    potential[node] += dist[node]
            push, node = amount - sent, sink
            while node != source:
                edge = via[node]
                push = min(push, self.cap[edge])
                node = self.to[edge ^ 1]
            node = sink
            while node != source:
                edge = via[node]
                self.cap[edge] -= push
                self.cap[edge ^ 1] += push
                node = self.to[edge ^ 1]
            sent += push
        return sent


def split_slots(slots: Sequence[Slot], cuts: Sequence[float]) -> list[Slot]:
    """``slots`` cut at every time in ``cuts`` that falls inside one."""
    inside = sorted({c for c in cuts if slots and slots[0].start_s < c < slots[-1].end_s})
    out = []
    for slot in slots:
        start = slot.start_s
        for cut in inside:
            if start + EPSILON_S < cut < slot.end_s - EPSILON_S:
                out.append(Slot(start, cut, slot.intensity_g_per_kwh))
                start = cut
        out.append(Slot(start, slot.end_s, slot.intensity_g_per_kwh))
    return out


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def plan_jointly(jobs: Sequence[CapacityJob], slots: Sequence[Slot], gpus: int) -> JointPlan:
    """Least-carbon plans of ``jobs`` (one GPU each) with at most ``gpus`` running at any time."""
    if not (isinstance(gpus, int) and gpus >= 1):
        raise PlanningInputError(f"gpus must be a positive whole number, got {gpus!r}")
    if len({j.name for j in jobs}) != len(jobs):
        raise PlanningInputError("job names must be unique")
    slots = split_slots(slots, [t for j in jobs for t in (j.arrival_s, *j.window(slots))])
    levels = {j.name: fastest_mix(j.job, j.cost) for j in jobs}
    need_s = {j.name: running_s_of(levels[j.name], j.cost) for j in jobs}
    power_w = {j.name: job_power_w(j.job, j.cost, levels[j.name]) for j in jobs}
    windows = {j.name: j.window(slots) for j in jobs}
    source, sink = 0, 1 + len(jobs) + len(slots)
    graph = _FlowGraph(sink + 1)
    edges: dict[tuple[int, int], int] = {}
    for j_index, j in enumerate(jobs):
        graph.add(source, 1 + j_index, need_s[j.name], 0.0)
        start_s, end_s = windows[j.name]
        for s_index, slot in enumerate(slots):
            seconds = _overlap(start_s, end_s, slot.start_s, slot.end_s)
            if seconds > EPSILON_S:
                cost = carbon_g(power_w[j.name], slot.intensity_g_per_kwh, 1.0)  # g per running second
                edges[j_index, s_index] = graph.add(1 + j_index, 1 + len(jobs) + s_index, seconds, cost)
    for s_index, slot in enumerate(slots):
        graph.add(1 + len(jobs) + s_index, sink, gpus * slot.length_s, 0.0)
    total_s = sum(need_s.values())
    sent = graph.min_cost_flow(source, sink, total_s)
    seconds = {(j, s): graph.flow(edge) for (j, s), edge in edges.items() if graph.flow(edge) > EPSILON_S}
    late = {}
    if sent < total_s - 1e-6 * max(1.0, total_s):
        late = _place_late(jobs, slots, seconds, need_s, gpus)
    plans = _segments_by_job(jobs, slots, seconds, levels)
    total_g = sum(plan.expected_carbon_g for plan in plans.values())
    return JointPlan(plans, total_g, not late, gpus, late)


def _place_late(jobs: Sequence[CapacityJob], slots: Sequence[Slot], seconds: dict[tuple[int, int], float],
                need_s: dict[str, float], gpus: int) -> dict[str, float]:
    """Work the deadlines leave out, in the free capacity of the slots after each job's window
    (adds to ``seconds``); returns each late job's late running seconds."""
    used = [sum(v for (j, s), v in seconds.items() if s == s_index) for s_index in range(len(slots))]
    late: dict[str, float] = {}
    for j_index, j in enumerate(jobs):
        missing = need_s[j.name] - sum(v for (jj, _), v in seconds.items() if jj == j_index)
        if missing <= EPSILON_S:
            continue
        late[j.name] = missing
        for s_index, slot in enumerate(slots):
            if slot.end_s <= j.arrival_s or missing <= EPSILON_S:
                continue
            mine = seconds.get((j_index, s_index), 0.0)
            room = min(gpus * slot.length_s - used[s_index], slot.length_s - mine,
                       slot.end_s - max(slot.start_s, j.arrival_s) - mine)
            take = max(0.0, min(room, missing))
            if take > EPSILON_S:
                seconds[j_index, s_index] = mine + take
                used[s_index] += take
                missing -= take
    return late


def _segments_by_job(jobs: Sequence[CapacityJob], slots: Sequence[Slot], seconds: dict[tuple[int, int], float],
                     levels: dict[str, tuple[Level, ...]]) -> dict[str, Plan]:
    """McNaughton's wrap-around within each slot: the jobs' seconds fill ``gpus`` lanes of the
    slot's length one after another; a job that crosses into the next lane runs its rest at the
    slot's start, which never overlaps its first piece (no job has more than the slot's length)."""
    pieces: dict[int, list[tuple[float, float]]] = {j_index: [] for j_index in range(len(jobs))}
    for s_index, slot in enumerate(slots):
        cursor = 0.0  # seconds of lanes used so far
        for j_index in range(len(jobs)):
            length = seconds.get((j_index, s_index), 0.0)
            if length <= EPSILON_S:
                continue
            lane_offset = max(0.0, cursor - slot.length_s * math.floor(cursor / slot.length_s + EPSILON_S))
            first = min(length, slot.length_s - lane_offset)
            pieces[j_index].append((slot.start_s + lane_offset, slot.start_s + lane_offset + first))
            if length - first > EPSILON_S:
                pieces[j_index].append((slot.start_s, slot.start_s + length - first))
            cursor += length
    plans = {}
    for j_index, j in enumerate(jobs):
        intervals = sorted(pieces[j_index])
        segments = _with_rho(intervals, levels[j.name], j.cost, slots)
        plan_g = expected_carbon_g(segments, slots, j.cost)
        feasible = bool(segments) and segments[-1].end_s <= j.arrival_s + j.job.deadline_s + 1e-6
        plans[j.name] = Plan(j.job, tuple(segments), tuple(levels[j.name]), plan_g, feasible)
    return plans


def _with_rho(intervals: Sequence[tuple[float, float]], levels: Sequence[Level], cost: CostModel,
              slots: Sequence[Slot]) -> list[Segment]:
    """Running intervals cut into segments at each ρ level (the higher ρ first) and slot bounds."""
    quotas = [(level.rho, level.epochs * cost.epoch_s(level.rho)) for level in sorted(levels, key=lambda l: -l.rho)]
    cuts = sorted({s.start_s for s in slots} | {s.end_s for s in slots})
    segments: list[Segment] = []
    quota_index, left_s = 0, quotas[0][1] if quotas else 0.0
    for start, end in intervals:
        at = start
        while at < end - EPSILON_S and quota_index < len(quotas):
            next_cut = min((c for c in cuts if c > at + EPSILON_S), default=end)
            stop = min(end, next_cut, at + left_s)
            segments.append(Segment(at, stop, quotas[quota_index][0], intensity_at(slots, at)))
            left_s -= stop - at
            at = stop
            if left_s <= EPSILON_S:
                quota_index += 1
                left_s = quotas[quota_index][1] if quota_index < len(quotas) else 0.0
    return segments


def max_concurrent(plans: Sequence[Plan]) -> int:
    """The most jobs running at one instant, over ``plans``' segments."""
    events = sorted([(s.start_s, 1) for p in plans for s in p.segments if s.length_s > EPSILON_S]
                    + [(s.end_s - EPSILON_S, -1) for p in plans for s in p.segments if s.length_s > EPSILON_S],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak
