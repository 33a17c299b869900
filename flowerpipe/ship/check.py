"""Check a shipped model repository where it will be served: its Triton config parsed by Triton's own proto (where
tritonclient is installed), the runtime's own batch-N rate, then `flowerpipe serve` over the repository loaded at
concurrency N over KServe V2 gRPC (uint8 pixels) and TF Serving REST (b64 JPEGs), every answer checked.

    python -m flowerpipe.ship.check models/ship/repository --concurrency 8

The runtime is timed first, alone; the server's load runs after, under the machine's timing lock (no two timed runs
share cores). Exit code 1 when an answer differs from local inference or a request fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def newest_version(folder: Path) -> Path:
    """The highest numbered version folder (as the server finds them)."""
    from flowerpipe.serving.repository import Source

    versions = Source(base=folder).scan()
    if not versions:
        raise FileNotFoundError(f"{folder}: no version folder")
    return versions[max(versions)]


def triton_config(folder: Path) -> dict:
    """config.pbtxt parsed by tritonclient's model_config_pb2 (Triton's ModelConfig): its key fields, or why not."""
    path = folder / "config.pbtxt"
    if not path.exists():
        return {"status": "none", "reason": "no config.pbtxt (not a Triton backend's format)"}
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return {"status": "not_checked", "reason": "tritonclient[grpc] is not installed"}
    c = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return {"status": "ok", "backend": c.backend, "max_batch_size": c.max_batch_size,
            "inputs": [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in c.input],
            "outputs": [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in c.output],
            "max_queue_delay_us": c.dynamic_batching.max_queue_delay_microseconds}


def runtime_rate(predict, images: np.ndarray, batch: int, min_seconds: float = 3.0, min_iterations: int = 20) -> dict:
    """The runtime's own images/s at one batch size: warm-up, then median batch time over min_seconds."""
    x = images[:batch] if len(images) >= batch else np.resize(images, (batch, *images.shape[1:]))
    for _ in range(3):
        predict(x)
    times = []
    start = time.perf_counter()
    while len(times) < min_iterations or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"batch": batch, "iterations": len(times), "batch_ms_median": round(median * 1e3, 3),
            "images_per_s": round(batch / median, 1)}


def check(repository: Path, concurrency: int, requests: int, threads: int = 0, min_seconds: float = 3.0) -> dict:
    """Run the checks; the record printed as JSON."""
    from flowerpipe.measure.loadtest import free_ports, jpeg_requests, load, load_grpc, running_server
    from flowerpipe.measure.timing_lock import timing_lock
    from flowerpipe.serving.artifacts import load_artifact
    from flowerpipe.serving.decode import decode_all
    from flowerpipe.ship.repository import find

    shipped = find(repository)
    if shipped is None:
        raise FileNotFoundError(f"{repository}: no shipped model (a folder holding flowerpipe.json, or a repository "
                                "of such folders)")
    version = newest_version(shipped.folder)
    size = shipped.image_size
    images = np.random.default_rng(0).integers(0, 256, (max(16, concurrency), size, size, 3)).astype(np.float32)
    jpegs = jpeg_requests(images)
    model = load_artifact(version, "cpu", threads, shipped.classes, size, shipped.format)
    expected = model.predict(images)
    expected_jpeg = model.predict(decode_all(jpegs, size))
    with timing_lock("ship.check"):
        rate = runtime_rate(model.predict, images, concurrency, min_seconds)
    model.close()
    port, grpc_port = free_ports(2)
    with running_server([str(repository)], port, grpc_port=grpc_port) as server, timing_lock("ship.check"):
        grpc_v2 = load_grpc(server.grpc, shipped.name, images, expected, concurrency, requests, protocol="v2")
        rest = load(server.url, shipped.name, jpegs, expected_jpeg, concurrency, requests, pid=server.pid)
    for r in (grpc_v2, rest):
        r["fraction_of_runtime"] = round(r["throughput_rps"] / rate["images_per_s"], 3)
    return {"repository": str(repository), "model": shipped.name, "format": shipped.format,
            "version": int(version.name), "triton_config": triton_config(shipped.folder),
            f"runtime_batch{concurrency}": rate, f"grpc_v2_c{concurrency}": grpc_v2, f"rest_jpeg_c{concurrency}": rest}


def main(argv: list[str] | None = None) -> int:
    """`python -m flowerpipe.ship.check REPOSITORY [--concurrency N] [--requests R] [--threads T]`."""
    parser = argparse.ArgumentParser(prog="python -m flowerpipe.ship.check", description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0, help="runtime threads for the batch timing (0: all)")
    args = parser.parse_args(argv)
    record = check(args.repository, args.concurrency, args.requests, args.threads)
    print(json.dumps(record, indent=2))
    bad = [k for k, r in record.items() if isinstance(r, dict) and (r.get("errors") or r.get("mismatches"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
