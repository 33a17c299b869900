"""The timing harness: matmul peak, model FLOPs, and per-runtime latency cells in isolated worker processes."""

from __future__ import annotations

import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long to time one cell: warm-up calls, then at least `iterations` and `min_seconds`, at most `max_seconds`."""

    warmup: int = 3
    iterations: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 30.0


def summarize(latencies: list[float], batch: int) -> dict:
    """Median, mean, p90, p99 latency (ms) and throughput (images/s) from per-call seconds."""
    a = np.asarray(latencies, dtype=np.float64)
    return {
        "iterations": int(a.size),
        "latency_ms_median": round(float(np.median(a)) * 1e3, 4),
        "latency_ms_mean": round(float(a.mean()) * 1e3, 4),
        "latency_ms_p90": round(float(np.percentile(a, 90)) * 1e3, 4),
        "latency_ms_p99": round(float(np.percentile(a, 99)) * 1e3, 4),
        "throughput_ips": round(batch * a.size / float(a.sum()), 3),
    }


def time_calls(fn, sync, budget: Budget) -> list[float]:
    """Per-call wall times of fn() (then sync()), after warm-up, within the budget."""
    for _ in range(budget.warmup):
        fn()
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if elapsed >= budget.max_seconds or (len(times) >= budget.iterations and elapsed >= budget.min_seconds):
            return times


def _onnxruntime_matmul(a: np.ndarray, b: np.ndarray):
    """A call of a one-node ONNX MatMul in ONNX Runtime (its MLAS GEMM is often the CPU's fastest float32)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def io(name: str, shape) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [io("a", a.shape), io("b", b.shape)], [io("c", (a.shape[0], b.shape[1]))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a, "b": b})[0]


def matmul_peak(n: int = 2048, seconds: float = 1.0) -> dict:
    """Measured float32 matrix-multiply GFLOP/s with TensorFlow (oneDNN/Eigen), NumPy and ONNX Runtime (MLAS);
    the peak is the largest, so that no float32 runtime's share of it exceeds 100% by a slower GEMM's choice."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    an, bn = a.numpy(), b.numpy()
    calls = {"tensorflow": lambda: mm(a, b).numpy(), "numpy": lambda: an @ bn,
             "onnxruntime": _onnxruntime_matmul(an, bn)}
    flops = 2.0 * n**3
    gflops = {name: flops / float(np.median(time_calls(call, lambda: None, Budget(2, 5, seconds, 10 * seconds))))
              / 1e9 for name, call in calls.items()}
    return {"matrix_size": n, **{f"{name}_gflops": round(g, 2) for name, g in gflops.items()},
            "peak_gflops": round(max(gflops.values()), 2)}


def gpu_matmul_peak(n: int = 4096, seconds: float = 1.0) -> dict:
    """Measured float32 and float16 matrix-multiply GFLOP/s of TensorFlow on /GPU:0, the peak GPU cells are a share
    of; {"status": "skipped", "reason"} where TensorFlow cannot put work on a GPU (a CPU figure is never taken)."""
    import tensorflow as tf

    from flowerpipe.devices import tensorflow_gpu_missing

    if reason := tensorflow_gpu_missing():
        return {"status": "skipped", "reason": reason}
    out: dict = {"status": "ok", "matrix_size": n}
    for dtype in (tf.float32, tf.float16):
        with tf.device("/GPU:0"):
            a = tf.random.uniform((n, n), dtype=dtype)
            b = tf.random.uniform((n, n), dtype=dtype)
        # the sum is O(n^2) beside the O(n^3) product; .numpy() on it waits for the GPU without copying n^2 values
        mm = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y), tf.float32)))
        with tf.device("/GPU:0"):
            probe = mm(a, b)
        if "GPU" not in probe.device:
            return {"status": "skipped", "reason": f"TensorFlow ran the matmul on {probe.device}, not a GPU"}

        def call(mm=mm, a=a, b=b):
            with tf.device("/GPU:0"):
                return mm(a, b).numpy()

        seconds_each = float(np.median(time_calls(call, lambda: None, Budget(2, 5, seconds, 10 * seconds))))
        out[f"{dtype.name}_gflops"] = round(2.0 * n**3 / seconds_each / 1e9, 2)
    out["peak_gflops"] = out["float32_gflops"]
    return out


def merge_rounds(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """One cell per batch size from several interleaved rounds: the round with the median latency, and each
    round's median latency and images/s (their spread tells a real difference from noise)."""
    merged = {}
    for key in rounds[0]:
        ok = [r[key] for r in rounds if r.get(key, {}).get("status") == "ok"]
        if not ok:
            merged[key] = rounds[0][key]
            continue
        ordered = sorted(ok, key=lambda c: c["latency_ms_median"])
        merged[key] = {**ordered[(len(ordered) - 1) // 2], "rounds": len(ok),
                       "latency_ms_median_rounds": [round(c["latency_ms_median"], 3) for c in ok],
                       "throughput_ips_rounds": [round(c["throughput_ips"], 2) for c in ok]}
    return merged


def model_flops(keras_path: Path, image_size: int) -> float:
    """Floating-point operations for one image (multiply-adds count as two), from TensorFlow's graph profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    from flowerpipe.model import load_model

    model = load_model(keras_path)
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    info = profile(graph=frozen.graph, options=opts)
    return float(info.total_float_ops)


def environment(threads: int) -> dict:
    """CPU, cores, threads, GPU and library versions for the record."""
    import importlib.metadata as md

    import cpuinfo

    versions = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino",
                "ai-edge-litert", "tensorrt"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    from flowerpipe.devices import gpu_names

    return {"cpu": cpuinfo.get_cpu_info().get("brand_raw", platform.processor()), "cores": os.cpu_count(),
            "threads": threads or os.cpu_count(), "gpus": gpu_names(), "python": platform.python_version(),
            "versions": versions}


# ---------------------------------------------------------------- worker process


def status_mb(field: str, pid: int | str = "self") -> float:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM...) in MB; 0 where unknown (no such process, not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which a spawned child inherits)."""
    return status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_runtime(task: dict) -> dict:
    """In a fresh process: load one variant on one device and time every batch size (peak RSS is this process's)."""
    from flowerpipe.quiet import quiet_tensorflow

    # Read by TensorFlow when a runtime that uses it starts; the other runtimes never import it.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(task["threads"])
    os.environ["TF_NUM_INTEROP_THREADS"] = str(task["inter_op_threads"])
    quiet_tensorflow(preload=False)
    from flowerpipe.formats.base import Skipped, Variant
    from flowerpipe.formats.registry import load

    variant = Variant(**{**task["variant"], "path": Path(task["variant"]["path"])})
    budget = Budget(**task["budget"])
    try:
        runner = load(variant, task["device"], task["threads"])
    except Skipped as exc:
        return {str(b): {"status": "skipped", "reason": str(exc)} for b in task["batch_sizes"]}
    rng = np.random.default_rng(0)
    size = task["image_size"]
    cells = {}
    for b in task["batch_sizes"]:
        x = rng.integers(0, 256, (b, size, size, 3)).astype(np.float32)  # prepared before timing
        times = time_calls(lambda x=x: runner.predict(x), runner.synchronize, budget)
        cells[str(b)] = {"status": "ok", **summarize(times, b)}
    runner.close()
    peak_mb = peak_rss_mb()
    for c in cells.values():
        c["peak_rss_mb"] = round(peak_mb, 1)
    return cells


def overhead(budget: Budget, batch: int = 1, size: int = 8) -> dict:
    """The harness's own cost: timing an identity 'model' (the input returned as is)."""
    x = np.zeros((batch, size, size, 3), np.float32)
    return summarize(time_calls(lambda: x, lambda: None, budget), batch)


def run_isolated(task: dict) -> dict:
    """run_runtime in a spawned single-worker process."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_runtime, task).result()


def task_for(variant, device: str, batch_sizes: list[int], image_size: int, budget: Budget, threads: int,
             inter_op_threads: int) -> dict:
    """A picklable description of one runtime/device to time."""
    v = asdict(variant)
    v["path"] = str(v["path"])
    return {"variant": v, "device": device, "batch_sizes": batch_sizes, "image_size": image_size,
            "budget": asdict(budget), "threads": threads or os.cpu_count(), "inter_op_threads": inter_op_threads}
