"""Benchmarks: programs that print figures (`python -m e2e.bench.<name>`), not tests."""
