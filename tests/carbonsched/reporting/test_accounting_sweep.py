"""The energy split's sweep (carbonsched.reporting.accounting.WindowShare) against the quadratic split it
replaced (bench/accounting_reference.py) on random nodes: CPU/RAM samples, GPUs with and without
pid lists, jobs with device lists, foreign pids and windows of every overlap, one window per job
(the case where the old split is correct). Energy and carbon agree to rounding."""

from __future__ import annotations

import random

import pytest

from bench.accounting_reference import reference_power_pieces, reference_sample_job_energy_j
from carbonsched.reporting.accounting import IntensityCurve, JobWindow, WindowShare, sample_job_energy_j, share_pieces


def _random_node(rng: random.Random, jobs: int, samples: int) -> tuple[list[dict], list[JobWindow]]:
    pids = {f"j{k}": frozenset(rng.sample(range(100, 140), rng.randint(1, 3))) for k in range(jobs)}
    windows = []
    for k in range(jobs):
        start = rng.uniform(0, 90)
        end = start + rng.choice([0.0, rng.uniform(0.01, 5), rng.uniform(5, 60)])
        devices = frozenset(rng.sample(["gpu:0", "gpu:1"], rng.randint(0, 2)))
        windows.append(JobWindow(f"j{k}", pids[f"j{k}"], devices, start, end, pids_foreign=rng.random() < 0.2))
    rows = []
    for device in ("cpu", "ram", "gpu:0", "gpu:1"):
        t = rng.uniform(-5, 5)
        for _ in range(samples):
            span = rng.choice([0.0, rng.uniform(0.05, 3)])
            listed = sorted(rng.sample(range(100, 140), rng.randint(0, 4))) if device.startswith("gpu") else []
            rows.append({"start": t, "end": t + span, "device": device, "energy_j": rng.uniform(0, 300), "pids": listed})
            t += span if rng.random() < 0.8 else rng.uniform(0, 2)
    rows.sort(key=lambda r: (r["start"], r["device"]))
    return rows, windows


@pytest.mark.parametrize("seed", range(40))
def test_sweep_matches_the_quadratic_split_on_random_nodes(seed):
    rng = random.Random(seed)
    rows, windows = _random_node(rng, jobs=rng.randint(1, 8), samples=rng.randint(1, 40))
    curve = IntensityCurve((rng.uniform(-10, 100), rng.uniform(50, 500)) for _ in range(rng.randint(1, 6)))
    for target in windows:
        others = [w for w in windows if w.job_id != target.job_id]
        share = WindowShare(target.start_s, target.end_s, target, others)
        for name, pieces_of in (("sweep", share.power_pieces),
                                ("reference", lambda row: reference_power_pieces(row, target, others))):
            energy = carbon = 0.0
            for row in rows:
                for a, b, power_w in pieces_of(row):
                    energy += power_w * (b - a)
                    carbon += power_w * curve.integral(a, b)
            if name == "sweep":
                sweep_energy, sweep_carbon = energy, carbon
        assert sweep_energy == pytest.approx(energy, rel=1e-9, abs=1e-9)
        assert sweep_carbon == pytest.approx(carbon, rel=1e-9, abs=1e-9)
    live = sample_job_energy_j(rows, windows)
    reference = reference_sample_job_energy_j(rows, windows)
    assert live.keys() == reference.keys()
    for job_id, energy_j in reference.items():
        assert live[job_id] == pytest.approx(energy_j, rel=1e-9, abs=1e-9)


def test_share_pieces_tile_the_window_and_count_each_other_job_once():
    others = [JobWindow("b", frozenset(), frozenset(), 2, 6), JobWindow("b", frozenset(), frozenset(), 4, 8),
              JobWindow("c", frozenset(), frozenset(), 5, 5), JobWindow("d", frozenset(), frozenset(), 7, 20)]
    assert share_pieces(0, 10, others) == [(0, 2, 1.0), (2, 4, 0.5), (4, 6, 0.5), (6, 7, 0.5), (7, 8, 1 / 3),
                                           (8, 10, 0.5)]
    assert share_pieces(3, 3, others) == []


def test_a_jobs_overlapping_windows_count_once_in_the_live_split():
    job = JobWindow("a", frozenset({1}), frozenset(), 0, 10)
    phantom = JobWindow("a", frozenset({1}), frozenset(), 0, 100)
    sample = {"start": 0.0, "end": 10.0, "device": "cpu", "energy_j": 50.0, "pids": []}
    assert sample_job_energy_j([sample], [job, phantom]) == {"a": 50.0}
