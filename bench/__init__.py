"""Benchmarks (not timed tests): ``make bench`` runs ``python -m bench.ionq_bench``."""
