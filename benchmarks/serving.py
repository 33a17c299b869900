"""Print the server's req/s and p50/p99 at concurrency 1 and 8 beside its runtime's batch-1 and batch-8 figures.

Builds Xception with random weights at the given size (default 180, the pipeline's default), converts it to
the given format in a temp folder with a labels file, times the runtime alone with the benchmark stage's
harness, then serves the folder with `flowerpipe serve` and loads it from this process over loopback with
single-image b64 JPEG requests (photos from PHOTOS when given, else generated images at 4x the model size).
The load client shares the machine's cores with the server, as a sidecar or a local client would.

Usage: python benchmarks/serving.py [IMAGE_SIZE] [FORMAT] [REQUESTS] [PHOTOS]
       FORMAT: onnx (default) or openvino-float32
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from flowerpipe.quiet import quiet_tensorflow


def photos_or_generated(folder: str | None, size: int, n: int = 24) -> list[bytes]:
    """JPEG bytes: real photos when a folder is given, else generated images at 4x the model size."""
    from flowerpipe.loadtest import jpeg_requests

    if folder:
        files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
        return [f.read_bytes() for f in files[:: max(1, len(files) // n)][:n]]
    rng = np.random.default_rng(0)
    smooth = rng.uniform(0, 255, (n, 8, 8, 3)).repeat(size // 8 + 1, 1).repeat(size // 8 + 1, 2)[:, :size, :size]
    return jpeg_requests(smooth.astype(np.float32), sizes=(4 * size,))


def main() -> None:
    """Convert, time the runtime, serve, load; print one table."""
    quiet_tensorflow()
    import keras

    from flowerpipe.bench import Budget, run_isolated, task_for
    from flowerpipe.formats import onnx_format, openvino_format
    from flowerpipe.formats.base import ConvertContext, Variant, write_labels
    from flowerpipe.formats.savedmodel import export_probabilities
    from flowerpipe.loadtest import free_port, load, running_server
    from flowerpipe.model import build_model
    from flowerpipe.params import Model
    from flowerpipe.serving.artifacts import load_artifact
    from flowerpipe.serving.decode import decode_all

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 180
    fmt = sys.argv[2] if len(sys.argv) > 2 else "onnx"
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    jpegs = photos_or_generated(sys.argv[4] if len(sys.argv) > 4 else None, size)
    classes = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        keras.utils.set_random_seed(0)
        build_model(Model(image_size=size, weights="none"), len(classes)).save(t / "model.keras")
        calib = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        ctx = ConvertContext(t / "model.keras", export_probabilities(t / "model.keras", t / "sm"), size, classes,
                             calib)
        if fmt == "onnx":
            path = onnx_format.convert(ctx, t / "served" / "model.onnx")
            variant = Variant("onnx", "onnx", "float32", path)
        else:
            path = openvino_format.convert(ctx, "float32", t / "served" / "model.xml")
            variant = Variant("openvino-float32", "openvino", "float32", path)
        write_labels(path, classes)
        budget = Budget(warmup=3, iterations=20, min_seconds=3.0, max_seconds=30.0)
        cells = run_isolated(task_for(variant, "cpu", [1, 8], size, budget, 0, 1))
        local = load_artifact(path)
        expected = local.predict(decode_all(jpegs, size))
        del local
        with running_server([str(t / "served")], free_port()) as server:
            load(server.url, "flowers", jpegs, expected, 8, 16)  # warm-up
            levels = {c: load(server.url, "flowers", jpegs, expected, c, requests, pid=server.pid) for c in (1, 8)}
    b1, b8 = cells["1"], cells["8"]
    print(f"Xception {size}x{size}, {variant.name}, {len(jpegs)} distinct b64 JPEG requests, "
          f"{requests} per level, one image each")
    print(f"runtime alone: batch 1 {b1['latency_ms_median']:.1f} ms ({b1['throughput_ips']:.1f} img/s), "
          f"batch 8 {b8['throughput_ips']:.1f} img/s")
    for c, r in levels.items():
        ref = f"adds {r['latency_ms_p50'] - b1['latency_ms_median']:+.1f} ms at p50 to batch-1 latency" if c == 1 \
            else f"{r['throughput_rps'] / b8['throughput_ips']:.0%} of the runtime's batch-8 img/s"
        print(f"server c{c}: {r['throughput_rps']:.1f} req/s, p50 {r['latency_ms_p50']:.1f} ms, "
              f"p99 {r['latency_ms_p99']:.1f} ms, {r['errors']} errors, {r['mismatches']} mismatches, "
              f"RSS {r['rss_mb_before']:.0f} -> {r['rss_mb_after']:.0f} MB; {ref}")


if __name__ == "__main__":
    main()
