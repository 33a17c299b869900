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


def flat(value: float) -> list[float]:
    return [value] + [100.0] * (N - 1)


# ---------------------------------------------------------------- request builders


def rest_tfs(body: dict | bytes) -> tuple[str, bytes, dict]:
    return "/v1/models/flowers:predict", body if isinstance(body, bytes) else json.dumps(body).encode(), {}


def rest_v2(inputs: list | None = None, binary: bytes | None = None, **extra) -> tuple[str, bytes, dict]:
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
    ("tfs uint8 over 255", rest_tfs({"signature_name": "serving_uint8", "instances": [with_value(300)]}),
     grpc_tfs(signature="serving_uint8", dtype=DT_UINT8, ints=[300] * N), "integers 0-255",
     "out of range for DT_UINT8"),
    ("tfs uint8 under 0", rest_tfs({"signature_name": "serving_uint8", "instances": [with_value(-1)]}),
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
    # KServe V2: ModelInferRequest over gRPC, /infer over REST
    ("v2 no input", rest_v2([]), grpc_v2(inputs=0), "exactly one tensor", "exactly one tensor"),
    ("v2 two inputs", rest_v2([v2_tensor(data=[0] * N)] * 2), grpc_v2(inputs=2, fp32=[0.0] * N),
     "exactly one tensor", "exactly one tensor"),
    ("v2 negative shape", rest_v2([v2_tensor(shape=(1, SIZE, -SIZE, 3), data=[0] * N)]),
     grpc_v2(shape=(1, SIZE, -SIZE, 3), fp32=[0.0] * N), "non-negative", "non-negative"),
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
        r = httpx.post(f"{both.url}{path}", content=body, headers={"content-type": "application/json", **headers},
                       timeout=30)
        assert r.status_code == status and rest_words in r.json()["error"], r.text
    with grpc.insecure_channel(both.target) as channel:
        if grpc_words is not None:
            method, req = grpc_req
            service = protos.PREDICTION_SERVICE if method == "Predict" else protos.INFERENCE_SERVICE
            with pytest.raises(grpc.RpcError) as err:
                protos.stub(channel, service, method)(req, timeout=30)
            code = "NOT_FOUND" if status == 404 else "INVALID_ARGUMENT"
            assert err.value.code().name == code and grpc_words in err.value.details(), err.value.details()
        method, req = grpc_v2(raw=[np.zeros(N, "<f4").tobytes()])
        assert len(protos.stub(channel, protos.INFERENCE_SERVICE, method)(req, timeout=30).raw_output_contents) == 3
