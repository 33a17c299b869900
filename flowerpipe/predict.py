"""Predictions for image files with any model format: top-k classes, a CSV and a JSON summary."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from flowerpipe.data import IMAGE_SUFFIXES
from flowerpipe.data.images import load_image
from flowerpipe.measure.scores import predict_batches

log = logging.getLogger(__name__)


def list_images(paths: list[str | Path]) -> list[Path]:
    """Files given directly, plus image files found (sorted) inside given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return out


def read_images(files: list[Path], image_size: int) -> tuple[np.ndarray, list[Path], list[dict]]:
    """Decode and resize every readable file; unreadable ones are reported and skipped."""
    arrays, kept, skipped = [], [], []
    for f in files:
        try:
            arrays.append(load_image(f, image_size))
            kept.append(f)
        except Exception as exc:  # any decode failure: report the file (one line), keep going
            reason = "not an image" if isinstance(exc, UnidentifiedImageError) else f"unreadable image: {exc}"[:200]
            skipped.append({"path": str(f), "reason": reason})
            log.warning("skipped %s: %s", f, reason)
    x = np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), np.float32)
    return x, kept, skipped


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most likely (class, probability) pairs per row."""
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]


def predict_files(runner, files: list[Path], classes: list[str], image_size: int, k: int = 3, batch: int = 16):
    """(pandas table of top-k per image, skipped files)."""
    import pandas as pd

    x, kept, skipped = read_images(files, image_size)
    probs = predict_batches(runner, x, batch) if len(x) else np.zeros((0, len(classes)), np.float32)
    rows = []
    for f, tk in zip(kept, top_k(probs, classes, k), strict=True):
        row = {"path": str(f), "prediction": tk[0][0], "probability": round(tk[0][1], 6)}
        for i, (c, pr) in enumerate(tk, 1):
            row[f"top{i}_class"], row[f"top{i}_probability"] = c, round(pr, 6)
        rows.append(row)
    return pd.DataFrame(rows), skipped
