"""Benchmarks behind `minimind bench ...`; results are recorded in docs/benchmarks.md."""
