"""Matrix-multiply peaks per device and precision, measured in this run: what every fraction_of_peak divides by.

One function serves the benchmark and the train stage, so a share of the peak means the same in both records.
Each peak is the fastest of the libraries that multiply in that precision here, measured on the device it is
named for (the op's own device is read back: TensorFlow places work on a GPU when it has one, and falls back
to the CPU silently). A model is measured against the peak of the precision it computes in:

- CPU: float32 (TensorFlow, NumPy, ONNX Runtime, OpenVINO), bfloat16 (TensorFlow and OpenVINO, where the CPU
  has bfloat16 instructions; elsewhere runtimes compute a bfloat16 model in float32, so its peak is float32's),
  int8 (ONNX Runtime's integer matmul, in giga-operations per second). A float16 model runs in float32 on a CPU.
- GPU: float32 with TF32 off (full float32), TF32 (what TensorFlow, ONNX Runtime and TensorRT use for float32
  models by default on Ampere and later, so float32 models are measured against it), float16. No int8 peak is
  measured on a GPU: an int8 cell there gets no share rather than one against the wrong peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from flowerpipe.measure.cpu import bf16_missing

# (device, the precision a model computes in) -> the peak it is a share of; absent: no share
AGAINST = {("cpu", "float32"): "float32", ("cpu", "float16"): "float32", ("cpu", "bfloat16"): "bfloat16",
           ("cpu", "int8"): "int8", ("gpu", "float32"): "tf32", ("gpu", "float16"): "float16",
           ("gpu", "bfloat16"): "float16"}
PRECISIONS = {"cpu": ("float32", "bfloat16", "int8"), "gpu": ("float32", "tf32", "float16")}


def rate(call: Callable[[], object], ops: float, seconds: float) -> float:
    """ops / the median seconds of call(), after two warm-up calls, timed for at least `seconds` (3 calls or more)."""
    call()
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return ops / float(np.median(times)) / 1e9


def _tensorflow(device: str, dtype: str, n: int) -> tuple[Callable[[], object], str]:
    """A TensorFlow matmul pinned to device and the device it really ran on (the sum waits for the device)."""
    import tensorflow as tf

    name = "/GPU:0" if device == "gpu" else "/CPU:0"
    with tf.device(name):
        a = tf.cast(tf.random.stateless_uniform((n, n), seed=(1, 2)), dtype)
        b = tf.cast(tf.random.stateless_uniform((n, n), seed=(3, 4)), dtype)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y), tf.float32)))

    def call():
        with tf.device(name):
            return mm(a, b).numpy()

    with tf.device(name):
        ran_on = tf.linalg.matmul(a[:2, :2], b[:2, :2]).device
    return call, ran_on


def _onnxruntime(a: np.ndarray, b: np.ndarray, op: str = "MatMul") -> Callable[[], object]:
    """A one-node ONNX graph (MatMul, or MatMulInteger for uint8 x int8) in ONNX Runtime on the CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    kinds = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
             np.dtype(np.int8): TensorProto.INT8}
    out = TensorProto.FLOAT if op == "MatMul" else TensorProto.INT32
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", kinds[a.dtype], list(a.shape)),
         helper.make_tensor_value_info("b", kinds[b.dtype], list(b.shape))],
        [helper.make_tensor_value_info("c", out, [a.shape[0], b.shape[1]])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy threads after a call
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a, "b": b})[0]


def _openvino(a: np.ndarray, b: np.ndarray, hint: str) -> Callable[[], object]:
    """A one-node MatMul compiled by OpenVINO for the CPU with an inference precision hint (f32 or bf16)."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter(list(a.shape), ov.Type.f32, name="a")
    model = ov.Model([ops.matmul(x, ops.constant(b), False, False)], [x], "matmul")
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                      "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    return lambda: request.infer({0: a})


def _best(calls: dict[str, Callable[[], Callable[[], object]]], ops: float, seconds: float) -> dict:
    """The fastest of several implementations (each made lazily: a library that is missing or fails is noted)."""
    by, failed = {}, {}
    for name, make in calls.items():
        try:
            by[name] = round(rate(make(), ops, seconds), 2)
        except Exception as exc:  # a library that cannot run this precision here: the others still count
            failed[name] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if not by:
        return {"status": "skipped", "reason": "; ".join(f"{k}: {v}" for k, v in failed.items())}
    return {"status": "ok", "gflops": max(by.values()), "by": by, **({"failed": failed} if failed else {})}


def cpu_peak(precision: str, n: int = 1024, seconds: float = 1.0, isolated: bool = True) -> dict:
    """One CPU precision's peak: {"status", "gflops", "by" (each library's figure), "ran_on", "as"?}.

    isolated: in a fresh process, as the benchmark times runtimes (another library's thread pool, still spinning
    or holding cores in this process, read the int8 peak at half of its idle figure in a benchmark run).
    """
    if isolated:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_cpu_peak_alone, precision, n, seconds).result()
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    ops = 2.0 * n ** 3
    if precision == "float32":
        tf_call = {}

        def tensorflow():
            call, tf_call["ran_on"] = _tensorflow("cpu", "float32", n)
            return call

        out = _best({"tensorflow": tensorflow, "numpy": lambda: (lambda: a @ b),
                     "onnxruntime": lambda: _onnxruntime(a, b), "openvino": lambda: _openvino(a, b, "f32")},
                    ops, seconds)
        return {**out, "ran_on": tf_call.get("ran_on", "CPU")}
    if precision == "bfloat16":
        if reason := bf16_missing():
            return {**cpu_peak("float32", n, seconds, isolated=False), "as": "float32",
                    "note": f"{reason}: runtimes compute bfloat16 models in float32"}
        tf_call = {}

        def tensorflow():
            call, tf_call["ran_on"] = _tensorflow("cpu", "bfloat16", n)
            return call

        out = _best({"tensorflow": tensorflow, "openvino": lambda: _openvino(a, b, "bf16")}, ops, seconds)
        return {**out, "ran_on": tf_call.get("ran_on", "CPU")}
    if precision == "int8":
        qa = rng.integers(0, 256, (n, n), dtype=np.uint8)
        qb = rng.integers(-128, 128, (n, n), dtype=np.int8)
        return {**_best({"onnxruntime": lambda: _onnxruntime(qa, qb, "MatMulInteger")}, ops, seconds),
                "ran_on": "CPU", "unit": "GOP/s"}
    raise ValueError(f"no CPU peak for precision {precision!r}; expected one of {PRECISIONS['cpu']}")


def _cpu_peak_alone(precision: str, n: int, seconds: float) -> dict:
    """cpu_peak in the fresh process: TensorFlow there sees no GPU (it would take the GPU's memory for a CPU matmul)."""
    if precision != "int8":
        from flowerpipe.measure.devices import hide_gpus_from_tensorflow

        hide_gpus_from_tensorflow()
    return cpu_peak(precision, n, seconds, isolated=False)


def gpu_peak(precision: str, n: int = 4096, seconds: float = 1.0) -> dict:
    """One GPU precision's peak with TensorFlow on /GPU:0: float32 with TF32 off, tf32, or float16.

    {"status": "skipped", "reason"} where TensorFlow cannot put work on a GPU or the op ran elsewhere: a CPU
    figure is never taken for a GPU's.
    """
    from flowerpipe.measure.devices import tensorflow_gpu_missing

    if reason := tensorflow_gpu_missing():
        return {"status": "skipped", "reason": reason}
    import tensorflow as tf

    if precision not in PRECISIONS["gpu"]:
        raise ValueError(f"no GPU peak for precision {precision!r}; expected one of {PRECISIONS['gpu']}")
    tf32_was = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    try:
        call, ran_on = _tensorflow("gpu", "float16" if precision == "float16" else "float32", n)
        if "GPU" not in ran_on.upper():
            return {"status": "skipped", "reason": f"TensorFlow ran the matmul on {ran_on}, not a GPU"}
        return {"status": "ok", "gflops": round(rate(call, 2.0 * n ** 3, seconds), 2), "by": {}, "ran_on": ran_on}
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32_was)


def measure(device: str, precisions: Iterable[str] | None = None, seconds: float = 1.0, n: int = 0) -> dict:
    """{precision: peak} for one device, each measured now (n: matrix side, 0 for the device's default)."""
    one = cpu_peak if device == "cpu" else gpu_peak
    return {x: one(x, n, seconds) if n else one(x, seconds=seconds) for x in (precisions or PRECISIONS[device])}


def peak_for(peaks: dict, device: str, precision: str) -> tuple[float | None, str]:
    """(the peak GFLOP/s a model computing in precision on device is measured against, its name, e.g. cpu/float32);
    (None, why) where there is none."""
    key = AGAINST.get((device, precision))
    if key is None:
        return None, f"no {precision} matmul peak is measured on the {device}"
    peak = peaks.get(key, {})
    if peak.get("status") != "ok" or not peak.get("gflops"):
        return None, f"{device} {key} peak: {peak.get('reason', 'not measured')}"
    return float(peak["gflops"]), f"{device}/{key}"


def share(gflops: float, peaks: dict, device: str, precision: str) -> tuple[float | None, str]:
    """(gflops as a share of the peak that device and precision are measured against, that peak's name);
    (None, why) where there is none."""
    peak, name = peak_for(peaks, device, precision)
    return (gflops / peak if peak else None), name


def needed(cells: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """device -> the peaks a set of (device, precision) cells are measured against, in PRECISIONS order."""
    keys: dict[str, set[str]] = {}
    for device, precision in cells:
        if (key := AGAINST.get((device, precision))) is not None:
            keys.setdefault(device, set()).add(key)
    return {d: [x for x in PRECISIONS[d] if x in keys[d]] for d in PRECISIONS if d in keys}
