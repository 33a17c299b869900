"""TensorFlow's TensorProto and KServe V2's gRPC tensors to and from numpy, checked as the REST forms are."""

from __future__ import annotations

import math

import numpy as np

from flowerpipe.serving import protos, tfs, v2
from flowerpipe.serving.decode import decode_all
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.protos import DT_FLOAT, DT_INT32, DT_STRING, DT_UINT8, message

NUMERIC = {dtype: (np.dtype(np_type), field) for dtype, (np_type, field) in {
    1: ("<f4", "float_val"), 2: ("<f8", "double_val"), 3: ("<i4", "int_val"), 4: ("u1", "int_val"),
    5: ("<i2", "int_val"), 6: ("i1", "int_val"), 9: ("<i8", "int64_val"), 17: ("<u2", "int_val")}.items()}
SIGNATURE_INPUTS = {"serving_default": ("image", DT_FLOAT), "serving_uint8": ("image", DT_UINT8),
                    "serving_bytes": ("image_bytes", DT_STRING)}


def dtype_name(dtype: int) -> str:
    """'DT_FLOAT' for 1, as TensorFlow names its types."""
    value = protos.POOL.FindEnumTypeByName("tensorflow.DataType").values_by_number.get(dtype)
    return value.name if value else f"dtype {dtype}"


def tensor_array(t, where: str, max_values: int) -> np.ndarray:
    """A TensorProto as numpy (tensor_content or the typed *_val field; one value fills the shape, as in TF), of at
    most max_values values: a shape is checked before anything is made of that size."""
    if t.tensor_shape.unknown_rank:
        raise RequestError(f"{where}: the tensor's shape must be known")
    shape = [d.size for d in t.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise RequestError(f"{where}: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count > max_values:
        raise RequestError(f"{where}: shape {shape} holds {count} values; this server takes at most {max_values}")
    if t.dtype == DT_STRING:
        values: object = list(t.string_val)
        size = len(values)
    elif t.dtype in NUMERIC:
        np_type, field = NUMERIC[t.dtype]
        if content := t.tensor_content:
            if len(content) != count * np_type.itemsize:
                raise RequestError(f"{where}: tensor_content holds {len(content)} bytes; shape {shape} of "
                                   f"{dtype_name(t.dtype)} needs {count * np_type.itemsize}")
            return np.frombuffer(content, np_type).reshape(shape)
        wide = np.asarray(getattr(t, field), dtype=np.float64 if np_type.kind == "f" else np.int64)
        if np_type.kind in "iu" and wide.size and (
                (wide < np.iinfo(np_type).min) | (wide > np.iinfo(np_type).max)).any():
            raise RequestError(f"{where}: values out of range for {dtype_name(t.dtype)}")
        values, size = wide.astype(np_type), wide.size
    else:
        raise RequestError(f"{where}: {dtype_name(t.dtype)} tensors are not supported")
    if size == 1 and count != 1:  # (np.full would pass bytes through numpy's bytes_, which drops trailing NULs)
        values = [values[0]] * count if t.dtype == DT_STRING else np.full(count, values[0], dtype=values.dtype)
    elif size != count:
        raise RequestError(f"{where}: shape {shape} needs {count} values, the tensor holds {size}")
    return np.asarray(values, dtype=object if t.dtype == DT_STRING else None).reshape(shape)


def fill_tensor(t, array: np.ndarray | list[str]) -> None:
    """Fill a TensorProto with probabilities (DT_FLOAT), class indexes (DT_INT32) or class names (DT_STRING)."""
    if isinstance(array, list):
        t.dtype = DT_STRING
        t.string_val.extend(s.encode() for s in array)
        t.tensor_shape.dim.add(size=len(array))
        return
    floats = array.dtype.kind == "f"
    t.dtype = DT_FLOAT if floats else DT_INT32
    t.tensor_content = array.astype("<f4" if floats else "<i4", copy=False).tobytes()
    for d in array.shape:
        t.tensor_shape.dim.add(size=d)


def tfs_images(inputs: dict, signature: str, size: int, max_batch: int) -> np.ndarray:
    """A PredictRequest's inputs as a (N, size, size, 3) float32 batch, checked as TF Serving checks them."""
    if signature not in SIGNATURE_INPUTS:
        raise RequestError(f"unknown signature_name {signature!r}; expected one of {list(SIGNATURE_INPUTS)}")
    name, dtype = SIGNATURE_INPUTS[signature]
    if set(inputs) != {name}:
        raise RequestError(f"input tensor alias not found in signature: {sorted(set(inputs) - {name}) or 'none given'}"
                           f"; {signature} takes exactly {{{name}}}")
    t = inputs[name]
    if t.dtype != dtype:
        raise RequestError(f"{signature} expects {name} as {dtype_name(dtype)} but {dtype_name(t.dtype)} is provided")
    arr = tensor_array(t, f"input {name!r}", max_batch * (1 if dtype == DT_STRING else size * size * 3))
    if arr.ndim < 1 or not 1 <= len(arr) <= max_batch:
        raise RequestError(f"input {name!r}: batch of {len(arr) if arr.ndim else 0} images; this server takes 1 to "
                           f"{max_batch}")
    if dtype == DT_STRING:
        if arr.ndim != 1:
            raise RequestError(f"input {name!r}: encoded images must be a vector [N], got shape {list(arr.shape)}")
        return decode_all(list(arr), size, name)
    return tfs.pixels(arr, size, signature)


# ---------------------------------------------------------------- KServe V2 / Open Inference Protocol


def v2_images(req, size: int, max_batch: int) -> tuple[np.ndarray, list[str]]:
    """A ModelInferRequest as images and the outputs to send (all three unless it names some)."""
    if len(req.inputs) != 1:
        raise RequestError("'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)")
    t = req.inputs[0]
    shape = list(t.shape)
    if any(d < 0 for d in shape):
        raise RequestError(f"input {t.name!r}: shape must be non-negative integers, got {shape}")
    raw = None
    if req.raw_input_contents:
        if len(req.raw_input_contents) != len(req.inputs):
            raise RequestError(f"raw_input_contents has {len(req.raw_input_contents)} entries for "
                               f"{len(req.inputs)} input")
        if t.HasField("contents") and t.contents.ByteSize():
            raise RequestError(f"input {t.name!r}: give contents or raw_input_contents, not both")
        raw = req.raw_input_contents[0]
    n = shape[0] if shape else 0
    if not 1 <= n <= max_batch:
        raise RequestError(f"input {t.name!r}: batch of {n} images; this server takes 1 to {max_batch}")
    if t.name == "image":
        typed = t.contents.uint_contents if t.datatype == "UINT8" else t.contents.fp32_contents
        images = v2.pixel_tensor(t.datatype, shape, size, raw, typed)
    elif t.name == "image_bytes":
        if t.datatype != "BYTES" or len(shape) != 1:
            raise RequestError(f"input 'image_bytes' must be BYTES of shape [N], got {t.datatype} {shape}")
        items = (v2.bytes_elements(raw, n, "input 'image_bytes'") if raw is not None
                 else list(t.contents.bytes_contents))
        if len(items) != n:
            raise RequestError(f"input 'image_bytes': shape says {n} elements, contents hold {len(items)}")
        images = decode_all(items, size, "image_bytes")
    else:
        raise RequestError(f"unknown input {t.name!r}; this model takes 'image' (FP32 or UINT8 [N, {size}, {size}, 3])"
                           " or 'image_bytes' (BYTES [N], encoded JPEG/PNG)")
    outputs = [o.name for o in req.outputs] or list(v2.OUTPUTS)
    for name in outputs:
        if name not in v2.OUTPUTS:
            raise RequestError(f"unknown output {name!r}; this model has {list(v2.OUTPUTS)}")
    return images, outputs


def v2_response(name: str, version: int, request_id: str, outputs: list[str], probs: np.ndarray,
                classes: list[str]):
    """A ModelInferResponse with every output in raw_output_contents (as Triton answers)."""
    index = probs.argmax(axis=1).astype(np.int32)
    tensors = {"probabilities": ("FP32", list(probs.shape), probs.astype("<f4").tobytes()),
               "class_index": ("INT32", [len(index)], index.astype("<i4").tobytes()),
               "class_name": ("BYTES", [len(index)], v2.bytes_blob([classes[i] for i in index]))}
    resp = message("inference.ModelInferResponse")(model_name=name, model_version=str(version), id=request_id)
    for out in outputs:
        dtype, shape, raw = tensors[out]
        resp.outputs.add(name=out, datatype=dtype, shape=shape)
        resp.raw_output_contents.append(raw)
    return resp
