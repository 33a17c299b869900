"""A TensorFlow Serving REST (KServe V1) compatible server over any model format, and its client."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")


class RequestError(ValueError):
    """A bad request: answered with this HTTP status and {"error": message}."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServedModel:
    """What the server answers for: one model name, one version, its runner and class names."""

    name: str
    version: int
    runner: object
    classes: list[str]
    image_size: int
    format: str


# ---------------------------------------------------------------- request parsing


def _decode_b64_image(item: object, size: int, where: str) -> np.ndarray:
    from PIL import UnidentifiedImageError

    from flowerpipe.data.images import load_image

    if not isinstance(item, dict) or set(item) != {"b64"} or not isinstance(item["b64"], str):
        raise RequestError(f"{where}: expected {{\"b64\": \"<base64 JPEG or PNG>\"}}")
    try:
        raw = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: b64 is not valid base64") from None
    try:
        return load_image(raw, size)
    except UnidentifiedImageError:
        raise RequestError(f"{where}: b64 data is not a JPEG or PNG image") from None
    except Exception as exc:
        raise RequestError(f"{where}: image could not be decoded ({exc.__class__.__name__})") from None


def _to_array(values: object, size: int, signature: str) -> np.ndarray:
    """Nested lists of pixel values as a (N, size, size, 3) float32 array, or a RequestError."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise RequestError("wrong shape: images are ragged; each must be [height][width][3] numbers") from None
    if arr.dtype == object:
        raise RequestError("wrong shape or dtype: images must be equal-sized nested lists of numbers")
    if arr.dtype.kind not in "iuf":
        raise RequestError(f"wrong dtype: pixel values must be numbers (0-255), got {arr.dtype.kind!r} values")
    if arr.shape[1:] != (size, size, 3):
        raise RequestError(f"wrong shape: expected [N, {size}, {size}, 3], got {list(arr.shape)}")
    if signature == "serving_uint8" and (arr.dtype.kind == "f" or arr.min() < 0 or arr.max() > 255):
        raise RequestError("wrong dtype: serving_uint8 takes integers 0-255")
    return arr.astype(np.float32)


def parse_request(body: bytes, size: int, max_batch: int) -> tuple[np.ndarray, str, bool]:
    """(images, signature_name, columnar) from a TF Serving predict request body."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    if not isinstance(req, dict):
        raise RequestError("request body must be a JSON object with 'instances' or 'inputs'")
    signature = req.get("signature_name", "serving_default")
    if signature not in SIGNATURES:
        raise RequestError(f"unknown signature_name {signature!r}; expected one of {list(SIGNATURES)}")
    if ("instances" in req) == ("inputs" in req):
        raise RequestError("give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    columnar = "inputs" in req
    data = req["inputs"] if columnar else req["instances"]
    if isinstance(data, dict):  # named input: {"image": [...]} / {"image_bytes": [...]}
        if len(data) != 1:
            raise RequestError("this model has a single input ('image' or 'image_bytes')")
        data = next(iter(data.values()))
    if not isinstance(data, list) or not data:
        raise RequestError("no images: 'instances'/'inputs' must be a non-empty list")
    if len(data) > max_batch:
        raise RequestError(f"too many images in one request: {len(data)} > {max_batch}")
    if not columnar:
        data = [next(iter(d.values())) if isinstance(d, dict) and len(d) == 1 and "b64" not in d else d for d in data]
    if all(isinstance(d, dict) for d in data):
        return np.stack([_decode_b64_image(d, size, f"instance {i}") for i, d in enumerate(data)]), signature, columnar
    if signature == "serving_bytes" or any(isinstance(d, dict) for d in data):
        raise RequestError("serving_bytes takes only {\"b64\": ...} images")
    return _to_array(data, size, signature), signature, columnar


def format_response(probs: np.ndarray, classes: list[str], columnar: bool) -> dict:
    """TF Serving's row ("predictions") or columnar ("outputs") response for the three outputs."""
    index = probs.argmax(axis=1)
    names = [classes[i] for i in index]
    if columnar:
        return {"outputs": {"probabilities": probs.tolist(), "class_index": index.tolist(), "class_name": names}}
    return {"predictions": [{"probabilities": p.tolist(), "class_index": int(i), "class_name": n}
                            for p, i, n in zip(probs, index, names, strict=True)]}


# ---------------------------------------------------------------- batching


class Batcher:
    """Merges concurrent requests into one model call (up to max_batch images, waiting window_ms)."""

    def __init__(self, runner, max_batch: int, window_ms: float):
        self.runner = runner
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for images, computed together with whatever else arrived meanwhile."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((images, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window
            size = len(items[0][0])
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                if size + len(nxt[0]) > self.max_batch:
                    await self._run([nxt])  # too big to merge: run it on its own, then carry on
                    continue
                items.append(nxt)
                size += len(nxt[0])
            await self._run(items)

    async def _run(self, items: list) -> None:
        batch = np.concatenate([x for x, _ in items])
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.pool, self.runner.predict, batch)
        except Exception as exc:  # the model failed: every waiting request gets the error
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for x, fut in items:
            if not fut.done():
                fut.set_result(probs[start:start + len(x)])
            start += len(x)

    def close(self) -> None:
        """Stop the loop and the model thread."""
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=True)


# ---------------------------------------------------------------- the app


def _route(rest: str) -> tuple[str, int | None, str]:
    """Split 'name[/versions/v][/metadata|:predict]' into (name, version, action)."""
    action = "status"
    if rest.endswith(":predict"):
        rest, action = rest[: -len(":predict")], "predict"
    elif rest.endswith("/metadata"):
        rest, action = rest[: -len("/metadata")], "metadata"
    parts = rest.split("/")
    if len(parts) == 1:
        return parts[0], None, action
    if len(parts) == 3 and parts[1] == "versions" and parts[2].isdigit():
        return parts[0], int(parts[2]), action
    raise RequestError(f"unknown path /v1/models/{rest}", 404)


def metadata(m: ServedModel) -> dict:
    """TF Serving's GetModelMetadata answer describing the three signatures."""
    s = m.image_size

    def tensor(dtype: str, dims: list[int], name: str) -> dict:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                 "unknown_rank": False}, "name": name}

    outputs = {"probabilities": tensor("DT_FLOAT", [-1, len(m.classes)], "probabilities"),
               "class_index": tensor("DT_INT32", [-1], "class_index"),
               "class_name": tensor("DT_STRING", [-1], "class_name")}
    sigs = {
        "serving_default": {"inputs": {"image": tensor("DT_FLOAT", [-1, s, s, 3], "image")}},
        "serving_uint8": {"inputs": {"image": tensor("DT_UINT8", [-1, s, s, 3], "image")}},
        "serving_bytes": {"inputs": {"image_bytes": tensor("DT_STRING", [-1], "image_bytes")}},
    }
    for sig in sigs.values():
        sig.update(outputs=outputs, method_name="tensorflow/serving/predict")
    return {"model_spec": {"name": m.name, "signature_name": "", "version": str(m.version)},
            "metadata": {"signature_def": {"signature_def": sigs}, "classes": m.classes, "format": m.format}}


def create_app(model: ServedModel, max_body_bytes: int, max_batch: int, window_ms: float):
    """The FastAPI application: status, metadata and predict under /v1/models/."""
    batcher = Batcher(model.runner, max_batch, window_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()  # graceful shutdown: uvicorn has stopped taking requests and drained them

    app = FastAPI(title="flowerpipe", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher

    def error(msg: str, status: int) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    def check(name: str, version: int | None) -> None:
        if name != model.name:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        if version is not None and version != model.version:
            raise RequestError(f"Servable not found for request: Specific({name}, {version})", 404)

    @app.get("/v1/models/{rest:path}")
    async def get(rest: str):
        try:
            name, version, action = _route(rest)
            check(name, version)
        except RequestError as exc:
            return error(str(exc), exc.status)
        if action == "metadata":
            return metadata(model)
        if action == "predict":
            return error("predict takes POST", 405)
        return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    @app.post("/v1/models/{rest:path}")
    async def post(rest: str, request: Request):
        try:
            name, version, action = _route(rest)
            check(name, version)
            if action != "predict":
                raise RequestError(f"POST is only for :predict, not {action}", 405)
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_body_bytes:
                raise RequestError(f"request body over the {max_body_bytes} byte limit", 413)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise RequestError(f"request body over the {max_body_bytes} byte limit", 413)
            images, _, columnar = parse_request(bytes(body), model.image_size, max_batch)
        except RequestError as exc:
            return error(str(exc), exc.status)
        try:
            probs = await batcher.predict(images)
        except Exception as exc:
            log.exception("model call failed")
            return error(f"model call failed: {exc.__class__.__name__}", 500)
        return format_response(probs, model.classes, columnar)

    return app


def pick_format(requested: str, benchmark: dict, available: list[str]) -> str:
    """`serve.format`, or for 'auto' the float format with the lowest batch-1 CPU latency measured."""
    if requested != "auto":
        return requested
    best, best_ms = None, float("inf")
    from flowerpipe.formats.registry import FLOAT_FORMATS

    for name in FLOAT_FORMATS:
        cells = benchmark.get("results", {}).get(name, {}).get("cpu", {})
        if name not in available or not cells:
            continue
        smallest = cells[min(cells, key=lambda k: int(k[1:]))]  # keys are "b<batch size>"
        if smallest.get("status") == "ok" and smallest["latency_ms_median"] < best_ms:
            best, best_ms = name, smallest["latency_ms_median"]
    if best:
        return best
    fallback = [n for n in FLOAT_FORMATS if n in available]
    if not fallback:
        raise RequestError("no float model format is built yet (run dvc repro)", 503)
    return fallback[0]


def serve(p, host: str | None = None, port: int | None = None, fmt: str | None = None) -> None:
    """Load the chosen format and run uvicorn until SIGINT/SIGTERM (graceful shutdown)."""
    import uvicorn

    from flowerpipe.data.tfrecord import Manifest
    from flowerpipe.formats.registry import FLOAT_FORMATS, built, find, load
    from flowerpipe.jsonio import read_json

    bench = read_json(Path(p.paths.reports) / "benchmark.json", {}) or {}
    name = pick_format(fmt or p.serve.format, bench, built(p, FLOAT_FORMATS))
    runner = load(find(p, name), "cpu", p.serve.threads)
    model = ServedModel(p.model.name, p.export.version, runner, Manifest.read(p.paths.tfrecords).classes,
                        p.model.image_size, name)
    app = create_app(model, p.serve.max_body_mb << 20, p.serve.max_batch, p.serve.batch_window_ms)
    host = host or p.serve.host
    port = p.serve.port if port is None else port
    print(f"serving {model.name} v{model.version} ({name}) on http://{host}:{port}/v1/models/{model.name}",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)


# ---------------------------------------------------------------- client


def encode_file(path: Path) -> dict:
    """{"b64": ...} for an image file (sent as it is: the server decodes and resizes)."""
    return {"b64": base64.b64encode(Path(path).read_bytes()).decode()}


def to_png_b64(image: np.ndarray) -> dict:
    """{"b64": ...} of an RGB array as lossless PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return {"b64": base64.b64encode(buf.getvalue()).decode()}


def client_predict(url: str, model: str, files: list[Path], timeout: float = 60.0) -> list[dict]:
    """Send image files to any TF Serving-compatible REST server (serving_bytes signature); return predictions."""
    import httpx

    body = {"signature_name": "serving_bytes", "instances": [encode_file(f) for f in files]}
    try:
        r = httpx.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise RequestError(f"cannot reach {url}: {exc}", 503) from None
    if r.status_code != 200:
        try:
            msg = r.json().get("error", r.text)
        except ValueError:
            msg = r.text
        raise RequestError(f"server answered {r.status_code}: {msg}", r.status_code)
    return r.json()["predictions"]
