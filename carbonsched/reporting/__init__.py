"""Reading the store back: per-epoch accounting, energy and carbon reports, plan outcomes, plots."""
