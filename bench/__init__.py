"""Benchmarks (``adasde bench ...``): each writes a Markdown report with machine, date and command to
``bench/results/``."""
