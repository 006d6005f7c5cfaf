"""PNG plots for `carbonsched plan` (intensity and planned ρ over time) and `carbonsched backtest`."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

from carbonsched.reporting.plan_notes import first_slot_note, partly_run_slots
from carbonsched.planning import Plan, Slot
from carbonsched.planning.backtest import StrategySummary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_plan(plan: Plan, slots: Sequence[Slot], now: datetime, carbon_by_strategy_g: Mapping[str, float]) -> Any:
    """The plan's matplotlib figure (the caller closes it). Top: forecast intensity. Middle: planned
    ρ (gaps are pauses). Bottom: expected gCO2e per strategy. A short first slot is marked and explained,
    and a slot run only in part is labelled with its run time (the notes of :mod:`carbonsched.reporting.plan_notes`)."""
    plt = _pyplot()
    import matplotlib.dates as mdates

    fig, (ax_i, ax_r, ax_c) = plt.subplots(3, 1, figsize=(10, 7.5), constrained_layout=True,
                                            gridspec_kw={"height_ratios": [2, 2, 1.4]})
    at = [now + timedelta(seconds=s.start_s) for s in slots] + [now + timedelta(seconds=slots[-1].end_s)]
    ax_i.step(at, [s.intensity_g_per_kwh for s in slots] + [slots[-1].intensity_g_per_kwh], where="post",
              color="tab:green", label="forecast intensity")
    ax_i.axvline(now + timedelta(seconds=plan.job.deadline_s), color="tab:red", linestyle="dashed", label="deadline")
    note = first_slot_note(slots, now)
    if note is not None:
        for ax in (ax_i, ax_r):
            ax.axvline(at[1], color="tab:gray", linestyle="dotted",
                       label="forecast's first point (before it: the current reading)" if ax is ax_i else None)
        ax_r.annotate(note, xy=(0.0, 1.0), xycoords="axes fraction", xytext=(4, -4), textcoords="offset points",
                      va="top", fontsize="small", color="tab:gray")
    ax_i.set_ylabel("gCO2e/kWh")
    ax_i.set_title("forecast intensity, planned ρ (gaps: paused) and expected carbon")
    ax_i.legend(loc="upper right", fontsize="small")
    for segment in plan.segments:
        ax_r.fill_between([now + timedelta(seconds=segment.start_s), now + timedelta(seconds=segment.end_s)],
                          0, segment.rho, step="post", color="tab:blue", alpha=0.7)
    for part in partly_run_slots(plan, slots):
        # Say on the plot why a short run is followed by a pause inside its slot.
        ax_r.annotate(f"{part.run_s / 60:.1f} of {part.slot.length_s / 60:.0f} min, then paused", fontsize="small",
                      xy=(now + timedelta(seconds=part.slot.start_s), 1.0), ha="left", va="bottom", color="tab:blue")
    ax_r.set_ylim(0, 1.15)
    ax_r.set_xlim(ax_i.get_xlim())
    ax_r.set_ylabel("ρ")
    ax_r.xaxis.set_major_formatter(mdates.DateFormatter("%d %H:%M"))
    ax_i.xaxis.set_major_formatter(mdates.DateFormatter("%d %H:%M"))
    names = list(carbon_by_strategy_g)
    ax_c.barh(names, [carbon_by_strategy_g[n] for n in names], color="tab:gray")
    ax_c.set_xlabel("expected gCO2e (forecast)")
    return fig


def plot_plan(plan: Plan, slots: Sequence[Slot], now: datetime, carbon_by_strategy_g: Mapping[str, float],
              path: Path | str) -> Path:
    """:func:`draw_plan` written as a PNG to ``path``."""
    plt = _pyplot()
    fig = draw_plan(plan, slots, now, carbon_by_strategy_g)
    try:
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def plot_backtest(summaries: Mapping[str, StrategySummary], title: str, path: Path | str) -> Path:
    """Carbon relative to now-full per strategy: mean bar, 10th–90th percentile whisker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    try:
        names = list(summaries)
        means = [summaries[n].carbon_vs_now_full_mean * 100 for n in names]
        low = [m - summaries[n].carbon_vs_now_full_p10 * 100 for m, n in zip(means, names)]
        high = [summaries[n].carbon_vs_now_full_p90 * 100 - m for m, n in zip(means, names)]
        ax.bar(names, means, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.8)
        ax.set_ylabel("carbon, % of now-full (bar: mean, whisker: p10–p90)")
        ax.set_title(title)
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
