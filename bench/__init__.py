"""Benchmarks for Hookrelay: ``python -m bench.run`` (or ``make bench``) starts the real stack and prints figures."""
