"""Softmax and cross-entropy kernels and their benchmarks."""
