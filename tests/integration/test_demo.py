"""`python -m carbon_demo --quick` as a subprocess: rows, report, plot, and no daemon left behind."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carbon_demo", *args], capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(") ")[1][0] != "Z"


def test_demo_quick_prints_epoch_rows_report_and_plot_and_stops_the_daemon(tmp_path):
    out = tmp_path / "out"
    result = _run("--quick", "--epochs", "2", "--out", str(out), "--keep-daemon-state")
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    pid = int(re.search(r"carbonsched run \(pid (\d+)\)", text).group(1))
    socket_dir = re.search(r"socket (\S+)/carbonsched.sock", text).group(1)
    assert "lr 0.001" in text and "scheme green" in text
    rows = re.findall(
        r"^\s+(\d)\s+\S+\s+(\d+\.\d)\s+(\d\.\d\d)\s+(\d+)/(\d+)\s+\S+\s+(\d\.\d{3})\s+\d+\.\d\s+(\d+\.\d{3})\s.*\s(\d\.\d+e-\d\d)\s+(\d\.\d+)$",
        text, re.M,
    )
    assert [r[0] for r in rows] == ["0", "1"], text  # numbered from 0, as metrics.jsonl and the report
    assert float(rows[-1][6]) < float(rows[0][6]), text  # the model learns: training loss falls
    for _epoch, intensity, rho, tensors, total, share, _loss, kwh, grams in rows:
        assert 100 < float(intensity) < 450 and 0.4 <= float(rho) <= 1.0 and 0 < int(tensors) <= int(total)
        assert float(kwh) > 0 and float(grams) > 0
    assert "total: 2 epochs" in text and "modelled" in text
    plot = out / "demo.png"
    assert f"plot: {plot}" in text and plot.read_bytes()[:4] == b"\x89PNG"
    assert "total: 2 epochs" in (out / "report.txt").read_text()
    assert (out / "daemon-state" / "carbonsched.sqlite3").is_file()
    assert not _alive(pid) and not os.path.exists(socket_dir)


def test_demo_refuses_an_out_path_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = _run("--quick", "--out", str(target))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "not a directory" in result.stderr
    assert "Traceback" not in result.stderr
