"""The GPU code paths' mechanisms, on any machine: stand-ins for the NVIDIA driver, ONNX Runtime GPU, TensorRT and
cuda-python, each with only what the pinned versions document, record what the code does with them."""

import contextlib
import ctypes
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_GPU, ROOT, call_stage, write_params

# ---------------------------------------------------------------- ONNX Runtime finds CUDA through preload_dlls


def _onnxruntime_gpu(calls: list) -> types.ModuleType:
    """An `onnxruntime` like onnxruntime-gpu 1.31's: preload_dlls, the CUDA provider listed, sessions recorded."""
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1"
    ort.preload_dlls = lambda **kwargs: calls.append(("preload_dlls", kwargs))
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.SessionOptions = type("SessionOptions", (), {})
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    class InferenceSession:
        def __init__(self, path, options, providers):
            first = providers[0]
            self.providers = [first[0] if isinstance(first, tuple) else first, "CPUExecutionProvider"]
            calls.append(("InferenceSession", self.providers[0]))

        def get_providers(self):
            return self.providers

        def get_inputs(self):
            return [types.SimpleNamespace(name="image", shape=["N", 71, 71, 3])]

    ort.InferenceSession = InferenceSession
    return ort


def test_onnx_runtime_preloads_the_nvidia_wheels_libraries_before_a_cuda_session(tmp_path, monkeypatch):
    from flowerpipe.formats import onnx_format

    calls: list = []
    monkeypatch.setitem(sys.modules, "onnxruntime", _onnxruntime_gpu(calls))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    onnx_format.OnnxRunner(model, "gpu")
    # onnxruntime-gpu's CUDA provider has no rpath to the nvidia-* wheels: preload_dlls must run first, in this
    # very process (the benchmark's workers and the server never import TensorFlow, which preloads some of them)
    assert calls == [("preload_dlls", {"directory": ""}), ("InferenceSession", "CUDAExecutionProvider")]
    calls.clear()
    onnx_format.OnnxRunner(model, "cpu")
    assert calls == [("InferenceSession", "CPUExecutionProvider")]  # no CUDA library loaded for a CPU session


def test_a_preload_that_fails_is_said_and_the_cpu_fallback_is_a_skip_not_a_cpu_figure(tmp_path, monkeypatch, caplog):
    from flowerpipe.formats import onnx_format
    from flowerpipe.formats.base import Skipped

    calls: list = []
    ort = _onnxruntime_gpu(calls)

    def preload(**kwargs):
        raise OSError("libcudnn.so.9: cannot open shared object file")

    ort.preload_dlls = preload
    session = ort.InferenceSession
    ort.InferenceSession = lambda path, options, providers: (s := session(path, options, providers),
                                                            setattr(s, "providers", ["CPUExecutionProvider"]))[0]
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    with pytest.raises(Skipped, match="did not put this model on the GPU"):
        onnx_format.OnnxRunner(model, "gpu")
    assert "preload_dlls failed: libcudnn.so.9: cannot open shared object file" in caplog.text


# ---------------------------------------------------------------- convert_tensorrt leaves the GPU to TensorRT


def test_convert_tensorrt_hides_the_gpu_from_tensorflow_before_its_first_op(tmp_path, monkeypatch):
    import tensorflow as tf

    from flowerpipe.formats import convert, tensorrt_format

    events: list = []
    monkeypatch.setattr(tensorrt_format, "probe", lambda: tensorrt_format.Environment(
        gpus=1, tf_has_tensorrt=False, tensorrt_installed=True, cuda_python_installed=True))
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind=None: events.append(
        ("visible", list(devices), kind)))

    @contextlib.contextmanager
    def context(p, images):  # where TensorFlow's first ops run: the Keras model and the calibration images
        events.append("tensorflow's first op")
        yield types.SimpleNamespace(image_size=71, classes=["a", "b"])

    monkeypatch.setattr(convert, "context", context)
    monkeypatch.setattr(tensorrt_format, "conversions", lambda *args: events.append("tensorrt builds") or {})
    write_params(tmp_path, {})
    call_stage("convert_tensorrt", tmp_path)
    # TensorFlow sees no GPU before its first op, so it takes none of the memory the TensorRT builder needs
    assert events == [("visible", [], "GPU"), "tensorflow's first op", "tensorrt builds"]


def test_tf_trt_keeps_the_gpu_for_tensorflow_with_memory_growth(monkeypatch):
    from flowerpipe.formats import tensorrt_format
    from flowerpipe.measure import devices

    grown: list = []
    monkeypatch.setattr(devices, "tensorflow_gpu_missing", lambda: grown.append("memory growth") or "")
    tensorrt_format.prepare_tensorflow("tftrt")
    assert grown == ["memory growth"]


# ---------------------------------------------------------------- TensorFlow's reason is shown on a GPU machine


def test_on_a_gpu_machine_tensorflows_warnings_are_shown(monkeypatch):
    from flowerpipe import quiet
    from flowerpipe.measure import devices

    monkeypatch.delenv("FLOWERPIPE_VERBOSE", raising=False)
    for names, level in ((["NVIDIA L4"], "1"), ([], "3")):
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
        monkeypatch.setattr(devices, "gpu_names", lambda names=names: names)
        quiet.quiet_tensorflow(preload=False)
        # level 1 keeps warnings, "Cannot dlopen some GPU libraries" among them; 3 shows errors only
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level, names
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.setattr(devices, "gpu_names", lambda: [])
    quiet.quiet_tensorflow(preload=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's own setting stands
    # nothing else mutes it: not the Makefile (every make command), not the GPU image
    for path in ("Makefile", "deploy/Dockerfile.gpu"):
        assert "TF_CPP_MIN_LOG_LEVEL" not in (ROOT / path).read_text(), path


# ---------------------------------------------------------------- an engine runs batches over its profile in parts


class _Cudart:
    """cuda.bindings.runtime as EngineRunner calls it, on host memory ("device" pointers are ctypes buffers'
    addresses): each call returns (error, value...) as cuda-python does."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self):
        self.blocks: dict[int, ctypes.Array] = {}

    def cudaStreamCreate(self):
        return 0, 7

    def cudaMalloc(self, nbytes):
        block = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    def cudaFree(self, ptr):
        self.blocks.pop(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)


class _Engine:
    """A deserialized engine whose optimization profile takes batches of 1 to 32 images of 8 x 8 pixels."""

    num_io_tensors = 2
    largest = 32

    def __init__(self):
        self.batches: list[int] = []

    def get_tensor_name(self, i):
        return ["image", "probabilities"][i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "image" else "OUTPUT"

    def get_tensor_shape(self, name):
        return (-1, 8, 8, 3) if name == "image" else (-1, 5)

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 8, 8, 3), (8, 8, 8, 3), (self.largest, 8, 8, 3)]

    def create_execution_context(self):
        engine, shape, address = self, {}, {}

        class Context:
            def set_input_shape(self, name, s):
                shape["n"] = s[0]
                return 1 <= s[0] <= engine.largest  # TensorRT refuses a shape outside the profile

            def get_tensor_shape(self, name):
                return (shape["n"], 5)

            def set_tensor_address(self, name, ptr):
                address[name] = ptr

            def execute_async_v3(self, stream):
                n = shape["n"]
                x = np.ctypeslib.as_array((ctypes.c_float * (n * 8 * 8 * 3)).from_address(address["image"]))
                out = np.ctypeslib.as_array((ctypes.c_float * (n * 5)).from_address(address["probabilities"]))
                out[:] = (x.reshape(n, -1).mean(1)[:, None] * np.arange(5)).ravel()  # a known answer per image
                engine.batches.append(n)
                return True

        return Context()


def test_an_engine_runs_a_batch_over_its_profile_in_parts(tmp_path, monkeypatch):
    """serve.max_batch (64) is over tensorrt.max_batch_size (32): a merged batch of 40 or 64 must still be answered."""
    from flowerpipe.formats import tensorrt_format

    engine = _Engine()
    tensorrt = types.ModuleType("tensorrt")
    tensorrt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, *a: None})
    tensorrt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    tensorrt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    cudart = _Cudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    path = tmp_path / "model_fp16.engine"
    path.write_bytes(b"plan")
    runner = tensorrt_format.EngineRunner(Path(path))
    assert runner.max_batch == 32 and runner.image_size == 8
    for n, parts in ((64, [32, 32]), (40, [32, 8]), (3, [3])):
        engine.batches.clear()
        images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 8, 8, 3), np.float32)
        probs = runner.predict(images)
        assert engine.batches == parts
        assert np.allclose(probs, np.arange(n)[:, None] * np.arange(5)), n  # each image's own answer, in order
    runner.close()
    assert cudart.blocks == {}  # every device buffer freed


# ---------------------------------------------------------------- the record says which TensorRT ran


def test_the_record_names_the_tensorrt_and_cuda_wheels_that_are_installed(monkeypatch):
    import importlib.metadata as md

    from flowerpipe.measure import harness as bench

    def dist(name: str, version: str):
        return types.SimpleNamespace(metadata={"Name": name}, version=version)

    installed = [dist("tensorrt_cu12_bindings", "11.4.0.106"), dist("tensorrt-cu12-libs", "11.4.0.106"),
                 dist("nvidia-cudnn-cu12", "9.10.2.21"), dist("onnxruntime-gpu", "1.31.1"),
                 dist("tensorflow", "2.21.0"), dist("requests", "2.34.2")]
    monkeypatch.setattr(md, "distributions", lambda: iter(installed))
    assert bench.library_versions() == {"nvidia-cudnn-cu12": "9.10.2.21", "onnxruntime-gpu": "1.31.1",
                                        "tensorflow": "2.21.0", "tensorrt-cu12-bindings": "11.4.0.106",
                                        "tensorrt-cu12-libs": "11.4.0.106"}


# ---------------------------------------------------------------- flowerpipe doctor


def test_doctor_says_what_each_runtime_sees_here():
    from flowerpipe.cli import main
    from flowerpipe.measure import doctor

    report = doctor.report()
    assert set(report["cpu"]["flags"]) == set(doctor.CPU_FLAGS) and report["cpu"]["cores"] >= 1
    assert report["openvino"]["status"] == "ok" and "FP32" in report["openvino"]["cpu_capabilities"]
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["versions"]["numpy"] and report["tensorflow"]["status"] == "ok"
    if HAS_GPU:
        assert report["tensorflow"]["gpus"] and report["onnxruntime"]["cuda_session"] == "ok", report
        assert report["tensorrt"]["builder"] == "ok" and report["libraries_loaded"], report
    else:
        assert report["nvidia"]["gpus"] == [] and "cuda_session" not in report["onnxruntime"]
    text = doctor.render(report)
    assert [line.split()[0] for line in text.splitlines()] == ["CPU", "OpenVINO", "NVIDIA", "TensorFlow", "ONNX",
                                                              "TensorRT", "Loaded", "Versions"]
    assert main(["doctor", "--json"]) == 0


def test_doctor_shows_the_cuda_library_tensorflow_could_not_load(monkeypatch):
    """A driver that lists a GPU, a TensorFlow that lists none: the reason comes from TensorFlow's own log."""
    from flowerpipe.measure import devices, doctor

    monkeypatch.setattr(devices, "gpu_names", lambda: ["NVIDIA L4"])
    monkeypatch.setattr(devices, "tensorflow_gpu_missing", lambda: "TensorFlow lists no GPU")
    seen = {}

    def run(cmd, env, **kwargs):
        seen["level"] = env["TF_CPP_MIN_LOG_LEVEL"]
        return types.SimpleNamespace(stderr=(
            "I0000 port.cc:153] oneDNN custom operations are on.\n"
            "W0000 gpu_device.cc:2344] Cannot dlopen some GPU libraries. Please make sure the missing libraries "
            "mentioned above are installed properly if you would like to use GPU.\n"
            "W0000 dso_loader.cc:78] Could not load dynamic library 'libcudnn.so.9'; dlerror: libcudnn.so.9: cannot "
            "open shared object file: No such file or directory\n"))

    report = doctor.report(run)
    assert seen["level"] == "0"  # nothing muted in the child that looks
    assert report["nvidia"]["gpus"] == ["NVIDIA L4"]
    tf = report["tensorflow"]
    assert tf["gpu_reason"] == "TensorFlow lists no GPU" and len(tf["log"]) == 2
    assert "libcudnn.so.9" in tf["log"][1]
    text = doctor.render(report)
    assert "NVIDIA       1 GPU(s): NVIDIA L4" in text and "| W0000 dso_loader.cc:78] Could not load dynamic" in text


def test_doctor_lists_the_cuda_libraries_mapped_into_the_process(tmp_path):
    from flowerpipe.measure import doctor

    maps = tmp_path / "maps"
    lib = "/venv/lib/python3.12/site-packages/nvidia"
    maps.write_text(f"7f00-7f01 r-xp 0 08:01 1 {lib}/cudnn/lib/libcudnn.so.9\n"
                    f"7f01-7f02 r-xp 0 08:01 2 {lib}/cublas/lib/libcublasLt.so.12\n"
                    "7f02-7f03 r-xp 0 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
                    f"7f03-7f04 r-xp 0 08:01 1 {lib}/cudnn/lib/libcudnn.so.9\n")
    assert doctor.loaded_libraries(str(maps)) == ["libcublasLt.so.12", "libcudnn.so.9"]
