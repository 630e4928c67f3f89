"""Benchmark models and data for edgec (not part of the installed package)."""
