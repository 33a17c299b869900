"""TensorRT 11 as documented: strongly typed engines built from ONNX models that carry their own precision.

The ONNX models TensorRT builds from are made and scored on every machine; the engine build is checked here
against a stand-in `tensorrt` module that has only what TensorRT 11's Python API keeps.
"""

import ast
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from flowerpipe.formats import tensorrt_format

# Removed in TensorRT 11 (NVIDIA, "Migrating from TensorRT 10.x to 11.x": removed Python APIs and replacements).
REMOVED_FLAGS = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS"}
REMOVED_NAMES = {"IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                 "IInt8LegacyCalibrator", "int8_calibrator", "set_int8_calibrator", "platform_has_fast_fp16",
                 "platform_has_fast_int8", "IAlgorithmSelector", "algorithm_selector"}


def test_the_tensorrt_code_names_no_api_that_tensorrt_11_removed():
    tree = ast.parse((ROOT / "flowerpipe" / "formats" / "tensorrt_format.py").read_text())
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            flag = isinstance(node.value, ast.Attribute) and node.value.attr == "BuilderFlag"
            if flag and node.attr in REMOVED_FLAGS:
                used.append(f"BuilderFlag.{node.attr}")
            if node.attr in REMOVED_NAMES:
                used.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in REMOVED_NAMES:
            used.append(node.id)
    assert used == [], f"removed in TensorRT 11: {used}"


class _Recorder:
    """Every call made on a stand-in TensorRT object, by name."""

    def __init__(self, calls: list, name: str):
        self._calls, self._name = calls, name

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            self._calls.append((f"{self._name}.{attr}", args))
            return _RESULTS.get(attr, lambda c: _Recorder(c, attr))(self._calls)
        return call


_RESULTS = {"parse": lambda c: True, "build_serialized_network": lambda c: b"engine-bytes",
            "get_input": lambda c: types.SimpleNamespace(name="image")}


def _tensorrt_11(calls: list) -> types.ModuleType:
    """A `tensorrt` module with TensorRT 11's names: BuilderFlag has no precision flags left."""
    mod = types.ModuleType("tensorrt")
    mod.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, *a: None})
    mod.Builder = lambda logger: _Recorder(calls, "builder")
    mod.OnnxParser = lambda network, logger: _Recorder(calls, "parser")
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    mod.BuilderFlag = types.SimpleNamespace(REFIT="REFIT", STRIP_PLAN="STRIP_PLAN")  # no FP16, INT8, ...
    return mod


@pytest.mark.parametrize("precision, max_batch, opt", [("fp32", 32, 8), ("fp16", 32, 8), ("int8", 4, 4)])
def test_an_engine_is_built_strongly_typed_from_its_precisions_onnx_model(tmp_path, monkeypatch, precision,
                                                                          max_batch, opt):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_11(calls))
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx")
    out = tensorrt_format.convert_onnx(src, precision, tmp_path / f"model_{precision}.engine", 71, 64, max_batch)
    assert out.read_bytes() == b"engine-bytes"
    names = [name for name, _ in calls]
    assert "builder.create_network" in names and not [n for n in names if n.endswith("set_flag")]
    assert dict(calls)["builder.create_network"] == (0,)  # strongly typed: always, in TensorRT 11
    shapes = dict(calls)["create_optimization_profile.set_shape"]
    assert shapes == ("image", (1, 71, 71, 3), (opt, 71, 71, 3), (max_batch, 71, 71, 3))  # opt never above max


def test_each_precision_is_built_from_the_onnx_model_that_carries_it(tmp_path):
    onnx = {"float32": tmp_path / "a.onnx", "float16": tmp_path / "h.onnx", "int8-symmetric": None}
    ctx = types.SimpleNamespace(image_size=71)
    jobs = tensorrt_format.conversions("onnx", ctx, ["fp32", "fp16", "int8"], tmp_path, onnx, 64, 8)
    assert set(jobs) == {"tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"}
    with pytest.raises(tensorrt_format.Skipped, match="onnx.int8_symmetric is off: TensorRT 11 builds a int8 engine"):
        jobs["tensorrt-int8"][1]()  # no silent fall-back to an uncalibrated float32 "int8" engine


def test_tf_trt_reads_the_signatures_real_output_name():
    assert tensorrt_format.output_name({"output_0": None}) == "output_0"  # Keras model.export names it so
    assert tensorrt_format.output_name({"probabilities": None, "class_index": None}) == "probabilities"
    with pytest.raises(tensorrt_format.FormatError, match="none of them probabilities"):
        tensorrt_format.output_name({"a": None, "b": None})


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_the_int8_model_for_tensorrt_holds_only_symmetric_int8_qdq(trained):
    import onnx

    model = onnx.load(str(trained / "models" / "converted" / "onnx" / "model_int8_symmetric.onnx"))
    values = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    for node in qdq:
        assert len(node.input) == 3, f"{node.name}: no zero point (ONNX's default is uint8)"
        zero = values[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), (node.name, zero.dtype, zero)
    per_channel = [n for n in qdq if n.op_type == "DequantizeLinear" and values.get(n.input[0]) is not None
                   and values[n.input[1]].size > 1]
    assert per_channel, "the weights are quantized per channel"


def test_the_float16_model_for_tensorrt_computes_in_float16_with_float32_io(trained):
    import onnx

    model = onnx.load(str(trained / "models" / "converted" / "onnx" / "model_float16.onnx"))
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [float32, float32]
    weights = [v for v in _initializers(model).values() if v.size > 16]
    assert weights and all(v.dtype == np.float16 for v in weights)


def test_evaluate_scores_the_models_tensorrt_builds_from_on_the_cpu(trained):
    scored = json.loads((trained / "reports" / "evaluate.json").read_text())["formats"]
    for name in ("onnx-float16", "onnx-int8-symmetric"):
        row = scored[name]
        assert row["status"] == "ok" and row["device"] == "cpu", row
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["top1_agreement"] <= 1.0
    assert scored["onnx-float16"]["top1_agreement"] == 1.0  # float16 rounding alone flips no tiny-model answer
    assert Path(trained / "reports" / "convert_onnx.json").exists()
