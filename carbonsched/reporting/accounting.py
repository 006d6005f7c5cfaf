"""Energy, carbon and savings of one training epoch, from the store's samples.

Who gets which joule (the node's samples are per device, not per job):

- GPU (``gpu:N``): where NVML listed the compute processes of a sample, the sample belongs to
  the jobs whose pid is listed ("per-pid"); where it listed none (or cannot), the whole device
  belongs to the jobs that run on it: their ``devices``, or every GPU when a job named none
  ("whole-device"). GPU energy of processes that are not registered jobs is nobody's. A job
  that registered from another pid namespace (a container) sent pids NVML never lists, so its
  GPUs are attributed per device whatever NVML lists (provenance says so).
- CPU and RAM: the meter's node-wide figures (RAPL or CodeCarbon's estimates), shared by every
  job with an epoch in progress.

Within a sample, energy is spread evenly over its time span, and each instant's share is split
equally between the jobs eligible for that device whose epoch window covers the instant (a
split by wall-time overlap). So, over any set of epoch windows, the jobs' energies add up to
the node's attributable energy over the union of those windows.

Carbon integrates energy × intensity: the intensity samples form a step function (each holds
until the next), and each piece of energy is priced at the intensities in force while it was
used.

Savings against full fine-tuning at ρ = 1, two ways, each labelled:

- "modelled": this epoch's energy and carbon scaled by flops_full / (flops_forward + flops_backward);
- "measured": a full fine-tuning job of the same model is in the store: its energy per FLOP,
  times this epoch's flops_full, priced at this epoch's mean intensity.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from carbonsched.store import J_PER_KWH, Row, Store

if TYPE_CHECKING:
    from carbonsched.types import JsonObject

INTENSITY_LOOKBACK_S = 2 * 86400.0
FOREIGN_PIDS_ATTRIBUTION = "whole-device (pids of another pid namespace)"
SavingsLabel = Literal["modelled", "measured"]


@dataclass(frozen=True)
class JobWindow:
    """One epoch of one job as a time window, with what decides its share of each device."""

    job_id: str
    pids: frozenset[int]  # the job's processes on this node (every local rank of a multi-process job)
    gpu_devices: frozenset[str]  # empty: every GPU of the node
    start_s: float
    end_s: float
    pids_foreign: bool = False  # pids of another pid namespace: NVML's lists cannot name the job

    def eligible(self, device: str, pids: Sequence[int]) -> bool:
        if not device.startswith("gpu"):
            return True
        if pids and not self.pids_foreign:
            return not self.pids.isdisjoint(pids)
        return not self.gpu_devices or device in self.gpu_devices


@dataclass(frozen=True)
class EpochEnergy:
    """An epoch's attributed energy (J) by device kind, its carbon (gCO2e; None without any
    intensity sample) and the time-weighted mean intensity over its window (gCO2e/kWh)."""

    energy_j: float
    gpu_j: float
    cpu_j: float
    ram_j: float
    carbon_g: float | None
    mean_intensity_g_per_kwh: float | None
    gpu_attribution: str  # "per-pid", "whole-device", FOREIGN_PIDS_ATTRIBUTION, "mixed" or "no GPU samples"
    sources: dict[str, str]  # device -> energy source (nvml_counter, rapl, tdp_estimate, ...)

    def to_dict(self) -> JsonObject:
        return asdict(self)

    def epoch_columns(self) -> dict[str, float | str | None]:
        """The values :meth:`carbonsched.store.Store.end_epoch` keeps for an epoch."""
        return {"energy_j": self.energy_j, "carbon_g": self.carbon_g, "gpu_j": self.gpu_j, "cpu_j": self.cpu_j,
                "ram_j": self.ram_j, "gpu_attribution": self.gpu_attribution}


@dataclass(frozen=True)
class Savings:
    """What full fine-tuning would have cost for the same data, and the difference."""

    label: SavingsLabel
    full_energy_j: float
    full_carbon_g: float | None
    saved_j: float
    saved_g: float | None

    def to_dict(self) -> JsonObject:
        return asdict(self)


# -- intensity as a step function --------------------------------------------------------------


class IntensityCurve:
    """gCO2e/kWh over time: each sample holds until the next; before the first, the first."""

    def __init__(self, samples: Iterable[tuple[float, float]]):
        pairs = sorted(samples)
        self.ts = [t for t, _ in pairs]
        self.values = [v for _, v in pairs]

    @classmethod
    def from_store(cls, store: Store, start_s: float, end_s: float) -> "IntensityCurve":
        rows = store.intensity_samples(start_s - INTENSITY_LOOKBACK_S, end_s)
        if not rows:
            after = store.intensity_samples(end_s, end_s + INTENSITY_LOOKBACK_S)
            rows = after[:1]
        return cls((r["ts"], r["intensity_g_per_kwh"]) for r in rows)

    def __bool__(self) -> bool:
        return bool(self.ts)

    def integral(self, start_s: float, end_s: float) -> float:
        """∫ intensity dt over [start_s, end_s), in gCO2e/kWh · s."""
        if not self.ts or end_s <= start_s:
            return 0.0
        total, t = 0.0, start_s
        i = max(0, bisect.bisect_right(self.ts, start_s) - 1)
        while t < end_s:
            nxt = self.ts[i + 1] if i + 1 < len(self.ts) else end_s
            upto = min(max(nxt, t), end_s)
            total += self.values[i] * (upto - t)
            t = upto
            i += 1
            if i >= len(self.ts):
                total += self.values[-1] * (end_s - t)
                break
        return total

    def mean(self, start_s: float, end_s: float) -> float | None:
        if not self.ts:
            return None
        if end_s <= start_s:
            return self.values[max(0, bisect.bisect_right(self.ts, start_s) - 1)]
        return self.integral(start_s, end_s) / (end_s - start_s)


# -- windows -----------------------------------------------------------------------------------


def job_pids(job: Row) -> frozenset[int]:
    """The registering process and every process the job listed (``pids``) on this node."""
    pids = set(job.get("pids") or ())
    if job.get("pid") is not None:
        pids.add(job["pid"])
    return frozenset(pids)


def _window(job: Row, start_s: float, end_s: float) -> JobWindow:
    gpus = frozenset(d for d in job.get("devices") or () if d.startswith("gpu"))
    return JobWindow(job["job_id"], job_pids(job), gpus, start_s, end_s, pids_foreign=bool(job.get("pids_foreign")))


def job_windows(store: Store, start_s: float, end_s: float, *, now_s: float) -> list[JobWindow]:
    """Every job's epoch windows overlapping [start_s, end_s); an epoch still in progress of a
    running job lasts until ``now_s``."""
    windows = []
    for row in store.epoch_windows(start_s, end_s):
        finish = now_s if row["epoch_ended_at"] is None else row["epoch_ended_at"]
        if finish > start_s:
            windows.append(_window(row, row["epoch_started_at"], finish))
    return windows


def share_pieces(start_s: float, end_s: float, others: Sequence[JobWindow]) -> list[tuple[float, float, float]]:
    """Pieces (start, end, fraction) tiling [start_s, end_s) where one job gets ``fraction`` of
    the power: 1 / (1 + other jobs with a window ``others`` active there). One sweep over the
    sorted window boundaries: O(W log W) for W windows."""
    if end_s <= start_s:
        return []
    events: list[tuple[float, int, str]] = []
    for w in others:
        if w.start_s < w.end_s and w.start_s < end_s and w.end_s > start_s:
            events.append((max(w.start_s, start_s), 1, w.job_id))
            events.append((min(w.end_s, end_s), -1, w.job_id))
    events.sort(key=lambda event: event[0])
    active: dict[str, int] = {}  # job id -> its windows active at the sweep point
    pieces, at, i = [], start_s, 0
    while at < end_s:
        while i < len(events) and events[i][0] <= at:
            _t, step, job_id = events[i]
            count = active.get(job_id, 0) + step
            if count:
                active[job_id] = count
            else:
                del active[job_id]
            i += 1
        upto = events[i][0] if i < len(events) else end_s
        pieces.append((at, upto, 1.0 / (1 + len(active))))
        at = upto
    return pieces


class WindowShare:
    """The power pieces of energy samples that belong to one job over [start_s, end_s), given the
    other jobs' windows. Samples must come in order of start (as ``Store.energy_samples`` returns
    them): each class of samples with the same eligible windows (non-GPU devices; a GPU with a
    given pid list) gets its share pieces once and walks them with one pointer, so a window's
    energy costs O(samples + windows) pieces, not O(samples × windows²)."""

    def __init__(self, start_s: float, end_s: float, owner: JobWindow, others: Sequence[JobWindow]):
        self.start_s, self.end_s, self.owner = start_s, end_s, owner
        self.others = [w for w in others if w.job_id != owner.job_id]
        self._classes: dict[tuple[str, tuple[int, ...]], list[Any]] = {}  # key -> [pieces, pointer]

    def _class_of(self, device: str, pids: Sequence[int]) -> list[Any]:
        key = ("", ()) if not device.startswith("gpu") else (device, tuple(sorted(pids)))
        entry = self._classes.get(key)
        if entry is None:
            eligible = [w for w in self.others if w.eligible(device, pids)]
            entry = self._classes[key] = [share_pieces(self.start_s, self.end_s, eligible), 0]
        return entry

    def power_pieces(self, sample: Row) -> list[tuple[float, float, float]]:
        """Pieces (start, end, W) of one energy sample's power that belong to the job."""
        span_s = sample["end"] - sample["start"]
        if span_s <= 0 or not self.owner.eligible(sample["device"], sample["pids"]):
            return []
        power_w = sample["energy_j"] / span_s
        entry = self._class_of(sample["device"], sample["pids"])
        pieces, i = entry
        while i < len(pieces) and pieces[i][1] <= sample["start"]:
            i += 1
        entry[1] = i
        out = []
        while i < len(pieces) and pieces[i][0] < sample["end"]:
            a, b = max(pieces[i][0], sample["start"]), min(pieces[i][1], sample["end"])
            if b > a:
                out.append((a, b, power_w * pieces[i][2]))
            i += 1
        return out


def merged_intervals(intervals: Iterable[tuple[float, float]]) -> list[list[float]]:
    """The union of ``intervals`` as sorted, disjoint [start, end] pairs."""
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def sample_job_energy_j(samples: Iterable[Row], windows: Sequence[JobWindow]) -> dict[str, float]:
    """Each job's energy (J) in ``samples`` (rows shaped like ``Store.energy_samples``), split
    between the epoch ``windows`` as :func:`epoch_energy` splits it (a job's overlapping windows
    count once)."""
    ordered = sorted(samples, key=lambda sample: sample["start"])
    by_job: dict[str, list[JobWindow]] = {}
    for w in windows:
        by_job.setdefault(w.job_id, []).append(w)
    shares: dict[str, float] = {}
    for job_id, own in by_job.items():
        energy_j = 0.0
        for start_s, end_s in merged_intervals((w.start_s, w.end_s) for w in own if w.end_s > w.start_s):
            share = WindowShare(start_s, end_s, own[0], windows)
            energy_j += sum(power_w * (b - a) for sample in ordered for a, b, power_w in share.power_pieces(sample))
        if energy_j:
            shares[job_id] = energy_j
    return shares


def epoch_energy(
    store: Store, job: Row, start_s: float, end_s: float, *, now_s: float | None = None
) -> EpochEnergy:
    """Energy and carbon attributed to ``job`` over its epoch window [start_s, end_s)."""
    now_s = end_s if now_s is None else now_s
    target = _window(job, start_s, end_s)
    share = WindowShare(start_s, end_s, target, job_windows(store, start_s, end_s, now_s=now_s))
    curve = IntensityCurve.from_store(store, start_s, end_s)
    by_kind = {"gpu": 0.0, "cpu": 0.0, "ram": 0.0}
    carbon_g = 0.0
    sources: dict[str, str] = {}
    gpu_modes: set[str] = set()
    for row in store.energy_samples(start_s, end_s):
        device, pids = row["device"], row["pids"]
        energy_j = 0.0
        for a, b, power_w in share.power_pieces(row):
            energy_j += power_w * (b - a)
            carbon_g += power_w * curve.integral(a, b) / J_PER_KWH
        if energy_j == 0.0:
            continue
        kind = "gpu" if device.startswith("gpu") else device if device in by_kind else "cpu"
        by_kind[kind] += energy_j
        sources[device] = row["source"]
        if kind == "gpu":
            gpu_modes.add(FOREIGN_PIDS_ATTRIBUTION if target.pids_foreign else "per-pid" if pids else "whole-device")
    attribution = "no GPU samples" if not gpu_modes else gpu_modes.pop() if len(gpu_modes) == 1 else "mixed"
    return EpochEnergy(
        energy_j=sum(by_kind.values()),
        gpu_j=by_kind["gpu"],
        cpu_j=by_kind["cpu"],
        ram_j=by_kind["ram"],
        carbon_g=carbon_g if curve else None,
        mean_intensity_g_per_kwh=curve.mean(start_s, end_s),
        gpu_attribution=attribution,
        sources=sources,
    )


def node_energy_j(store: Store, windows: Iterable[tuple[float, float]]) -> float:
    """The node's energy over the union of ``windows`` (every device), for cross-checks."""
    merged = merged_intervals(windows)
    if not merged:
        return 0.0
    total = 0.0
    for row in store.energy_samples(merged[0][0], merged[-1][1]):
        span_s = row["end"] - row["start"]
        if span_s <= 0:
            continue
        overlap_s = sum(max(0.0, min(row["end"], b) - max(row["start"], a)) for a, b in merged)
        total += row["energy_j"] * overlap_s / span_s
    return total


# -- savings -----------------------------------------------------------------------------------


def modelled_savings(
    energy_j: float | None, carbon_g: float | None, flops_used: float | None, flops_full: float | None
) -> Savings | None:
    """Full fine-tuning scaled from this epoch by the FLOPs ratio (labelled "modelled")."""
    if energy_j is None or not flops_used or not flops_full:
        return None
    factor = flops_full / flops_used
    full_j = energy_j * factor
    full_g = carbon_g * factor if carbon_g is not None else None
    return Savings("modelled", full_j, full_g, full_j - energy_j,
                   None if full_g is None or carbon_g is None else full_g - carbon_g)


def measured_j_per_flop(store: Store, model: str, *, exclude_job: str | None = None) -> float | None:
    """J per training FLOP of the full fine-tuning epochs of ``model`` in the store, or None."""
    energy_j = flops = 0.0
    for job in store.jobs():
        if job["model"] != model or job["scheme"] != "full" or job["job_id"] == exclude_job:
            continue
        for e in store.epochs(job["job_id"]):
            used = (e["flops_forward"] or 0.0) + (e["flops_backward"] or 0.0)
            if e["energy_j"] is not None and e["ended_at"] is not None and used > 0:
                energy_j += e["energy_j"]
                flops += used
    return energy_j / flops if flops > 0 and energy_j > 0 else None


def measured_savings(
    j_per_flop: float, energy_j: float | None, carbon_g: float | None, flops_full: float | None,
    mean_intensity_g_per_kwh: float | None,
) -> Savings | None:
    """Full fine-tuning priced from a measured full-FT run's J/FLOP and this epoch's intensity."""
    if energy_j is None or not flops_full:
        return None
    full_j = j_per_flop * flops_full
    full_g = full_j / J_PER_KWH * mean_intensity_g_per_kwh if mean_intensity_g_per_kwh is not None else None
    saved_g = full_g - carbon_g if full_g is not None and carbon_g is not None else None
    return Savings("measured", full_j, full_g, full_j - energy_j, saved_g)


def recorded_epoch_intensity_g_per_kwh(store: Store, epoch: Row) -> float | None:
    """The intensity (gCO2e/kWh) a recorded epoch's energy was priced at: energy-weighted
    (carbon / energy) when both are recorded, else the time-weighted mean over its window."""
    start, end = epoch["started_at"], epoch["ended_at"]
    energy_j, carbon_g = epoch["energy_j"], epoch["carbon_g"]
    if energy_j and carbon_g is not None:
        return carbon_g / (energy_j / J_PER_KWH)
    if start is not None and end is not None:
        return IntensityCurve.from_store(store, start, end).mean(start, end)
    return None


def recorded_epoch_savings(store: Store, epoch: Row, *, j_per_flop: float | None) -> Savings | None:
    """Savings against full fine-tuning of an epoch as the store has it (a row of
    ``Store.epochs``), priced at :func:`recorded_epoch_intensity_g_per_kwh`. The one definition
    the report, the epoch.end reply and the avoided-carbon metrics share."""
    intensity = recorded_epoch_intensity_g_per_kwh(store, epoch)
    return epoch_savings(epoch, j_per_flop=j_per_flop, mean_intensity_g_per_kwh=intensity)


def epoch_savings(
    epoch: Row, *, j_per_flop: float | None, mean_intensity_g_per_kwh: float | None
) -> Savings | None:
    """Measured savings when a full-FT J/FLOP is known, else modelled; None without energy."""
    used = (epoch.get("flops_forward") or 0.0) + (epoch.get("flops_backward") or 0.0)
    if j_per_flop is not None:
        measured = measured_savings(j_per_flop, epoch.get("energy_j"), epoch.get("carbon_g"),
                                    epoch.get("flops_full"), mean_intensity_g_per_kwh)
        if measured is not None:
            return measured
    return modelled_savings(epoch.get("energy_j"), epoch.get("carbon_g"), used, epoch.get("flops_full"))
