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


def achieved_gflops(flops_per_image: float, batch: int, latency_ms: float) -> float:
    """The GFLOP/s a cell reached: the FLOPs of its batch over its median call."""
    return flops_per_image * batch / (latency_ms / 1e3) / 1e9


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

    from flowerpipe.model.build import load_model

    model = load_model(keras_path)
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    info = profile(graph=frozen.graph, options=opts)
    return float(info.total_float_ops)


# Distributions whose versions explain a figure: by exact name, or every one whose name starts so (TensorRT ships as
# tensorrt-cu12, tensorrt-cu12-bindings and -libs; CUDA and cuDNN as nvidia-* wheels)
VERSIONED = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino",
             "ai-edge-litert", "cuda-python")
VERSIONED_PREFIXES = ("tensorrt", "nvidia-cudnn-", "nvidia-cublas-", "nvidia-cuda-runtime-")


def library_versions() -> dict[str, str]:
    """name -> version of every installed distribution that VERSIONED names (PEP 503 names, sorted)."""
    import importlib.metadata as md
    import re

    versions = {}
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name in VERSIONED or name.startswith(VERSIONED_PREFIXES):
            versions[name] = dist.version
    return dict(sorted(versions.items()))


def environment(threads: int) -> dict:
    """CPU, cores, threads, GPU and library versions for the record."""
    import cpuinfo

    from flowerpipe.measure.devices import gpu_names

    return {"cpu": cpuinfo.get_cpu_info().get("brand_raw", platform.processor()), "cores": os.cpu_count(),
            "threads": threads or os.cpu_count(), "gpus": gpu_names(), "python": platform.python_version(),
            "versions": library_versions()}


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
