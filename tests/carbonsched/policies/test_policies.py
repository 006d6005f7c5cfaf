"""ρ policies: loading, validation with line numbers, every kind, hysteresis, dwell and plugins."""

from __future__ import annotations

import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonsched.policies import (Policy, PolicyFileError, PolicyFileUnreadable, PolicyProblem,
                                  check_policy_file, default_policy_path, load_policy)
from carbonsched.planning import synthetic_grids
from carbonsched.types import ForecastPoint, Signals

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def signals(intensity: float | None, *, at_s: float = 0.0, **kwargs) -> Signals:
    return Signals(now=T0 + timedelta(seconds=at_s), intensity_g_per_kwh=intensity, **kwargs)


def rho_for(policy: Policy, intensity: float | None, **kwargs) -> float:
    return policy.decide(signals(intensity, **kwargs)).rho


# ---- shipped files -------------------------------------------------------------------------------

def shipped_policy_files() -> list[Path]:
    return sorted((REPO / "policies").glob("*.toml")) + [default_policy_path()]


def test_every_shipped_policy_file_is_valid_and_loads():
    files = shipped_policy_files()
    assert {p.stem for p in files} >= {"steps", "linear", "forecast", "budget", "constant", "default_policy"}
    for path in files:
        assert check_policy_file(path) == [], path
        policy = load_policy(path)
        assert 0 < policy.rho_min <= 1
        assert policy.rho_min <= policy.decide(signals(250.0)).rho <= 1


def test_steps_example_works_as_documented():
    policy = load_policy(REPO / "policies" / "steps.toml")
    assert (policy.name, policy.kind, policy.rho_min) == ("steps", "steps", 0.4)
    assert [rho_for(policy, g) for g in (100, 149.9, 150, 250, 299, 300, 900)] == [1.0, 1.0, 0.7, 0.7, 0.7, 0.4, 0.4]


def grid_signals(samples: list[tuple[datetime, float]], index: int, source: str) -> Signals:
    """What the daemon hands a policy at ``samples[index]``: the next 24 h as the forecast, or (no
    forecast) the last 7 days of readings as the history, which include the current one."""
    at, intensity = samples[index]
    if source == "forecast":
        return signals_at(at, intensity, forecast=tuple(ForecastPoint(t, g) for t, g in samples[index + 1:index + 25]))
    return signals_at(at, intensity, history=tuple(ForecastPoint(t, g) for t, g in samples[index - 7 * 24:index + 1]))


def signals_at(at: datetime, intensity: float, **kwargs) -> Signals:
    return Signals(now=at, intensity_g_per_kwh=intensity, **kwargs)


@pytest.mark.parametrize("source", ["forecast", "history"])
@pytest.mark.parametrize("grid", synthetic_grids.KINDS)
def test_default_policy_lowers_rho_in_the_dirty_hours_of_any_grid(grid, source):
    """A nuclear grid at 20-120 gCO2e/kWh, a solar one at 150-600 and a windy one at 40-350: in
    each, the hours in the dirtiest quarter get a clearly lower mean ρ than those in the cleanest."""
    policy = load_policy(default_policy_path())
    assert default_policy_path().parent.name == "data"
    samples = synthetic_grids.generate(grid, days=14, step_min=60, seed=1)
    decided = [(samples[i][1], policy.decide(grid_signals(samples, i, source)).rho)
               for i in range(7 * 24, len(samples) - 24)]
    ordered = sorted(g for g, _ in decided)
    clean_below, dirty_above = ordered[len(ordered) // 4], ordered[3 * len(ordered) // 4]
    clean = [rho for g, rho in decided if g <= clean_below]
    dirty = [rho for g, rho in decided if g >= dirty_above]
    mean_clean, mean_dirty = sum(clean) / len(clean), sum(dirty) / len(dirty)
    assert mean_dirty < mean_clean - 0.2, (grid, source, mean_clean, mean_dirty)
    assert min(rho for _, rho in decided) >= policy.rho_min


def test_default_policy_without_forecast_or_history_uses_its_fallback():
    policy = load_policy(default_policy_path())
    decision = policy.decide(signals(250.0, history=forecast_points(250.0, start_h=-1)))
    assert decision.rho == policy.fallback_rho == 0.7
    assert "1 readings in the last 7 days" in decision.reason


# ---- validation ----------------------------------------------------------------------------------

def test_all_problems_reported_with_file_line_and_field(tmp_path):
    path = write(tmp_path, """
        kind = "steps"
        rho_min = 1.5
        rho_mn = 0.3
        [[steps]]
        below = 300
        rho = 1.0
        [[steps]]
        below = 200
        rho = "high"
        [[steps]]
        [gpu_power]
        above_w = -5
        rho_scale = 0.9
        """, name="bad.toml")
    problems = check_policy_file(path)
    found = {(p.line, p.field) for p in problems}
    assert found == {(2, "rho_min"), (3, "rho_mn"), (8, "steps[1].below"), (9, "steps[1].rho"),
                     (10, "steps[2].rho"), (12, "gpu_power.above_w")}
    assert all(p.file == str(path) for p in problems)
    with pytest.raises(PolicyFileError) as err:
        load_policy(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 6
    assert f"{path}:9: field 'steps[1].rho': must be a number in (0, 1], got 'high'" in lines
    assert f"{path}:3: field 'rho_mn': unknown field; did you mean 'rho_min'?" in lines
    assert [int(line.split(":")[1]) for line in lines] == sorted(int(line.split(":")[1]) for line in lines)


def test_rho_below_rho_min_and_missing_below_on_a_middle_step(tmp_path):
    path = write(tmp_path, """
        kind = "steps"
        rho_min = 0.5

        [[steps]]
        rho = 1.0

        [[steps]]
        below = 300
        rho = 0.3
        """)
    problems = {(p.line, p.field): p.message for p in check_policy_file(path)}
    assert problems[(4, "steps[0].below")].startswith("required on every step but the last")
    assert problems[(9, "steps[1].rho")] == "must be a number in [0.5, 1], got 0.3"


def test_toml_syntax_error_reports_tomllib_line(tmp_path):
    path = write(tmp_path, 'kind = "linear"\nrho_min = 0.4\nlow_g_per_kwh = = 3\n')
    [problem] = check_policy_file(path)
    assert problem.line == 3 and problem.field is None
    assert problem.message.startswith("TOML syntax error at column")


@pytest.mark.parametrize("text, field, message_start", [
    ('rho = 0.5\n', "kind", "required field is missing"),
    ('kind = "stepz"\n', "kind", "unknown kind 'stepz'; known kinds: budget, constant, forecast, linear, steps"),
    ('kind = 3\n', "kind", "must be a string, got 3"),
    ('kind = "linear"\nlow_g_per_kwh = 300\nhigh_g_per_kwh = 100\nrho_at_low = 1\nrho_at_high = 0.5\n',
     "high_g_per_kwh", "must be above low_g_per_kwh (300), got 100"),
    ('kind = "budget"\n', "budget_g_per_day", "set budget_g_per_day, budget_g_per_job or both"),
    ('kind = "constant"\nrho = true\n', "rho", "must be a number in [0.34, 1], got true"),
    ('kind = "constant"\nrho = 1\nmin_dwell_s = -1\n', "min_dwell_s", "must be a number >= 0, got -1"),
])
def test_single_problem_messages(tmp_path, text, field, message_start):
    [problem] = check_policy_file(write(tmp_path, text))
    assert problem.field == field
    assert problem.message.startswith(message_start), problem.message


def test_unreadable_file_is_one_problem_without_line(tmp_path):
    missing = tmp_path / "missing.toml"
    assert check_policy_file(missing) == [
        PolicyProblem(str(missing), None, None, "cannot read: No such file or directory")]
    with pytest.raises(PolicyFileUnreadable, match="missing.toml: cannot read"):
        load_policy(missing)


def test_name_defaults_to_file_stem_and_can_be_set(tmp_path):
    assert load_policy(write(tmp_path, 'kind = "constant"\nrho = 1\n', name="night.toml")).name == "night"
    named = load_policy(write(tmp_path, 'kind = "constant"\nname = "pinned"\nrho = 1\n'))
    assert named.name == "pinned" and named.decide(signals(100.0)).policy == "pinned"


# ---- kinds ---------------------------------------------------------------------------------------

def test_linear_interpolates_and_clamps_outside(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "linear"
        rho_min = 0.4
        low_g_per_kwh = 100
        high_g_per_kwh = 400
        rho_at_low = 1.0
        rho_at_high = 0.4
        """))
    assert [round(rho_for(policy, g), 6) for g in (50, 100, 250, 400, 800)] == [1.0, 1.0, 0.7, 0.4, 0.4]


def forecast_points(*intensities: float, start_h: float = 1.0) -> tuple[ForecastPoint, ...]:
    return tuple(ForecastPoint(T0 + timedelta(hours=start_h + i), g) for i, g in enumerate(intensities))


def test_forecast_ranks_current_intensity_within_window(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "forecast"
        rho_min = 0.4
        window_h = 6
        rho_at_lowest = 1.0
        rho_at_highest = 0.4
        """))
    # Five points inside the next 6 h; the 900 at +10 h is outside the window and must not count.
    forecast = forecast_points(100, 200, 300, 400, 500) + (ForecastPoint(T0 + timedelta(hours=10), 900),)
    assert rho_for(policy, 50, forecast=forecast) == 1.0
    assert rho_for(policy, 300, forecast=forecast) == pytest.approx(0.7)
    assert rho_for(policy, 350, forecast=forecast) == pytest.approx(1.0 - 0.6 * 0.625)
    assert rho_for(policy, 600, forecast=forecast) == 0.4
    no_forecast = policy.decide(signals(600, forecast=forecast_points(100, start_h=-5)))
    assert no_forecast.rho == 0.4 and "no usable forecast" in no_forecast.reason


def test_forecast_ranks_within_recent_history_only_when_the_forecast_is_too_short(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "forecast"
        rho_min = 0.4
        history_days = 2
        rho_at_lowest = 1.0
        rho_at_highest = 0.4
        """))
    # Readings of the last two days; the 900 three days ago is outside history_days.
    history = forecast_points(900, start_h=-72) + forecast_points(100, 200, 300, 400, 500, start_h=-40)
    ranked = policy.decide(signals(300, history=history))
    assert ranked.rho == pytest.approx(0.7) and "last 2 days' readings" in ranked.reason
    explanation = policy.explain(signals(300, history=history)).splitlines()
    assert "forecast 0 points, history 6 readings" in explanation[1]
    assert explanation[3] == "  last 2 days' readings: 5 values, 100–500 gCO2e/kWh"
    assert rho_for(policy, 600, history=history) == 0.4
    # A usable forecast wins over the history.
    with_forecast = policy.decide(signals(300, history=history, forecast=forecast_points(300, 310, 320)))
    assert with_forecast.rho == 1.0 and "next 24 h forecast" in with_forecast.reason
    # One forecast point is not a forecast: the history decides.
    assert rho_for(policy, 300, history=history, forecast=forecast_points(10)) == pytest.approx(0.7)


def test_forecast_without_history_days_ignores_history(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "forecast"
        rho_at_lowest = 1.0
        rho_at_highest = 0.4
        fallback_rho = 0.6
        """))
    decision = policy.decide(signals(300, history=forecast_points(100, 200, 300, 400, start_h=-5)))
    assert decision.rho == 0.6 and "no usable forecast" in decision.reason


def test_forecast_history_days_must_be_positive(tmp_path):
    path = write(tmp_path, """
        kind = "forecast"
        rho_at_lowest = 1.0
        rho_at_highest = 0.4
        history_days = 0
        """)
    assert [str(p) for p in check_policy_file(path)] == [f"{path}:4: field 'history_days': must be a number > 0, got 0"]


def test_budget_scales_rho_down_with_used_fraction(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "budget"
        rho_min = 0.4
        budget_g_per_day = 1000
        budget_g_per_job = 200
        """))
    assert rho_for(policy, 300, carbon_used_today_g=0.0, carbon_used_job_g=0.0) == 1.0
    assert rho_for(policy, 300, carbon_used_today_g=500.0) == pytest.approx(0.7)
    # The job budget is more used (75 %) than the day's (10 %): it decides.
    decision = policy.decide(signals(300, carbon_used_today_g=100.0, carbon_used_job_g=150.0))
    assert decision.rho == pytest.approx(0.55) and "this job" in decision.reason
    assert rho_for(policy, 300, carbon_used_today_g=5000.0) == 0.4
    unknown = policy.decide(signals(300))
    assert unknown.rho == 1.0 and "unknown" in unknown.reason


def test_unknown_intensity_gives_fallback_rho(tmp_path):
    steps = load_policy(REPO / "policies" / "steps.toml")
    decision = steps.decide(signals(None))
    assert decision.rho == steps.rho_min == 0.4 and "intensity unknown" in decision.reason
    linear = load_policy(REPO / "policies" / "linear.toml")
    assert rho_for(linear, None) == 0.7
    assert rho_for(load_policy(write(tmp_path, 'kind = "constant"\nrho = 0.8\n')), None) == 0.8


def test_gpu_power_rule_scales_and_clamps_and_notes_missing_power(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "constant"
        rho_min = 0.5
        rho = 0.8
        gpu_power = { above_w = 250, rho_scale = 0.5 }
        """))
    assert rho_for(policy, 100, gpu_power_w=200.0) == 0.8
    scaled = policy.decide(signals(100, gpu_power_w=300.0))
    assert scaled.rho == 0.5 and "clamped" in scaled.reason and "300 W > 250 W" in scaled.reason
    absent = policy.decide(signals(100))
    assert absent.rho == 0.8 and "GPU power unknown" in absent.reason


# ---- state: hysteresis and dwell -------------------------------------------------------------------

def test_hysteresis_needs_threshold_crossed_by_margin(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "steps"
        rho_min = 0.4
        hysteresis_g_per_kwh = 20
        [[steps]]
        below = 200
        rho = 1.0
        [[steps]]
        rho = 0.5
        """))
    sequence = [(150, 1.0), (210, 1.0), (219, 1.0), (221, 0.5), (195, 0.5), (181, 0.5), (179, 1.0), (205, 1.0)]
    got = [(g, rho_for(policy, g, at_s=i * 60)) for i, (g, _) in enumerate(sequence)]
    assert got == sequence


def test_hysteresis_on_linear_holds_until_margin_exceeded(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "linear"
        rho_min = 0.4
        low_g_per_kwh = 100
        high_g_per_kwh = 400
        rho_at_low = 1.0
        rho_at_high = 0.4
        hysteresis_g_per_kwh = 10
        """))
    assert rho_for(policy, 250) == pytest.approx(0.7)
    assert rho_for(policy, 259, at_s=60) == pytest.approx(0.7)
    assert rho_for(policy, 262, at_s=120) == pytest.approx(1.0 - 0.6 * 162 / 300)


def test_min_dwell_holds_rho_until_time_has_passed(tmp_path):
    policy = load_policy(write(tmp_path, """
        kind = "steps"
        rho_min = 0.4
        min_dwell_s = 600
        [[steps]]
        below = 200
        rho = 1.0
        [[steps]]
        rho = 0.5
        """))
    assert rho_for(policy, 100, at_s=0) == 1.0
    held = policy.decide(signals(300, at_s=300))
    assert held.rho == 1.0 and "min_dwell_s" in held.reason
    assert rho_for(policy, 300, at_s=599) == 1.0
    assert rho_for(policy, 300, at_s=600) == 0.5
    assert rho_for(policy, 100, at_s=900) == 0.5
    assert rho_for(policy, 100, at_s=1200) == 1.0


def test_explain_is_multiline_and_does_not_change_state(tmp_path):
    policy = load_policy(REPO / "policies" / "linear.toml")  # min_dwell_s = 900
    assert rho_for(policy, 100) == 1.0
    text = policy.explain(signals(400, at_s=60))
    assert len(text.splitlines()) >= 4 and "min_dwell_s holds" in text and text.endswith("=> ρ 1.00")
    assert rho_for(policy, 400, at_s=901) == 0.4  # the dwell still counts from t=0, not from explain


@settings(max_examples=60, deadline=None)
@given(intensity=st.one_of(st.none(), st.floats(0, 2000)), power=st.one_of(st.none(), st.floats(0, 700)),
       used=st.one_of(st.none(), st.floats(0, 1e5)))
def test_rho_always_within_rho_min_and_one(intensity, power, used):
    for path in shipped_policy_files():
        policy = load_policy(path)
        decision = policy.decide(signals(intensity, gpu_power_w=power, carbon_used_today_g=used,
                                         carbon_used_job_g=used, forecast=forecast_points(150, 420, 250)))
        assert policy.rho_min <= decision.rho <= 1.0


# ---- plugins -------------------------------------------------------------------------------------

PLUGIN_MODULE = '''
from carbonsched.policies import Policy, Target


class NightOwlPolicy(Policy):
    """ρ = day_rho between 08:00 and 20:00 UTC, else 1."""

    def configure(self, reader):
        self.day_rho = self.read_rho(reader, "day_rho")

    def target(self, intensity_g_per_kwh, signals):
        if 8 <= signals.now.hour < 20:
            return Target(self.day_rho, "daytime")
        return Target(1.0, "night")
'''


def install_plugin(tmp_path: Path, monkeypatch, module: str, body: str) -> None:
    """A real distribution on sys.path: a module and a dist-info with an entry point."""
    (tmp_path / f"{module}.py").write_text(body, encoding="utf-8")
    dist_info = tmp_path / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(
        f"[carbonsched.policies]\nnight_owl = {module}:NightOwlPolicy\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_third_party_kind_loads_through_entry_point(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "owl_policy_plugin", PLUGIN_MODULE)
    path = write(tmp_path, 'kind = "night_owl"\nrho_min = 0.5\nday_rho = 0.6\n')
    policy = load_policy(path)
    assert policy.kind == "night_owl"
    assert rho_for(policy, 300) == 0.6  # T0 is 12:00 UTC
    assert rho_for(policy, None) == 0.5  # fallback_rho defaults to rho_min for plugins too
    assert policy.decide(Signals(now=T0.replace(hour=23), intensity_g_per_kwh=300)).rho == 1.0
    bad = write(tmp_path, 'kind = "night_owl"\nrho_min = 0.5\nday_rho = 0.2\nday_rhoo = 1\n', name="bad.toml")
    assert {(p.line, p.field) for p in check_policy_file(bad)} == {(3, "day_rho"), (4, "day_rhoo")}


def test_broken_plugin_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "owl_broken_plugin", "raise RuntimeError('no GPU here')\n")
    [problem] = check_policy_file(write(tmp_path, 'kind = "night_owl"\n'))
    assert problem.field == "kind" and "failed to load: RuntimeError: no GPU here" in problem.message


def test_lines_found_for_inline_tables_and_arrays(tmp_path):
    path = write(tmp_path, """
        kind = "steps"
        description = \"\"\"
        rho_min = not a key inside this string
        \"\"\"
        steps = [
          { below = 150, rho = 1.0 },
          { rho = "x" },
        ]
        gpu_power = { above_w = 250, rho_scale = 2 }
        """)
    assert {(p.line, p.field) for p in check_policy_file(path)} == {(5, "steps[1].rho"), (9, "gpu_power.rho_scale")}
