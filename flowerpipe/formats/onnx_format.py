"""ONNX via tf2onnx (float32) and ONNX Runtime static quantization (int8), run with ONNX Runtime."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from flowerpipe.formats.base import ConvertContext, Format, FormatError, Runner, Skipped, require
from flowerpipe.params import PosInt, Section
from flowerpipe.pipeline.outputs import atomic

INPUT = "image"
FILES = {"float32": "model.onnx", "int8": "model_int8.onnx", "float16": "model_float16.onnx",
         "int8-symmetric": "model_int8_symmetric.onnx"}


class Settings(Section):
    """params.yaml `onnx`: export options."""

    opset: Annotated[int, Field(ge=13)] = 17
    int8: bool = True  # also build an ONNX Runtime static-quantized (QDQ) int8 model (uint8 activations: CPU's best)
    float16: bool = True  # float16 inside, float32 in and out: what TensorRT 11 builds its fp16 engine from
    int8_symmetric: bool = True  # int8 Q/DQ, zero points 0, weights per channel: TensorRT 11's int8 source
    calibration_images: PosInt = 100


def convert(ctx: ConvertContext, out: Path, opset: int = 17) -> Path:
    """Convert the Keras model (probabilities output) to ONNX with a dynamic batch dimension."""
    import tensorflow as tf
    import tf2onnx

    from flowerpipe.model.build import load_model

    model = load_model(ctx.keras_path)
    spec = (tf.TensorSpec((None, ctx.image_size, ctx.image_size, 3), tf.float32, name=INPUT),)
    fn = tf.function(lambda image: {"probabilities": model(image, training=False)})
    with atomic(out) as tmp:
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset, output_path=str(tmp))
    return out


def convert_float16(src: Path, out: Path) -> Path:
    """The float32 model with float16 weights and compute, its inputs and outputs kept float32 (ONNX Runtime's
    converter; TensorRT 11 builds a strongly typed fp16 engine from it, and ONNX Runtime's CPU scores it)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(require(src))), keep_io_types=True)
    with atomic(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def quantize_int8(ctx: ConvertContext, src: Path, out: Path, symmetric: bool = False) -> Path:
    """Static QDQ int8 quantization calibrated on training images, weights per channel.

    symmetric=False: uint8 activations with zero points, what ONNX Runtime's CPU runs fastest. symmetric=True:
    int8 activations and weights with every zero point 0 and float biases: the only Q/DQ TensorRT takes.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = ctx.calibration

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 1
            return {INPUT: calib[self.i - 1:self.i]}

    pre = out.with_name(f".{out.stem}.pre.onnx")  # a step, not an output
    try:
        with atomic(out) as tmp:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                           # TensorRT takes int8 Q/DQ only: biases stay float (it fuses them)
                                           "QuantizeBias": not symmetric})
    finally:
        pre.unlink(missing_ok=True)
    return out


def preload_cuda() -> str:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels before a CUDA session ('' or why it could not).

    The onnxruntime-gpu wheel's CUDA provider library has no rpath to those wheels' folders: ONNX Runtime finds them
    only through `onnxruntime.preload_dlls()`, which its documentation recommends when relying solely on NVIDIA's
    site packages (`directory=""`: those first, then the default search path). TensorFlow preloads some of them
    (not cuRAND) and the benchmark's workers and the server never import it, so every process that opens a CUDA
    session calls this first. Loading a library twice only adds a reference: calling it again costs nothing.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return f"onnxruntime {getattr(ort, '__version__', '?')} has no preload_dlls (1.21 and newer have it)"
    try:
        preload(directory="")
    except OSError as exc:  # a library that exists but cannot load: the session below then says CUDA is missing
        return f"onnxruntime.preload_dlls failed: {exc}"
    return ""


def providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for a device, or Skipped when it is not available."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skipped("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
    if why := preload_cuda():
        logging.getLogger(__name__).warning("%s", why)
    # The arena grows by what is asked, not by doubling: TensorFlow or TensorRT in the same process keep room.
    return [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]


class OnnxRunner(Runner):
    """An ONNX Runtime session with all graph optimisations on."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0):
        import onnxruntime as ort

        require(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 2 if device == "gpu" else 3  # on a GPU, why CUDA failed to load is shown
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=providers(device))
        except Skipped:
            raise
        except Exception as exc:
            raise FormatError(f"{path}: not a valid ONNX model ({exc.__class__.__name__})") from None
        if device == "gpu" and self.sess.get_providers()[0] != "CUDAExecutionProvider":
            # ONNX Runtime falls back to the CPU when CUDA or cuDNN fail to load: that would be a CPU figure
            raise Skipped(f"ONNX Runtime did not put this model on the GPU (it runs {self.sess.get_providers()}; "
                          "a CUDA or cuDNN library failed to load: its log says which)")
        self.device = device
        self.input = self.sess.get_inputs()[0].name
        side = self.sess.get_inputs()[0].shape[1]
        self.image_size = side if isinstance(side, int) else 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities from the session."""
        return self.sess.run(None, {self.input: images.astype(np.float32, copy=False)})[0]


DEVICES = {"cpu": "", "gpu": ""}  # device -> "" (may run there) or why it never can


def load(path: Path, option: str = "", device: str = "cpu", threads: int = 0) -> Runner:
    """Load an .onnx file with ONNX Runtime."""
    return OnnxRunner(path, device, threads)


def _wanted(p) -> list[str]:
    s = FORMAT.settings_of(p)
    return ["float32", *(o for o, on in (("int8", s.int8), ("float16", s.float16),
                                         ("int8-symmetric", s.int8_symmetric)) if on)]


def _option(path: Path) -> str:
    return next((o for o, f in FILES.items() if f == path.name), "int8" if "int8" in path.stem else "float32")


FORMAT = Format(
    family="onnx", options=tuple(FILES), path=lambda p, option: Path(p.paths.converted) / "onnx" / FILES[option],
    precision={"float32": "float32", "int8": "int8", "float16": "float16", "int8-symmetric": "int8"}, devices=DEVICES,
    platform="onnxruntime_onnx", suffixes=(".onnx",), plain="float32", order=3, serve_rank=1, stage="convert_onnx",
    outs=("${paths.converted}/onnx",), section="onnx", settings=Settings, wanted=_wanted,
    wanted_params=("onnx.int8", "onnx.float16", "onnx.int8_symmetric"), option_of=_option,
)
