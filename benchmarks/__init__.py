"""Benchmarks for dpnn (measured here, never asserted in tests).

``python -m benchmarks.scaling --help`` measures throughput and scaling efficiency of the
data-parallel engine across worker counts, beside single-process NumPy/BLAS and PyTorch.
"""
