"""Benchmarks shared by `fastadv bench` and benchmarks/ (pytest-benchmark)."""
