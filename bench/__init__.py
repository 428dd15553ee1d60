"""Benchmarks: programs that print a table with the baseline beside each figure."""
