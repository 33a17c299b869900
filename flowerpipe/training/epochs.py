"""What a run produced and where each finished epoch goes: dvclive, the run's history and its checkpoint."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from flowerpipe.training.checkpoints import Checkpoints


@dataclass
class Result:
    """What a training run produced."""

    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    flops: float = 0.0  # FLOPs of every training step and feature extraction, counted from the layers
    replicas: int = 1
    strategy: str = "default"
    precision: str = "float32"  # the Keras dtype policy training ran under
    resumed_from: str = ""
    budget_epochs: int = 0  # from scratch with train.scratch_minutes: the epoch count the budget allowed
    features: str = ""  # head phase on cached features: "reused" (the features stage's) or "extracted" here

    @property
    def best_val_accuracy(self) -> float:
        """The best epoch's val accuracy over every phase (the saved model's own figure is measured apart)."""
        vals = [h["val_accuracy"] for h in self.history if "val_accuracy" in h]
        return max(vals) if vals else 0.0


# The Keras log keys dvclive records each epoch: dvclive/plots/metrics/<key>.tsv and dvclive/metrics.json.
# Flat names, so that `dvc exp show` columns never look like params (train.*) and --drop can pick them.
LIVE_NAMES = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy"}


class EpochLog:
    """Where each finished epoch goes: dvclive (metrics.json, plots, step), the run's history and its checkpoint."""

    def __init__(self, live, result: Result, ckpt: Checkpoints):
        self.live, self.result, self.ckpt = live, result, ckpt
        self.step_flops = 0  # per image, for the phase now training (set when it starts)

    def epoch(self, phase: str, logs: dict, images: int, seconds: float, replay: bool = False) -> None:
        """Record one epoch (replay: an epoch an interrupted run already trained, logged again, not counted)."""
        row = {"epoch": len(self.result.history) + 1, "phase": phase,
               **{k: float(v) for k, v in logs.items() if k in LIVE_NAMES},
               "seconds": round(seconds, 3), "images_per_second": round(images / seconds, 3) if seconds else 0.0}
        self.result.history.append(row)
        if not replay:
            self.result.images_seen += images
            self.result.train_seconds += seconds
            self.result.flops += images * self.step_flops
            self.ckpt.record(phase, row)
        for key, name in LIVE_NAMES.items():
            if key in row and math.isfinite(row[key]):  # dvclive would store a diverged NaN as a string
                self.live.log_metric(name, row[key])
        self.live.next_step()

    def replay(self, rows: list[dict]) -> None:
        """Log again the epochs of a phase an interrupted run finished (or began), so the curves stay whole."""
        for row in rows:
            self.epoch(row["phase"], row, 0, row.get("seconds", 0.0), replay=True)

    def callback(self, phase: str, images_per_epoch: int):
        """A Keras callback that records each epoch of a fit() phase."""
        import keras

        log = self

        class _Epochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                """Start the epoch's clock and its step count."""
                self._t, self._steps = time.perf_counter(), 0

            def on_train_batch_end(self, batch, logs=None):
                self._steps += 1

            def on_epoch_end(self, epoch, logs=None):
                """Record the epoch's logs, time and images/s (an epoch a time budget cut short: its share)."""
                steps = (self.params or {}).get("steps") or self._steps
                images = round(images_per_epoch * min(1.0, self._steps / steps)) if steps else images_per_epoch
                log.epoch(phase, logs or {}, images, time.perf_counter() - self._t)

        return _Epochs()
