"""`carbonsched plan` explains what its table and plot would leave puzzling: a short first slot (now
to the forecast's first point, when the points are not aligned with now) and a slot run only in
part, which shows as a short run followed by a pause."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.reporting.plan_notes import first_slot_note, partly_run_note, partly_run_slots
from carbonsched.planning import CostModel, Job, strategies
from carbonsched.planning.forecast import slots_from_forecast
from carbonsched.types import ForecastPoint

NOW = datetime(2026, 3, 2, 13, 27, 36, tzinfo=timezone.utc)
HOURLY = [(NOW.replace(minute=30, second=0) + timedelta(hours=h), v)
          for h, v in enumerate([400, 380, 120, 100, 90, 300, 420, 410])]


def _forecast_file(path, first: datetime) -> str:
    rows = [f"{(first + timedelta(hours=h)).isoformat()},{v}" for h, (_, v) in enumerate(HOURLY)]
    path.write_text("timestamp,intensity_g_per_kwh\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def test_plan_notes_why_the_first_slot_is_short(tmp_path):
    first_point = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=150)
    forecast = _forecast_file(tmp_path / "forecast.csv", first_point)
    result = CliRunner().invoke(app, ["plan", "--provider", f"static:DEU?forecast_file={forecast}", "--epochs", "2",
                                      "--epoch-minutes", "60", "--deadline", "6h", "--may-pause", "--format", "json"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    short = [n for n in notes if n.startswith("the first slot is the ")]
    assert len(short) == 1 and f"forecast's first point ({first_point.strftime('%H:%M')} UTC)" in short[0], notes
    minutes = float(short[0].split("the first slot is the ")[1].split(" min")[0])
    assert 0 < minutes <= 2.5


def _plan_over_hourly_forecast():
    slots = slots_from_forecast(NOW, 150.0, [ForecastPoint(t, v) for t, v in HOURLY], 6 * 3600)
    job = Job(epochs=3, deadline_s=6 * 3600, rho_min=0.4, mean_rho=0.8, may_pause=True, carbon_budget_g=None)
    cost = CostModel(epoch_s_at_full=3600, running_power_w=300.0, idle_power_w=0.0)
    return strategies.planned(job, cost, slots), slots


def test_a_slot_run_in_part_is_the_one_whose_run_is_followed_by_a_pause():
    plan, slots = _plan_over_hourly_forecast()
    assert slots[0].length_s == 144.0  # 13:27:36 to 13:30
    (part,) = partly_run_slots(plan, slots)
    assert part.slot.intensity_g_per_kwh == 120  # the cleanest slot after the two it fills whole
    first, *later = [s for s in plan.segments if s.start_s >= part.slot.start_s]
    assert first.start_s == part.slot.start_s and first.length_s == part.run_s < part.slot.length_s
    assert later[0].start_s > part.slot.end_s - 1  # paused for the rest of the slot
    assert partly_run_note(part, NOW).startswith(f"slot 15:30 runs {part.run_s / 60:.1f} of its 60 min, then pauses")


def test_plan_plot_marks_and_explains_the_short_first_slot_and_the_slot_run_in_part():
    import matplotlib.pyplot as plt

    from carbonsched.reporting.plan_plot import draw_plan

    plan, slots = _plan_over_hourly_forecast()
    (part,) = partly_run_slots(plan, slots)
    fig = draw_plan(plan, slots, NOW, {"planner": plan.expected_carbon_g})
    try:
        ax_intensity, ax_rho, _ = fig.axes
        labels = [t.get_text() for t in ax_intensity.get_legend().get_texts()]
        assert "forecast's first point (before it: the current reading)" in labels
        assert sorted(t.get_text() for t in ax_rho.texts) == sorted([
            first_slot_note(slots, NOW), f"{part.run_s / 60:.1f} of 60 min, then paused"])
        assert first_slot_note(slots, NOW) == ("the first slot is the 2.4 min from now to the forecast's first point "
                                               "(13:30 UTC), at the current reading of 150 gCO2e/kWh")
    finally:
        plt.close(fig)


def test_plan_table_notes_the_slot_run_in_part_on_the_bundled_trace():
    result = CliRunner().invoke(app, ["plan", "--provider", "trace", "--epochs", "4", "--epoch-minutes", "30",
                                      "--deadline", "8h", "--mean-rho", "0.7", "--may-pause", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    partial = [n for n in doc["notes"] if " then pauses:" in n]
    assert len(partial) == 1, doc["notes"]
    run_min = float(partial[0].split(" runs ")[1].split(" of ")[0])
    start = partial[0].split("slot ")[1].split(" ")[0]
    (segment,) = [s for s in doc["segments"] if s["start"][11:16] == start]
    seconds = (datetime.fromisoformat(segment["end"]) - datetime.fromisoformat(segment["start"])).total_seconds()
    assert round(seconds / 60, 1) == run_min
