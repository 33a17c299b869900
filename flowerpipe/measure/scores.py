"""Scores for one model on the test split, and agreement with the reference (Keras) model."""

from __future__ import annotations

import numpy as np


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1/support."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    pred = probs.argmax(axis=1)
    idx = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(labels, pred)), 4),
        "macro_f1": round(float(f.mean()), 4),
        "per_class": {c: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                          "f1": round(float(f[i]), 4), "support": int(s[i])} for i, c in enumerate(classes)},
    }


def agreement(probs: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement with the reference, largest probability difference, worst deviation of a row sum from 1."""
    return {
        "top1_agreement": round(float((probs.argmax(1) == reference.argmax(1)).mean()), 4) if len(probs) else 1.0,
        "max_prob_diff": round(float(np.abs(probs - reference).max()), 6) if len(probs) else 0.0,
        "max_sum_error": round(float(np.abs(probs.sum(1) - 1).max()), 6) if len(probs) else 0.0,
    }


def predict_batches(runner, images: np.ndarray, batch: int) -> np.ndarray:
    """Run a runner over images in fixed-size batches."""
    outs = [runner.predict(images[i:i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
