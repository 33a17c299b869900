"""TFLite in float32, float16, dynamic-range and full-integer int8, run with the LiteRT interpreter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from flowerpipe.formats.base import ConvertContext, Format, FormatError, Runner, Skipped, require
from flowerpipe.params import PosInt, Section
from flowerpipe.pipeline.outputs import atomic

VARIANTS = ("float32", "float16", "dynamic", "int8")


class Settings(Section):
    """params.yaml `tflite`: which precisions to build."""

    variants: list[Literal["float32", "float16", "dynamic", "int8"]] = list(VARIANTS)
    calibration_images: PosInt = 100  # int8 representative data, from the training split only


def filename(variant: str) -> str:
    """model_<variant>.tflite."""
    return f"model_{variant}.tflite"


def convert(ctx: ConvertContext, variant: str, out: Path) -> Path:
    """Convert the SavedModel's serving_default signature to one TFLite precision."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(ctx.savedmodel_path), signature_keys=["serving_default"])
    if variant == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        calib = ctx.calibration

        def representative():
            for i in range(len(calib)):
                yield {"image": calib[i:i + 1]}

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    elif variant != "float32":
        raise ValueError(f"tflite.variants: unknown variant {variant!r}; expected one of {VARIANTS}")
    data = conv.convert()
    with atomic(out) as tmp:
        tmp.write_bytes(data)
    return out


class TFLiteRunner(Runner):
    """LiteRT interpreter; quantized inputs and outputs use the tensors' own scale and zero point."""

    def __init__(self, path: Path, threads: int = 0):
        from ai_edge_litert.interpreter import Interpreter

        require(path)
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        except (ValueError, RuntimeError) as exc:
            raise FormatError(f"{path}: not a valid TFLite model ({exc})") from None
        self.path = path
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()
        self.image_size = int(self.inp["shape"][1])
        self.prob = next((o for o in self.out if o["shape"][-1] > 1 and o["dtype"] != np.int32), self.out[0])
        self._batch = 0

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = list(self.inp["shape"])
            shape[0] = n
            self.interp.resize_tensor_input(self.inp["index"], shape)
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            self.prob = next(o for o in self.interp.get_output_details() if o["index"] == self.prob["index"])
            self._batch = n

    def quantize(self, images: np.ndarray) -> np.ndarray:
        """Raw float images as the input tensor's dtype, using its scale and zero point."""
        dtype = self.inp["dtype"]
        if dtype == np.float32:
            return images.astype(np.float32, copy=False)
        scale, zero = self.inp["quantization"]
        info = np.iinfo(dtype)
        q = np.round(images / scale + zero) if scale else images
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Output tensor values as float probabilities."""
        if self.prob["dtype"] == np.float32:
            return raw.astype(np.float32)
        scale, zero = self.prob["quantization"]
        return ((raw.astype(np.float32) - zero) * scale).astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for a batch."""
        self._resize(len(images))
        self.interp.set_tensor(self.inp["index"], self.quantize(images))
        self.interp.invoke()
        return self.dequantize(self.interp.get_tensor(self.prob["index"]))


DEVICES = {"cpu": ""}  # device -> "" (runs there) or why it never can
DEVICES["gpu"] = "the LiteRT Python interpreter runs on the CPU only (GPU delegates are for mobile)"


def load(path: Path, option: str = "", device: str = "cpu", threads: int = 0) -> Runner:
    """Load a .tflite file (the LiteRT interpreter runs on the CPU only)."""
    if DEVICES.get(device):
        raise Skipped(DEVICES[device])
    return TFLiteRunner(path, threads)


def _option(path: Path) -> str:
    option = path.stem.removeprefix("model_")
    return option if option in VARIANTS else "float32"


FORMAT = Format(
    family="tflite", options=VARIANTS, path=lambda p, option: Path(p.paths.converted) / "tflite" / filename(option),
    precision={"float32": "float32", "float16": "float16", "dynamic": "int8", "int8": "int8"}, devices=DEVICES,
    platform="tensorflow_tflite", suffixes=(".tflite",), order=2, serve_rank=2, stage="convert_tflite",
    outs=("${paths.converted}/tflite",), section="tflite", settings=Settings,
    wanted=lambda p: list(FORMAT.settings_of(p).variants), wanted_params=("tflite.variants",), option_of=_option,
)
