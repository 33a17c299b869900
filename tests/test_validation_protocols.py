"""Every check that refuses a bad request, on every protocol: one table, each row a bad request in its REST form
and its gRPC form (TF Serving's and KServe V2's), each refused with a 400 / INVALID_ARGUMENT that names the fault.

A row whose fault cannot be put in one protocol says why (JSON has no dtypes or byte lengths; a protobuf message
has no 'id' of the wrong type). The table runs twice: against the parse functions the servers call (fast, and
what `make mutation` runs), and over the wire against REST and gRPC served from one process.
"""

import base64
import json
import math
import struct

import grpc
import httpx
import numpy as np
import pytest
from test_serve import SIZE, write_version

from flowerpipe.serving import protos, tensors, tfs, v2
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.protos import DT_FLOAT, DT_STRING, DT_UINT8

MAX = 16  # the servers' max batch (tests/test_grpc.py Both, tests/test_serve.py serve)
N = SIZE * SIZE * 3  # values in one image
GREY = [[[100.0, 100.0, 100.0]] * SIZE] * SIZE  # one image, nested lists
NOT_AN_IMAGE = b"not an image"


def with_value(value: float) -> list:
    """One image of grey pixels whose first value is `value` (NaN, infinity, 300...)."""
    img = json.loads(json.dumps(GREY))
    img[0][0][0] = value
    return img


def with_int(value: int) -> list:
    """One image of integer pixels (100) whose first value is `value`: a JSON array of integers, as for uint8."""
    img = [[[100, 100, 100] for _ in range(SIZE)] for _ in range(SIZE)]
    img[0][0][0] = value
    return img


def flat(value: float) -> list[float]:
    return [value] + [100.0] * (N - 1)


# ---------------------------------------------------------------- request builders


def rest_tfs(body: dict | bytes) -> tuple[str, bytes, dict]:
    return "/v1/models/flowers:predict", body if isinstance(body, bytes) else json.dumps(body).encode(), {}


def rest_v2(inputs: list | bytes | None = None, binary: bytes | None = None, **extra) -> tuple[str, bytes, dict]:
    if isinstance(inputs, bytes):
        return "/v2/models/flowers/infer", inputs, {}
    head = json.dumps({**({"inputs": inputs} if inputs is not None else {}), **extra}).encode()
    if binary is None:
        return "/v2/models/flowers/infer", head, {}
    return "/v2/models/flowers/infer", head + binary, {v2.HEADER: str(len(head))}


def v2_tensor(name="image", datatype="FP32", shape=(1, SIZE, SIZE, 3), data=None, nbin=None) -> dict:
    t = {"name": name, "datatype": datatype, "shape": list(shape)}
    if data is not None:
        t["data"] = data
    if nbin is not None:
        t["parameters"] = {"binary_data_size": nbin}
    return t


def grpc_tfs(signature="", key="image", dtype=DT_FLOAT, shape=(1, SIZE, SIZE, 3), content=None, floats=None,
             ints=None, strings=None, outputs=()):
    req = protos.message("tensorflow.serving.PredictRequest")()
    req.model_spec.name, req.model_spec.signature_name = "flowers", signature
    req.output_filter.extend(outputs)
    t = req.inputs[key]
    t.dtype = dtype
    for d in shape:
        t.tensor_shape.dim.add(size=d)
    if content is not None:
        t.tensor_content = content
    t.float_val.extend(floats or [])
    t.int_val.extend(ints or [])
    t.string_val.extend(strings or [])
    if content is None and floats is None and ints is None and strings is None:
        t.tensor_content = np.full(shape, 100, "<f4").tobytes()
    return "Predict", req


def grpc_tfs_empty():
    req = protos.message("tensorflow.serving.PredictRequest")()
    req.model_spec.name = "flowers"
    return "Predict", req


def grpc_unknown_rank():
    method, req = grpc_tfs()
    req.inputs["image"].tensor_shape.unknown_rank = True
    return method, req


def grpc_v2(name="image", datatype="FP32", shape=(1, SIZE, SIZE, 3), raw=None, fp32=None, uints=None, strings=None,
            outputs=(), inputs=1, version=""):
    req = protos.message("inference.ModelInferRequest")(model_name="flowers", model_version=version)
    for _ in range(inputs):
        t = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        t.contents.fp32_contents.extend(fp32 or [])
        t.contents.uint_contents.extend(uints or [])
        t.contents.bytes_contents.extend(strings or [])
    req.raw_input_contents.extend(raw or [])
    for out in outputs:
        req.outputs.add(name=out)
    return "ModelInfer", req


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def f32(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# ---------------------------------------------------------------- the table

# (id, REST request or why none, gRPC request or why none, words in the REST error, words in the gRPC error)
NO_DTYPE = "JSON numbers carry no dtype"
TABLE = [
    # TF Serving: PredictRequest over gRPC, :predict over REST
    ("tfs unknown signature", rest_tfs({"signature_name": "classify", "instances": [GREY]}),
     grpc_tfs(signature="classify"), "unknown signature_name", "unknown signature_name"),
    ("tfs no images", rest_tfs({"instances": []}), grpc_tfs(shape=(0, SIZE, SIZE, 3), content=b""),
     "non-empty", "batch of 0 images"),
    ("tfs too many images", rest_tfs({"instances": [GREY] * (MAX + 1)}),
     grpc_tfs(shape=(MAX + 1, SIZE, SIZE, 3)), "too many images", "this server takes at most"),
    ("tfs wrong image shape", rest_tfs({"instances": [[[[1, 2, 3]] * 4] * 4]}),
     grpc_tfs(shape=(1, 4, 4, 3), content=f32([1] * 48)), "wrong shape", "wrong shape"),
    ("tfs nan pixel", rest_tfs({"instances": [with_value(math.nan)]}),
     grpc_tfs(content=f32(flat(math.nan))), "finite", "finite"),
    ("tfs infinite pixel", rest_tfs({"inputs": [with_value(math.inf)]}),
     grpc_tfs(floats=flat(-math.inf)), "finite", "finite"),
    ("tfs nan pixel in a named input", rest_tfs({"inputs": {"image": [with_value(math.nan)]}}),
     grpc_tfs(floats=flat(math.nan)), "finite", "finite"),
    ("tfs uint8 over 255", rest_tfs({"signature_name": "serving_uint8", "instances": [with_int(256)]}),
     grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, ints=[256] * N), "integers 0-255",
     "out of range for DT_UINT8"),
    ("tfs uint8 under 0", rest_tfs({"signature_name": "serving_uint8", "instances": [with_int(-1)]}),
     grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, ints=[-1] * N), "integers 0-255", "out of range for DT_UINT8"),
    ("tfs fractions for uint8", rest_tfs({"signature_name": "serving_uint8", "instances": [with_value(0.5)]}),
     grpc_tfs(signature="serving_uint8", dtype=DT_FLOAT), "integers 0-255", "expects image as DT_UINT8 but DT_FLOAT"),
    ("tfs strings for pixels", rest_tfs({"instances": [[[["a", "b", "c"]] * SIZE] * SIZE]}),
     grpc_tfs(dtype=DT_STRING, shape=(1,), strings=[b"a"]), "wrong dtype", "expects image as DT_FLOAT but DT_STRING"),
    ("tfs unknown input name", rest_tfs({"inputs": {"pixels": [GREY]}}), grpc_tfs(key="pixels"),
     "alias not found", "alias not found"),
    ("tfs unknown input name in a row", rest_tfs({"instances": [{"pixels": GREY}]}), grpc_tfs(key="pixels"),
     "alias not found", "alias not found"),
    ("tfs not an image", rest_tfs({"signature_name": "serving_bytes", "instances": [{"b64": b64(NOT_AN_IMAGE)}]}),
     grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(1,), strings=[NOT_AN_IMAGE]),
     "not a JPEG", "not a JPEG"),
    ("tfs pixels for serving_bytes", rest_tfs({"signature_name": "serving_bytes", "instances": [GREY]}),
     grpc_tfs(signature="serving_bytes", key="image_bytes"), "serving_bytes takes only",
     "expects image_bytes as DT_STRING but DT_FLOAT"),
    ("tfs encoded images not a vector", rest_tfs({"instances": [[{"b64": b64(NOT_AN_IMAGE)}]]}),
     grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(1, 1), strings=[NOT_AN_IMAGE]),
     "wrong shape", "must be a vector"),
    ("tfs bad base64", rest_tfs({"instances": [{"b64": "%%%"}]}), "gRPC carries encoded images as bytes",
     "not valid base64", None),
    ("tfs values fewer than the shape", NO_DTYPE + " and no shape apart from the nesting (ragged lists are the twin)",
     grpc_tfs(content=b"\0" * 10), None, "tensor_content holds 10 bytes"),
    ("tfs ragged images", rest_tfs({"instances": [[1, 2], [3]]}), grpc_tfs(floats=[1.0, 2.0, 3.0]),
     "wrong shape", "needs 192 values, the tensor holds 3"),
    ("tfs negative dimension", "a JSON list has no negative length", grpc_tfs(shape=(1, -SIZE, SIZE, 3), content=b""),
     None, "negative dimension"),
    ("tfs both instances and inputs", rest_tfs({"instances": [GREY], "inputs": [GREY]}),
     "a PredictRequest has one inputs map", "exactly one of", None),
    ("tfs malformed body", rest_tfs(b"{not json"), "a message that does not parse: test_grpc's raw bytes case",
     "malformed JSON", None),
    ("tfs body not an object", rest_tfs(b"[1]"), "a PredictRequest is always a message", "JSON object", None),
    ("tfs no input", rest_tfs({"inputs": {}}), grpc_tfs_empty(), "single input", "none given"),
    ("tfs a scalar", rest_tfs({"instances": 5}), grpc_tfs(shape=(), floats=[1.0]), "non-empty list",
     "batch of 0 images"),
    ("tfs too many encoded images", rest_tfs({"signature_name": "serving_bytes",
                                              "instances": [{"b64": b64(NOT_AN_IMAGE)}] * (MAX + 1)}),
     grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(MAX + 1,),
              strings=[NOT_AN_IMAGE] * (MAX + 1)), "too many images", "at most 16"),
    ("tfs too many small images", rest_tfs({"instances": [[[[1, 2, 3]] * 4] * 4] * (MAX + 1)}),
     grpc_tfs(shape=(MAX + 1, 4, 4, 3), content=f32([1] * 48 * (MAX + 1))), "too many images", "batch of 17 images"),
    ("tfs unknown rank", "the nesting of a JSON list is its shape", grpc_unknown_rank(), None, "must be known"),
    ("tfs b64 beside other keys", rest_tfs({"instances": [{"b64": b64(NOT_AN_IMAGE), "x": 1}]}),
     "a DT_STRING element is bytes, with no keys", "expected {\"b64\"", None),
    # KServe V2: ModelInferRequest over gRPC, /infer over REST
    ("v2 no input", rest_v2([]), grpc_v2(inputs=0), "exactly one tensor", "exactly one tensor"),
    ("v2 two inputs", rest_v2([v2_tensor(data=[0] * N)] * 2), grpc_v2(inputs=2, fp32=[0.0] * N),
     "exactly one tensor", "exactly one tensor"),
    ("v2 negative shape", rest_v2([v2_tensor(shape=(1, SIZE, -SIZE, 3), data=[0] * N)]),
     grpc_v2(shape=(1, SIZE, -SIZE, 3), fp32=[0.0] * N), "non-negative", "non-negative"),
    ("v2 scalar shape", rest_v2([v2_tensor(shape=(), data=[0])]), grpc_v2(shape=(), fp32=[0.0]),
     "batch of 0 images", "batch of 0 images"),
    ("v2 no images", rest_v2([v2_tensor(shape=(0, SIZE, SIZE, 3), data=[])]),
     grpc_v2(shape=(0, SIZE, SIZE, 3), raw=[b""]), "batch of 0 images", "batch of 0 images"),
    ("v2 too many images", rest_v2([v2_tensor(shape=(MAX + 1, SIZE, SIZE, 3), data=[0])]),
     grpc_v2(shape=(MAX + 1, SIZE, SIZE, 3), fp32=[0.0]), "batch of 17 images", "batch of 17 images"),
    ("v2 wrong datatype", rest_v2([v2_tensor(datatype="FP64", data=[0] * N)]),
     grpc_v2(datatype="FP64", raw=[b"\0" * N * 8]), "FP32 or UINT8", "FP32 or UINT8"),
    ("v2 wrong image shape", rest_v2([v2_tensor(shape=(1, 4, 4, 3), data=[0] * 48)]),
     grpc_v2(shape=(1, 4, 4, 3), fp32=[0.0] * 48), "shape must be [N, 8, 8, 3]", "shape must be [N, 8, 8, 3]"),
    ("v2 fewer values than the shape", rest_v2([v2_tensor(data=[0] * (N - 1))]), grpc_v2(fp32=[0.0] * (N - 1)),
     "needs 192 values", "needs 192 values"),
    ("v2 no data", rest_v2([v2_tensor()]), grpc_v2(), "no 'data'", "needs 192 values, 'data' has 0"),
    ("v2 raw bytes short", rest_v2([v2_tensor(nbin=100)], binary=b"\0" * 100), grpc_v2(raw=[b"\0" * 100]),
     "100 bytes for 192 FP32 values", "100 bytes for 192 FP32 values"),
    ("v2 nan pixel", rest_v2([v2_tensor(data=flat(math.nan))]), grpc_v2(fp32=flat(math.nan)), "finite", "finite"),
    ("v2 infinite raw pixel", rest_v2([v2_tensor(nbin=N * 4)], binary=f32(flat(math.inf))),
     grpc_v2(raw=[f32(flat(-math.inf))]), "finite", "finite"),
    ("v2 uint8 over 255", rest_v2([v2_tensor(datatype="UINT8", data=flat(300))]),
     grpc_v2(datatype="UINT8", uints=[300] * N), "0-255", "0-255"),
    ("v2 uint8 256", rest_v2([v2_tensor(datatype="UINT8", data=[256] + [0] * (N - 1))]),
     grpc_v2(datatype="UINT8", uints=[256] + [0] * (N - 1)), "0-255", "0-255"),
    ("v2 data not numbers", rest_v2([v2_tensor(data=["a"] * N)]), "fp32_contents holds numbers only",
     "must be numbers", None),
    ("v2 uint8 fraction", rest_v2([v2_tensor(datatype="UINT8", data=flat(0.5))]),
     "uint_contents holds integers only", "0-255", None),
    ("v2 unknown input", rest_v2([v2_tensor(name="x", data=[0] * N)]), grpc_v2(name="x", fp32=[0.0] * N),
     "unknown input 'x'", "unknown input 'x'"),
    ("v2 image_bytes not BYTES", rest_v2([v2_tensor(name="image_bytes", shape=(1,), data=[0])]),
     grpc_v2(name="image_bytes", shape=(1,), fp32=[0.0]), "must be BYTES of shape [N]", "must be BYTES of shape [N]"),
    ("v2 image_bytes of two dimensions", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1, 1),
                                                            data=[b64(NOT_AN_IMAGE)])]),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(1, 1), strings=[NOT_AN_IMAGE]),
     "must be BYTES of shape [N]", "must be BYTES of shape [N]"),
    ("v2 fewer encoded images than the shape", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(2,),
                                                                  data=[b64(NOT_AN_IMAGE)])]),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(2,), strings=[NOT_AN_IMAGE]),
     "'data' must list 2", "shape says 2 elements"),
    ("v2 BYTES element past the end", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1,), nbin=7)],
                                              binary=b"\xff\0\0\0abc"),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(1,), raw=[b"\xff\0\0\0abc"]), "runs past", "runs past"),
    ("v2 BYTES length cut short", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1,), nbin=2)],
                                          binary=b"\x01\x00"),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(1,), raw=[b"\x01\x00"]), "truncated", "truncated"),
    ("v2 BYTES length of 2**32 - 1", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1,), nbin=5)],
                                             binary=b"\xff\xff\xff\xffa"),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(1,), raw=[b"\xff\xff\xff\xffa"]), "4294967295 bytes",
     "4294967295 bytes"),
    ("v2 not an image", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1,),
                                           data=[b64(NOT_AN_IMAGE)])]),
     grpc_v2(name="image_bytes", datatype="BYTES", shape=(1,), raw=[struct.pack("<I", 12) + NOT_AN_IMAGE]),
     "not a JPEG", "not a JPEG"),
    ("v2 unknown output", rest_v2([v2_tensor(data=[0] * N)], outputs=[{"name": "logits"}]),
     grpc_v2(fp32=[0.0] * N, outputs=["logits"]), "unknown output 'logits'", "unknown output 'logits'"),
    ("v2 data and binary both", rest_v2([{**v2_tensor(nbin=N * 4), "data": [0] * N}], binary=f32([0] * N)),
     grpc_v2(fp32=[0.0] * N, raw=[f32([0] * N)]), "not both", "not both"),
    ("v2 binary data nobody declared", rest_v2([v2_tensor(data=[0] * N)], binary=b"\0" * 8),
     grpc_v2(fp32=[0.0] * N, raw=[b"", b""]), "no input declares binary_data_size", "raw_input_contents has 2"),
    ("v2 binary size that lies", rest_v2([v2_tensor(nbin=N * 4 + 1)], binary=f32([0] * N)),
     "a raw_input_contents entry is its tensor's bytes, no declared size", "binary_data_size", None),
    ("v2 binary size not a number", rest_v2([v2_tensor(nbin=True)], binary=b"\0"),
     "a raw_input_contents entry is its tensor's bytes, no declared size", "binary_data_size True", None),
    ("v2 body not an object", rest_v2(b"[]"), "a ModelInferRequest is always a message", "JSON object with 'inputs'",
     None),
    ("v2 header length past the body", ("/v2/models/flowers/infer", b"{}", {v2.HEADER: "99"}),
     "a protobuf message has no JSON header", "must be a byte count", None),
    ("v2 bad base64", rest_v2([v2_tensor(name="image_bytes", datatype="BYTES", shape=(1,), data=["%%%"])]),
     "gRPC carries encoded images as bytes", "not valid base64", None),
    ("v2 id not a string", rest_v2([v2_tensor(data=[0] * N)], id=7), "a ModelInferRequest's id is a string",
     "'id' must be a string", None),
    ("v2 outputs not a list of names", rest_v2([v2_tensor(data=[0] * N)], outputs=["probabilities"]),
     "a ModelInferRequest's outputs are messages with a name", "'outputs' must be a list", None),
    ("v2 parameters not an object", rest_v2([v2_tensor(data=[0] * N)], parameters=[1]),
     "a ModelInferRequest's parameters are a typed map", "'parameters' must be an object", None),
    ("v2 tensor parameters not an object", rest_v2([{**v2_tensor(data=[0] * N), "parameters": [1]}]),
     "an InferInputTensor's parameters are a typed map", "parameters must be an object", None),
]
IDS = [row[0] for row in TABLE]

# The whole one-line message each protocol answers with, what a client reads: (REST, gRPC); None where no form.
MESSAGES = {
    'tfs unknown signature': (
        ("unknown signature_name 'classify'; expected one of ['serving_default', 'serving_uint8', "
         "'serving_bytes']"),
        ("unknown signature_name 'classify'; expected one of ['serving_default', 'serving_uint8', "
         "'serving_bytes']")),
    'tfs no images': (
        "no images: 'instances'/'inputs' must be a non-empty list",
        "input 'image': batch of 0 images; this server takes 1 to 16"),
    'tfs too many images': (
        'too many images in one request: 17 > 16',
        "input 'image': shape [17, 8, 8, 3] holds 3264 values; this server takes at most 3072"),
    'tfs wrong image shape': (
        'wrong shape: expected [N, 8, 8, 3], got [1, 4, 4, 3]',
        'wrong shape: expected [N, 8, 8, 3], got [1, 4, 4, 3]'),
    'tfs nan pixel': (
        'wrong values: pixel values must be finite numbers',
        'wrong values: pixel values must be finite numbers'),
    'tfs infinite pixel': (
        'wrong values: pixel values must be finite numbers',
        'wrong values: pixel values must be finite numbers'),
    'tfs nan pixel in a named input': (
        'wrong values: pixel values must be finite numbers',
        'wrong values: pixel values must be finite numbers'),
    'tfs uint8 over 255': (
        'wrong dtype: serving_uint8 takes integers 0-255',
        "input 'image': values out of range for DT_UINT8"),
    'tfs uint8 under 0': (
        'wrong dtype: serving_uint8 takes integers 0-255',
        "input 'image': values out of range for DT_UINT8"),
    'tfs fractions for uint8': (
        'wrong dtype: serving_uint8 takes integers 0-255',
        'serving_uint8 expects image as DT_UINT8 but DT_FLOAT is provided'),
    'tfs strings for pixels': (
        "wrong dtype: pixel values must be numbers (0-255), got 'U' values",
        'serving_default expects image as DT_FLOAT but DT_STRING is provided'),
    'tfs unknown input name': (
        "input tensor alias not found in signature: ['pixels']; this model takes 'image' or 'image_bytes'",
        "input tensor alias not found in signature: ['pixels']; serving_default takes exactly {image}"),
    'tfs unknown input name in a row': (
        "input tensor alias not found in signature: ['pixels']; this model takes 'image' or 'image_bytes'",
        "input tensor alias not found in signature: ['pixels']; serving_default takes exactly {image}"),
    'tfs not an image': (
        'instance 0: not a JPEG, PNG, GIF, BMP or WebP image',
        'image_bytes 0: not a JPEG, PNG, GIF, BMP or WebP image'),
    'tfs pixels for serving_bytes': (
        'serving_bytes takes only {"b64": ...} images',
        'serving_bytes expects image_bytes as DT_STRING but DT_FLOAT is provided'),
    'tfs encoded images not a vector': (
        'wrong shape or dtype: images must be equal-sized nested lists of numbers',
        "input 'image_bytes': encoded images must be a vector [N], got shape [1, 1]"),
    'tfs bad base64': (
        'instance 0: b64 is not valid base64',
        None),
    'tfs values fewer than the shape': (
        None,
        "input 'image': tensor_content holds 10 bytes; shape [1, 8, 8, 3] of DT_FLOAT needs 768"),
    'tfs ragged images': (
        'wrong shape: images are ragged; each must be [height][width][3] numbers',
        "input 'image': shape [1, 8, 8, 3] needs 192 values, the tensor holds 3"),
    'tfs negative dimension': (
        None,
        "input 'image': shape [1, -8, 8, 3] has a negative dimension"),
    'tfs both instances and inputs': (
        "give exactly one of 'instances' (row format) or 'inputs' (columnar format)",
        None),
    'tfs malformed body': (
        'malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)',
        None),
    'tfs body not an object': (
        "request body must be a JSON object with 'instances' or 'inputs'",
        None),
    'tfs no input': (
        "this model has a single input ('image' or 'image_bytes')",
        'input tensor alias not found in signature: none given; serving_default takes exactly {image}'),
    'tfs a scalar': (
        "no images: 'instances'/'inputs' must be a non-empty list",
        "input 'image': batch of 0 images; this server takes 1 to 16"),
    'tfs too many encoded images': (
        'too many images in one request: 17 > 16',
        "input 'image_bytes': shape [17] holds 17 values; this server takes at most 16"),
    'tfs too many small images': (
        'too many images in one request: 17 > 16',
        "input 'image': batch of 17 images; this server takes 1 to 16"),
    'tfs unknown rank': (
        None,
        "input 'image': the tensor's shape must be known"),
    'tfs b64 beside other keys': (
        'instance 0: expected {"b64": "<base64 JPEG or PNG>"}',
        None),
    'v2 no input': (
        "'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)",
        "'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)"),
    'v2 two inputs': (
        "'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)",
        "'inputs' must list exactly one tensor: 'image' (FP32 or UINT8) or 'image_bytes' (BYTES)"),
    'v2 negative shape': (
        "input 'image': shape must be a list of non-negative integers",
        "input 'image': shape must be non-negative integers, got [1, 8, -8, 3]"),
    'v2 scalar shape': (
        "input 'image': batch of 0 images; this server takes 1 to 16",
        "input 'image': batch of 0 images; this server takes 1 to 16"),
    'v2 no images': (
        "input 'image': batch of 0 images; this server takes 1 to 16",
        "input 'image': batch of 0 images; this server takes 1 to 16"),
    'v2 too many images': (
        "input 'image': batch of 17 images; this server takes 1 to 16",
        "input 'image': batch of 17 images; this server takes 1 to 16"),
    'v2 wrong datatype': (
        "input 'image': datatype must be FP32 or UINT8, got 'FP64'",
        "input 'image': datatype must be FP32 or UINT8, got 'FP64'"),
    'v2 wrong image shape': (
        "input 'image': shape must be [N, 8, 8, 3], got [1, 4, 4, 3]",
        "input 'image': shape must be [N, 8, 8, 3], got [1, 4, 4, 3]"),
    'v2 fewer values than the shape': (
        "input 'image': shape [1, 8, 8, 3] needs 192 values, 'data' has 191",
        "input 'image': shape [1, 8, 8, 3] needs 192 values, 'data' has 191"),
    'v2 no data': (
        "input 'image': no 'data'",
        "input 'image': shape [1, 8, 8, 3] needs 192 values, 'data' has 0"),
    'v2 raw bytes short': (
        "input 'image': 100 bytes for 192 FP32 values",
        "input 'image': 100 bytes for 192 FP32 values"),
    'v2 nan pixel': (
        "input 'image': values must be finite",
        "input 'image': values must be finite"),
    'v2 infinite raw pixel': (
        "input 'image': values must be finite",
        "input 'image': values must be finite"),
    'v2 uint8 over 255': (
        "input 'image': UINT8 values must be integers 0-255",
        "input 'image': UINT8 values must be integers 0-255"),
    'v2 uint8 256': (
        "input 'image': UINT8 values must be integers 0-255",
        "input 'image': UINT8 values must be integers 0-255"),
    'v2 data not numbers': (
        "input 'image': 'data' must be numbers (flat or nested, row-major)",
        None),
    'v2 uint8 fraction': (
        "input 'image': UINT8 values must be integers 0-255",
        None),
    'v2 unknown input': (
        ("unknown input 'x'; this model takes 'image' (FP32 or UINT8 [N, 8, 8, 3]) or "
         "'image_bytes' (BYTES [N], encoded JPEG/PNG)"),
        ("unknown input 'x'; this model takes 'image' (FP32 or UINT8 [N, 8, 8, 3]) or "
         "'image_bytes' (BYTES [N], encoded JPEG/PNG)")),
    'v2 image_bytes not BYTES': (
        "input 'image_bytes' must be BYTES of shape [N], got FP32 [1]",
        "input 'image_bytes' must be BYTES of shape [N], got FP32 [1]"),
    'v2 image_bytes of two dimensions': (
        "input 'image_bytes' must be BYTES of shape [N], got BYTES [1, 1]",
        "input 'image_bytes' must be BYTES of shape [N], got BYTES [1, 1]"),
    'v2 fewer encoded images than the shape': (
        "input 'image_bytes': 'data' must list 2 base64 strings",
        "input 'image_bytes': shape says 2 elements, contents hold 1"),
    'v2 BYTES element past the end': (
        "input 'image_bytes': BYTES element of 255 bytes runs past the tensor's data",
        "input 'image_bytes': BYTES element of 255 bytes runs past the tensor's data"),
    'v2 BYTES length cut short': (
        "input 'image_bytes': truncated BYTES element length",
        "input 'image_bytes': truncated BYTES element length"),
    'v2 BYTES length of 2**32 - 1': (
        "input 'image_bytes': BYTES element of 4294967295 bytes runs past the tensor's data",
        "input 'image_bytes': BYTES element of 4294967295 bytes runs past the tensor's data"),
    'v2 not an image': (
        'image_bytes 0: not a JPEG, PNG, GIF, BMP or WebP image',
        'image_bytes 0: not a JPEG, PNG, GIF, BMP or WebP image'),
    'v2 unknown output': (
        "unknown output 'logits'; this model has ['probabilities', 'class_index', 'class_name']",
        "unknown output 'logits'; this model has ['probabilities', 'class_index', 'class_name']"),
    'v2 data and binary both': (
        "input 'image': give 'data' or binary_data_size, not both",
        "input 'image': give contents or raw_input_contents, not both"),
    'v2 binary data nobody declared': (
        '8 bytes follow the JSON but no input declares binary_data_size',
        'raw_input_contents has 2 entries for 1 input'),
    'v2 binary size that lies': (
        "input 'image': binary_data_size 769 but 768 bytes follow the JSON",
        None),
    'v2 binary size not a number': (
        "input 'image': binary_data_size True but 1 bytes follow the JSON",
        None),
    'v2 body not an object': (
        "request body must be a JSON object with 'inputs'",
        None),
    'v2 header length past the body': (
        "Inference-Header-Content-Length must be a byte count within the body, got '99'",
        None),
    'v2 bad base64': (
        'image_bytes[0]: b64 is not valid base64',
        None),
    'v2 id not a string': (
        "'id' must be a string",
        None),
    'v2 outputs not a list of names': (
        "'outputs' must be a list of objects with a 'name'",
        None),
    'v2 parameters not an object': (
        "'parameters' must be an object",
        None),
    'v2 tensor parameters not an object': (
        "input 'image': parameters must be an object",
        None),
}


def test_every_check_has_its_twin_or_says_why_not():
    """A row refused on one protocol only names why the other cannot carry the fault."""
    for case, rest, grpc_req, rest_words, grpc_words in TABLE:
        assert isinstance(rest, tuple) == (rest_words is not None), case
        assert isinstance(grpc_req, tuple) == (grpc_words is not None), case
        assert isinstance(rest, tuple) or isinstance(grpc_req, tuple), case
    twins = sum(isinstance(r[1], tuple) and isinstance(r[2], tuple) for r in TABLE)
    assert twins >= 35, twins


# ---------------------------------------------------------------- against the parse functions


def parse_rest(path: str, body: bytes, headers: dict):
    if path.startswith("/v1/"):
        return tfs.parse_predict(body, SIZE, MAX)
    return v2.parse_infer(body, headers.get(v2.HEADER), SIZE, MAX)


def parse_grpc(method: str, req):
    if method == "Predict":
        images = tensors.tfs_images(dict(req.inputs), req.model_spec.signature_name or "serving_default", SIZE, MAX)
        if unknown := sorted(set(req.output_filter) - set(v2.OUTPUTS)):
            raise RequestError(f"output tensor alias not found in signature: {unknown}")
        return images
    return tensors.v2_images(req, SIZE, MAX)


@pytest.mark.parametrize("case, rest, grpc_req, rest_words, grpc_words", TABLE, ids=IDS)
def test_each_check_refuses_on_rest(case, rest, grpc_req, rest_words, grpc_words):
    if rest_words is None:
        pytest.skip(f"no REST form: {rest}")
    with pytest.raises(RequestError) as err:
        parse_rest(*rest)
    assert err.value.status == 400 and rest_words in str(err.value), str(err.value)


@pytest.mark.parametrize("case, rest, grpc_req, rest_words, grpc_words", TABLE, ids=IDS)
def test_each_check_refuses_on_grpc(case, rest, grpc_req, rest_words, grpc_words):
    if grpc_words is None:
        pytest.skip(f"no gRPC form: {grpc_req}")
    with pytest.raises(RequestError) as err:
        parse_grpc(*grpc_req)
    assert err.value.status == 400 and grpc_words in str(err.value), str(err.value)


@pytest.mark.parametrize("case", IDS)
def test_each_refusal_is_one_line_that_names_the_fault(case):
    _, rest, grpc_req, rest_words, grpc_words = TABLE[IDS.index(case)]
    for form, parse, want in ((rest, parse_rest, MESSAGES[case][0]), (grpc_req, parse_grpc, MESSAGES[case][1])):
        if want is None:
            continue
        with pytest.raises(RequestError) as err:
            parse(*form)
        assert str(err.value) == want


def good_requests():
    """The well-formed neighbours of the table's rows: each parses, on both protocols, to the same pixels."""
    x = np.full((2, SIZE, SIZE, 3), 100.0, np.float32)
    x[0, 0, 0, 0], x[1, SIZE - 1, SIZE - 1, 2] = 0.0, 255.0
    u8 = x.astype(np.uint8)
    rest = [rest_tfs({"instances": x.tolist()}), rest_tfs({"inputs": {"image": x.tolist()}}),
            rest_tfs({"instances": [{"image": i} for i in x.tolist()]}),
            rest_tfs({"signature_name": "serving_uint8", "instances": u8.tolist()}),
            rest_v2([v2_tensor(shape=x.shape, data=x.ravel().tolist())]),
            rest_v2([v2_tensor(shape=x.shape, data=x.tolist())]),
            rest_v2([v2_tensor(shape=x.shape, nbin=x.nbytes)], binary=x.astype("<f4").tobytes()),
            rest_v2([v2_tensor(datatype="UINT8", shape=x.shape, nbin=u8.nbytes)], binary=u8.tobytes()),
            rest_v2([v2_tensor(datatype="UINT8", shape=x.shape, data=u8.ravel().tolist())])]
    grpc_forms = [grpc_tfs(shape=x.shape, content=x.astype("<f4").tobytes()),
                  grpc_tfs(shape=x.shape, floats=x.ravel().tolist()),
                  grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, shape=x.shape, content=u8.tobytes()),
                  grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, shape=x.shape, ints=u8.ravel().tolist()),
                  grpc_v2(shape=x.shape, fp32=x.ravel().tolist()), grpc_v2(shape=x.shape, raw=[x.tobytes()]),
                  grpc_v2(datatype="UINT8", shape=x.shape, uints=u8.ravel().tolist()),
                  grpc_v2(datatype="UINT8", shape=x.shape, raw=[u8.tobytes()])]
    return x, rest, grpc_forms


def test_the_well_formed_neighbours_parse_to_the_same_pixels_on_both_protocols():
    x, rest, grpc_forms = good_requests()
    for form in rest:
        parsed = parse_rest(*form)
        images = parsed[0] if isinstance(parsed, tuple) else parsed.images
        assert images.dtype == np.float32 and np.array_equal(images, x), form[1][:80]
    for form in grpc_forms:
        parsed = parse_grpc(*form)
        images = parsed[0] if isinstance(parsed, tuple) else parsed
        assert images.dtype == np.float32 and np.array_equal(images, x), form[0]
    # at the limits: MAX images, values 0 and 255 in uint8, on each protocol
    full = np.zeros((MAX, SIZE, SIZE, 3), np.float32)
    assert tfs.parse_predict(json.dumps({"instances": full.tolist()}).encode(), SIZE, MAX)[0].shape[0] == MAX
    assert tensors.tfs_images(dict(grpc_tfs(shape=full.shape, content=full.tobytes())[1].inputs), "serving_default",
                              SIZE, MAX).shape[0] == MAX
    assert parse_grpc(*grpc_v2(shape=full.shape, raw=[full.tobytes()]))[0].shape[0] == MAX
    assert v2.parse_infer(rest_v2([v2_tensor(shape=full.shape, data=full.ravel().tolist())])[1], None, SIZE,
                          MAX).images.shape[0] == MAX


# ---------------------------------------------------------------- over the wire, both protocols from one process


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from test_grpc import Both

    base = tmp_path_factory.mktemp("protocols") / "flowers"
    write_version(base, 1, seed=1)
    running = Both(base)
    # one HTTP client and one gRPC channel for every row: the rows measure the server, not connection set-up
    with httpx.Client(base_url=running.url, timeout=30) as running.http, \
            grpc.insecure_channel(running.target) as running.channel:
        yield running
    running.stop()


WIRE = [*TABLE,
        ("unknown model", ("/v1/models/nope:predict", json.dumps({"instances": [GREY]}).encode(), {}),
         ("Predict", protos.message("tensorflow.serving.PredictRequest")(
             model_spec=protos.message("tensorflow.serving.ModelSpec")(name="nope"))),
         "Servable not found", "Servable not found"),
        ("v2 version not a number", ("/v2/models/flowers/versions/x/infer", b"{}", {}),
         grpc_v2(version="x"), "must be a number", "must be a number"),
        ("tfs unknown output", "TF Serving's REST predict has no output filter",
         grpc_tfs(outputs=["logits"]), None, "alias not found")]


@pytest.mark.parametrize("case, rest, grpc_req, rest_words, grpc_words", WIRE, ids=[w[0] for w in WIRE])
def test_each_check_refuses_over_the_wire_and_the_server_keeps_serving(both, case, rest, grpc_req, rest_words,
                                                                       grpc_words):
    status = 404 if rest_words == "Servable not found" else 400
    if rest_words is not None:
        path, body, headers = rest
        r = both.http.post(path, content=body, headers={"content-type": "application/json", **headers})
        assert r.status_code == status and rest_words in r.json()["error"], r.text
    if grpc_words is not None:
        method, req = grpc_req
        service = protos.PREDICTION_SERVICE if method == "Predict" else protos.INFERENCE_SERVICE
        with pytest.raises(grpc.RpcError) as err:
            protos.stub(both.channel, service, method)(req, timeout=30)
        code = "NOT_FOUND" if status == 404 else "INVALID_ARGUMENT"
        assert err.value.code().name == code and grpc_words in err.value.details(), err.value.details()
    method, req = grpc_v2(raw=[np.zeros(N, "<f4").tobytes()])
    assert len(protos.stub(both.channel, protos.INFERENCE_SERVICE, method)(req, timeout=30).raw_output_contents) == 3


# ---------------------------------------------------------------- well-formed encoded images, on every form


def encoded(fmt: str, side: int, height: int | None = None) -> tuple[bytes, np.ndarray]:
    """A striped side x height (default side) image as PNG, JPEG or BMP bytes, and the pixels the server must make
    of it: as is at the model's size; else Pillow's DCT-scaled JPEG decode at 2x the size or more, then bilinear
    without reducing gap."""
    import io

    from PIL import Image

    yy, xx = np.mgrid[0:height or side, 0:side]
    pixels = np.stack([(xx * 37 + yy * 11) % 256, (yy * 53) % 256, (xx * yy) % 256], -1).astype(np.uint8)
    if fmt == "BMP":
        pixels[0] = 0  # a BMP stores its rows bottom-up: the file ends in the top row's bytes, here zeros
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    raw = buf.getvalue()
    with Image.open(io.BytesIO(raw)) as im:
        if fmt == "JPEG":
            im.draft("RGB", (2 * SIZE, 2 * SIZE))
        im = im.convert("RGB")
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
        want = np.asarray(im, dtype=np.float32)
    return raw, want


def test_encoded_images_parse_alike_on_every_form_of_both_protocols():
    (png, png_px), (big, big_px), (jpg, jpg_px) = encoded("PNG", SIZE), encoded("PNG", 3 * SIZE), encoded("JPEG", 64)
    bmp, bmp_px = encoded("BMP", SIZE)
    (tall, tall_px), (wide, wide_px) = encoded("JPEG", 64, 128), encoded("JPEG", 128, 64)  # DCT-scaled by 4, not 8
    assert bmp.endswith(b"\0" * 3 * SIZE)  # (a bytes element must keep its trailing zeros: not a numpy bytes_)
    assert np.array_equal(png_px[..., 0], np.asarray([[(x * 37 + y * 11) % 256 for x in range(SIZE)]
                                                      for y in range(SIZE)], np.float32))  # as sent: no resize
    items, want = [png, big, jpg, bmp, tall, wide], np.stack([png_px, big_px, jpg_px, bmp_px, tall_px, wide_px])
    blob = v2.bytes_blob(items)
    forms = [
        parse_rest(*rest_tfs({"signature_name": "serving_bytes", "instances": [{"b64": b64(x)} for x in items]}))[0],
        parse_rest(*rest_tfs({"instances": [{"image_bytes": {"b64": b64(x)}} for x in items]}))[0],
        parse_rest(*rest_tfs({"inputs": {"image_bytes": [{"b64": b64(x)} for x in items]}}))[0],
        parse_rest(*rest_v2([v2_tensor("image_bytes", "BYTES", (6,), data=[b64(x) for x in items])])).images,
        parse_rest(*rest_v2([v2_tensor("image_bytes", "BYTES", (6,), nbin=len(blob))], binary=blob)).images,
        parse_grpc(*grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(6,),
                             strings=items)),
        parse_grpc(*grpc_v2("image_bytes", "BYTES", (6,), strings=items))[0],
        parse_grpc(*grpc_v2("image_bytes", "BYTES", (6,), raw=[blob]))[0]]
    for images in forms:
        assert images.dtype == np.float32 and images.shape == (6, SIZE, SIZE, 3)
        assert np.array_equal(images, want)
    # one encoded image filling a shape of 3 (TF's convention for one value), on gRPC's TF Serving API
    splat = parse_grpc(*grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(3,),
                                 strings=[bmp]))
    assert np.array_equal(splat, np.stack([bmp_px] * 3))
    two = parse_grpc(*grpc_tfs(signature="serving_bytes", key="image_bytes", dtype=DT_STRING, shape=(2,),
                               strings=[png]))
    assert np.array_equal(two, np.stack([png_px] * 2))
    assert v2.bytes_elements(v2.bytes_blob([b"", b"ab"]), 2, "w") == [b"", b"ab"]  # an empty element, exactly
    assert v2.bytes_elements(v2.bytes_blob([b"ab", b""]), 2, "w") == [b"ab", b""]  # last, its length the last bytes
    assert v2.bytes_elements(b"", 0, "w") == []
    for raw, count, message in ((b"\x05\0\0\0abc", 1, "w: BYTES element of 5 bytes runs past the tensor's data"),
                                (v2.bytes_blob([b"a"]), 2, "w: shape says 2 elements, data holds 1")):
        with pytest.raises(RequestError) as err:
            v2.bytes_elements(raw, count, "w")
        assert str(err.value) == message
    bools = protos.message("tensorflow.TensorProto")(dtype=10, bool_val=[True])  # DT_BOOL
    with pytest.raises(RequestError) as err:
        tensors.tensor_array(bools, "w", 10)
    assert str(err.value) == "w: DT_BOOL tensors are not supported"


def test_one_value_fills_the_shape_and_outputs_are_sent_as_asked():
    req = grpc_tfs(shape=(2, SIZE, SIZE, 3), floats=[7.0])[1]
    assert np.array_equal(parse_grpc("Predict", req), np.full((2, SIZE, SIZE, 3), 7.0, np.float32))
    req = grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, shape=(1, SIZE, SIZE, 3), ints=[255])[1]
    assert np.array_equal(parse_grpc("Predict", req), np.full((1, SIZE, SIZE, 3), 255.0, np.float32))
    ones = [v2_tensor(data=[1] * N)]
    assert parse_rest(*rest_v2(ones)).outputs == {"probabilities": False, "class_index": False, "class_name": False}
    assert parse_rest(*rest_v2(ones, parameters={"binary_data_output": True})).outputs == dict.fromkeys(
        v2.OUTPUTS, True)
    asked = parse_rest(*rest_v2(ones, parameters={"binary_data_output": True}, outputs=[
        {"name": "class_name", "parameters": {"binary_data": False}}, {"name": "probabilities"}])).outputs
    assert asked == {"class_name": False, "probabilities": True}
    asked = parse_rest(*rest_v2(ones, outputs=[{"name": "class_index", "parameters": {"binary_data": True}},
                                               {"name": "class_name"}])).outputs
    assert asked == {"class_index": True, "class_name": False}
    assert parse_rest(*rest_v2(ones, id="r1")).id == "r1" and parse_rest(*rest_v2(ones)).id is None
    path, body, _ = rest_v2(ones)  # a header naming the whole body as JSON: no binary part
    assert np.array_equal(v2.parse_infer(body, str(len(body)), SIZE, MAX).images, np.ones((1, SIZE, SIZE, 3)))
    x = np.arange(N, dtype=np.float32).reshape(1, SIZE, SIZE, 3) % 256
    nested = parse_rest(*rest_v2([v2_tensor(shape=x.shape, data=x.tolist())])).images  # nested lists, row-major
    assert np.array_equal(nested, x) and nested.dtype == np.float32


def test_base64_in_either_alphabet_and_the_pixel_limit(monkeypatch):
    from PIL import Image

    from flowerpipe.serving import decode

    assert decode.b64_bytes("-_8=", "w") == b"\xfb\xff" == decode.b64_bytes("+/8=", "w")  # web-safe, standard
    assert decode.b64_bytes("-A==", "w") == b"\xf8" and decode.b64_bytes("_A==", "w") == b"\xfc"
    with pytest.raises(RequestError, match="^w: b64 must be a string$"):
        decode.b64_bytes(None, "w")
    png, px = encoded("PNG", SIZE)
    monkeypatch.setattr(decode, "MAX_PIXELS", SIZE * SIZE)  # at the limit: decoded
    assert np.array_equal(decode.decode_image(png, SIZE, "w"), px)
    monkeypatch.setattr(decode, "MAX_PIXELS", SIZE * SIZE - 1)  # one over it: refused before decoding
    with pytest.raises(RequestError) as err:
        decode.decode_image(png, SIZE, "w")
    assert str(err.value) == f"w: {SIZE}x{SIZE} pixels is over the {SIZE * SIZE - 1} limit"
    monkeypatch.setattr(decode, "MAX_PIXELS", 10**9)
    with pytest.raises(RequestError) as err:
        decode.decode_all([png, b""], SIZE)
    assert str(err.value) == "image 1: empty image"
    with pytest.raises(RequestError) as err:
        decode.decode_image(png[:60], SIZE, "w")  # a truncated PNG
    assert str(err.value).startswith("w: image could not be decoded (")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE // 2 + 1)  # Pillow's bomb warning, made an error
    with pytest.raises(RequestError) as err:
        decode.decode_image(png, SIZE, "w")
    assert str(err.value) == "w: image is over the 1000000000 pixel limit"
