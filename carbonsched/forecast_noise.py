"""Seeded multiplicative forecast error, the one model the backtest and the trace provider share.

A forecast value is the true value times ``1 + noise · N(0, 1)``, clipped at 0 (gCO2e/kWh), where
``noise`` is the relative size of the error (0.1: 10 %). The draws come from
:func:`seeded_rng` ``(seed, stream)``, so a given seed and stream (a backtest submission, a trace
sample's position) always give the same errors.
"""

from __future__ import annotations

import random

STREAM_STRIDE = 1_000_003  # a prime above any stream index in use, so (seed, stream) pairs do not collide


def seeded_rng(seed: int, stream: int) -> random.Random:
    """The random generator of one stream of draws under ``seed`` (deterministic across runs)."""
    return random.Random(seed * STREAM_STRIDE + stream)


def perturbed(value_g_per_kwh: float, noise: float, rng: random.Random) -> float:
    """``value_g_per_kwh · (1 + noise · N(0, 1))``, clipped at 0; exact (and no draw) when ``noise`` is 0."""
    if noise <= 0:
        return value_g_per_kwh
    factor = 1.0 + noise * rng.gauss(0.0, 1.0)
    return max(0.0, value_g_per_kwh * factor)
