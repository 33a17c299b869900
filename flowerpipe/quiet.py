"""Quiet TensorFlow's log noise (unless FLOWERPIPE_VERBOSE is set); real errors still show."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def log_level(gpu: bool) -> str:
    """TF_CPP_MIN_LOG_LEVEL unless the user set one: warnings shown where the NVIDIA driver lists a GPU (TensorFlow's
    "Cannot dlopen some GPU libraries", the reason it lists no GPU, is a warning), errors only elsewhere."""
    return "1" if gpu else "3"


def quiet_tensorflow(preload: bool = True) -> None:
    """Silence TensorFlow's C++ and Python log noise unless FLOWERPIPE_VERBOSE is set."""
    from flowerpipe.measure.devices import gpu_names

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ.get("FLOWERPIPE_VERBOSE"):
        return
    gpu = bool(gpu_names())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", log_level(gpu))
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", module="tensorflow.lite.python.interpreter")  # the converter's own use
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers.data_adapters")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed, but will be ignored.*")
    if preload and "tensorflow" not in sys.modules:
        if gpu:  # an NVIDIA GPU: a CUDA library that fails to load must be seen, so nothing is hidden
            import tensorflow  # noqa: F401

            from flowerpipe.measure.devices import tensorflow_gpu_missing

            tensorflow_gpu_missing()  # memory growth, before any op touches a GPU
            return
        # The oneDNN notice is printed before absl logging starts, whatever the log level: hide fd 2 meanwhile.
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
