"""Start `flowerpipe serve` on loopback, check its answers over both protocols, load it with b64 JPEG requests."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# running_server starts `python -m flowerpipe.serving.command` (flowerpipe.pipeline.dag reads this)
__imports__ = ("flowerpipe.serving.command",)

from flowerpipe.serving.client import to_png_b64


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that are free right now (all held open while they are picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    """A running server process: its URL, its gRPC target (None without gRPC) and pid (for its memory)."""

    url: str
    pid: int
    grpc: str | None = None


@contextmanager
def running_server(args: list[str], port: int, timeout: float = 180.0, params_file: str | None = None,
                   cwd: Path | None = None, command: list[str] | None = None,
                   env: dict | None = None, grpc_port: int = -1) -> Iterator[Server]:
    """`flowerpipe serve [--params F] ARGS` on 127.0.0.1:port (gRPC on grpc_port, -1: none) until the block ends.

    Then SIGTERM, and wait for the process to end.

    command: how to start the server (default: this Python's `-m flowerpipe.serving.command`, the serve command
    alone; or an installed entry point, e.g. [".../bin/flowerpipe", "serve"], with no params file).
    """
    import httpx

    params = ["--params", params_file] if params_file else []
    cmd = [*(command or [sys.executable, "-m", "flowerpipe.serving.command"]), *params, *args, "--host", "127.0.0.1",
           "--port", str(port),
           "--grpc-port", str(grpc_port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not start within {timeout:.0f}s")
            time.sleep(0.3)
        yield Server(url, proc.pid, f"127.0.0.1:{grpc_port}" if grpc_port > 0 else None)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc), 0 where unknown."""
    from flowerpipe.measure.harness import status_mb

    return status_mb("VmRSS", pid)


def check_answers(url: str, model: str, images: np.ndarray, expected: np.ndarray) -> dict:
    """Row, columnar and b64 (TF Serving) and JSON tensor (KServe V2) requests against local results."""
    import httpx

    endpoint = f"{url}/v1/models/{model}:predict"
    v2 = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                      "data": images.ravel().tolist()}]}
    answers = {
        "row": [r["probabilities"] for r in httpx.post(endpoint, json={"instances": images.tolist()},
                                                        timeout=120).json()["predictions"]],
        "columnar": httpx.post(endpoint, json={"inputs": {"image": images.tolist()}},
                               timeout=120).json()["outputs"]["probabilities"],
        "b64": [r["probabilities"] for r in httpx.post(endpoint, json={
            "signature_name": "serving_bytes", "instances": [to_png_b64(x) for x in images]},
            timeout=120).json()["predictions"]],
        "v2": httpx.post(f"{url}/v2/models/{model}/infer", json=v2, timeout=120).json()["outputs"][0]["data"],
    }
    out = {}
    for form, probs in answers.items():
        probs = np.asarray(probs, np.float32).reshape(expected.shape)
        out[form] = {"top1_agreement": float((probs.argmax(1) == expected.argmax(1)).mean()),
                     "max_prob_diff": float(np.abs(probs - expected).max())}
    return out


def check_grpc_answers(target: str, model: str, images: np.ndarray, expected: np.ndarray) -> dict:
    """uint8 pixel tensors over gRPC, TF Serving's Predict and KServe V2's ModelInfer, against local results."""
    import grpc

    from flowerpipe.serving.grpc_client import call, probabilities, tfs_pixels, v2_pixels

    out = {}
    with grpc.insecure_channel(target) as channel:
        for protocol, make in (("tfs", tfs_pixels), ("v2", v2_pixels)):
            probs = probabilities(call(channel, protocol, make(model, images), 120), protocol)[0]
            out[f"grpc_{protocol}"] = {"top1_agreement": float((probs.argmax(1) == expected.argmax(1)).mean()),
                                       "max_prob_diff": float(np.abs(probs - expected).max())}
    return out


def jpeg_requests(images: np.ndarray, sizes: tuple[int, ...] = (0,), quality: int = 90) -> list[bytes]:
    """JPEG bytes of each image, resized in turn to each of sizes (0 = as it is): mixed-size b64 requests."""
    from PIL import Image

    out = []
    for i, x in enumerate(images):
        im = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
        side = sizes[i % len(sizes)]
        if side:
            im = im.resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def load(url: str, model: str, jpegs: list[bytes], expected: np.ndarray, concurrency: int, requests: int,
         max_seconds: float = 120.0, pid: int = 0, tolerance: float = 1e-3) -> dict:
    """`requests` single-image b64 JPEG requests from `concurrency` clients, each answer checked against its image."""
    import httpx

    endpoint = f"{url}/v1/models/{model}:predict"
    bodies = [{"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(j).decode()}]}
              for j in jpegs]
    deadline = time.time() + max_seconds

    def one(i: int, client: httpx.Client) -> tuple[float, str]:
        if time.time() > deadline:
            return 0.0, "skipped"
        k = i % len(jpegs)
        t = time.perf_counter()
        try:
            r = client.post(endpoint, json=bodies[k], timeout=60)
        except httpx.HTTPError:
            return time.perf_counter() - t, "error"
        secs = time.perf_counter() - t
        if r.status_code != 200:
            return secs, "error"
        probs = np.asarray(r.json()["predictions"][0]["probabilities"])
        same = probs.argmax() == expected[k].argmax() and np.abs(probs - expected[k]).max() < tolerance
        return secs, "ok" if same else "mismatch"

    rss_before = rss_mb(pid) if pid else 0.0
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda i: one(i, client), range(requests)))
        wall = time.perf_counter() - t0
    done = [s for s, status in results if status != "skipped"]
    lat = np.asarray(done) * 1e3 if done else np.zeros(1)
    out = {"requests": len(done), "errors": sum(st == "error" for _, st in results),
           "mismatches": sum(st == "mismatch" for _, st in results),
           "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
           "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
           "throughput_rps": round(len(done) / wall, 3)}
    if pid:
        out.update(rss_mb_before=round(rss_before, 1), rss_mb_after=round(rss_mb(pid), 1))
    return out


def load_grpc(target: str, model: str, images: np.ndarray, expected: np.ndarray, concurrency: int, requests: int,
              protocol: str = "tfs", tolerance: float = 1e-3) -> dict:
    """`requests` single-image uint8 pixel requests over gRPC from `concurrency` threads on one channel, checked."""
    import grpc

    from flowerpipe.serving.grpc_client import call, probabilities, tfs_pixels, v2_pixels

    make = tfs_pixels if protocol == "tfs" else v2_pixels
    bodies = [make(model, x[None]) for x in images]
    with grpc.insecure_channel(target) as channel:
        def one(i: int) -> tuple[float, str]:
            k = i % len(images)
            t = time.perf_counter()
            try:
                probs = probabilities(call(channel, protocol, bodies[k], 60), protocol)[0][0]
            except Exception:  # noqa: BLE001 (counted: the load goes on)
                return time.perf_counter() - t, "error"
            secs = time.perf_counter() - t
            same = probs.argmax() == expected[k].argmax() and np.abs(probs - expected[k]).max() < tolerance
            return secs, "ok" if same else "mismatch"

        with ThreadPoolExecutor(concurrency) as pool:
            t0 = time.perf_counter()
            results = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
    lat = np.asarray([s for s, _ in results]) * 1e3
    return {"requests": len(results), "errors": sum(st == "error" for _, st in results),
            "mismatches": sum(st == "mismatch" for _, st in results),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
            "throughput_rps": round(len(results) / wall, 3)}


def tuned_params(params_file: str, folder: Path, max_batch: int, window_ms: float) -> str:
    """A copy of the params file in folder with serve.max_batch and serve.batch_window_ms set (for one server)."""
    import yaml

    p = yaml.safe_load(Path(params_file).read_text()) or {}
    p.setdefault("serve", {}).update(max_batch=max_batch, batch_window_ms=window_ms)
    out = Path(folder) / f"params-b{max_batch}-w{window_ms:g}.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return str(out)


def best_under_budget(settings: list[dict], levels: list[str], budget_ms: float) -> dict:
    """Per load level, the setting with the most requests/s whose p99 is within the budget (or why none is)."""
    best = {}
    for level in levels:
        fits = [s for s in settings if not s[level]["errors"] and s[level]["latency_ms_p99"] <= budget_ms]
        if not fits:
            best[level] = {"none": f"no setting answers {level} within p99 {budget_ms:g} ms"}
            continue
        top = max(fits, key=lambda s: s[level]["throughput_rps"])
        best[level] = {"max_batch": top["max_batch"], "batch_window_ms": top["batch_window_ms"],
                       "throughput_rps": top[level]["throughput_rps"], "latency_ms_p99": top[level]["latency_ms_p99"]}
    return best


def params_path() -> str:
    """The params file the current stage reads."""
    return str(Path(os.environ.get("FLOWERPIPE_PARAMS") or "params.yaml").resolve())
