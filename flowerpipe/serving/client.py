"""A client for any TF Serving REST or KServe V2 server: image files in, predictions out."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from flowerpipe.serving.errors import RequestError


def encode_file(path: Path) -> dict:
    """{"b64": ...} for an image file (sent as it is: the server decodes and resizes)."""
    return {"b64": base64.b64encode(Path(path).read_bytes()).decode()}


def to_png_b64(image: np.ndarray) -> dict:
    """{"b64": ...} of an RGB array as lossless PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return {"b64": base64.b64encode(buf.getvalue()).decode()}


def _post(url: str, body: dict, timeout: float) -> dict:
    import httpx

    try:
        r = httpx.post(url, json=body, timeout=timeout)
    except httpx.TimeoutException:
        raise RequestError(f"no answer from {url} within {timeout:g} s", 504) from None
    except httpx.RemoteProtocolError as exc:
        raise RequestError(f"{url} broke off its answer: {exc}", 502) from None
    except httpx.HTTPError as exc:
        raise RequestError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}", 503) from None
    try:
        answer = r.json()
    except ValueError:
        raise RequestError(f"server answered {r.status_code} with a body that is not JSON: {r.text[:200]!r}",
                           r.status_code if r.status_code >= 400 else 502) from None
    if r.status_code != 200:
        msg = answer.get("error", r.text[:200]) if isinstance(answer, dict) else r.text[:200]
        raise RequestError(f"server answered {r.status_code}: {msg}", r.status_code)
    if not isinstance(answer, dict):
        raise RequestError(f"server answered a JSON {type(answer).__name__}, not an object", 502)
    return answer


def server_classes(url: str, model: str, protocol: str = "tfs", timeout: float = 10.0) -> list[str] | None:
    """The class names a flowerpipe server lists in its model metadata (None from servers that list none)."""
    import httpx

    base = url.rstrip("/")
    path = f"{base}/v2/models/{model}" if protocol == "v2" else f"{base}/v1/models/{model}/metadata"
    try:
        meta = httpx.get(path, timeout=timeout).json()
        classes = meta["parameters" if protocol == "v2" else "metadata"]["classes"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None


def checked(probabilities: list, names: list, n: int) -> list[dict]:
    """A server's answer for n images as one {"probabilities", "class_name"} each, or one line saying what is wrong."""
    try:
        probs = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError("server answered 200 with probabilities that are not lists of numbers", 502) from None
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] == 0:
        raise RequestError(f"server answered 200 with probabilities of shape {list(probs.shape)} for {n} image(s)",
                           502)
    if not np.isfinite(probs).all():
        raise RequestError("server answered 200 with probabilities that are not finite (NaN or infinity)", 502)
    return [{"probabilities": p.tolist(), "class_name": name if isinstance(name, str) else None}
            for p, name in zip(probs, names, strict=True)]


def client_predict(url: str, model: str, files: list[Path], timeout: float = 60.0,
                   protocol: str = "tfs") -> list[dict]:
    """Send image files (serving_bytes / image_bytes); one {"probabilities", "class_name"} per file."""
    base = url.rstrip("/")
    if protocol == "v2":
        body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)],
                            "data": [encode_file(f)["b64"] for f in files]}]}
        answer = _post(f"{base}/v2/models/{model}/infer", body, timeout)
        try:
            outs = {o["name"]: o for o in answer["outputs"]}
            probs = np.asarray(outs["probabilities"]["data"], np.float64).reshape(outs["probabilities"]["shape"])
            names = outs.get("class_name", {}).get("data") or [None] * len(files)
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"server answered 200 without a V2 'probabilities' output ({exc!r})", 502) from None
        if not isinstance(names, list) or len(names) != len(files):
            names = [None] * len(files)
        return checked(probs, names, len(files))
    body = {"signature_name": "serving_bytes", "instances": [encode_file(f) for f in files]}
    predictions = _post(f"{base}/v1/models/{model}:predict", body, timeout).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(files):
        raise RequestError(f"server answered 200 with {type(predictions).__name__} predictions for {len(files)} "
                           "images", 502)
    # A model with one output answers bare probability lists; this one answers objects with named outputs.
    if not all(isinstance(p, list) or (isinstance(p, dict) and "probabilities" in p) for p in predictions):
        raise RequestError("server answered 200 with predictions that are neither probability lists nor objects "
                           "with 'probabilities'", 502)
    return checked([p["probabilities"] if isinstance(p, dict) else p for p in predictions],
                    [p.get("class_name") if isinstance(p, dict) else None for p in predictions], len(files))
