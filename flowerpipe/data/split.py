"""Deterministic stratified train/val/test split."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def _count(n: int, fraction: float) -> int:
    """Images a split gets from a class of n: rounded, at least one when the fraction is non-zero."""
    if fraction <= 0 or n < 3:
        return 0
    return max(1, round(n * fraction))


def stratified_split(items_per_class: list[list[str]], val: float, test: float,
                     seed: int) -> dict[str, list[tuple[str, int]]]:
    """Split each class's sorted items by a seeded permutation; each split is then shuffled by the seed too."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for label, items in enumerate(items_per_class):
        items = sorted(items)
        order = rng.permutation(len(items))
        n_test, n_val = _count(len(items), test), _count(len(items), val)
        picked = [items[i] for i in order]
        out["test"] += [(x, label) for x in picked[:n_test]]
        out["val"] += [(x, label) for x in picked[n_test:n_test + n_val]]
        out["train"] += [(x, label) for x in picked[n_test + n_val:]]
    for name in SPLITS:
        out[name] = [out[name][i] for i in rng.permutation(len(out[name]))]
    return out
