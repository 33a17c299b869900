"""The GPU paths for real where an NVIDIA GPU is present (`make test GPU=1`); skipped, with the reason, elsewhere.

They read the shared tiny project, whose `dvc repro` on a GPU machine trains with mixed precision
(`train.mixed_precision: auto`) and builds TensorRT engines (`convert_tensorrt`).
"""

import contextlib
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import HAS_GPU

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU here (the NVIDIA driver, asked through pynvml "
                                                     "as the code asks it, lists none)")]


@pytest.fixture(scope="module")
def images(trained):
    from flowerpipe.data.tfrecord import arrays

    x, _ = arrays(trained / "data" / "tfrecords", "test", 71)
    return x


def variant(trained, name):
    """The project's variant with an absolute path."""
    from flowerpipe.formats.registry import find
    from flowerpipe.params import load

    with contextlib.chdir(trained):
        v = find(load("params.yaml"), name)
    return replace(v, path=trained / v.path)


def test_tensorflow_sees_the_gpu_and_training_used_mixed_precision(trained):
    import tensorflow as tf

    assert tf.config.list_physical_devices("GPU"), "TensorFlow has no GPU: is tensorflow[and-cuda] installed?"
    record = json.loads((trained / "reports" / "train.json").read_text())
    assert record["precision"] == "mixed_float16"  # auto picks float16 with a GPU
    from flowerpipe.model.build import load_model

    model = load_model(trained / "models" / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # exported in float32


@pytest.fixture
def full_float32():
    """TensorFlow without TF32 (on by default on Ampere and later: 10-bit mantissas in matmuls and convolutions), so
    that a GPU-vs-CPU difference above 1e-3 is a real one; restored after."""
    import tensorflow as tf

    was = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(was)


# ONNX Runtime's CUDA provider computes float32 models in TF32 too (its use_tf32 option, on by default): its bound is
# TF32's, 1e-2 on a probability; TensorFlow's runtimes run in full float32 here (the fixture), so theirs is 1e-3.
@pytest.mark.parametrize("name, bound", [("keras", 1e-3), ("savedmodel", 1e-3), ("onnx", 1e-2)])
def test_gpu_runtime_agrees_with_cpu(trained, images, full_float32, name, bound):
    from flowerpipe.formats.base import Skipped
    from flowerpipe.formats.registry import load

    v = variant(trained, name)
    cpu = load(v, "cpu").predict(images)
    try:
        gpu = load(v, "gpu").predict(images)
    except Skipped as exc:  # on a GPU machine this is a failure of the GPU path, never a skip
        pytest.fail(f"{name} did not run on the GPU: {exc}")
    assert (cpu.argmax(1) == gpu.argmax(1)).all(), name
    assert np.abs(cpu - gpu).max() < bound, name


# Each engine against the ONNX model it was built from, run by ONNX Runtime on the CPU: the same weights and the same
# quantization, so only kernels differ. (Against the Keras model, an int8 engine on ~15 tiny-model images could miss
# a 0.75 floor by one flipped answer for reasons that are the quantization's, not TensorRT's.)
@pytest.mark.parametrize("precision, source", [("fp32", "onnx"), ("fp16", "onnx-float16"),
                                                ("int8", "onnx-int8-symmetric")])
def test_tensorrt_engine_built_and_agrees_with_its_onnx_source(trained, images, precision, source):
    from flowerpipe.formats.registry import load

    record = json.loads((trained / "reports" / "convert_tensorrt.json").read_text())
    assert record["status"] == "ok", f"convert_tensorrt skipped on a GPU machine: {record.get('reason')}"
    assert record["variants"][f"tensorrt-{precision}"]["status"] == "ok", record["variants"]
    reference = load(variant(trained, source), "cpu").predict(images)
    probs = load(variant(trained, f"tensorrt-{precision}"), "gpu").predict(images)
    slack = 1 + len(images) // 20  # a near-tie may fall either way between kernels (TF32, fused int8 convolutions)
    flipped = int((probs.argmax(1) != reference.argmax(1)).sum())
    assert flipped <= slack, (flipped, len(images))
    # the evaluate stage scored the engine on the GPU it is timed on, against the Keras model, as it scored the ONNX
    # model it was built from on the CPU: the two agree with Keras alike, within the same slack
    formats = json.loads((trained / "reports" / "evaluate.json").read_text())["formats"]
    scored, own = formats[f"tensorrt-{precision}"], formats[source]
    assert scored["device"] == "gpu" and scored["status"] == "ok", scored
    assert scored["devices"]["cpu"]["status"] == "skipped"
    assert scored["top1_agreement"] >= own["top1_agreement"] - slack / len(images), (scored, own)  # same split
    timed = json.loads((trained / "reports" / "benchmark.json").read_text())["results"]
    if f"tensorrt-{precision}" in timed:  # the shared project times tensorrt-fp16 only (conftest.PROJECT)
        cell = timed[f"tensorrt-{precision}"]["gpu"]["b1"]
        assert cell["status"] == "ok" and cell["latency_ms_median"] > 0, cell
    else:
        assert precision != "fp16", "tensorrt-fp16 is among the shared project's benchmark.runtimes"
