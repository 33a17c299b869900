"""flowerpipe: a reproducible DVC pipeline that trains, converts, checks and benchmarks a flower classifier."""

__version__ = "0.1.0"
