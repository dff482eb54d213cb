"""Benchmarks run by `python -m submission bench NAME`: each measures us beside its anchors."""
