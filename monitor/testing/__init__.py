"""Helpers shared by the tests and the benchmarks: real architectures with random weights."""
