"""The KServe V2 / Open Inference Protocol (REST) for this model, with the binary tensor data extension."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from flowerpipe.formats.registry import platform
from flowerpipe.serving.decode import b64_bytes, decode_all
from flowerpipe.serving.errors import RequestError, json_object

HEADER = "Inference-Header-Content-Length"  # JSON length when binary tensors follow it in the body
EXTENSIONS = ["binary_tensor_data"]
PIXEL_TYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}  # little-endian, as the protocol sends them
OUTPUTS = ("probabilities", "class_index", "class_name")


@dataclass
class Infer:
    """A parsed inference request: the images, the request id, and which outputs to send how."""

    images: np.ndarray
    id: str | None
    outputs: dict[str, bool] = field(default_factory=dict)  # name -> as binary


def model_metadata(name: str, versions: list[int], classes: list[str], size: int, fmt: str) -> dict:
    """The model metadata answer: both inputs (pixels or encoded images) and the three outputs."""
    return {"name": name, "versions": [str(v) for v in versions], "platform": platform(fmt),
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, size, size, 3]},
                       {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
                        {"name": "class_index", "datatype": "INT32", "shape": [-1]},
                        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"classes": classes, "format": fmt}}


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(f"{HEADER} must be a byte count within the body, got {header_length!r}")
        json_part, binary = body[: int(header_length)], body[int(header_length):]
    return json_object(json_part, "'inputs'"), binary


def bytes_elements(raw: bytes, count: int, where: str) -> list[bytes]:
    """BYTES tensor elements from binary data: each a 4-byte little-endian length, then the bytes."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise RequestError(f"{where}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise RequestError(f"{where}: BYTES element of {n} bytes runs past the tensor's data")
        items.append(raw[at + 4: at + 4 + n])
        at += 4 + n
    if len(items) != count:
        raise RequestError(f"{where}: shape says {count} elements, data holds {len(items)}")
    return items


def bytes_blob(items: list[str] | list[bytes]) -> bytes:
    """A BYTES tensor's binary form: each element's 4-byte little-endian length, then its bytes (str as UTF-8)."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() if isinstance(s, str) else s for s in items))


def parse_infer(body: bytes, header_length: str | None, size: int, max_batch: int) -> Infer:
    """An inference request (JSON, or JSON then binary tensors) as images; runs in the decode pool."""
    req, binary = _split(body, header_length)
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError("'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)")
    t = inputs[0]
    name, dtype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(f"input {name!r}: shape must be a list of non-negative integers")
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"input {name!r}: parameters must be an object")
    nbin = params.get("binary_data_size")
    if nbin is not None:
        if not isinstance(nbin, int) or isinstance(nbin, bool) or nbin != len(binary):
            raise RequestError(f"input {name!r}: binary_data_size {nbin!r} but {len(binary)} bytes follow the JSON")
        if "data" in t:  # (gRPC's twin: contents and raw_input_contents both given)
            raise RequestError(f"input {name!r}: give 'data' or binary_data_size, not both")
    elif binary:
        raise RequestError(f"{len(binary)} bytes follow the JSON but no input declares binary_data_size")
    elif "data" not in t:
        raise RequestError(f"input {name!r}: no 'data'")
    n = shape[0] if shape else 0
    if not 1 <= n <= max_batch:
        raise RequestError(f"input {name!r}: batch of {n} images; this server takes 1 to {max_batch}")
    if name == "image":
        images = pixel_tensor(dtype, shape, size, binary if nbin is not None else None, t.get("data"))
    elif name == "image_bytes":
        if dtype != "BYTES" or len(shape) != 1:
            raise RequestError(f"input 'image_bytes' must be BYTES of shape [N], got {dtype} {shape}")
        if nbin is not None:
            items = bytes_elements(binary, n, "input 'image_bytes'")
        else:
            data = t["data"]
            if not isinstance(data, list) or len(data) != n:
                raise RequestError(f"input 'image_bytes': 'data' must list {n} base64 strings")
            items = [b64_bytes(d, f"image_bytes[{i}]") for i, d in enumerate(data)]
        images = decode_all(items, size, "image_bytes")
    else:
        raise RequestError(f"unknown input {name!r}; this model takes 'image' (FP32 or UINT8 [N, {size}, {size}, 3])"
                           " or 'image_bytes' (BYTES [N], encoded JPEG/PNG)")
    return Infer(images, _request_id(req), _requested_outputs(req))


def pixel_tensor(dtype: object, shape: list[int], size: int, binary: bytes | None, data: object) -> np.ndarray:
    """The 'image' input as float32 pixels: from raw little-endian bytes, or from numbers (flat or nested)."""
    if dtype not in PIXEL_TYPES:
        raise RequestError(f"input 'image': datatype must be FP32 or UINT8, got {dtype!r}")
    if shape[1:] != [size, size, 3]:
        raise RequestError(f"input 'image': shape must be [N, {size}, {size}, 3], got {shape}")
    count = math.prod(shape)
    np_type = PIXEL_TYPES[dtype]
    if binary is not None:
        if len(binary) != count * np_type.itemsize:
            raise RequestError(f"input 'image': {len(binary)} bytes for {count} {dtype} values")
        arr = np.frombuffer(binary, np_type)
    else:
        try:
            arr = np.asarray(data, dtype=np.float64).ravel()
        except (ValueError, TypeError):
            raise RequestError("input 'image': 'data' must be numbers (flat or nested, row-major)") from None
        if arr.size != count:
            raise RequestError(f"input 'image': shape {shape} needs {count} values, 'data' has {arr.size}")
        if dtype == "UINT8" and ((arr < 0) | (arr > 255) | (arr != np.floor(arr))).any():
            raise RequestError("input 'image': UINT8 values must be integers 0-255")
    arr = arr.astype(np.float32).reshape(shape)
    if dtype == "FP32" and not np.isfinite(arr).all():  # (UINT8 values are integers 0-255)
        raise RequestError("input 'image': values must be finite")
    return arr


def _request_id(req: dict) -> str | None:
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError("'id' must be a string")
    return rid


def _requested_outputs(req: dict) -> dict[str, bool]:
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    all_binary = params.get("binary_data_output") is True
    asked = req.get("outputs")
    if asked is None:
        return dict.fromkeys(OUTPUTS, all_binary)
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    out = {}
    for o in asked:
        if o["name"] not in OUTPUTS:
            raise RequestError(f"unknown output {o['name']!r}; this model has {list(OUTPUTS)}")
        out[o["name"]] = (o.get("parameters") or {}).get("binary_data", all_binary) is True
    return out


def infer_response(name: str, version: int, req: Infer, probs: np.ndarray, classes: list[str]) -> tuple[bytes, dict]:
    """(body, headers): JSON only, or JSON then the binary outputs with the header giving the JSON length."""
    index = probs.argmax(axis=1).astype(np.int32)
    tensors = {"probabilities": ("FP32", list(probs.shape), probs.astype("<f4")),
               "class_index": ("INT32", [len(index)], index.astype("<i4")),
               "class_name": ("BYTES", [len(index)], [classes[i] for i in index])}
    outputs, blobs = [], []
    for out_name, binary in req.outputs.items():
        dtype, shape, value = tensors[out_name]
        entry = {"name": out_name, "datatype": dtype, "shape": shape}
        if binary:
            blob = bytes_blob(value) if dtype == "BYTES" else value.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value if dtype == "BYTES" else value.ravel().tolist()
        outputs.append(entry)
    answer = {"model_name": name, "model_version": str(version), "outputs": outputs}
    if req.id is not None:
        answer["id"] = req.id
    head = json.dumps(answer).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(head))}
