"""Print batch-1 (and batch-N) latency, throughput and fraction of the matmul peak for every CPU runtime.

Builds Xception with random weights at the given size (default 299), converts it to every CPU format in a
temp folder (int8 calibrated on random images: fine for speed, not for accuracy), then times each runtime
in its own process with the same harness as the benchmark stage.

Usage: python benchmarks/inference.py [IMAGE_SIZE] [BATCH ...]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from flowerpipe.quiet import quiet_tensorflow


def main() -> None:
    """Convert, then time; print one row per runtime and batch size."""
    quiet_tensorflow()
    import keras

    from flowerpipe.bench import Budget, matmul_peak, model_flops, overhead, run_isolated, task_for
    from flowerpipe.formats import onnx_format, openvino_format, tflite
    from flowerpipe.formats.base import ConvertContext, Variant
    from flowerpipe.formats.savedmodel import export_probabilities
    from flowerpipe.model import build_model
    from flowerpipe.params import Model

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 299
    batches = [int(b) for b in sys.argv[2:]] or [1, 8]
    budget = Budget(warmup=5, iterations=30, min_seconds=5.0, max_seconds=40.0)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        keras.utils.set_random_seed(0)
        build_model(Model(image_size=size, weights="none"), 5).save(t / "model.keras")
        calib = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
        ctx = ConvertContext(t / "model.keras", export_probabilities(t / "model.keras", t / "sm"), size,
                             [f"class{i}" for i in range(5)], calib)
        variants = [Variant("keras", "keras", "", t / "model.keras")]
        for v in ("float32", "dynamic", "int8"):
            variants.append(Variant(f"tflite-{v}", "tflite", v, tflite.convert(ctx, v, t / f"m_{v}.tflite")))
        onnx = onnx_format.convert(ctx, t / "m.onnx")
        variants += [Variant("onnx", "onnx", "float32", onnx),
                     Variant("onnx-int8", "onnx", "int8", onnx_format.quantize_int8(ctx, onnx, t / "m8.onnx"))]
        for v in ("float32", "int8"):
            variants.append(Variant(f"openvino-{v}", "openvino", v,
                                    openvino_format.convert(ctx, v, t / "ov" / v / "model.xml")))
        peak = matmul_peak()
        flops = model_flops(t / "model.keras", size)
        print(f"Xception {size}x{size}: {flops / 1e9:.2f} GFLOP/image; float32 matmul peak {peak['peak_gflops']:.0f} "
              f"GFLOP/s (TF {peak['tensorflow_gflops']:.0f}, NumPy {peak['numpy_gflops']:.0f}); "
              f"harness overhead {overhead(budget)['latency_ms_median'] * 1e3:.1f} us/call")
        head = ("runtime", "batch", "median ms", "p99 ms", "img/s", "GFLOP/s", "of peak")
        print(f"{head[0]:18s} " + " ".join(f"{h:>9s}" for h in head[1:]))
        for v in variants:
            cells = run_isolated(task_for(v, "cpu", batches, size, budget, 0, 1))
            for b, c in cells.items():
                g = flops * int(b) / (c["latency_ms_median"] / 1e3) / 1e9
                print(f"{v.name:18s} {b:>5s} {c['latency_ms_median']:10.2f} {c['latency_ms_p99']:9.2f} "
                      f"{c['throughput_ips']:8.2f} {g:8.1f} {g / peak['peak_gflops']:8.1%}")


if __name__ == "__main__":
    main()
