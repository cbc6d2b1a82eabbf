"""Benchmark scripts: each checks correctness first, then times, then writes results."""
