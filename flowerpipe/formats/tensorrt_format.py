"""TensorRT: TF-TRT where TensorFlow has it, else ONNX -> TensorRT engines; skipped without an NVIDIA GPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from flowerpipe.formats.base import ConvertContext, Format, FormatError, Runner, Skipped, require
from flowerpipe.jsonio import read_json
from flowerpipe.measure.devices import gpu_names
from flowerpipe.params import PosInt, Section
from flowerpipe.pipeline.outputs import atomic

PRECISIONS = ("fp32", "fp16", "int8")


class Settings(Section):
    """params.yaml `tensorrt`: TensorRT backend and precisions."""

    backend: Literal["auto", "tftrt", "onnx"] = "auto"
    precisions: list[Literal["fp32", "fp16", "int8"]] = list(PRECISIONS)
    calibration_images: PosInt = 100
    workspace_mb: PosInt = 1024
    max_batch_size: PosInt = 32  # largest batch an ONNX -> TensorRT engine accepts (its optimization profile)


@dataclass(frozen=True)
class Environment:
    """What decides whether and how TensorRT can run here."""

    gpus: int
    tf_has_tensorrt: bool
    tensorrt_installed: bool
    cuda_python_installed: bool


def import_tensorrt():
    """TensorRT's Python API: `tensorrt` where it is installed as such (NVIDIA's containers, or the tensorrt-cu12
    package), else `tensorrt_bindings`, the module that package's `tensorrt` re-exports. The gpu profile installs the
    bindings wheel alone: tensorrt-cu12 is a source distribution whose build fetches an unhashed build backend."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        import tensorrt_bindings as trt
    return trt


def prepare_tensorflow(backend: str) -> None:
    """Before TensorFlow's first op in convert_tensorrt: the GPU stays TensorRT's.

    The ONNX backend needs TensorFlow only on the CPU (loading the Keras model, reading calibration images), so
    TensorFlow sees no GPU at all; without this it would take nearly all of the GPU's memory at its first op and
    the TensorRT builder would fail for want of it. TF-TRT runs TensorFlow on the GPU: it grows its memory instead.
    """
    from flowerpipe.measure.devices import hide_gpus_from_tensorflow, tensorflow_gpu_missing

    if backend == "tftrt":
        tensorflow_gpu_missing()  # memory growth on every GPU
        return
    hide_gpus_from_tensorflow()


def probe() -> Environment:
    """Look at this machine: NVIDIA GPUs, a TensorRT-enabled TensorFlow, the tensorrt and cuda packages.

    Without an NVIDIA GPU the driver lists, nothing else matters: TensorFlow is not even imported.
    """
    gpus = len(gpu_names())
    if gpus == 0:
        return Environment(0, False, False, False)
    import tensorflow as tf

    return Environment(
        gpus=gpus,
        tf_has_tensorrt=bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False)),
        tensorrt_installed=any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_bindings")),
        cuda_python_installed=importlib.util.find_spec("cuda") is not None,
    )


def select_backend(requested: str, env: Environment) -> str:
    """'tftrt' or 'onnx' for a `tensorrt.backend` value, or raise Skipped with the reason."""
    if env.gpus == 0:
        raise Skipped("no NVIDIA GPU visible (TensorRT runs only on NVIDIA GPUs)")
    tftrt_reason = "this TensorFlow build has no TensorRT (TF-TRT was removed from pip TensorFlow after 2.17)"
    onnx_reason = "the tensorrt and cuda-python packages are not installed (make run GPU=1 installs them)"
    onnx_ok = env.tensorrt_installed and env.cuda_python_installed
    if requested == "tftrt":
        if not env.tf_has_tensorrt:
            raise Skipped(tftrt_reason)
        return "tftrt"
    if requested == "onnx":
        if not onnx_ok:
            raise Skipped(onnx_reason)
        return "onnx"
    if requested != "auto":
        raise ValueError(f"tensorrt.backend: expected auto, tftrt or onnx, got {requested!r}")
    if env.tf_has_tensorrt:
        return "tftrt"
    if onnx_ok:
        return "onnx"
    raise Skipped(f"{tftrt_reason}; and {onnx_reason}")


def filename(backend: str, precision: str) -> str:
    """A TF-TRT SavedModel folder or a serialized engine file."""
    return f"tftrt_{precision}" if backend == "tftrt" else f"model_{precision}.engine"


# ---------------------------------------------------------------- conversion


# The ONNX variant each engine precision is built from: TensorRT 11's networks are strongly typed, so the precision
# is the model's own (no builder flags, no calibrator): float32, float16 inside, or symmetric int8 Q/DQ.
SOURCES = {"fp32": "float32", "fp16": "float16", "int8": "int8-symmetric"}
SOURCE_PARAMS = {"float16": "onnx.float16", "int8-symmetric": "onnx.int8_symmetric"}


def conversions(backend: str, ctx: ConvertContext, precisions: list[str], out_dir: Path, onnx: dict[str, Path | None],
                workspace_mb: int, max_batch: int) -> dict[str, tuple[Path, Callable[[], Path]]]:
    """Per precision, a conversion job: TF-TRT from the SavedModel, or an engine from that precision's ONNX model.

    onnx: ONNX option (float32, float16, int8-symmetric) -> its file, None where the params did not build it.
    """
    jobs: dict[str, tuple[Path, Callable[[], Path]]] = {}
    for x in precisions:
        out = out_dir / filename(backend, x)
        if backend == "tftrt":
            jobs[f"tensorrt-{x}"] = (out, lambda x=x, out=out: convert_tftrt(ctx, x, out, workspace_mb))
        else:
            src = onnx.get(SOURCES[x])
            jobs[f"tensorrt-{x}"] = (out, lambda x=x, out=out, src=src: convert_onnx(
                src, x, out, ctx.image_size, workspace_mb, max_batch))
    return jobs


def convert_tftrt(ctx: ConvertContext, precision: str, out: Path, workspace_mb: int) -> Path:
    """TF-TRT: TrtGraphConverterV2 on the SavedModel; INT8 calibrates on training images; engines pre-built."""
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    mode = {"fp32": trt.TrtPrecisionMode.FP32, "fp16": trt.TrtPrecisionMode.FP16, "int8": trt.TrtPrecisionMode.INT8}
    params = trt.TrtConversionParams(precision_mode=mode[precision], max_workspace_size_bytes=workspace_mb << 20,
                                     use_calibration=precision == "int8")
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(ctx.savedmodel_path), conversion_params=params)
    calib = ctx.calibration

    def batches():
        for i in range(0, len(calib), 8):
            yield (calib[i:i + 8],)

    conv.convert(calibration_input_fn=batches if precision == "int8" else None)
    conv.build(input_fn=batches)
    with atomic(out) as tmp:
        conv.save(str(tmp))
    return out


def profile_shapes(max_batch: int, image_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The optimization profile's (min, opt, max) input shapes: batch 1, 8 (never above max), max."""
    shape = (image_size, image_size, 3)
    return (1, *shape), (min(8, max_batch), *shape), (max_batch, *shape)


def convert_onnx(onnx_path: Path | None, precision: str, out: Path, image_size: int, workspace_mb: int,
                 max_batch: int = 32) -> Path:
    """Build a serialized engine from an ONNX model, as TensorRT 11 documents it: a strongly typed network (always,
    in 11.x: create_network's flags carry no precision), its precision the ONNX model's own, and no builder flag."""
    if onnx_path is None:
        source = SOURCES[precision]
        raise Skipped(f"{SOURCE_PARAMS.get(source, 'onnx')} is off: TensorRT 11 builds a {precision} engine only from "
                      f"the onnx-{source} model")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(require(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FormatError(f"{onnx_path}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *profile_shapes(max_batch, image_size))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise FormatError(f"{onnx_path}: TensorRT failed to build a {precision} engine")
    with atomic(out) as tmp:
        tmp.write_bytes(bytes(engine))
    return out


# ---------------------------------------------------------------- runtime


def _check(result):
    """Unwrap a cuda-python (err, *values) tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise FormatError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class EngineRunner(Runner):
    """A deserialized TensorRT engine run with the named-tensor API and execute_async_v3."""

    device = "gpu"

    def __init__(self, path: Path):
        from cuda.bindings import runtime as cudart

        trt = import_tensorrt()

        self.cudart = cudart
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(require(path).read_bytes())
        if self.engine is None:
            raise FormatError(f"{path}: not a TensorRT engine for this GPU and TensorRT version")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.image_size = max(0, int(self.engine.get_tensor_shape(self.input)[1]))
        # profile 0's (min, opt, max) shapes for the input: the largest batch it accepts
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        self.stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities; a batch over the engine's profile (tensorrt.max_batch_size when it was built) runs in parts of
        that size, so a server merging up to serve.max_batch images, or a larger benchmark batch, never fails."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        if len(x) <= self.max_batch:
            return self._execute(x)
        return np.concatenate([self._execute(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _execute(self, x: np.ndarray) -> np.ndarray:
        """Copy in, execute, copy out, synchronise: one batch within the profile."""
        cudart = self.cudart
        if not self.context.set_input_shape(self.input, x.shape):
            raise FormatError(f"the engine refused input shape {x.shape} (it takes (N, {self.image_size}, "
                              f"{self.image_size}, 3), N up to {self.max_batch})")
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=np.float32)
        d_in, d_out = self._buffer(self.input, x.nbytes), self._buffer(self.output, out.nbytes)
        self.context.set_tensor_address(self.input, d_in)
        self.context.set_tensor_address(self.output, d_out)
        kind = cudart.cudaMemcpyKind
        _check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise FormatError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        self.synchronize()
        return out

    def synchronize(self) -> None:
        """Wait for the stream."""
        _check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        """Free device buffers and the stream."""
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        self.cudart.cudaStreamDestroy(self.stream)


class TFTRTRunner(Runner):
    """A TF-TRT SavedModel's serving_default signature on the GPU."""

    device = "gpu"

    def __init__(self, path: Path):
        import tensorflow as tf

        with tf.device("/GPU:0"):
            self.fn = tf.saved_model.load(str(require(path, "TF-TRT SavedModel"))).signatures["serving_default"]
        self.image_size = int(next(iter(self.fn.structured_input_signature[1].values())).shape[1] or 0)
        self.output = output_name(self.fn.structured_outputs)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (the .numpy() copy waits for the GPU)."""
        import tensorflow as tf

        with tf.device("/GPU:0"):
            out = self.fn(image=tf.convert_to_tensor(images, tf.float32))
        return out[self.output].numpy()


def output_name(outputs: dict) -> str:
    """The signature's probabilities output: named so by our export, `output_0` in Keras' model.export."""
    if "probabilities" in outputs:
        return "probabilities"
    if len(outputs) == 1:
        return next(iter(outputs))
    raise FormatError(f"the TF-TRT model's signature has outputs {sorted(outputs)}, none of them probabilities")


DEVICES = {"cpu": "TensorRT runs on NVIDIA GPUs only", "gpu": ""}


def built_path(p, precision: str) -> Path:
    """Where convert_tensorrt put a precision: the backend it used is recorded beside the engines."""
    folder = Path(p.paths.converted) / "tensorrt"
    backend = (read_json(folder / "status.json", {}) or {}).get("backend") or "onnx"
    return folder / filename(backend, precision)


def load(path: Path, option: str = "fp32", device: str = "gpu", threads: int = 0) -> Runner:
    """Load a TensorRT engine or TF-TRT SavedModel (GPU only)."""
    if DEVICES.get(device):
        raise Skipped(DEVICES[device])
    if not Path(path).exists():
        raise Skipped(f"{path}: no TensorRT model was built (see reports/convert_tensorrt.json)")
    return TFTRTRunner(path) if Path(path).is_dir() else EngineRunner(path)


FORMAT = Format(
    family="tensorrt", options=PRECISIONS, path=built_path,
    precision={"fp32": "float32", "fp16": "float16", "int8": "int8"}, devices=DEVICES, platform="tensorrt_plan",
    suffixes=(".plan", ".engine"), order=5, stage="convert_tensorrt", outs=("${paths.converted}/tensorrt",),
    stage_deps=("${paths.model}", "${paths.tfrecords}", "${paths.converted}/onnx"),
    stage_params=("model.image_size", "onnx.float16", "onnx.int8_symmetric"), section="tensorrt", settings=Settings,
    wanted=lambda p: list(FORMAT.settings_of(p).precisions), wanted_params=("tensorrt.precisions",),
    option_of=lambda path: path.stem.rsplit("_", 1)[-1],
)
