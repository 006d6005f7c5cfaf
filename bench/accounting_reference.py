"""The accounting split as it was before the sweep (carbonsched.reporting.accounting before WindowShare), for
benchmarking and equivalence tests only: for every sample it cuts the sample at every boundary of
every eligible window and counts, per piece, the jobs whose windows cover the piece's midpoint.
O(samples × windows²) for one epoch.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from carbonsched.reporting.accounting import JobWindow


def reference_target_share(
    sample_start: float, sample_end: float, target: JobWindow, others: Sequence[JobWindow]
) -> list[tuple[float, float, float]]:
    """Pieces (start, end, fraction) of the sample's span inside ``target`` where ``target``'s
    job gets ``fraction`` of the power (1 / jobs eligible and active there)."""
    lo, hi = max(sample_start, target.start_s), min(sample_end, target.end_s)
    if hi <= lo:
        return []
    cuts = {lo, hi}
    for w in others:
        for t in (w.start_s, w.end_s):
            if lo < t < hi:
                cuts.add(t)
    points = sorted(cuts)
    pieces = []
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        jobs = {w.job_id for w in others if w.start_s <= mid < w.end_s} | {target.job_id}
        pieces.append((a, b, 1.0 / len(jobs)))
    return pieces


def reference_power_pieces(
    sample: dict[str, Any], target: JobWindow, others: Sequence[JobWindow]
) -> list[tuple[float, float, float]]:
    """Pieces (start, end, W) of one energy sample's power that belong to ``target``'s job
    (``others``: the other jobs' windows)."""
    span_s = sample["end"] - sample["start"]
    if span_s <= 0 or not target.eligible(sample["device"], sample["pids"]):
        return []
    power_w = sample["energy_j"] / span_s
    eligible = [w for w in others if w.eligible(sample["device"], sample["pids"])]
    return [(a, b, power_w * f) for a, b, f in reference_target_share(sample["start"], sample["end"], target, eligible)]


def reference_sample_job_energy_j(samples: Iterable[dict[str, Any]], windows: Sequence[JobWindow]) -> dict[str, float]:
    """Each job's energy (J) in ``samples``, summed over each of its windows."""
    shares: dict[str, float] = {}
    for sample in samples:
        for target in windows:
            others = [w for w in windows if w.job_id != target.job_id]
            energy_j = sum(power_w * (b - a) for a, b, power_w in reference_power_pieces(sample, target, others))
            if energy_j:
                shares[target.job_id] = shares.get(target.job_id, 0.0) + energy_j
    return shares
