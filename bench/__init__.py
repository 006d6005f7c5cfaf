"""Benchmarks (not shipped with the package)."""
