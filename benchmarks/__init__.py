"""Throughput benchmarks: the PyTorch baseline and the scripts around bench.py."""
