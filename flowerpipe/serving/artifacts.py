"""What a model file or folder is, found from itself alone, and how to load it with its labels for serving."""

from __future__ import annotations

import logging
from pathlib import Path

from flowerpipe.errors import FormatError
from flowerpipe.serving.repository import Loaded

log = logging.getLogger(__name__)


def detect(path: Path) -> tuple[str, str, Path]:
    """(family, option, model path) of a model file, a SavedModel folder, or a folder holding one model file."""
    from flowerpipe.formats.registry import detect as by_suffix
    from flowerpipe.formats.registry import suffixes

    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel", "", path
        known = suffixes()
        models = sorted(f for f in path.iterdir() if f.suffix in known and f.is_file())
        if not models:
            raise FormatError(f"{path}: no model here (a SavedModel, or a {', '.join(known)} file with labels.txt "
                              "beside it)")
        if len(models) > 1:
            raise FormatError(f"{path}: {len(models)} models here ({', '.join(m.name for m in models)}); "
                              "name the file to serve")
        path = models[0]
    family, option = by_suffix(path)
    return family, option, path


def format_name(family: str, option: str) -> str:
    """The registry's name for a family and option (onnx float32 is plain 'onnx')."""
    from flowerpipe.formats.registry import declaration

    return declaration(family).name(option)


def split_name(fmt: str) -> tuple[str, str]:
    """(family, option) of a variant name, or one line listing the known names."""
    from flowerpipe.formats.registry import ALL_NAMES, formats

    for f in formats():
        for option in f.options:
            if f.name(option) == fmt:
                return f.family, option
    raise FormatError(f"unknown model format {fmt!r}; expected one of: {', '.join(ALL_NAMES)}")


def load_artifact(path: Path, device: str = "cpu", threads: int = 0, classes: list[str] | None = None,
                  image_size: int = 0, fmt: str | None = None) -> Loaded:
    """Load a model for serving with the labels that travel with it (classes only when it has none).

    fmt: the variant it is (a shipped repository's manifest says; its files are named as Triton expects, which
    does not tell onnx-int8 from onnx or openvino-bfloat16 from openvino-float32); else found from the files."""
    from flowerpipe.formats.base import Skipped, Variant, labels_path, read_labels
    from flowerpipe.formats.registry import declaration, load

    family, option, model_path = detect(path)
    if fmt is not None:
        named, option = split_name(fmt)
        if named != family:
            raise FormatError(f"{path}: holds a {family} model, but its repository ships {fmt}")
    if labels_path(model_path).exists() or not classes:
        classes = read_labels(model_path)
    try:
        runner = load(Variant(format_name(family, option), family, option, model_path), device, threads)
    except Skipped as exc:
        fallback = declaration(family).fallback.get(option)
        if fallback is None:  # e.g. a TensorRT engine: the server runs models on the CPU
            raise FormatError(f"{model_path}: cannot be served here: {exc}") from None
        # e.g. OpenVINO's bfloat16 folder holds the float32 IR: on a CPU without bfloat16 it serves, exactly, in f32.
        log.warning("%s: %s; serving it in %s", model_path, exc, fallback)
        option = fallback
        runner = load(Variant(format_name(family, option), family, option, model_path), device, threads)
    name = format_name(family, option)
    return Loaded(runner.predict, classes, runner.image_size or image_size, name, runner.close)


def load_served(path: Path, requested: str = "auto", threads: int = 0, classes: list[str] | None = None,
                image_size: int = 0, fmt: str | None = None) -> Loaded:
    """load_artifact on serve.device: 'gpu' or an error line; 'auto' the GPU where the format runs on one here
    (its runner really placed on it: the same checks as the GPU rows of the benchmark), else the CPU."""
    from flowerpipe.formats.base import Skipped
    from flowerpipe.formats.registry import declaration

    if requested == "cpu":
        return load_artifact(path, "cpu", threads, classes, image_size, fmt)
    family = detect(path)[0]
    never = declaration(family).devices.get("gpu", "no GPU runner")
    if never and requested == "gpu":
        raise FormatError(f"{path}: serve.device is gpu, but this format never runs on one ({never})")
    if not never:
        try:
            loaded = load_artifact(path, "gpu", threads, classes, image_size, fmt)
            log.info("%s: served on the GPU", path)
            return loaded
        except (Skipped, FormatError) as exc:
            if requested == "gpu":
                raise FormatError(f"{path}: cannot be served on the GPU: {exc}") from None
            if declaration(family).devices.get("cpu"):  # a GPU-only format (a TensorRT engine): nowhere else
                raise
            log.info("%s: not on a GPU (%s); serving it on the CPU", path, exc)
    return load_artifact(path, "cpu", threads, classes, image_size, fmt)
