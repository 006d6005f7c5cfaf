"""scripts/gpu_check.py: the CPU smoke run end to end (a real carbonsched daemon subprocess), the
skip line without CUDA, and its usage errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
RUN_LABELS = ["full FT"] + [f"green ρ={rho} {mode}" for rho in ("1", "0.7", "0.4") for mode in ("keep", "offload", "drop")]


def run_script(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout_s)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the first markdown table under ``heading``."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and alignment rows


def test_without_cuda_the_default_invocation_prints_one_skip_line_and_exits_0():
    done = run_script(timeout_s=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: skipped: no CUDA device"), done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--device", "cuda"), "CUDA is not available"),
    (("--device", "cpu", "--tiny", "--seq-len", "10"), "--seq-len must be >= 48"),
    (("--device", "cpu", "--tiny", "--precision", "fp8"), "unknown precision"),
])
def test_usage_errors_give_one_line_and_exit_2(args, message):
    done = run_script(*args, timeout_s=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gpu-check: error:") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cpu_smoke_run_writes_a_report_with_every_run_and_the_daemons_energy(tmp_path):
    report = tmp_path / "report.md"
    workdir = Path(tempfile.mkdtemp(prefix="gpuchk-", dir="/tmp"))  # short: unix socket paths are limited
    try:
        done = run_script("--device", "cpu", "--tiny", "--report", str(report), "--workdir", str(workdir))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == f"gpu-check: report written to {report}"
        text = report.read_text()

        steps = table_rows(text, "## Step time vs FLOPs")
        assert [r[0] for r in steps] == RUN_LABELS
        for label, flops_ratio, step_ms, step_ratio, share in steps:
            rho = 1.0 if label == "full FT" else float(re.search(r"ρ=([\d.]+)", label).group(1))
            assert 0 < float(flops_ratio) <= rho + 1e-6  # ρ from the daemon bounds the FLOPs
            assert float(step_ms) > 0 and float(step_ratio) > 0
        assert steps[0][1] == "1.000" and steps[0][3] == "1.000"

        memory = table_rows(text, "## Peak memory per frozen-state mode")
        assert [r[0] for r in memory] == RUN_LABELS
        assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in memory)

        energy = table_rows(text, "## Energy per epoch (carbonsched daemon)")
        assert sorted({r[0] for r in energy}) == sorted(RUN_LABELS)
        for label, epoch, rho, duration_s, kwh, _gpu_kwh, j_per_step, carbon_g, _saving in energy:
            assert epoch in ("0", "1"), (label, epoch)
            expected_rho = 1.0 if label == "full FT" else float(re.search(r"ρ=([\d.]+)", label).group(1))
            assert float(rho) == pytest.approx(expected_rho)
            assert float(kwh) > 0 and float(j_per_step) > 0 and float(carbon_g) > 0
        assert len(energy) == 2 * len(RUN_LABELS)
        assert '"cpu"' in text.split("Meter (from `carbonsched status`)", 1)[1]
        assert "reloaded" in (workdir / "daemon.log").read_text()  # ρ changed by policy reload
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_fsdp_case_skips_with_one_line_where_it_cannot_run():
    done = run_script("--device", "cpu", "--tiny", "--fsdp-only", timeout_s=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [
        "gpu-check: FSDP case skipped: on the CPU it runs only when asked (--fsdp-procs 2: gloo processes)"
    ]


def test_the_fsdp_case_on_two_gloo_processes_reports_every_rank(tmp_path):
    report = tmp_path / "report.md"
    workdir = Path(tempfile.mkdtemp(prefix="gpuchk-", dir="/tmp"))
    try:
        done = run_script("--device", "cpu", "--tiny", "--fsdp-procs", "2", "--fsdp-only", "--report", str(report),
                          "--workdir", str(workdir), timeout_s=300)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = table_rows(report.read_text(), "## FSDP2 (`--strategy fsdp`), 2 processes")
        assert [(r[0], r[1]) for r in rows] == [("full FT", "0"), ("full FT", "1"),
                                                ("green ρ=0.5 drop", "0"), ("green ρ=0.5 drop", "1")]
        assert float(rows[0][5]) == 1.0 and 0 < float(rows[2][5]) <= 0.5
        assert int(rows[2][4]) < int(rows[0][4])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
