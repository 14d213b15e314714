"""Benchmarks: the pipeline against the raw model and a plain Ray Serve peer."""
