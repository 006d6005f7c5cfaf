"""Did planning pay off? A deadline job's first plan, what it really cost, and two runs it did not make.

For a job that declared a deadline (:mod:`carbonsched.planning.job_planner`), from the store only:

- the first plan the daemon made for it (kept when made): its expected carbon (gCO2e), mean ρ and
  planned finish. A plan made before the job's running power was measured holds gCO2e per W of
  running power; it is priced here at the job's measured running power;
- what the job really cost: the report's accounting of its epochs (given by the caller);
- two counterfactual runs of the same number of ended epochs from the job's start, without a
  pause: at ρ 1 and at the job's floor (its declared mean ρ, else ``rho_min``, else 1). An epoch at ρ
  takes ``epoch_s(ρ)`` seconds and ``P(ρ)`` W (:class:`~carbonsched.planning.model.CostModel`): the
  epoch time at ρ 1 learned from the job's ended epochs as the planner learns it
  (:func:`~carbonsched.planning.receding.progress_from_records`), the running power measured per ρ
  once measured at two or more, else the job's mean running power at every ρ
  (:func:`~carbonsched.planning.job_planner.running_power_w`). Their carbon is that power over the
  readings of the provider (and zone) the daemon planned with, as a step function (each reading
  holds until the next; the one in force at the job's start begins it; when no reading is stored
  after a run's end, the last one is assumed to hold to it);
- the saving of the real run against each counterfactual, in %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from carbonsched.planning.job_planner import pause_intervals, progress_from_records, running_power_w
from carbonsched.planning import CostModel, PlanningInputError
from carbonsched.planning.forecast import DAY_S
from carbonsched.planning.model import JOULES_PER_KWH, carbon_g
from carbonsched.planning.planner import energy_intensity_s
from carbonsched.planning.receding import JobDeclaration
from carbonsched.planning.series import Series
from carbonsched.store import Store

READING_LOOKBACK_S = DAY_S  # how far around the counterfactual runs readings are looked for


@dataclass
class Counterfactual:
    """``epochs`` run at ``rho`` from the job's start without a pause: seconds, kWh, gCO2e, and the
    real run's saving against it (% of its carbon; None when it costs nothing)."""

    rho: float
    epochs: float
    running_s: float
    power_w: float
    energy_kwh: float
    carbon_g: float
    saving_pct: float | None


@dataclass
class PlanOutcome:
    """A job's planning compared with what it cost (see the module docstring). Instants in unix s."""

    planned: bool  # declared a deadline (and epochs)
    note: str  # one line: why something is missing, or what was assumed
    planned_at: float | None = None
    plan_epochs: float | None = None  # epochs left when the first plan was made
    plan_mean_rho: float | None = None
    plan_finish_at: float | None = None
    expected_carbon_g: float | None = None
    expected_priced_at: str | None = None  # how the expected carbon was priced
    actual_carbon_g: float | None = None
    actual_energy_kwh: float | None = None
    epochs: int = 0  # ended epochs: the work both counterfactuals do
    provider: str | None = None
    zone: str | None = None
    first_reading_at: float | None = None  # the reading in force at the job's start
    last_reading_at: float | None = None  # the last reading within the longer counterfactual run
    last_reading_g_per_kwh: float | None = None
    last_reading_assumed: bool = False  # no later reading stored: it is assumed to hold to the run's end
    at_full: Counterfactual | None = None
    at_floor: Counterfactual | None = None


def saving_pct(actual_g: float | None, counterfactual_g: float) -> float | None:
    """How much less the real run emitted than the counterfactual, in % of the counterfactual."""
    if actual_g is None or counterfactual_g <= 0:
        return None
    return 100.0 * (counterfactual_g - actual_g) / counterfactual_g


def plan_outcome(store: Store, job: Mapping[str, Any], actual_carbon_g: float | None,
                 actual_energy_kwh: float | None, now_s: float) -> PlanOutcome:
    """The outcome for ``job`` (a stored job row), given what its epochs cost (gCO2e, kWh)."""
    declaration = JobDeclaration.from_job(job)
    if declaration is None:
        return PlanOutcome(planned=False, note="not planned: the job declared no deadline")
    job_id, start_s = job["job_id"], job["started_at"]
    end_s = job["ended_at"] if job["ended_at"] is not None else now_s
    outcome = PlanOutcome(planned=True, note="", actual_carbon_g=actual_carbon_g, actual_energy_kwh=actual_energy_kwh)
    epochs = store.epochs(job_id)
    pauses = pause_intervals(store.pauses(job_id), end_s)
    power_w = running_power_w(epochs, pauses)
    notes = []
    first = store.first_plan(job_id)
    if first is None:
        notes.append("no plan was stored for it (the deadline guard ran it from its first decision, "
                     "or the store predates plan records)")
    else:
        outcome.planned_at, outcome.plan_epochs = first["planned_at"], first["epochs_left"]
        outcome.plan_mean_rho, outcome.plan_finish_at = first["mean_rho"], first["finish_at"]
        if first["expected_carbon_g"] is not None:
            outcome.expected_carbon_g, outcome.expected_priced_at = first["expected_carbon_g"], "power measured when planned"
        elif first["expected_g_per_w"] is not None and power_w is not None:
            outcome.expected_carbon_g = first["expected_g_per_w"] * power_w
            outcome.expected_priced_at = f"the job's measured running power, {power_w:.1f} W"
    outcome.epochs = sum(1 for e in epochs if e["ended_at"] is not None)
    progress = progress_from_records(declaration, epochs, pauses, end_s)
    if progress.epoch_s_at_full is None or power_w is None or outcome.epochs == 0:
        notes.append("no counterfactual: no ended epoch with measured energy")
        outcome.note = "; ".join(notes)
        return outcome
    try:
        cost = CostModel(epoch_s_at_full=progress.epoch_s_at_full, running_power_w=power_w,
                         power_points=progress.power_points)
    except PlanningInputError as exc:
        notes.append(f"no counterfactual: the job's epochs give no usable cost model ({exc})")
        outcome.note = "; ".join(notes)
        return outcome
    if not cost.power_varies:
        notes.append("running power measured at one ρ only: taken to be the same at every ρ")
    floor = declaration.mean_rho if declaration.mean_rho is not None else declaration.rho_min
    horizon_s = outcome.epochs * max(cost.epoch_s(1.0), cost.epoch_s(floor))
    source = (first["provider"], first["zone"]) if first is not None else None
    series = _readings_from_start(store, start_s, horizon_s, source, outcome)
    if series is None:
        notes.append("no counterfactual: no intensity reading stored around the job's start")
        outcome.note = "; ".join(notes)
        return outcome
    slots = series.slots(0.0, horizon_s)
    for rho, name in ((1.0, "at_full"), (floor, "at_floor")):
        running_s = outcome.epochs * cost.epoch_s(rho)
        carbon = carbon_g(cost.power_w(rho), 1.0, energy_intensity_s(slots, 0.0, running_s))
        setattr(outcome, name, Counterfactual(
            rho=rho, epochs=outcome.epochs, running_s=running_s, power_w=cost.power_w(rho),
            energy_kwh=outcome.epochs * cost.epoch_energy_j(rho) / JOULES_PER_KWH, carbon_g=carbon,
            saving_pct=saving_pct(actual_carbon_g, carbon)))
    outcome.note = "; ".join(notes)
    return outcome


def _readings_from_start(store: Store, start_s: float, horizon_s: float, source: tuple[str, str | None] | None,
                         outcome: PlanOutcome) -> Series | None:
    """The readings from ``start_s`` on as a step function over seconds from it, of ``source``
    (provider, zone), else of the provider whose reading was in force at the start. Records the
    source and the first and last readings used on ``outcome``."""
    end_s = start_s + horizon_s
    rows = store.intensity_samples(start_s - READING_LOOKBACK_S, end_s + READING_LOOKBACK_S)
    in_force = _in_force_at(rows, start_s)
    if in_force is None:
        return None
    provider, zone = source if source is not None else (in_force["provider"], in_force["zone"])
    rows = [row for row in rows if row["provider"] == provider and (row["zone"] or "") == (zone or "")]
    first = _in_force_at(rows, start_s)
    if first is None:
        return None
    later = [row for row in rows if max(start_s, first["ts"]) < row["ts"] < end_s]
    offsets = (0.0, *(row["ts"] - start_s for row in later))
    values = (first["intensity_g_per_kwh"], *(row["intensity_g_per_kwh"] for row in later))
    last = later[-1] if later else first
    outcome.provider, outcome.zone = provider, zone
    outcome.first_reading_at, outcome.last_reading_at = first["ts"], last["ts"]
    outcome.last_reading_g_per_kwh = last["intensity_g_per_kwh"]
    outcome.last_reading_assumed = not any(row["ts"] >= end_s for row in rows)
    return Series(offsets, values, end_s=max(horizon_s, offsets[-1]))


def _in_force_at(rows: Sequence[Mapping[str, Any]], at_s: float) -> Mapping[str, Any] | None:
    """The last of ``rows`` (ordered by time) at or before ``at_s``, else the first after it."""
    before = [row for row in rows if row["ts"] <= at_s]
    return before[-1] if before else (rows[0] if rows else None)


__all__ = ["READING_LOOKBACK_S", "Counterfactual", "PlanOutcome", "plan_outcome", "saving_pct"]
