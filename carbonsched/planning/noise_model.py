"""A forecast-error model whose error grows with lead time, correlated across targets and between issues.

A martingale forecast. ``log(forecast / truth)`` for the target at unix second ``t`` issued at
``τ`` is the sum of the innovations that arrive at the instants ``g`` of a fixed grid (every
``update_s`` seconds, aligned to unix 0) with ``τ < g ≤ t``. Targets are counted in grid cells:
the target in the ``k``-th cell after the one holding ``g`` gets, from the arrival at ``g``, an
innovation of variance ``v_k = σ²(k·update_s) − σ²((k − 1)·update_s)``, so an issue ``n`` cells
before its target errs by ``σ(n·update_s)`` in log space. ``σ(lead s)`` is given at knots,
interpolated linearly from ``σ(0) = 0``, held after the last knot and made non-decreasing. The
innovations arriving at one instant are AR(1)-correlated across targets with coefficient ``phi``.

Consequences: the current slot (and anything in the issue's own grid cell) is exact; a later issue
for the same target keeps the earlier issue's error less the innovations that arrived in between
(forecasts converge on the truth); errors are median-unbiased (zero mean in log space). The draws
are a fixed function of :func:`carbonsched.planning.forecast_noise.seeded_rng` ``(seed, stream)`` and the
arrival instant (:func:`carbonsched.planning.forecast_noise.normals_at`), so a forecast asked twice, by the
backtest or the trace provider, is the same.

:data:`UK_LIKE` is a preset whose MAPE by lead is about the published figures for the GB national
forecast (10 % one hour ahead, 13 % at 1-6 h, 16 % at 6-24 h, 18 % at 24-48 h); see its comment.
:func:`fit_noise_model` estimates a model from vintages and the truth; :func:`mape_by_lead`
measures a forecast's error by lead bucket.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from carbonsched.planning.forecast_noise import normals_at
from carbonsched.planning.closed_loop import ForecastAt
from carbonsched.planning.model import Slot
from carbonsched.planning.series import Series
from carbonsched.planning.vintages import MIN_WINDOW_S, Vintage, Vintages

DEFAULT_UPDATE_S = 1800.0
HOUR_S = 3600.0
LEAD_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-1h", 0.0, HOUR_S), ("1-6h", HOUR_S, 6 * HOUR_S), ("6-24h", 6 * HOUR_S, 24 * HOUR_S),
    ("24-48h", 24 * HOUR_S, 48 * HOUR_S),
)  # (name, lead above s, lead up to s)
MAX_PHI = 0.99
MIN_FIT_SAMPLES = 5  # (issue, target cell) pairs needed for a lead to count in the fit
FIT_KNOT_LEADS_S = tuple(hours * HOUR_S for hours in (0.5, 1, 2, 3, 4, 6, 9, 12, 18, 24, 30, 36, 42, 48, 60, 72))
CELL_TOLERANCE_S = 1e-6  # a time computed a hair before a grid instant still counts as on it
BLOCK = 64  # per-model tables grow in blocks of this many cells


class NoiseModelError(ValueError):
    """A noise model is unusable; the message names the file (if any) and the field."""


@dataclass(frozen=True)
class LeadNoiseModel:
    """σ of the log error by lead (knots of (lead s, σ log)), the AR(1) ``phi`` across targets, the grid step s."""

    sigma_knots: tuple[tuple[float, float], ...]
    phi: float = 0.0
    update_s: float = DEFAULT_UPDATE_S

    def __post_init__(self) -> None:
        if not self.sigma_knots:
            raise NoiseModelError("field sigma_knots: needs at least one (lead s, sigma) pair")
        previous = -math.inf
        for index, (lead_s, sigma) in enumerate(self.sigma_knots):
            if not (math.isfinite(lead_s) and lead_s > previous and lead_s > 0):
                raise NoiseModelError(f"field sigma_knots[{index}]: lead {lead_s!r} s must be finite, positive and "
                                      "after the previous knot's (sigma at lead 0 is 0)")
            if not (math.isfinite(sigma) and sigma >= 0):
                raise NoiseModelError(f"field sigma_knots[{index}]: sigma {sigma!r} must be a non-negative number")
            previous = lead_s
        if not (math.isfinite(self.phi) and abs(self.phi) <= MAX_PHI):
            raise NoiseModelError(f"field phi: {self.phi!r} must lie in [-{MAX_PHI}, {MAX_PHI}]")
        if not (math.isfinite(self.update_s) and self.update_s > 0):
            raise NoiseModelError(f"field update_s: {self.update_s!r} must be positive seconds")

    # ---- the model ---------------------------------------------------------------------------------

    def sigma_at(self, lead_s: float) -> float:
        """σ of the log error at ``lead_s`` seconds ahead (0 at lead 0, non-decreasing)."""
        leads = [0.0] + [lead for lead, _ in self.sigma_knots]
        sigmas = np.maximum.accumulate([0.0] + [sigma for _, sigma in self.sigma_knots])
        return float(np.interp(max(lead_s, 0.0), leads, sigmas))

    def mape_at(self, lead_s: float) -> float:
        """The model's mean absolute percentage error at ``lead_s``, as a fraction:
        E|e^{σZ} − 1| = e^{σ²/2}·erf(σ/√2)."""
        sigma = self.sigma_at(lead_s)
        return math.exp(sigma * sigma / 2) * math.erf(sigma / math.sqrt(2))

    def log_errors_at(self, issued_s: float, targets_s: Sequence[float], seed: int, stream: int) -> np.ndarray:
        """log(forecast / truth) for targets at ``targets_s`` (unix s) issued at ``issued_s`` (unix s)."""
        targets = np.asarray(targets_s, dtype=float)
        issue_cell = math.floor((issued_s + CELL_TOLERANCE_S) / self.update_s)
        ahead = np.floor((targets + CELL_TOLERANCE_S) / self.update_s).astype(np.int64) - issue_cell
        cells = int(ahead.max(initial=0))
        if cells <= 0:
            return np.zeros(len(targets))
        errors = np.concatenate(([0.0], self._cell_errors(issue_cell, cells, seed, stream)))
        return errors[np.clip(ahead, 0, None)]

    def _cell_errors(self, issue_cell: int, cells: int, seed: int, stream: int) -> np.ndarray:
        """The log errors of the ``cells`` grid cells after the issue's (the sums of arrived innovations)."""
        scales, ar1_transposed, arrival, lead = _tables(self, cells)
        white = np.zeros((cells, cells))  # [arrival, lead index]; only arrival + lead < cells is used
        white[arrival, lead] = normals_at(seed, stream, arrival + (issue_cell + 1), lead)
        innovations = (white @ ar1_transposed) * scales  # AR(1) across the targets of one arrival, then sized by lead
        # The cell d after the issue gets, from the arrival i cells after the issue (i <= d), lead index d − i.
        return np.bincount(arrival + lead, weights=innovations[arrival, lead], minlength=cells)

    # ---- uses --------------------------------------------------------------------------------------

    def forecast_at(self, truth: Series, submission_offset_s: float, deadline_s: float, seed: int,
                    stream: int) -> ForecastAt:
        """The :data:`~carbonsched.planning.closed_loop.ForecastAt` of a job submitted at
        ``submission_offset_s`` into ``truth``: at each moment, the truth's slots from then to
        ``min(moment + horizon, submission + deadline_s)``, each times ``exp`` of its log error for
        an issue at that moment (unix ``truth.origin_s + offset``); the current slot is exact."""

        def forecast(now_s: float, horizon_s: float) -> list[Slot]:
            moment_s = submission_offset_s + now_s
            length_s = max(min(now_s + horizon_s, deadline_s) - now_s, MIN_WINDOW_S)
            slots = truth.slots(moment_s, moment_s + length_s)
            issued_s = truth.origin_s + moment_s
            factors = np.exp(self.log_errors_at(issued_s, [issued_s + slot.start_s for slot in slots], seed, stream))
            return [Slot(slot.start_s, slot.end_s, slot.intensity_g_per_kwh * factor)
                    for slot, factor in zip(slots, factors.tolist())]

        return forecast

    def synthetic_vintages(self, truth: Series, issue_every_s: float, horizon_s: float, seed: int) -> Vintages:
        """Issues every ``issue_every_s`` from the truth's start, each with a point at every truth sample
        start in ``(issue, issue + horizon_s]`` (stream 0 of ``seed``)."""
        if not (issue_every_s > 0 and horizon_s > 0):
            raise NoiseModelError(f"issue_every_s {issue_every_s!r} and horizon_s {horizon_s!r} must be positive")
        starts = np.asarray(truth.offsets_s, dtype=float) + truth.origin_s
        values = np.asarray(truth.values_g_per_kwh, dtype=float)
        issues: list[Vintage] = []
        issued_s = truth.origin_s + truth.offsets_s[0]
        while issued_s < truth.origin_s + truth.end_s:
            low = int(np.searchsorted(starts, issued_s, side="right"))
            high = int(np.searchsorted(starts, issued_s + horizon_s, side="right"))
            if high > low:
                forecast = values[low:high] * np.exp(self.log_errors_at(issued_s, starts[low:high], seed, 0))
                issues.append(Vintage(issued_s, tuple(zip(starts[low:high].tolist(), forecast.tolist()))))
            issued_s += issue_every_s
        return Vintages(tuple(issues), "synthetic")

    # ---- files -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """``{"sigma_knots": [[lead s, σ log], ...], "phi": φ, "update_s": s}``."""
        return {"sigma_knots": [[lead, sigma] for lead, sigma in self.sigma_knots], "phi": self.phi,
                "update_s": self.update_s}

    @classmethod
    def from_json(cls, data: Any) -> LeadNoiseModel:
        """The model :meth:`to_json` wrote; raise :class:`NoiseModelError` naming the bad field."""
        if not isinstance(data, dict):
            raise NoiseModelError(f"expected a JSON object with sigma_knots, phi, update_s; got {type(data).__name__}")
        unknown = sorted(set(data) - {"sigma_knots", "phi", "update_s"})
        if unknown:
            raise NoiseModelError(f"field {unknown[0]}: unknown (expected sigma_knots, phi, update_s)")
        knots = data.get("sigma_knots")
        if not isinstance(knots, list):
            raise NoiseModelError("field sigma_knots: expected a list of [lead s, sigma] pairs")
        pairs = []
        for index, knot in enumerate(knots):
            if not (isinstance(knot, list) and len(knot) == 2 and all(_is_number(v) for v in knot)):
                raise NoiseModelError(f"field sigma_knots[{index}]: expected [lead s, sigma], got {knot!r}")
            pairs.append((float(knot[0]), float(knot[1])))
        for name, default in (("phi", 0.0), ("update_s", DEFAULT_UPDATE_S)):
            if not _is_number(data.get(name, default)):
                raise NoiseModelError(f"field {name}: expected a number, got {data[name]!r}")
        return cls(tuple(pairs), float(data.get("phi", 0.0)), float(data.get("update_s", DEFAULT_UPDATE_S)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_noise_model(path: str | Path) -> LeadNoiseModel:
    """Read a model JSON file (:meth:`LeadNoiseModel.to_json`); raise :class:`NoiseModelError` naming file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NoiseModelError(f"{path}: cannot read the noise model: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise NoiseModelError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    try:
        return LeadNoiseModel.from_json(data)
    except NoiseModelError as exc:
        raise NoiseModelError(f"{path}: {exc}") from None


@functools.lru_cache(maxsize=32)
def _block_tables(model: LeadNoiseModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    leads = np.arange(size + 1) * model.update_s
    variances = np.array([model.sigma_at(lead) ** 2 for lead in leads])
    scales = np.sqrt(np.maximum(np.diff(variances), 0.0))  # s_k for k = 1..size
    index = np.arange(size)
    # Row k of the AR(1) filter: z_k = Σ_j≤k phi^(k−j)·c_j·e_j with c_0 = 1, c_j = √(1 − phi²).
    lag = index[:, None] - index[None, :]
    powers = np.where(lag >= 0, model.phi ** np.maximum(lag, 0), 0.0)
    weights = np.full(size, math.sqrt(1 - model.phi ** 2))
    weights[0] = 1.0
    return scales, powers * weights[None, :]


@functools.lru_cache(maxsize=32)
def _triangle(cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The (arrival, lead index) pairs with arrival + lead < cells."""
    arrival, lead = np.nonzero(np.add.outer(np.arange(cells), np.arange(cells)) < cells)
    return arrival, lead


@functools.lru_cache(maxsize=256)
def _tables(model: LeadNoiseModel, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The innovation scales, the AR(1) filter transposed (contiguous, for a fast product) and the
    (arrival, lead) pairs for ``cells`` cells."""
    size = -(-cells // BLOCK) * BLOCK
    scales, ar1 = _block_tables(model, size)
    return (scales[:cells].copy(), np.ascontiguousarray(ar1[:cells, :cells].T), *_triangle(cells))


# ---- measuring and fitting -------------------------------------------------------------------------


def _errors_by_issue(vintages: Vintages, truth: Series):
    """Per issue with usable points: (issue unix s, target unix s, forecast, truth) arrays; only
    targets after the issue, inside the truth, with both values positive."""
    starts = np.asarray(truth.offsets_s, dtype=float) + truth.origin_s
    values = np.asarray(truth.values_g_per_kwh, dtype=float)
    first_s, end_s = starts[0], truth.origin_s + truth.end_s
    for vintage in vintages.issues:
        points = np.asarray(vintage.points, dtype=float)
        targets, forecast = points[:, 0], points[:, 1]
        index = np.searchsorted(starts, targets, side="right") - 1
        actual = values[np.clip(index, 0, None)]
        keep = (targets > vintage.issued_s) & (targets >= first_s) & (targets < end_s) & (forecast > 0) & (actual > 0)
        if keep.any():
            yield vintage.issued_s, targets[keep], forecast[keep], actual[keep]


def mape_by_lead(vintages: Vintages, truth: Series) -> dict[str, float]:
    """Mean absolute percentage error (a fraction) of the vintages against the truth, by lead bucket:
    ``0-1h``, ``1-6h``, ``6-24h``, ``24-48h`` (lead above the lower bound, up to the upper); buckets
    without a point are left out. Points outside the truth or at a zero truth are skipped."""
    sums = {name: 0.0 for name, _, _ in LEAD_BUCKETS}
    counts = {name: 0 for name, _, _ in LEAD_BUCKETS}
    for issued_s, targets, forecast, actual in _errors_by_issue(vintages, truth):
        leads = targets - issued_s
        errors = np.abs(forecast / actual - 1)
        for name, low, high in LEAD_BUCKETS:
            inside = (leads > low) & (leads <= high)
            sums[name] += float(errors[inside].sum())
            counts[name] += int(inside.sum())
    return {name: sums[name] / counts[name] for name, _, _ in LEAD_BUCKETS if counts[name]}


def fit_noise_model(vintages: Vintages, truth: Series, *, update_s: float = DEFAULT_UPDATE_S) -> LeadNoiseModel:
    """The :class:`LeadNoiseModel` that best explains the vintages' log errors against the truth.

    The log errors are averaged per (issue, target grid cell); the σ of ``n`` cells ahead is their
    root mean square (zero mean, as the model has; a lead needs :data:`MIN_FIT_SAMPLES`). The
    knots are at :data:`FIT_KNOT_LEADS_S` (and the longest lead seen): the piecewise-linear curve
    through them closest to those σ in least squares weighted by counts, made non-decreasing by
    pooling adjacent violators. Few smooth knots keep the innovation scales the φ estimate needs
    from following the noise of single leads.
    φ: in the model, the errors of adjacent cells ``n`` and ``n + 1`` of one issue have covariance
    ``φ · Σ_{k=1..n} s_k·s_{k+1}`` (``s_k`` the innovation scales of the fitted σ), so φ is the sum
    of their products over the sum of those model terms, clipped to ±:data:`MAX_PHI`.
    """
    if not (math.isfinite(update_s) and update_s > 0):
        raise NoiseModelError(f"update_s {update_s!r} must be positive seconds")
    square_sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    pairs: list[tuple[int, float]] = []  # (cells ahead of the first of the two, product of errors)
    for issued_s, targets, forecast, actual in _errors_by_issue(vintages, truth):
        issue_cell = math.floor((issued_s + CELL_TOLERANCE_S) / update_s)
        ahead = np.floor((targets + CELL_TOLERANCE_S) / update_s).astype(np.int64) - issue_cell
        keep = ahead >= 1
        if not keep.any():
            continue
        ahead, logs = ahead[keep], np.log(forecast[keep] / actual[keep])
        per_cell = np.bincount(ahead, minlength=int(ahead.max()) + 2)
        means = np.bincount(ahead, weights=logs, minlength=len(per_cell)) / np.maximum(per_cell, 1)
        present = np.flatnonzero(per_cell)
        for n in present.tolist():
            square_sums[n] = square_sums.get(n, 0.0) + means[n] ** 2
            counts[n] = counts.get(n, 0) + 1
        adjacent = present[per_cell[present + 1] > 0]
        pairs.extend(zip(adjacent.tolist(), (means[adjacent] * means[adjacent + 1]).tolist()))
    usable = sorted(n for n, count in counts.items() if count >= MIN_FIT_SAMPLES)
    if not usable:
        raise NoiseModelError(f"too few forecast points after their issue inside the truth to fit a model "
                              f"(need {MIN_FIT_SAMPLES} per lead)")
    knots = _fitted_sigma_knots(usable, [math.sqrt(square_sums[n] / counts[n]) for n in usable],
                                [counts[n] for n in usable], update_s)
    unit = LeadNoiseModel(knots, 0.0, update_s)
    scales = _tables(unit, max(usable) + 2)[0]
    products = np.concatenate(([0.0], np.cumsum(scales[:-1] * scales[1:])))  # [n] = Σ_{k=1..n} s_k·s_{k+1}
    expected = sum(products[n] for n, _ in pairs if n <= max(usable))
    observed = sum(product for n, product in pairs if n <= max(usable))
    phi = min(max(observed / expected, -MAX_PHI), MAX_PHI) if expected > 0 else 0.0
    return LeadNoiseModel(knots, round(phi, 6), update_s)


def _fitted_sigma_knots(cells: Sequence[int], sigmas: Sequence[float], counts: Sequence[int],
                        update_s: float) -> tuple[tuple[float, float], ...]:
    """σ at the :data:`FIT_KNOT_LEADS_S` within the data (in grid cells), by weighted least squares of the
    piecewise-linear curve through them (σ(0) = 0) on the per-cell σ, then made non-decreasing."""
    last = max(cells)
    knot_cells = sorted({max(1, round(lead / update_s)) for lead in FIT_KNOT_LEADS_S if lead / update_s <= last}
                        | {last})
    hats = np.array([np.interp(cells, [0, *knot_cells], np.eye(len(knot_cells) + 1)[column + 1])
                     for column in range(len(knot_cells))]).T  # [cell, knot]: the knot's share of the curve there
    roots = np.sqrt(np.asarray(counts, dtype=float))
    solution = np.linalg.lstsq(hats * roots[:, None], np.asarray(sigmas) * roots, rcond=None)[0]
    monotone = _pool_adjacent_violators(np.maximum(solution, 0.0).tolist(), hats.T @ np.asarray(counts, dtype=float))
    return tuple((cell * update_s, round(sigma, 6)) for cell, sigma in zip(knot_cells, monotone))


def _pool_adjacent_violators(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(values, weights):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight_, length = blocks.pop()
            previous = blocks[-1]
            total = previous[1] + weight_
            blocks[-1] = [(previous[0] * previous[1] + mean * weight_) / total, total, previous[2] + length]
    return [mean for mean, _, length in blocks for _ in range(int(length))]


# UK_LIKE: σ knots solved (bisection, :meth:`LeadNoiseModel.mape_at` averaged over the half-hourly
# leads of each bucket) so that the MAPE is 10 % at 1 h and averages 13 % over 1-6 h, 16 % over
# 6-24 h and 18 % over 24-48 h (the 0-1 h bucket then averages 7.5 %): the published GB national
# figures, not fitted to any data. φ = 0.8
# is a judgement (neighbouring half-hours err alike), not a measured value.
UK_LIKE = LeadNoiseModel(sigma_knots=((HOUR_S, 0.1247), (6 * HOUR_S, 0.1915), (24 * HOUR_S, 0.2040),
                                      (48 * HOUR_S, 0.2391)),
                         phi=0.8, update_s=DEFAULT_UPDATE_S)


__all__ = ["DEFAULT_UPDATE_S", "LEAD_BUCKETS", "LeadNoiseModel", "NoiseModelError", "UK_LIKE", "fit_noise_model",
           "load_noise_model", "mape_by_lead"]
