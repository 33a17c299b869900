"""Print the server's req/s and p50/p99 at concurrency 1 and 8 beside its runtime's batch-1 and batch-8 figures.

Builds Xception with random weights at the given size (default 180, the pipeline's default), converts it to
the given format in a temp folder with a labels file, serves the folder with `flowerpipe serve`, and loads
it from this process over loopback with single-image b64 JPEG requests (photos from PHOTOS when given, else
generated images at 4x the model size). The runtime alone is timed in this process in turns with the
server's requests, so that a busy neighbour on a shared machine slows both alike. The load client shares
the machine's cores with the server, as a sidecar or a local client would.

Usage: python benchmarks/serving.py [IMAGE_SIZE] [FORMAT] [REQUESTS] [PHOTOS]
       FORMAT: onnx (default) or openvino-float32
"""

import argparse
import base64
import tempfile
import time
from pathlib import Path

import numpy as np

from flowerpipe.errors import run_script
from flowerpipe.quiet import quiet_tensorflow

# Pause before each timed step: the other side's runtime threads spin-wait for a while after their last call,
# and would otherwise slow whichever side runs next. Each step then starts as a request after a quiet gap does.
IDLE = 0.1


def photos_or_generated(folder: str | None, size: int, n: int = 24) -> list[bytes]:
    """JPEG bytes: real photos when a folder is given, else generated images at 4x the model size."""
    from flowerpipe.loadtest import jpeg_requests

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
    ap.add_argument("format", nargs="?", default="onnx", choices=["onnx", "openvino-float32"])
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
    from flowerpipe.loadtest import free_port, load, running_server
    from flowerpipe.model import build_model
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
        build_model(Model(image_size=size, weights="none"), len(classes)).save(t / "model.keras")
        calib = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        ctx = ConvertContext(t / "model.keras", export_probabilities(t / "model.keras", t / "sm"), size, classes,
                             calib)
        if fmt == "onnx":
            path = onnx_format.convert(ctx, t / "served" / "model.onnx")
        else:
            path = openvino_format.convert(ctx, "float32", t / "served" / "model.xml")
        write_labels(path, classes)
        local = load_artifact(path)
        decoded = decode_all(jpegs, size)
        expected = local.predict(decoded)
        with running_server([str(t / "served")], free_port()) as server, httpx.Client() as client:
            load(server.url, "flowers", jpegs, expected, 8, 16)  # warm-up
            c1 = interleaved_c1(client, server.url, local, jpegs, decoded, size, requests)
            c8 = interleaved_c8(server.url, local, jpegs, decoded, expected, rounds=max(3, requests // 48),
                                pid=server.pid)
    print(f"Xception {size}x{size}, {fmt}, {len(jpegs)} distinct b64 JPEG requests of one image; "
          "each server figure measured in turns with the runtime alone, so both see the same machine")
    print(f"c1, {requests} turns: runtime batch-1 call {c1['call']:.1f} ms, decode + call {c1['decode_call']:.1f} ms, "
          f"server p50 {c1['server_p50']:.1f} ms (p99 {c1['server_p99']:.1f} ms): adds {c1['added']:+.1f} ms to the "
          f"runtime's batch-1 latency (median of paired differences; {c1['added_http']:+.1f} ms beyond decoding)")
    print(f"c8, {len(c8['ratios'])} rounds: runtime batch-8 {c8['runtime_ips']:.1f} img/s, server "
          f"{c8['server_rps']:.1f} req/s (p50 {c8['p50']:.1f} ms, p99 {c8['p99']:.1f} ms), {c8['ratio']:.0%} of the "
          f"runtime (median of rounds); {c8['errors']} errors, {c8['mismatches']} mismatches; server RSS "
          f"{c8['rss'][0]:.0f} -> {c8['rss'][1]:.0f} MB")


def interleaved_c1(client, url: str, local, jpegs: list[bytes], decoded: np.ndarray, size: int, turns: int) -> dict:
    """Per turn: the runtime's batch-1 call, decode + call in this process, and one server request, in a row."""
    from flowerpipe.serving.decode import decode_image

    bodies = [{"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(j).decode()}]}
              for j in jpegs]
    rows = []
    for i in range(turns):
        k = i % len(jpegs)
        row = []
        for step in (lambda k=k: local.predict(decoded[k:k + 1]),
                     lambda k=k: local.predict(decode_image(jpegs[k], size, "image")[None]),
                     lambda k=k: client.post(f"{url}/v1/models/flowers:predict", json=bodies[k],
                                             timeout=60).raise_for_status()):
            time.sleep(IDLE)
            t = time.perf_counter()
            step()
            row.append((time.perf_counter() - t) * 1e3)
        rows.append(row)
    a = np.asarray(rows)
    return {"call": float(np.median(a[:, 0])), "decode_call": float(np.median(a[:, 1])),
            "server_p50": float(np.median(a[:, 2])), "server_p99": float(np.percentile(a[:, 2], 99)),
            "added": float(np.median(a[:, 2] - a[:, 0])), "added_http": float(np.median(a[:, 2] - a[:, 1]))}


def interleaved_c8(url: str, local, jpegs: list[bytes], decoded: np.ndarray, expected: np.ndarray, rounds: int,
                   pid: int) -> dict:
    """Per round: three batch-8 calls of the runtime alone, then 48 requests at concurrency 8."""
    from flowerpipe.loadtest import load

    x8 = np.resize(decoded, (8, *decoded.shape[1:]))
    ratios, runtime, server, results = [], [], [], []
    for _ in range(rounds):
        time.sleep(IDLE)
        t = time.perf_counter()
        for _ in range(3):
            local.predict(x8)
        ips = 24 / (time.perf_counter() - t)
        time.sleep(IDLE)
        r = load(url, "flowers", jpegs, expected, 8, 48, pid=pid)
        runtime.append(ips)
        server.append(r["throughput_rps"])
        ratios.append(r["throughput_rps"] / ips)
        results.append(r)
    return {"runtime_ips": float(np.median(runtime)), "server_rps": float(np.median(server)),
            "ratio": float(np.median(ratios)), "ratios": ratios,
            "p50": float(np.median([r["latency_ms_p50"] for r in results])),
            "p99": float(np.median([r["latency_ms_p99"] for r in results])),
            "errors": sum(r["errors"] for r in results), "mismatches": sum(r["mismatches"] for r in results),
            "rss": (results[0]["rss_mb_before"], results[-1]["rss_mb_after"])}


if __name__ == "__main__":
    run_script(main)
