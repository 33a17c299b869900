"""The one interface every model format implements: convert, load, predict a batch of raw images."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowerpipe.errors import FormatError

__all__ = ["FormatError", "Skipped", "Variant", "Format", "ConvertContext", "Runner", "start_tensorflow", "require",
           "timed", "size_mb", "LABELS_FILE", "labels_path", "write_labels", "read_labels"]

LABELS_FILE = "labels.txt"  # one class name per line, in output order (TF Serving's and Triton's convention)


class Skipped(Exception):
    """This variant cannot be built or run on this machine; the message is the reason."""


@dataclass(frozen=True)
class Variant:
    """One deployable model: a format family, an option (precision) and where it lives."""

    name: str
    family: str
    option: str
    path: Path


def _fixed(path: Path) -> str:
    return ""


@dataclass(frozen=True, kw_only=True)
class Format:
    """What a format module declares as its module-level FORMAT, by keyword; the registry, params checks, dvc.yaml,
    the server and the report read only this, so a new format is one module (with its conversion stage).

    `path(p, option)` and `wanted(p)` take the pipeline's Params; `wanted` reads only the keys in `wanted_params`.
    """

    family: str  # the name of a variant is family-option, or the family alone for `plain`
    options: tuple[str, ...]
    path: Callable[[Any, str], Path]  # where the pipeline keeps one option's model
    precision: Mapping[str, str]  # option -> what it computes in: float32, bfloat16, float16 or int8
    devices: Mapping[str, str]  # device -> '' (may run there) or why it never can
    platform: str  # KServe V2 / Triton platform name in model metadata
    suffixes: tuple[str, ...] = ()  # model file suffixes the server recognizes (a SavedModel is a folder)
    plain: str = ""  # the option named by the family alone (onnx: float32)
    order: int = 100  # place in the report's tables
    serve_rank: int = 100  # among float formats, the one served without benchmark figures (lowest first)
    stage: str = ""  # the DVC stage that builds it; its record is <paths.reports>/<stage>.json ('' = none)
    convert_stage: bool = True  # dvc.yaml's entry for `stage` is made from this declaration
    outs: tuple[str, ...] = ()  # what that stage writes, as dvc.yaml paths (${paths.*})
    stage_deps: tuple[str, ...] = ("${paths.model}", "${paths.tfrecords}")  # the data that stage reads
    stage_params: tuple[str, ...] = ("model.image_size",)  # its params beside its own section
    section: str = ""  # its params.yaml section ('' = none)
    settings: type | None = None  # the pydantic model of that section
    wanted: Callable[[Any], list[str]] = field(default=lambda p: [""])  # the options the params ask to build
    wanted_params: tuple[str, ...] = ()  # the keys wanted() reads
    option_of: Callable[[Path], str] = _fixed  # the option a served file's name carries
    fallback: Mapping[str, str] = field(default_factory=dict)  # option -> the one its file serves as where it can't run

    def name(self, option: str) -> str:
        """family, or family-option."""
        return self.family if option == self.plain else f"{self.family}-{option}"

    def names(self) -> list[str]:
        """Every variant name, in option order."""
        return [self.name(o) for o in self.options]

    def settings_of(self, p: Any) -> Any:
        """This format's validated params section (one line per bad key)."""
        return p.section(self.section, self.settings)


@dataclass
class ConvertContext:
    """What a converter needs: the trained model, representative data and its options."""

    keras_path: Path
    savedmodel_path: Path
    image_size: int
    classes: list[str]
    calibration: np.ndarray  # float32 (N, H, W, 3) raw RGB from the training split
    options: dict = field(default_factory=dict)


class Runner(ABC):
    """A loaded model: raw RGB float32 (N, H, W, 3) in 0-255 -> probabilities (N, classes)."""

    device: str = "cpu"
    image_size: int = 0  # the square input's side in pixels, read from the model (0 = unknown)

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


def labels_path(artifact: Path) -> Path:
    """Where a model's class names live: a SavedModel's assets/, else beside the model file or in its folder."""
    artifact = Path(artifact)
    if (artifact / "saved_model.pb").exists():
        return artifact / "assets" / LABELS_FILE
    return (artifact if artifact.is_dir() else artifact.parent) / LABELS_FILE


def write_labels(artifact: Path, classes: list[str]) -> Path:
    """Write the class names where labels_path says, so the model folder can be served on its own."""
    path = labels_path(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(classes) + "\n")
    return path


def read_labels(artifact: Path) -> list[str]:
    """The class names that travel with a model, or a FormatError naming the missing file."""
    path = labels_path(artifact)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{artifact}: no readable class names at {path} ({exc.__class__.__name__})") from None
    if not names:
        raise FormatError(f"{path}: the labels file is empty")
    return names


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
