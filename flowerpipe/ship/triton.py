"""Triton's config.pbtxt for a shipped model, from the model file's own tensors and the run's measurements.

Triton serves ONNX (its onnxruntime backend) and OpenVINO IR (its openvino backend); it dropped its TensorFlow
backend in 25.03 and has no TFLite backend, so those formats get no config (`backend_for` says why).
Field names follow Triton's model_config.proto (docs/user_guide/model_configuration.md); the backends' own
parameters follow the onnxruntime_backend and openvino_backend READMEs. The text is written by hand (no Triton
package is needed to ship); tests parse it with tritonclient's model_config_pb2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIG = "config.pbtxt"
# family -> (Triton backend, the model file Triton looks for in a version folder by default)
BACKENDS = {"onnx": ("onnxruntime", "model.onnx"), "openvino": ("openvino", "model.xml")}
# numpy / ONNX / OpenVINO element type names -> Triton's DataType
TYPES = {"float32": "TYPE_FP32", "f32": "TYPE_FP32", "float16": "TYPE_FP16", "f16": "TYPE_FP16",
         "uint8": "TYPE_UINT8", "u8": "TYPE_UINT8", "int32": "TYPE_INT32", "i32": "TYPE_INT32",
         "int64": "TYPE_INT64", "i64": "TYPE_INT64"}
# Triton's DataType -> KServe V2 datatype (what a V2 server reports in model metadata)
V2_TYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_UINT8": "UINT8", "TYPE_INT32": "INT32",
            "TYPE_INT64": "INT64"}


@dataclass(frozen=True)
class Tensor:
    """One model input or output: its name, Triton data type and dims without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Tuning:
    """What the run measured for serving: the batcher setting kept, the threads, and the precision."""

    max_batch: int = 8
    window_ms: float = 0.0
    threads: int = 0  # 0: the backend's default (every core)
    precision: str = "float32"
    instances: int = 1  # flowerpipe serve runs one instance using every thread; serve_check measured that
    extra: dict = field(default_factory=dict)


def backend_for(family: str) -> tuple[str, str]:
    """(Triton backend, default model file name) of a format family, or ValueError saying why Triton can't serve it."""
    if family not in BACKENDS:
        raise ValueError(f"Triton has no backend for {family} models (it serves ONNX and OpenVINO IR here; its "
                         "TensorFlow backend was dropped in 25.03)")
    return BACKENDS[family]


def tensors(family: str, model_file: Path) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) read from the model file itself, the batch dimension dropped (it must be dynamic)."""
    if family == "onnx":
        import onnx

        graph = onnx.load(str(model_file), load_external_data=False).graph
        init = {i.name for i in graph.initializer}

        def one(v) -> Tensor:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            return _tensor(v.name, dtype, dims, model_file)

        return [one(v) for v in graph.input if v.name not in init], [one(v) for v in graph.output]
    if family == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(model_file))

        def port(p) -> Tensor:
            dims = [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]
            return _tensor(p.get_any_name(), p.get_element_type().get_type_name(), dims, model_file)

        return [port(p) for p in model.inputs], [port(p) for p in model.outputs]
    backend_for(family)
    raise AssertionError("unreachable")


def _tensor(name: str, dtype: str, dims: list[int], where: Path) -> Tensor:
    if dtype not in TYPES:
        raise ValueError(f"{where}: tensor {name!r} is {dtype}, which this config writer does not map")
    if not dims or dims[0] != -1:
        raise ValueError(f"{where}: tensor {name!r} has shape {dims}: Triton's batching needs a dynamic first "
                         "(batch) dimension")
    return Tensor(name, TYPES[dtype], tuple(dims[1:]))


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param(key: str, value: str) -> str:
    return f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}"


def backend_parameters(family: str, t: Tuning) -> list[tuple[str, str]]:
    """The backend's own settings, as the run served the model (flowerpipe's runners use the same ones)."""
    if family == "onnx":  # onnxruntime_backend README: "Model Config Options"
        return [("intra_op_thread_count", str(t.threads)), ("inter_op_thread_count", "1"), ("execution_mode", "0")]
    # openvino_backend README "Parameters": flowerpipe's runner compiles with the LATENCY hint, one stream
    out = [("PERFORMANCE_HINT", "LATENCY"), ("NUM_STREAMS", "1")]
    if t.threads:
        out.append(("INFERENCE_NUM_THREADS", str(t.threads)))
    if t.precision == "bfloat16":
        out.append(("HINT_BF16", "YES"))
    return out


def render(name: str, family: str, inputs: list[Tensor], outputs: list[Tensor], t: Tuning,
           labels: str = "labels.txt", model_file: str = "") -> str:
    """The config.pbtxt text: tensors, max_batch_size and dynamic batching from the kept batcher setting, one CPU
    instance group, the backend's parameters; the class names file on the probabilities output."""
    backend, default_file = backend_for(family)
    lines = [f"# Written by flowerpipe's ship stage for Triton's {backend} backend (model_config.proto).",
             f"name: {_quote(name)}", f"backend: {_quote(backend)}", f"max_batch_size: {t.max_batch}"]
    if model_file and model_file != default_file:
        lines.append(f"default_model_filename: {_quote(model_file)}")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    for kind, items in (("input", inputs), ("output", outputs)):
        lines.append(f"{kind} [")
        body = []
        for x in items:
            label = f" label_filename: {_quote(labels)}" if kind == "output" and len(outputs) == 1 and labels else ""
            body.append(f"  {{ name: {_quote(x.name)} data_type: {x.data_type} "
                        f"dims: [ {', '.join(map(str, x.dims))} ]{label} }}")
        lines.append(",\n".join(body))
        lines.append("]")
    delay = round(t.window_ms * 1000)
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}")
    lines.append(f"instance_group [ {{ count: {t.instances} kind: KIND_CPU }} ]")
    lines += [_param(k, v) for k, v in backend_parameters(family, t)]
    return "\n".join(lines) + "\n"


def v2_metadata(config_inputs: list[Tensor], config_outputs: list[Tensor]) -> dict:
    """What a KServe V2 server reports for these tensors (batch dimension -1), to compare with a live server."""
    def one(x: Tensor) -> dict:
        return {"name": x.name, "datatype": V2_TYPES[x.data_type], "shape": [-1, *x.dims]}

    return {"inputs": [one(x) for x in config_inputs], "outputs": [one(x) for x in config_outputs]}
