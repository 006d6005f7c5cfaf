"""Invariants of the job records a store holds, whatever faults the daemon and its jobs went through
(restarts, kill -9 of either side, lost messages):

- per job, the intervals of its ended epochs do not overlap (no interval is billed to two epochs);
- per node, the energy attributed to jobs (the ended epochs' ``energy_j``) never exceeds the energy
  the node measured over the union of those epochs (its energy samples, while they are kept).

:func:`store_violations` lists what breaks them, one line each naming the job and epochs, so
reliability tests can check a store after every fault they inject.
"""

from __future__ import annotations

from carbonsched.reporting.accounting import node_energy_j
from carbonsched.store import Store

OVERLAP_TOLERANCE_S = 1e-6
ENERGY_TOLERANCE_J = 1e-6
ENERGY_TOLERANCE_REL = 1e-9


def epoch_overlaps(store: Store) -> list[str]:
    """Pairs of one job's ended epochs whose intervals overlap."""
    found = []
    for job in store.jobs():
        ended = sorted(
            (e["started_at"], e["ended_at"], e["epoch"]) for e in store.epochs(job["job_id"])
            if e["started_at"] is not None and e["ended_at"] is not None
        )
        latest_end, latest_epoch = None, None
        for start_s, end_s, epoch in ended:
            if latest_end is not None and start_s < latest_end - OVERLAP_TOLERANCE_S:
                found.append(
                    f"job {job['job_id']}: epoch {epoch} starts at {start_s:.6f}, before epoch {latest_epoch} "
                    f"ends at {latest_end:.6f} ({latest_end - start_s:.3f} s billed twice)"
                )
            if latest_end is None or end_s > latest_end:
                latest_end, latest_epoch = end_s, epoch
    return found


def attributed_and_measured_j(store: Store) -> tuple[float, float]:
    """The energy (J) attributed to every ended epoch of every job, and the node's measured energy
    over the union of those epochs."""
    attributed_j, windows = 0.0, []
    for job in store.jobs():
        for e in store.epochs(job["job_id"]):
            if e["started_at"] is None or e["ended_at"] is None:
                continue
            attributed_j += e["energy_j"] or 0.0
            windows.append((e["started_at"], e["ended_at"]))
    return attributed_j, node_energy_j(store, windows)


def store_violations(store: Store) -> list[str]:
    """Every broken invariant of the module docstring; empty when the store is consistent."""
    found = epoch_overlaps(store)
    attributed_j, measured_j = attributed_and_measured_j(store)
    if attributed_j > measured_j * (1 + ENERGY_TOLERANCE_REL) + ENERGY_TOLERANCE_J:
        found.append(f"node: {attributed_j:.6f} J attributed to jobs, more than the {measured_j:.6f} J measured")
    return found
