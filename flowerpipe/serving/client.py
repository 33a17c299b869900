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


def client_predict(url: str, model: str, files: list[Path], timeout: float = 60.0,
                   protocol: str = "tfs") -> list[dict]:
    """Send image files (serving_bytes / image_bytes); one {"probabilities", "class_name", ...} per file."""
    base = url.rstrip("/")
    if protocol == "v2":
        body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)],
                            "data": [encode_file(f)["b64"] for f in files]}]}
        answer = _post(f"{base}/v2/models/{model}/infer", body, timeout)
        try:
            outs = {o["name"]: o for o in answer["outputs"]}
            probs = np.asarray(outs["probabilities"]["data"], np.float32).reshape(outs["probabilities"]["shape"])
            names = outs.get("class_name", {}).get("data") or [None] * len(files)
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"server answered 200 without a V2 'probabilities' output ({exc!r})", 502) from None
        return [{"probabilities": p.tolist(), "class_name": n} for p, n in zip(probs, names, strict=True)]
    body = {"signature_name": "serving_bytes", "instances": [encode_file(f) for f in files]}
    predictions = _post(f"{base}/v1/models/{model}:predict", body, timeout).get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(files):
        raise RequestError(f"server answered 200 with {type(predictions).__name__} predictions for {len(files)} "
                           "images", 502)
    # A model with one output answers bare probability lists; this one answers objects with named outputs.
    return [p if isinstance(p, dict) else {"probabilities": p} for p in predictions]
