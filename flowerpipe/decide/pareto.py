"""The Pareto front of accuracy against latency: the formats no other format beats on both."""

from __future__ import annotations

import pandas as pd


def pareto(points: pd.DataFrame) -> pd.Series:
    """True for the rows that no other row beats on both latency_ms (lower) and accuracy (higher)."""
    return pd.Series([not ((points.latency_ms <= r.latency_ms) & (points.accuracy >= r.accuracy)
                           & ((points.latency_ms < r.latency_ms) | (points.accuracy > r.accuracy))).any()
                      for r in points.itertuples()], index=points.index, dtype=bool)
