"""The GPU paths for real where an NVIDIA GPU is present (`make test GPU=1`); skipped, with the reason, elsewhere.

They read the shared tiny project, whose `dvc repro` on a GPU machine trains with mixed precision
(`train.mixed_precision: auto`) and builds TensorRT engines (`convert_trt`).
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
    from flowerpipe.model import load_model

    model = load_model(trained / "models" / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # exported in float32


@pytest.mark.parametrize("name", ["keras", "savedmodel", "onnx"])
def test_gpu_runtime_agrees_with_cpu(trained, images, name):
    from flowerpipe.formats.registry import load

    v = variant(trained, name)
    cpu = load(v, "cpu").predict(images)
    gpu = load(v, "gpu").predict(images)
    assert (cpu.argmax(1) == gpu.argmax(1)).all(), name
    assert np.abs(cpu - gpu).max() < 1e-3, name


@pytest.mark.parametrize("precision, min_agreement", [("fp32", 1.0), ("fp16", 1.0), ("int8", 0.75)])
def test_tensorrt_engine_built_and_agrees_with_keras(trained, images, precision, min_agreement):
    from flowerpipe.formats.registry import load

    record = json.loads((trained / "reports" / "convert_trt.json").read_text())
    assert record["status"] == "ok", f"convert_trt skipped on a GPU machine: {record.get('reason')}"
    assert record["variants"][f"tensorrt-{precision}"]["status"] == "ok", record["variants"]
    reference = load(variant(trained, "keras"), "cpu").predict(images)
    probs = load(variant(trained, f"tensorrt-{precision}"), "gpu").predict(images)
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= min_agreement
    # the evaluate stage scored the engine on the GPU it is timed on, against the Keras model
    scored = json.loads((trained / "reports" / "evaluate.json").read_text())["formats"][f"tensorrt-{precision}"]
    assert scored["device"] == "gpu" and scored["status"] == "ok", scored
    assert scored["top1_agreement"] >= min_agreement and scored["devices"]["cpu"]["status"] == "skipped"
    timed = json.loads((trained / "reports" / "benchmark.json").read_text())["results"]
    if f"tensorrt-{precision}" in timed:  # the shared project times tensorrt-fp16 only (conftest.PROJECT)
        cell = timed[f"tensorrt-{precision}"]["gpu"]["b1"]
        assert cell["status"] == "ok" and cell["latency_ms_median"] > 0, cell
    else:
        assert precision != "fp16", "tensorrt-fp16 is among the shared project's benchmark.runtimes"
