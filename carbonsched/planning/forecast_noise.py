"""Seeded forecast error, the draws the backtest and the trace provider share.

Two models use these draws:

- i.i.d. multiplicative noise (:func:`perturbed`): a forecast value is the true value times
  ``1 + noise · N(0, 1)``, clipped at 0 (gCO2e/kWh), where ``noise`` is the relative size of the
  error (0.1: 10 %), drawn from :func:`seeded_rng` ``(seed, stream)`` (a backtest submission, a
  trace sample's position);
- the lead-time model of :mod:`carbonsched.planning.noise_model`, whose innovations are
  :func:`normals_at` ``(seed, stream, arrival instants, targets)``: a fixed function of the key
  :func:`seeded_rng` gives ``(seed, stream)`` and of the arrival instant and target, so the same
  instant always gets the same vector, whichever forecast asks for it. Providers take that model
  as a :class:`LogErrorModel`.
"""

from __future__ import annotations

import functools
import random
from typing import Protocol, Sequence

import numpy as np

STREAM_STRIDE = 1_000_003  # a prime above any stream index in use, so (seed, stream) pairs do not collide
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_LOW_32 = np.uint64(0xFFFFFFFF)
_UNIT = 2.0 ** -32


def seeded_rng(seed: int, stream: int) -> random.Random:
    """The random generator of one stream of draws under ``seed`` (deterministic across runs)."""
    return random.Random(seed * STREAM_STRIDE + stream)


def perturbed(value_g_per_kwh: float, noise: float, rng: random.Random) -> float:
    """``value_g_per_kwh · (1 + noise · N(0, 1))``, clipped at 0; exact (and no draw) when ``noise`` is 0."""
    if noise <= 0:
        return value_g_per_kwh
    factor = 1.0 + noise * rng.gauss(0.0, 1.0)
    return max(0.0, value_g_per_kwh * factor)


@functools.lru_cache(maxsize=4096)
def stream_key(seed: int, stream: int) -> int:
    """A 64-bit key drawn from :func:`seeded_rng` ``(seed, stream)``."""
    return seeded_rng(seed, stream).getrandbits(64)


def _mixed(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
    values = (values ^ (values >> np.uint64(30))) * _MIX_1
    values = (values ^ (values >> np.uint64(27))) * _MIX_2
    return values ^ (values >> np.uint64(31))


def normals_at(seed: int, stream: int, instants: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray,
               ) -> np.ndarray:
    """Standard normal draws, one per (instant, position) pair (equal-length arrays): the draw of a
    pair is the same for the same ``(seed, stream)`` whatever else is asked. Counter-based (a hash
    of the key, the instant and the position, through Box-Muller on its two 32-bit halves), so any
    draw is made without drawing the ones before it."""
    key = np.uint64(stream_key(seed, stream))
    rows = _mixed(np.asarray(instants, dtype=np.int64).astype(np.uint64) * _GOLDEN ^ key)
    bits = _mixed(rows + (np.asarray(positions, dtype=np.int64).astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    uniform_1 = ((bits >> np.uint64(32)).astype(np.float64) + 1.0) * _UNIT  # (0, 1]
    uniform_2 = (bits & _LOW_32).astype(np.float64) * _UNIT
    return np.sqrt(-2.0 * np.log(uniform_1)) * np.cos(2.0 * np.pi * uniform_2)


class LogErrorModel(Protocol):
    """A forecast-error model: log(forecast / truth) for targets (unix s) of an issue at ``issued_s`` (unix s)."""

    def log_errors_at(self, issued_s: float, targets_s: Sequence[float], seed: int, stream: int) -> np.ndarray:
        ...
