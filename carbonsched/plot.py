"""One PNG per report: grid intensity, ρ and FLOPs per epoch on a shared time axis."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from carbonsched.report import JobReport, check_output_file


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def plot_report(
    reports: Sequence[JobReport], intensity_samples: Sequence[tuple[float, float]], path: Path | str
) -> Path:
    """Write the plot to ``path`` (a file; its directory must exist) and return it.

    Top: intensity samples as a step line (gCO2e/kWh). Middle: ρ asked and effective per epoch,
    drawn across each epoch's window. Bottom: FLOPs used and full fine-tuning FLOPs per epoch.
    """
    path = check_output_file(path, "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, (ax_i, ax_r, ax_f) = plt.subplots(3, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    try:
        if intensity_samples:
            xs = [_dt(t) for t, _ in intensity_samples]
            ax_i.step(xs, [v for _, v in intensity_samples], where="post", color="tab:green")
        ax_i.set_ylabel("gCO2e/kWh")
        ax_i.set_title("grid carbon intensity, ρ and FLOPs per epoch")
        for report in reports:
            label = f"{report.job_id} ({report.scheme})"
            windows = [(e, _dt(e.started_at), _dt(e.started_at + e.duration_s)) for e in report.epochs
                       if e.started_at is not None and e.duration_s is not None]
            for n, (e, a, b) in enumerate(windows):
                if e.rho_asked is not None:
                    ax_r.hlines(e.rho_asked, a, b, colors="tab:blue", label=f"{label} ρ asked" if n == 0 else None)
                if e.rho_effective is not None:
                    ax_r.hlines(e.rho_effective, a, b, colors="tab:orange", linestyles="dashed",
                                label=f"{label} ρ effective" if n == 0 else None)
                width = b - a
                if e.flops_full is not None:
                    ax_f.bar(a, e.flops_full, width=width, align="edge", color="lightgrey",
                             label="full fine-tuning" if n == 0 else None)
                if e.flops is not None:
                    ax_f.bar(a, e.flops, width=width, align="edge", color="tab:blue", alpha=0.8,
                             label=f"{label} used" if n == 0 else None)
                if e.mean_intensity_g_per_kwh is not None:
                    ax_i.hlines(e.mean_intensity_g_per_kwh, a, b, colors="black", linewidth=2)
        ax_r.set_ylabel("ρ")
        ax_r.set_ylim(0, 1.05)
        ax_f.set_ylabel("FLOPs")
        for ax in (ax_r, ax_f):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right", fontsize="small")
        ax_f.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax_f.set_xlabel("time (UTC)")
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
