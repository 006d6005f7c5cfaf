"""`carbonsched backtest` as a user runs it: forecast sources, windows, strategy choice, step sizes,
workers and the progress bar."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.planning import CostModel, Job
from carbonsched.planning.backtest import run_backtest
from carbonsched.planning.noise_model import UK_LIKE
from carbonsched.planning.series import Series
from carbonsched.planning.synthetic_grids import generate, to_csv
from carbonsched.providers.trace import load_trace
from test_vintages import write_vintages

runner = CliRunner()
JOB_ARGS = ["--epochs", "4", "--epoch-minutes", "60", "--deadline-hours", "12", "--mean-rho", "0.7", "--may-pause",
            "--every-hours", "6", "--format", "json", "--no-progress"]


def _trace(tmp_path: Path, *, days: int = 4, step_change_at_s: float | None = None) -> Path:
    path = tmp_path / "solar.csv"
    path.write_text(to_csv(generate("solar", days=days, seed=3, step_change_at_s=step_change_at_s), "SYNTHETIC"))
    return path


def _series(path: Path) -> Series:
    trace = load_trace(path)
    return Series(trace.offsets_s, trace.values_g_per_kwh, trace.duration_s, trace.timestamps[0].timestamp())


def _backtest(*args: str) -> dict:
    result = runner.invoke(app, ["backtest", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_strategies_choose_what_runs_and_the_baseline_and_oracle_always_run(tmp_path):
    trace = _trace(tmp_path)
    document = _backtest("--trace", str(trace), *JOB_ARGS, "--strategies", "planner-receding,now-constant")
    assert set(document["strategies"]) == {"now-full", "now-constant", "planner-receding", "oracle"}
    assert "planner_regret_vs_oracle" not in document and "margin" not in document
    assert set(document["regret_vs_oracle"]) == {"now-full", "now-constant", "planner-receding"}
    assert document["vs_now_constant"]["planner-receding"]["p90"] < 0  # cheaper than ρ 0.7 now
    bad = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS, "--strategies", "planner,psychic"])
    assert bad.exit_code == 2 and "unknown strategy 'psychic'" in bad.output


def test_start_and_end_cut_the_trace(tmp_path):
    trace = _trace(tmp_path)
    whole = _backtest("--trace", str(trace), *JOB_ARGS, "--strategies", "planner")
    cut = _backtest("--trace", str(trace), *JOB_ARGS, "--strategies", "planner", "--start", "2025-02-04T00:00Z",
                    "--end", "2025-02-05T12:00:00+00:00")
    assert whole["submissions"] == 15  # 4 days, every 6 h, a 12 h deadline inside
    assert cut["submissions"] == 5 and cut["trace"]["start"].startswith("2025-02-04T00:00")
    assert cut["trace"]["duration_s"] == 36 * 3600
    empty = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS, "--start", "2026-01-01"])
    assert empty.exit_code == 2 and "--start/--end" in empty.output
    garbled = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS, "--end", "tomorrow"])
    assert garbled.exit_code == 2 and "--end 'tomorrow'" in garbled.output


def test_a_trace_whose_step_changes_says_so_and_has_no_gaps_for_it(tmp_path):
    trace = _trace(tmp_path, step_change_at_s=2 * 86400)  # 30 min for two days, then 15 min
    document = _backtest("--trace", str(trace), *JOB_ARGS, "--strategies", "planner")
    assert document["trace"]["step_sizes_s"] == [900.0, 1800.0]
    assert document["trace"]["step_changes"] == [{"at_s": 2 * 86400.0, "from_s": 1800.0, "to_s": 900.0}]
    assert document["trace"]["gaps"] == []
    text = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS[:-3], "--no-progress"])
    assert "steps 15 min, 30 min; the step changes 1 time, first at 2025-02-05T00:00Z (30 -> 15 min)" in text.stdout
    assert "no gaps" in text.stdout
    # A sample missing inside either part is still a gap.
    lines = trace.read_text().splitlines()
    del lines[10]
    trace.write_text("\n".join(lines) + "\n")
    assert len(_backtest("--trace", str(trace), *JOB_ARGS, "--strategies", "planner")["trace"]["gaps"]) == 1


def test_forecasts_as_issued_and_a_noise_model_feed_the_planners(tmp_path):
    trace = _trace(tmp_path)
    series = _series(trace)
    perfect = UK_LIKE.__class__(sigma_knots=((3600.0, 1e-9), (48 * 3600.0, 2e-9)), phi=0.5)
    issued = write_vintages(tmp_path / "perfect.csv", perfect.synthetic_vintages(series, 1800.0, 48 * 3600.0, 0))
    from_vintages = _backtest("--trace", str(trace), *JOB_ARGS, "--forecasts", str(issued))
    # Forecasts equal to the truth: the planner without margin is the oracle.
    no_margin, oracle = from_vintages["strategies"]["planner-no-margin"], from_vintages["strategies"]["oracle"]
    assert no_margin["carbon_g_mean"] == pytest.approx(oracle["carbon_g_mean"], rel=1e-6)
    assert "forecasts as issued" in from_vintages["forecasts"]
    model_file = tmp_path / "uk.json"
    model_file.write_text(json.dumps(UK_LIKE.to_json()))
    runs = [_backtest("--trace", str(trace), *JOB_ARGS, "--noise-model", str(model_file), "--seed", seed)
            for seed in ("1", "1", "2")]
    assert runs[0]["strategies"] == runs[1]["strategies"]
    assert runs[0]["strategies"]["planner"] != runs[2]["strategies"]["planner"]
    assert runs[0]["strategies"]["planner"]["carbon_g_mean"] > oracle["carbon_g_mean"]
    both = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS, "--noise", "0.1",
                               "--noise-model", str(model_file)])
    assert both.exit_code == 2 and "alternatives" in both.output
    bad = tmp_path / "bad.csv"
    bad.write_text("issued_at,target_start,forecast_g_per_kwh\n2025-02-03T00:00Z,2025-02-03T01:00Z,abc\n")
    failed = runner.invoke(app, ["backtest", "--trace", str(trace), *JOB_ARGS, "--forecasts", str(bad)])
    assert failed.exit_code == 2 and f"{bad}:2" in failed.output


def test_workers_give_the_same_result_as_one_process_and_report_progress(tmp_path):
    series = _series(_trace(tmp_path))
    job = Job(epochs=4, deadline_s=12 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
    cost = CostModel(epoch_s_at_full=3600, running_power_w=300)
    seen: list[tuple[int, int]] = []
    kwargs = dict(every_s=3 * 3600, noise=0.1, seed=4, make_steps_rho=lambda t0: (lambda i, a, f: 0.7))
    one = run_backtest(series, job, cost, workers=1, progress=lambda done, total: seen.append((done, total)), **kwargs)
    two = run_backtest(series, job, cost, workers=2, **kwargs)
    assert one.outcomes == two.outcomes and one.summaries == two.summaries
    assert seen == [(i, one.submissions) for i in range(1, one.submissions + 1)]


def test_the_progress_bar_goes_to_stderr(tmp_path):
    trace = _trace(tmp_path, days=2)
    done = subprocess.run([sys.executable, "-m", "carbonsched.cli", "backtest", "--trace", str(trace), *JOB_ARGS[:-1],
                           "--strategies", "planner", "--progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "backtest [" in done.stderr and "7/7 submissions" in done.stderr
    assert "backtest [" not in done.stdout and json.loads(done.stdout)["submissions"] == 7
