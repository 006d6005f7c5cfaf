"""bench.run_all's time record: CPU time per section (children included), the budget warning, and
what an ``--only`` run keeps of the last complete run."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bench.common
import bench.scheduling
from bench import run_all

pytestmark = pytest.mark.slow

# A child that burns this much CPU time (its own clock, not the wall clock) before exiting.
BURN_CPU_S = 0.3
BURN = f"import time\nwhile time.process_time() < {BURN_CPU_S}: pass\n"


def burn_in_child() -> None:
    subprocess.run([sys.executable, "-c", BURN], check=True)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """bench.run_all and the sections write under tmp_path instead of the repository."""
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    for module in (bench.common, bench.scheduling, run_all):
        monkeypatch.setattr(module, "RESULTS", results)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "RUN_LOG", results / "run_all_times.md")
    return results


def test_section_cpu_time_includes_the_child_processes_it_waited_for():
    timed = run_all.timed_section(burn_in_child)
    # The child's own CPU clock reached BURN_CPU_S, so RUSAGE_CHILDREN grew by at least that much.
    assert timed.cpu_s >= BURN_CPU_S * 0.9


def test_budget_warning_only_above_the_budget():
    assert run_all.budget_warning(run_all.BUDGET_CPU_S["quick"], quick=True) is None
    assert run_all.budget_warning(run_all.BUDGET_CPU_S["full"], quick=False) is None
    line = run_all.budget_warning(run_all.BUDGET_CPU_S["quick"] + 60, quick=True)
    assert line is not None and line.startswith("WARNING") and "quick-mode budget of 3 CPU-min" in line
    assert "30 CPU-min" in run_all.budget_warning(run_all.BUDGET_CPU_S["full"] + 1, quick=False)


def test_quick_only_run_of_a_real_section_records_cpu_wall_and_load(results_dir):
    assert run_all.main(["--quick", "--only", "scheduling"]) == 0
    record = (results_dir / "run_all_times.md").read_text()
    assert record.startswith("Last run (selected sections, quick mode,")
    assert "CPU-min" in record and "one torch thread" in record
    rows = [line for line in record.splitlines() if line.startswith("| scheduling |")]
    assert len(rows) == 1
    cpu_s, wall_s, load = (cell.strip() for cell in rows[0].strip("|").split("|")[1:])
    assert float(cpu_s) >= 0 and float(wall_s) >= 0 and (load == "?" or float(load) >= 0)
    assert "WARNING" not in record
    assert (results_dir / "scheduling.md").exists()
    # BENCHMARKS.md opens with the same record.
    assert rows[0] in (results_dir.parent.parent / "BENCHMARKS.md").read_text()


def test_a_run_over_budget_records_the_warning(results_dir, monkeypatch, capsys):
    monkeypatch.setitem(run_all.BUDGET_CPU_S, "quick", BURN_CPU_S / 3)
    monkeypatch.setattr(run_all, "run_section", lambda name, quick: burn_in_child())
    run_all.main(["--quick", "--only", "overhead"])
    record = (results_dir / "run_all_times.md").read_text()
    assert "WARNING:" in record and "exceeds the quick-mode budget" in record
    assert "WARNING:" in capsys.readouterr().err


def test_only_run_keeps_the_last_complete_record_below_its_own(results_dir, monkeypatch):
    monkeypatch.setattr(run_all, "run_section", lambda name, quick: None)
    run_all.main(["--quick"])
    run_all.main(["--quick", "--only", "flops"])
    run_all.main(["--quick", "--only", "dp"])
    record = (results_dir / "run_all_times.md").read_text()
    assert record.startswith("Last run (selected sections")
    assert record.count("Last complete run (all sections, quick mode") == 1
    assert "| dp |" in record.split("Last complete run")[0]
    assert "| flops |" not in record.split("Last complete run")[0]
    assert all(f"| {name} |" in record.split("Last complete run")[1] for name in run_all.SECTIONS)


def test_only_run_keeps_the_complete_record_but_not_an_older_partial_one_after_it(results_dir, monkeypatch):
    monkeypatch.setattr(run_all, "run_section", lambda name, quick: None)
    (results_dir / "run_all_times.md").write_text(
        "Last complete run (all sections, full mode, 2026-11-25 08:58 UTC): 8.9 min in total.\n\n"
        "Last run (selected sections, full mode, 2026-12-02): memory 3408 s.\n")
    run_all.main(["--only", "scheduling"])
    record = (results_dir / "run_all_times.md").read_text()
    assert record.count("Last run (selected sections") == 1 and "3408" not in record
    assert record.rstrip().endswith("Last complete run (all sections, full mode, 2026-11-25 08:58 UTC): 8.9 min in total.")
