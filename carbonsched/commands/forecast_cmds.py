"""`carbonsched forecast-error`: how far forecasts as issued were from the truth, by lead, and a fitted error model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn, Optional

import typer

EXIT_BAD_INPUT = 2
FORMATS = ("text", "json")
SIGMA_REPORT_LEADS_H = (1, 6, 24, 48)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def forecast_error(
    forecasts: Path = typer.Option(..., "--forecasts", help="Vintages CSV: one row per issue time, target time "
                                                            "and forecast (gCO2e/kWh)."),
    trace: Path = typer.Option(..., "--trace", help="The true intensity trace CSV."),
    issued_column: Optional[str] = typer.Option(None, "--issued-column", help="Name of the issue-time column."),
    target_column: Optional[str] = typer.Option(None, "--target-column", help="Name of the target-time column."),
    forecast_column: Optional[str] = typer.Option(None, "--forecast-column", help="Name of the forecast column."),
    time_column: Optional[str] = typer.Option(None, "--time-column", help="Name of the trace's time column."),
    intensity_column: Optional[str] = typer.Option(None, "--intensity-column",
                                                   help="Name of the trace's intensity column."),
    update_minutes: float = typer.Option(30.0, "--update-minutes", help="Grid step of the fitted model's "
                                                                        "forecast updates, minutes."),
    fmt: str = typer.Option("text", "--format", help="text | json"),
    write_model: Optional[Path] = typer.Option(None, "--write-model", help="Also write the fitted model as JSON "
                                                                           "(a trace provider's noise_model=)."),
) -> None:
    """MAPE of forecasts as issued against a trace, by lead (0-1h, 1-6h, 6-24h, 24-48h), and the fitted
    lead-time error model (σ of the log error by lead, φ across neighbouring targets)."""
    from carbonsched.planning.noise_model import NoiseModelError, fit_noise_model, mape_by_lead
    from carbonsched.planning.series import Series
    from carbonsched.planning.vintages import VintagesFormatError, load_vintages
    from carbonsched.providers.trace import TraceFormatError, load_trace

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not update_minutes > 0:
        _fail(f"--update-minutes must be positive, got {update_minutes!r}")
    try:
        vintages = load_vintages(forecasts, issued_column=issued_column, target_column=target_column,
                                 forecast_column=forecast_column)
        loaded = load_trace(trace, time_column=time_column, intensity_column=intensity_column)
    except (VintagesFormatError, TraceFormatError) as exc:
        _fail(str(exc))
    truth = Series(loaded.offsets_s, loaded.values_g_per_kwh, loaded.duration_s, loaded.timestamps[0].timestamp())
    mape = mape_by_lead(vintages, truth)
    try:
        model = fit_noise_model(vintages, truth, update_s=update_minutes * 60)
    except NoiseModelError as exc:
        _fail(f"{forecasts} against {trace}: {exc}")
    if write_model is not None:
        try:
            write_model.write_text(json.dumps(model.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {write_model}: {exc.strerror or exc}", 1)
    if fmt == "json":
        typer.echo(json.dumps({"forecasts": str(forecasts), "issues": len(vintages.issued_s), "trace": str(trace),
                               "mape_by_lead": mape, "model": model.to_json(),
                               "model_written_to": str(write_model) if write_model is not None else None},
                              indent=2))
        return
    lines = [f"forecasts {forecasts}: {len(vintages.issued_s)} issues; trace {trace}: "
             f"{len(loaded.values_g_per_kwh)} samples", "", f"{'lead':<7} {'MAPE':>6}"]
    lines += [f"{bucket:<7} {share:>6.1%}" for bucket, share in mape.items()]
    sigmas = ", ".join(f"{hours} h {model.sigma_at(hours * 3600):.3f}" for hours in SIGMA_REPORT_LEADS_H)
    lines += ["", f"fitted model: update every {model.update_s / 60:g} min, phi {model.phi:.2f}, "
                  f"sigma of the log error at {sigmas} ({len(model.sigma_knots)} knots)"]
    if write_model is not None:
        lines.append(f"model written to {write_model}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("forecast-error")(forecast_error)
