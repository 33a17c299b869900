"""Start the REST server as a subprocess on a free loopback port, check its answers, and load it (bounded)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flowerpipe.serve import to_png_b64


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(params_file: str, fmt: str, port: int, timeout: float = 180.0):
    """`flowerpipe serve` on 127.0.0.1:port until the block ends; then SIGTERM (graceful) and wait."""
    import httpx

    cmd = [sys.executable, "-m", "flowerpipe.cli", "--params", params_file, "serve", "--host", "127.0.0.1",
           "--port", str(port), "--format", fmt]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models/", timeout=2).status_code in (200, 404):
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not start within {timeout:.0f}s")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_answers(url: str, model: str, images: np.ndarray, expected: np.ndarray) -> dict:
    """Row, columnar and b64 requests: top-1 agreement and largest probability difference against local runs."""
    import httpx

    endpoint = f"{url}/v1/models/{model}:predict"
    answers = {
        "row": [r["probabilities"] for r in httpx.post(endpoint, json={"instances": images.tolist()},
                                                        timeout=120).json()["predictions"]],
        "columnar": httpx.post(endpoint, json={"inputs": {"image": images.tolist()}},
                               timeout=120).json()["outputs"]["probabilities"],
        "b64": [r["probabilities"] for r in httpx.post(endpoint, json={
            "signature_name": "serving_bytes", "instances": [to_png_b64(x) for x in images]},
            timeout=120).json()["predictions"]],
    }
    out = {}
    for form, probs in answers.items():
        probs = np.asarray(probs, np.float32)
        out[form] = {"top1_agreement": float((probs.argmax(1) == expected.argmax(1)).mean()),
                     "max_prob_diff": float(np.abs(probs - expected).max())}
    return out


def load(url: str, model: str, images: np.ndarray, expected: np.ndarray, concurrency: int, requests: int,
         max_seconds: float = 120.0) -> dict:
    """`requests` single-image b64 requests from `concurrency` clients; every answer checked against its image."""
    import httpx

    endpoint = f"{url}/v1/models/{model}:predict"
    bodies = [{"signature_name": "serving_bytes", "instances": [to_png_b64(x)]} for x in images]
    deadline = time.time() + max_seconds

    def one(i: int, client: httpx.Client) -> tuple[float, str]:
        if time.time() > deadline:
            return 0.0, "skipped"
        k = i % len(images)
        t = time.perf_counter()
        r = client.post(endpoint, json=bodies[k], timeout=60)
        secs = time.perf_counter() - t
        if r.status_code != 200:
            return secs, "error"
        probs = np.asarray(r.json()["predictions"][0]["probabilities"])
        same = probs.argmax() == expected[k].argmax() and np.abs(probs - expected[k]).max() < 1e-3
        return secs, "ok" if same else "mismatch"

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda i: one(i, client), range(requests)))
        wall = time.perf_counter() - t0
    done = [s for s, status in results if status != "skipped"]
    lat = np.asarray(done) * 1e3 if done else np.zeros(1)
    return {"requests": len(done), "errors": sum(st == "error" for _, st in results),
            "mismatches": sum(st == "mismatch" for _, st in results),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
            "throughput_rps": round(len(done) / wall, 3)}


def params_path() -> str:
    """The params file the current stage reads."""
    return str(Path(os.environ.get("FLOWERPIPE_PARAMS", "params.yaml")).resolve())
