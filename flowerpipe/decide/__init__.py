"""Deciding and reporting: what to ship, the Pareto front, the headline metrics, the run report."""
