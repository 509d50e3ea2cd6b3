"""Benchmarks, tuning sweeps and probes: run from the repository root (``python -m benchmarks.<room>.<name>``), never installed."""
