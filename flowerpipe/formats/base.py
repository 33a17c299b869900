"""The one interface every model format implements: convert, load, predict a batch of raw images."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowerpipe.errors import FormatError

__all__ = ["FormatError", "Skipped", "Variant", "ConvertContext", "Runner", "start_tensorflow", "require", "timed",
           "size_mb"]


class Skipped(Exception):
    """This variant cannot be built or run on this machine; the message is the reason."""


@dataclass(frozen=True)
class Variant:
    """One deployable model: a format family, an option (precision) and where it lives."""

    name: str
    family: str
    option: str
    path: Path


@dataclass
class ConvertContext:
    """What a converter needs: the trained model, representative data and its options."""

    keras_path: Path
    savedmodel_path: Path
    image_size: int
    num_classes: int
    calibration: np.ndarray  # float32 (N, H, W, 3) raw RGB from the training split
    options: dict = field(default_factory=dict)


class Runner(ABC):
    """A loaded model: raw RGB float32 (N, H, W, 3) in 0-255 -> probabilities (N, classes)."""

    device: str = "cpu"

    @abstractmethod
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of raw RGB images."""

    def synchronize(self) -> None:  # noqa: B027 (optional hook)
        """Wait for queued device work (no-op on the CPU)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release resources held by the runtime."""


def start_tensorflow(threads: int = 0) -> None:
    """Import TensorFlow quietly for a runtime that uses it, with `threads` intra-op threads (0 = all cores).

    The thread counts are read when TensorFlow starts its runtime; a process that already started it keeps its own.
    """
    import os

    from flowerpipe.quiet import quiet_tensorflow

    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    quiet_tensorflow()


def require(path: Path, what: str = "model file") -> Path:
    """Return path if it exists, else raise FormatError naming it."""
    if not Path(path).exists():
        raise FormatError(f"{path}: {what} not found (run the conversion stage)")
    return Path(path)


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """Call fn and return (result, seconds)."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def size_mb(path: Path) -> float:
    """Size on disk of a file or folder in MB."""
    path = Path(path)
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    elif path.exists():
        total = path.stat().st_size
        if path.suffix == ".xml" and path.with_suffix(".bin").exists():  # OpenVINO IR weights
            total += path.with_suffix(".bin").stat().st_size
    else:
        return 0.0
    return round(total / 1e6, 3)
