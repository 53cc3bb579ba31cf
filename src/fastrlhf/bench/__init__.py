"""Benchmarks: both sides measured in the same run, medians of repeats, ratios, reproducing command."""
