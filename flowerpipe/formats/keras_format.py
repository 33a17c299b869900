"""Keras (.keras): the trained model itself, run with a compiled tf.function (not model.predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowerpipe.formats.base import Format, Runner, Skipped, require, start_tensorflow
from flowerpipe.measure.devices import tensorflow_gpu_missing


class KerasRunner(Runner):
    """Calls the Keras model inside one traced tf.function per input shape."""

    def __init__(self, path: Path, device: str = "cpu"):
        import tensorflow as tf

        from flowerpipe.model.build import load_model

        self.device = device
        self._dev = "/GPU:0" if device == "gpu" else "/CPU:0"
        if device == "gpu" and (reason := tensorflow_gpu_missing()):
            raise Skipped(reason)  # tf.device would run it on the CPU without a word: no such GPU row
        with tf.device(self._dev):
            self.model = load_model(require(path))
        self.image_size = int(self.model.input_shape[1] or 0)
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities from the Keras graph."""
        import tensorflow as tf

        with tf.device(self._dev):
            return self._call(tf.convert_to_tensor(images, tf.float32)).numpy()


DEVICES = {"cpu": "", "gpu": ""}  # device -> "" (may run there) or why it never can
# The trained model itself: the train stage makes it, and every other variant is scored against it.
FORMAT = Format(
    family="keras", options=("",), path=lambda p, option: Path(p.paths.model), precision={"": "float32"},
    devices=DEVICES, platform="tensorflow_keras", suffixes=(".keras",), order=0, serve_rank=4, stage="train",
    convert_stage=False, outs=("${paths.model}",),
)


def load(path: Path, option: str = "", device: str = "cpu", threads: int = 0) -> Runner:
    """Load a .keras model."""
    start_tensorflow(threads)
    return KerasRunner(path, device)
