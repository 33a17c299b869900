"""What a model file or folder is, found from itself alone, and how to load it with its labels for serving."""

from __future__ import annotations

import logging
from pathlib import Path

from flowerpipe.errors import FormatError
from flowerpipe.serving.repository import Loaded

# File suffix -> format family; a SavedModel is a folder holding saved_model.pb.
log = logging.getLogger(__name__)
SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino", ".keras": "keras", ".plan": "tensorrt",
            ".engine": "tensorrt"}


def _option(family: str, path: Path) -> str:
    """The variant option a file name carries (model_int8.tflite, openvino/int8/model.xml), for display."""
    from flowerpipe.params import OPENVINO_VARIANTS, TFLITE_VARIANTS

    if family == "tflite":
        opt = path.stem.removeprefix("model_")
        return opt if opt in TFLITE_VARIANTS else "float32"
    if family == "openvino":
        return path.parent.name if path.parent.name in OPENVINO_VARIANTS else "float32"
    if family == "onnx":
        return "int8" if "int8" in path.stem else "float32"
    if family == "tensorrt":
        return path.stem.rsplit("_", 1)[-1]
    return ""


def detect(path: Path) -> tuple[str, str, Path]:
    """(family, option, model path) of a model file, a SavedModel folder, or a folder holding one model file."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel", "", path
        models = sorted(f for f in path.iterdir() if f.suffix in SUFFIXES and f.is_file())
        if not models:
            raise FormatError(f"{path}: no model here (a SavedModel, or a .onnx, .tflite, .xml, .keras or .plan "
                              "file with labels.txt beside it)")
        if len(models) > 1:
            raise FormatError(f"{path}: {len(models)} models here ({', '.join(m.name for m in models)}); "
                              "name the file to serve")
        path = models[0]
    family = SUFFIXES.get(path.suffix)
    if family is None:
        raise FormatError(f"{path}: not a model file this server knows ({', '.join(SUFFIXES)}, or a SavedModel)")
    return family, _option(family, path), path


def format_name(family: str, option: str) -> str:
    """The registry's name for a family and option (onnx float32 is plain 'onnx')."""
    return family if not option or (family == "onnx" and option == "float32") else f"{family}-{option}"


def load_artifact(path: Path, device: str = "cpu", threads: int = 0, classes: list[str] | None = None,
                  image_size: int = 0) -> Loaded:
    """Load a model for serving with the labels that travel with it (classes only when it has none)."""
    from flowerpipe.formats.base import Skipped, Variant, labels_path, read_labels
    from flowerpipe.formats.registry import load

    family, option, model_path = detect(path)
    if labels_path(model_path).exists() or not classes:
        classes = read_labels(model_path)
    try:
        runner = load(Variant(format_name(family, option), family, option, model_path), device, threads)
    except Skipped as exc:
        if (family, option) != ("openvino", "bfloat16"):
            raise
        # The bfloat16 folder holds the float32 IR: on a CPU without bfloat16 it serves, exactly, in float32.
        log.warning("%s: %s; serving it in float32", model_path, exc)
        option = "float32"
        runner = load(Variant(format_name(family, option), family, option, model_path), device, threads)
    name = format_name(family, option)
    return Loaded(runner.predict, classes, runner.image_size or image_size, name, runner.close)
