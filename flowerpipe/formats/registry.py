"""Every model variant, where it lives, and how to load it: the only place formats are named.

`find(p, name)` resolves one name from the paths alone (plus model.name and export.version for the
SavedModel), so a stage that loads one format depends on no other format's params; `variants(p)` lists
what the params ask the conversion stages to build, for the stages that go over all of them.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from flowerpipe.formats.base import FormatError, Runner, Skipped, Variant
from flowerpipe.jsonio import read_json
from flowerpipe.params import OPENVINO_VARIANTS, TFLITE_VARIANTS, TRT_PRECISIONS, Params

MODULES = {
    "keras": "flowerpipe.formats.keras_format",
    "savedmodel": "flowerpipe.formats.savedmodel",
    "tflite": "flowerpipe.formats.tflite",
    "onnx": "flowerpipe.formats.onnx_format",
    "openvino": "flowerpipe.formats.openvino_format",
    "tensorrt": "flowerpipe.formats.tensorrt_format",
}
# Every name a variant can have, in report order: family, or family-option.
ALL_NAMES = ("keras", "savedmodel", *(f"tflite-{v}" for v in TFLITE_VARIANTS), "onnx", "onnx-int8",
             *(f"openvino-{v}" for v in OPENVINO_VARIANTS), *(f"tensorrt-{v}" for v in TRT_PRECISIONS))
# The trained model: every other variant is scored against it.
REFERENCE = "keras"
# Formats that compute in float32 like the trained model (serve.format auto picks among these).
FLOAT_FORMATS = ("openvino-float32", "onnx", "tflite-float32", "savedmodel", "keras")
# Reduced-precision formats that may be near-lossless: serve.format auto takes one only when the evaluate
# stage measured its top-1 agreement with the trained model at serve.min_agreement or above.
NEAR_FLOAT_FORMATS = ("openvino-bfloat16",)
# Where each format's conversion stage records status, seconds and size.
CONVERT_RECORDS = ("export", "convert_tflite", "convert_onnx", "convert_openvino", "convert_trt")


def savedmodel_dir(p: Params) -> Path:
    """models/serving/<name>/<version>."""
    return Path(p.paths.serving) / p.model.name / str(p.export.version)


def trt_path(p: Params, precision: str) -> Path:
    """Where convert_trt put a precision: the backend it used is recorded beside the engines."""
    from flowerpipe.formats.tensorrt_format import filename

    folder = Path(p.paths.converted) / "tensorrt"
    backend = (read_json(folder / "status.json", {}) or {}).get("backend") or "onnx"
    return folder / filename(backend, precision)


def _path(p: Params, family: str, option: str) -> Path:
    conv = Path(p.paths.converted)
    if family == "keras":
        return Path(p.paths.model)
    if family == "savedmodel":
        return savedmodel_dir(p)
    if family == "tflite":
        return conv / "tflite" / f"model_{option}.tflite"
    if family == "onnx":
        return conv / "onnx" / ("model_int8.onnx" if option == "int8" else "model.onnx")
    if family == "openvino":
        return conv / "openvino" / option / "model.xml"
    return trt_path(p, option)


def find(p: Params, name: str) -> Variant:
    """The variant called name, or a one-line error listing the valid names."""
    if name not in ALL_NAMES:
        raise FormatError(f"unknown model format {name!r}; expected one of: {', '.join(ALL_NAMES)}")
    family, _, option = name.partition("-")
    option = option or ("float32" if family == "onnx" else "")
    return Variant(name, family, option, _path(p, family, option))


def find_built(p: Params, name: str) -> Variant:
    """find(), and one line with the conversion stage's reason when that stage skipped this variant here."""
    variant = find(p, name)
    record = conversion_status(p).get(name, {})
    if not variant.path.exists() and record.get("status") == "skipped":
        raise FormatError(f"{name} was not built here: {record.get('reason', '')}")
    return variant


def variants(p: Params, family: str | None = None) -> list[Variant]:
    """The variants the params ask for (all, or one family's), in ALL_NAMES order."""
    wanted = {
        "keras": lambda: ["keras"],
        "savedmodel": lambda: ["savedmodel"],
        "tflite": lambda: [f"tflite-{v}" for v in p.tflite.variants],
        "onnx": lambda: ["onnx"] + (["onnx-int8"] if p.onnx.int8 else []),
        "openvino": lambda: [f"openvino-{v}" for v in p.openvino.variants],
        "tensorrt": lambda: [f"tensorrt-{v}" for v in p.trt.precisions],
    }
    chosen = {n for fam, listed in wanted.items() if family in (None, fam) for n in listed()}
    return [find(p, n) for n in ALL_NAMES if n in chosen]


def built(p: Params, names: tuple[str, ...] = ALL_NAMES) -> list[str]:
    """Which of these formats have a model file on disk now."""
    return [n for n in names if find(p, n).path.exists()]


def conversion_status(p: Params) -> dict[str, dict]:
    """Each variant's conversion record (status, seconds, size_mb or reason) from the conversion stages."""
    out: dict[str, dict] = {}
    for name in CONVERT_RECORDS:
        record = read_json(Path(p.paths.reports) / f"{name}.json", {}) or {}
        nested = record.get("variants")  # convert_trt nests its per-precision records
        out.update(nested if isinstance(nested, dict) else record)
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def unavailable(variant: Variant, device: str) -> str:
    """Why a variant cannot run on a device here, known without loading it ('' when it may run)."""
    reason = importlib.import_module(MODULES[variant.family]).DEVICES.get(device, f"unknown device {device!r}")
    if reason or device != "gpu":
        return reason
    return "" if _gpus() else "no NVIDIA GPU on this machine"


@functools.cache
def _gpus() -> tuple[str, ...]:
    from flowerpipe.devices import gpu_names

    return tuple(gpu_names())


def load(variant: Variant, device: str = "cpu", threads: int = 0) -> Runner:
    """Load a variant's runner for a device (raises Skipped where it cannot run here)."""
    reason = unavailable(variant, device)
    if reason:
        raise Skipped(reason)
    module = importlib.import_module(MODULES[variant.family])
    return module.load(variant.path, variant.option, device, threads)
