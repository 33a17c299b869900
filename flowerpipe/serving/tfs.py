"""TensorFlow Serving's REST API for this model: paths, predict requests and answers, status and metadata."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from flowerpipe.serving.decode import b64_bytes, decode_image
from flowerpipe.serving.errors import RequestError, json_object
from flowerpipe.serving.repository import requested_version

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")
INPUTS = ("image", "image_bytes")  # pixels, encoded images (a named input of a predict request is one of them)
PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                  r"(?P<action>/metadata|:predict|:classify|:regress)?$")


@dataclass(frozen=True)
class Route:
    """What a /v1/models/... path asks for."""

    name: str
    version: int | None
    label: str | None
    action: str  # status, metadata, predict, classify or regress


def route(rest: str) -> Route:
    """Parse 'name[/versions/N | /labels/L][/metadata | :predict | :classify | :regress]'."""
    m = PATH.match(rest)
    if not m:
        raise RequestError(f"Malformed request: unknown path /v1/models/{rest}", 404)
    try:
        version = requested_version(m["version"])
    except RequestError as exc:
        raise RequestError(f"Malformed request: {exc}", 400) from None
    action = (m["action"] or "status").lstrip("/:")
    return Route(m["name"], version, m["label"], action)


def pixels(values: object, size: int, signature: str) -> np.ndarray:
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
    if signature == "serving_uint8" and arr.dtype != np.uint8 and (arr.dtype.kind == "f" or arr.min() < 0
                                                                   or arr.max() > 255):
        raise RequestError("wrong dtype: serving_uint8 takes integers 0-255")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RequestError("wrong values: pixel values must be finite numbers")
    return arr.astype(np.float32)


def _named(one: dict) -> object:
    """The value of a one-key {name: value}, the name one of the model's inputs (as gRPC checks its map's keys)."""
    ((name, value),) = one.items()
    if name not in INPUTS:
        raise RequestError(f"input tensor alias not found in signature: [{name!r}]; this model takes "
                           f"{' or '.join(map(repr, INPUTS))}")
    return value


def parse_predict(body: bytes, size: int, max_batch: int) -> tuple[np.ndarray, bool]:
    """(images, columnar) from a predict request body; runs in the decode pool, never on the event loop."""
    req = json_object(body, "'instances' or 'inputs'")
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
        data = _named(data)
    if not isinstance(data, list) or not data:
        raise RequestError("no images: 'instances'/'inputs' must be a non-empty list")
    if len(data) > max_batch:
        raise RequestError(f"too many images in one request: {len(data)} > {max_batch}")
    if not columnar:
        data = [_named(d) if isinstance(d, dict) and len(d) == 1 and "b64" not in d else d for d in data]
    if all(isinstance(d, dict) for d in data):
        for i, d in enumerate(data):
            if set(d) != {"b64"}:
                raise RequestError(f"instance {i}: expected {{\"b64\": \"<base64 JPEG or PNG>\"}}")
        images = [decode_image(b64_bytes(d["b64"], f"instance {i}"), size, f"instance {i}")
                  for i, d in enumerate(data)]
        return np.stack(images), columnar
    if signature == "serving_bytes" or any(isinstance(d, dict) for d in data):
        raise RequestError("serving_bytes takes only {\"b64\": ...} images")
    return pixels(data, size, signature), columnar


def predict_response(probs: np.ndarray, classes: list[str], columnar: bool) -> bytes:
    """TF Serving's row ("predictions") or columnar ("outputs") answer for the three outputs, as JSON bytes."""
    index = probs.argmax(axis=1)
    names = [classes[i] for i in index]
    if columnar:
        out = {"outputs": {"probabilities": probs.tolist(), "class_index": index.tolist(), "class_name": names}}
    else:
        out = {"predictions": [{"probabilities": p, "class_index": int(i), "class_name": n}
                               for p, i, n in zip(probs.tolist(), index, names, strict=True)]}
    return json.dumps(out).encode()


def _tensor(dtype: str, dims: list[int], name: str) -> dict:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                             "unknown_rank": False}, "name": name}


def metadata(name: str, version: int, classes: list[str], size: int, fmt: str) -> dict:
    """TF Serving's GetModelMetadata answer describing the three signatures."""
    outputs = {"probabilities": _tensor("DT_FLOAT", [-1, len(classes)], "probabilities"),
               "class_index": _tensor("DT_INT32", [-1], "class_index"),
               "class_name": _tensor("DT_STRING", [-1], "class_name")}
    sigs = {
        "serving_default": {"inputs": {"image": _tensor("DT_FLOAT", [-1, size, size, 3], "image")}},
        "serving_uint8": {"inputs": {"image": _tensor("DT_UINT8", [-1, size, size, 3], "image")}},
        "serving_bytes": {"inputs": {"image_bytes": _tensor("DT_STRING", [-1], "image_bytes")}},
    }
    for sig in sigs.values():
        sig.update(outputs=outputs, method_name="tensorflow/serving/predict")
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": sigs}, "classes": classes, "format": fmt}}
