"""Print the server's req/s and p50/p99 at concurrency 1 and 8 beside its runtime's batch-1 and batch-8 figures.

Builds Xception with random weights at the given size (default 180, the pipeline's default), converts it to
the given format in a temp folder with a labels file, serves the folder with `flowerpipe serve` (REST and gRPC),
and loads it from this process over loopback, one image a request, by protocol:
- REST: TF Serving's :predict with a b64 JPEG (photos from PHOTOS when given, else generated images at 4x the
  model size), decoded and resized by the server;
- gRPC: TF Serving's Predict (serving_uint8) and KServe V2's ModelInfer (UINT8), the pixels as raw bytes at the
  model's size, as production gRPC clients send them.
The runtime alone is timed in this process in turns with the server's requests, so that a busy neighbour on a
shared machine slows both alike: at concurrency 1, blocks of back-to-back batch-1 calls against blocks of
back-to-back requests (a client that sends its next request when the answer comes, as the runtime's batch-1
latency is measured); at 8, batch-8 calls against 48 requests from 8 clients. The load client shares the
machine's cores with the server, as a sidecar or a local client would.

Usage: python benchmarks/serving.py [IMAGE_SIZE] [FORMAT] [REQUESTS] [PHOTOS]
       FORMAT: onnx (default), openvino-float32 or openvino-bfloat16 (a CPU with AVX512_BF16 or AMX)
"""

import argparse
import base64
import tempfile
import time
from pathlib import Path

import numpy as np

from flowerpipe.errors import run_script
from flowerpipe.quiet import quiet_tensorflow

# Pause before each timed block: the other side's runtime threads spin-wait for a while after their last call,
# and would otherwise slow whichever side runs next.
IDLE = 0.1
BLOCK = 10  # back-to-back calls per block at concurrency 1


def photos_or_generated(folder: str | None, size: int, n: int = 24) -> list[bytes]:
    """JPEG bytes: real photos when a folder is given, else generated images at 4x the model size."""
    from flowerpipe.measure.loadtest import jpeg_requests

    if folder:
        files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
        return [f.read_bytes() for f in files[:: max(1, len(files) // n)][:n]]
    rng = np.random.default_rng(0)
    smooth = rng.uniform(0, 255, (n, 8, 8, 3)).repeat(size // 8 + 1, 1).repeat(size // 8 + 1, 2)[:, :size, :size]
    return jpeg_requests(smooth.astype(np.float32), sizes=(4 * size,))


def arguments() -> argparse.Namespace:
    """IMAGE_SIZE, FORMAT, REQUESTS and PHOTOS, each optional, checked."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("size", type=int, nargs="?", default=180, help="model image size (default: %(default)s)")
    ap.add_argument("format", nargs="?", default="onnx", choices=["onnx", "openvino-float32", "openvino-bfloat16"])
    ap.add_argument("requests", type=int, nargs="?", default=200, help="requests per level (default: %(default)s)")
    ap.add_argument("photos", nargs="?", help="a folder of JPEG photos (default: generated images)")
    args = ap.parse_args()
    if args.size < 71 or args.requests < 1:
        ap.error("the image size is at least 71 (Xception's smallest) and requests at least 1")
    return args


def main() -> None:
    """Convert, time the runtime, serve, load; print one table."""
    args = arguments()  # (a usage error before TensorFlow loads)
    quiet_tensorflow()
    import httpx
    import keras

    from flowerpipe.formats import onnx_format, openvino_format
    from flowerpipe.formats.base import ConvertContext, write_labels
    from flowerpipe.formats.savedmodel import export_probabilities
    from flowerpipe.measure.loadtest import free_ports, load, load_grpc, running_server
    from flowerpipe.model.build import build_model
    from flowerpipe.params import Model
    from flowerpipe.serving.artifacts import load_artifact
    from flowerpipe.serving.decode import decode_all

    size, fmt, requests = args.size, args.format, args.requests
    jpegs = photos_or_generated(args.photos, size)
    if not jpegs:
        raise FileNotFoundError(f"{args.photos}: no such folder, or no .jpg or .jpeg photos in it")
    classes = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        keras.utils.set_random_seed(0)
        full = Model(image_size=size, weights="none", width=1.0, middle_blocks=8)  # the published Xception
        build_model(full, len(classes)).save(t / "model.keras")
        calib = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        ctx = ConvertContext(t / "model.keras", export_probabilities(t / "model.keras", t / "sm"), size, classes,
                             calib)
        if fmt == "onnx":
            path = onnx_format.convert(ctx, t / "served" / "model.onnx")
        else:
            path = openvino_format.convert(ctx, fmt.split("-")[1], t / "served" / "model.xml")
        write_labels(path, classes)
        local = load_artifact(path)
        decoded = decode_all(jpegs, size)
        expected = local.predict(decoded)
        pixels = np.rint(decoded)  # uint8 on the wire: what the runtime sees is exactly what was sent
        expected_pixels = local.predict(pixels)
        port, grpc_port = free_ports(2)
        with running_server([str(t / "served")], port, grpc_port=grpc_port) as server, httpx.Client() as client:
            load(server.url, "flowers", jpegs, expected, 8, 16)  # warm-up
            load_grpc(server.grpc, "flowers", pixels, expected_pixels, 8, 16)
            senders = {"REST b64 JPEG": rest_sender(client, server.url, jpegs),
                       "gRPC TF Serving uint8": grpc_sender(server.grpc, "tfs", pixels),
                       "gRPC KServe V2 uint8": grpc_sender(server.grpc, "v2", pixels)}
            c1 = interleaved_c1(senders, local, decoded, requests)
            c8 = interleaved_c8(server, local, jpegs, decoded, expected, pixels, expected_pixels,
                                rounds=max(3, requests // 48))
    print(f"Xception {size}x{size}, {fmt}, {len(jpegs)} distinct images, one a request; each server figure measured "
          "in turns with the runtime alone, so both see the same machine")
    print(f"c1, {c1['rounds']} rounds of {c1['block']} back-to-back calls each: runtime batch-1 call "
          f"{c1['call']:.1f} ms ({c1['cold_call']:.1f} ms as a block's first call, after {IDLE:g} s idle)")
    for name, r in c1["servers"].items():
        print(f"  {name:22s} p50 {r['p50']:.1f} ms (p99 {r['p99']:.1f} ms): adds {r['added']:+.1f} ms to the runtime's "
              f"batch-1 latency (median of paired block medians); a block's first: {r['cold']:.1f} ms, "
              f"{r['cold_added']:+.1f} ms")
    print(f"c8, {c8['rounds']} rounds: runtime batch-8 {c8['runtime_ips']:.1f} img/s")
    for name, r in c8["servers"].items():
        print(f"  {name:22s} {r['rps']:.1f} req/s (p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms), {r['ratio']:.0%} of "
              f"the runtime (median of rounds); {r['errors']} errors, {r['mismatches']} mismatches")
    print(f"server RSS {c8['rss'][0]:.0f} -> {c8['rss'][1]:.0f} MB")


def rest_sender(client, url: str, jpegs: list[bytes]):
    """One REST request of image k: TF Serving's :predict with a b64 JPEG."""
    bodies = [{"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(j).decode()}]}
              for j in jpegs]
    return lambda k: client.post(f"{url}/v1/models/flowers:predict", json=bodies[k % len(bodies)],
                                 timeout=60).raise_for_status()


def grpc_sender(target: str, protocol: str, pixels: np.ndarray):
    """One gRPC request of image k: uint8 pixels as raw bytes (a channel kept open, as clients do)."""
    import grpc

    from flowerpipe.serving.grpc_client import call, tfs_pixels, v2_pixels

    channel = grpc.insecure_channel(target)
    make = tfs_pixels if protocol == "tfs" else v2_pixels
    bodies = [make("flowers", x[None]) for x in pixels]
    return lambda k: call(channel, protocol, bodies[k % len(bodies)], 60)


def interleaved_c1(senders: dict, local, decoded: np.ndarray, requests: int, block: int = BLOCK) -> dict:
    """Concurrency 1 as a client sends: per round, `block` back-to-back runtime batch-1 calls, then `block`
    back-to-back requests by each sender, with a quiet gap before each block; until `requests` per sender.

    added: the median over rounds of (the sender's block median - the runtime's block median), so that a slow
    stretch of the machine falls on both sides of each difference. cold: the same for each block's first call,
    which follows the gap (as a request does after an idle spell)."""
    steps = {"runtime": lambda k: local.predict(decoded[k % len(decoded):k % len(decoded) + 1]), **senders}
    times = {name: [] for name in steps}
    for r in range(max(1, -(-requests // block))):
        for name, step in steps.items():
            time.sleep(IDLE)
            row = []
            for i in range(block):
                t = time.perf_counter()
                step(r * block + i)
                row.append((time.perf_counter() - t) * 1e3)
            times[name].append(row)
    a = {name: np.asarray(rows) for name, rows in times.items()}
    rt = a.pop("runtime")
    servers = {name: {"p50": float(np.median(x)), "p99": float(np.percentile(x, 99)),
                      "added": float(np.median(np.median(x, axis=1) - np.median(rt, axis=1))),
                      "cold": float(np.median(x[:, 0])), "cold_added": float(np.median(x[:, 0] - rt[:, 0]))}
               for name, x in a.items()}
    return {"call": float(np.median(rt)), "cold_call": float(np.median(rt[:, 0])), "rounds": len(rt),
            "block": block, "servers": servers}


def interleaved_c8(server, local, jpegs: list[bytes], decoded: np.ndarray, expected: np.ndarray, pixels: np.ndarray,
                   expected_pixels: np.ndarray, rounds: int) -> dict:
    """Per round: three batch-8 calls of the runtime alone, then 48 requests at concurrency 8 by each protocol."""
    from flowerpipe.measure.loadtest import load, load_grpc

    x8 = np.resize(decoded, (8, *decoded.shape[1:]))
    loads = {"REST b64 JPEG": lambda: load(server.url, "flowers", jpegs, expected, 8, 48, pid=server.pid),
             "gRPC TF Serving uint8": lambda: load_grpc(server.grpc, "flowers", pixels, expected_pixels, 8, 48, "tfs"),
             "gRPC KServe V2 uint8": lambda: load_grpc(server.grpc, "flowers", pixels, expected_pixels, 8, 48, "v2")}
    runtime, results = [], {name: [] for name in loads}
    for _ in range(rounds):
        time.sleep(IDLE)
        t = time.perf_counter()
        for _ in range(3):
            local.predict(x8)
        runtime.append(24 / (time.perf_counter() - t))
        for name, run in loads.items():
            time.sleep(IDLE)
            results[name].append(run())
    servers = {}
    for name, rs in results.items():
        servers[name] = {"rps": float(np.median([r["throughput_rps"] for r in rs])),
                         "ratio": float(np.median([r["throughput_rps"] / ips for r, ips in zip(rs, runtime,
                                                                                                strict=True)])),
                         "p50": float(np.median([r["latency_ms_p50"] for r in rs])),
                         "p99": float(np.median([r["latency_ms_p99"] for r in rs])),
                         "errors": sum(r["errors"] for r in rs), "mismatches": sum(r["mismatches"] for r in rs)}
    rest = results["REST b64 JPEG"]
    return {"runtime_ips": float(np.median(runtime)), "rounds": rounds, "servers": servers,
            "rss": (rest[0]["rss_mb_before"], rest[-1]["rss_mb_after"])}


if __name__ == "__main__":
    run_script(main)
