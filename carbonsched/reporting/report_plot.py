"""One plot per report: grid intensity, ρ and FLOPs per epoch on a shared time axis.

The file's extension picks the format (.png, .jpg/.jpeg, .svg, .pdf); any other is refused.
Each job has its own colour; each legend entry appears once, outside the axes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from carbonsched.reporting.energy_report import JobReport, check_output_file


PLOT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}


class PlotFormatError(ValueError):
    """The plot file's extension names no format the plot can be written in; one line."""


def plot_format(path: Path | str) -> str:
    """The image format the extension of ``path`` asks for."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise PlotFormatError(
            f"--plot {path}: unknown image type {suffix or '(no extension)'!r}; use {', '.join(PLOT_FORMATS)}"
        )
    return PLOT_FORMATS[suffix]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def plot_report(
    reports: Sequence[JobReport], intensity_samples: Sequence[tuple[float, float]], path: Path | str
) -> Path:
    """Write the plot to ``path`` (a file; its directory must exist; the extension picks the
    format) and return it."""
    path = check_output_file(path, "plot")
    image_format = plot_format(path)
    import matplotlib.pyplot as plt

    fig = draw_report(reports, intensity_samples)
    try:
        fig.savefig(path, format=image_format, dpi=100)
    finally:
        plt.close(fig)
    return path


def draw_report(reports: Sequence[JobReport], intensity_samples: Sequence[tuple[float, float]]) -> Any:
    """The report's matplotlib figure (the caller closes it).

    Top: intensity samples as a step line and each epoch's mean intensity (gCO2e/kWh). Middle: ρ asked and effective per epoch,
    drawn across each epoch's window. Bottom: FLOPs used and full fine-tuning FLOPs per epoch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, (ax_i, ax_r, ax_f) = plt.subplots(3, 1, sharex=True, figsize=(12, 7), constrained_layout=True)
    palette = plt.get_cmap("tab20").colors  # pairs: a dark shade for ρ asked / used, a light one for ρ effective
    if intensity_samples:
        xs = [_dt(t) for t, _ in intensity_samples]
        ax_i.step(xs, [v for _, v in intensity_samples], where="post", color="tab:green",
                  label="grid intensity (samples)")
    ax_i.set_ylabel("gCO2e/kWh")
    ax_i.set_title("grid carbon intensity, ρ and FLOPs per epoch")
    full_labelled = mean_labelled = False
    for index, report in enumerate(reports):
        label = f"{report.job_id} ({report.scheme})"
        dark, light = palette[(2 * index) % len(palette)], palette[(2 * index + 1) % len(palette)]
        windows = [(e, _dt(e.started_at), _dt(e.started_at + e.duration_s)) for e in report.epochs
                   if e.started_at is not None and e.duration_s is not None]
        for n, (e, a, b) in enumerate(windows):
            if e.rho_asked is not None:
                ax_r.hlines(e.rho_asked, a, b, colors=[dark], label=f"{label} ρ asked" if n == 0 else None)
            if e.rho_effective is not None:
                ax_r.hlines(e.rho_effective, a, b, colors=[light], linestyles="dashed",
                            label=f"{label} ρ effective" if n == 0 else None)
            width = b - a
            if e.flops_full is not None:
                ax_f.bar(a, e.flops_full, width=width, align="edge", color="lightgrey", edgecolor="grey",
                         label=None if full_labelled else "full fine-tuning")
                full_labelled = True
            if e.flops is not None:
                ax_f.bar(a, e.flops, width=width, align="edge", color=dark, alpha=0.85,
                         label=f"{label} used" if n == 0 else None)
            if e.mean_intensity_g_per_kwh is not None:
                ax_i.hlines(e.mean_intensity_g_per_kwh, a, b, colors="black", linewidth=2,
                            label=None if mean_labelled else "epoch mean intensity")
                mean_labelled = True
    ax_r.set_ylabel("ρ")
    ax_r.set_ylim(0, 1.05)
    ax_f.set_ylabel("FLOPs")
    for ax in (ax_i, ax_r, ax_f):
        if ax.get_legend_handles_labels()[0]:
            # Outside the axes, to the right: the legend never hides a bar or a line.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    ax_f.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax_f.set_xlabel("time (UTC)")
    return fig
