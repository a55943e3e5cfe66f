"""Benchmark scripts behind ``auxilearn-hpo bench ...``; each prints a pandas table."""
