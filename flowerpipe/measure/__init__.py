"""Measuring: scores, the timing harness, matmul peaks, the machine (CPU, GPUs, doctor), load tests."""
