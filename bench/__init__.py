"""Benchmarks that print ratios against a reference; not part of the test suite."""
