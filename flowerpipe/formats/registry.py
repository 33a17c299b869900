"""Every model variant the params ask for, where it lives, and how to load it: the only place formats are named."""

from __future__ import annotations

import importlib
from pathlib import Path

from flowerpipe.formats.base import FormatError, Runner, Variant
from flowerpipe.params import Params

MODULES = {
    "keras": "flowerpipe.formats.keras_format",
    "savedmodel": "flowerpipe.formats.savedmodel",
    "tflite": "flowerpipe.formats.tflite",
    "onnx": "flowerpipe.formats.onnx_format",
    "openvino": "flowerpipe.formats.openvino_format",
    "tensorrt": "flowerpipe.formats.tensorrt_format",
}


def savedmodel_dir(p: Params) -> Path:
    """models/serving/<name>/<version>."""
    return Path(p.paths.serving) / p.model.name / str(p.export.version)


def trt_path(p: Params, precision: str) -> Path:
    """Where convert_trt put a precision: the backend it used is recorded in its metrics."""
    from flowerpipe.formats.tensorrt_format import filename
    from flowerpipe.stage import read_json

    record = read_json(Path(p.paths.metrics) / "convert_trt.json", {}) or {}
    backend = record.get("backend") or "onnx"
    return Path(p.paths.converted) / "tensorrt" / filename(backend, precision)


def variants(p: Params) -> list[Variant]:
    """All variants in a stable order: keras, savedmodel, tflite-*, onnx*, openvino-*, tensorrt-*."""
    conv = Path(p.paths.converted)
    out = [Variant("keras", "keras", "", Path(p.paths.model)),
           Variant("savedmodel", "savedmodel", "", savedmodel_dir(p))]
    out += [Variant(f"tflite-{v}", "tflite", v, conv / "tflite" / f"model_{v}.tflite") for v in p.tflite.variants]
    out.append(Variant("onnx", "onnx", "float32", conv / "onnx" / "model.onnx"))
    if p.onnx.int8:
        out.append(Variant("onnx-int8", "onnx", "int8", conv / "onnx" / "model_int8.onnx"))
    out += [Variant(f"openvino-{v}", "openvino", v, conv / "openvino" / v / "model.xml") for v in p.openvino.variants]
    out += [Variant(f"tensorrt-{v}", "tensorrt", v, trt_path(p, v)) for v in p.trt.precisions]
    return out


def find(p: Params, name: str) -> Variant:
    """The variant called name, or a one-line error listing the valid names."""
    for v in variants(p):
        if v.name == name:
            return v
    names = ", ".join(v.name for v in variants(p))
    raise FormatError(f"unknown model format {name!r}; expected one of: {names}")


def load(variant: Variant, device: str = "cpu", threads: int = 0) -> Runner:
    """Load a variant's runner for a device (raises Skipped where it cannot run here)."""
    module = importlib.import_module(MODULES[variant.family])
    return module.load(variant.path, variant.option, device, threads)
