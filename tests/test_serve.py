"""The REST server for real on loopback: protocol, bad requests, batching under a bounded load."""

import base64
import json
import threading
import time

import httpx
import numpy as np
import pytest

from flowerpipe.loadtest import free_port, load
from flowerpipe.serve import (
    RequestError,
    ServedModel,
    create_app,
    format_response,
    parse_request,
    pick_format,
    to_png_b64,
)

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SIZE = 8


class ColourRunner:
    """A deterministic stand-in model: softmax over mean colour features; counts its calls."""

    def __init__(self):
        self.calls, self.batches = 0, []
        self.w = np.random.default_rng(0).normal(0, 0.05, (3, len(CLASSES))).astype(np.float32)

    def predict(self, images):
        self.calls += 1
        self.batches.append(len(images))
        time.sleep(0.01)  # a model call costs time, so concurrent requests can be merged
        z = images.mean(axis=(1, 2)) @ self.w
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def server():
    import uvicorn

    runner = ColourRunner()
    model = ServedModel("flowers", 1, runner, CLASSES, SIZE, "test")
    app = create_app(model, max_body_bytes=200_000, max_batch=16, window_ms=5)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/v1/models/flowers", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, runner
    srv.should_exit = True
    thread.join(10)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float32)


def predict(url, body, path="flowers:predict", **kw):
    return httpx.post(f"{url}/v1/models/{path}", timeout=30, **kw, **({"json": body} if body is not None else {}))


def test_status_and_metadata(server):
    url, _ = server
    status = httpx.get(f"{url}/v1/models/flowers").json()
    assert status["model_version_status"][0] == {"version": "1", "state": "AVAILABLE",
                                                  "status": {"error_code": "OK", "error_message": ""}}
    assert httpx.get(f"{url}/v1/models/flowers/versions/1").status_code == 200
    meta = httpx.get(f"{url}/v1/models/flowers/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "3"]
    assert set(sig["outputs"]) == {"probabilities", "class_index", "class_name"}


def test_row_columnar_and_b64_equal_local(server):
    url, runner = server
    x = images(3)
    local = ColourRunner().predict(x)
    r = predict(url, {"instances": x.tolist()})
    assert r.status_code == 200, r.text
    row = r.json()["predictions"]
    col = predict(url, {"inputs": {"image": x.tolist()}}).json()["outputs"]
    b64 = predict(url, {"signature_name": "serving_bytes", "instances": [to_png_b64(i) for i in x]}).json()
    named = predict(url, {"instances": [{"image": i} for i in x.tolist()]}).json()["predictions"]
    versioned = predict(url, {"signature_name": "serving_uint8", "instances": x.astype(int).tolist()},
                        path="flowers/versions/1:predict").json()["predictions"]
    for probs in ([r["probabilities"] for r in row], col["probabilities"],
                  [r["probabilities"] for r in b64["predictions"]], [r["probabilities"] for r in named],
                  [r["probabilities"] for r in versioned]):
        assert np.allclose(probs, local, atol=1e-5)
    assert [r["class_name"] for r in row] == [CLASSES[i] for i in local.argmax(1)] == col["class_name"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "malformed JSON"),
    ({"instances": []}, 400, "non-empty"),
    ({"instances": [[[[1, 2]]]]}, 400, "wrong shape"),
    ({"instances": [[[["a", "b", "c"]] * SIZE] * SIZE]}, 400, "wrong dtype"),
    ({"instances": [[1, 2], [3]]}, 400, "wrong shape"),
    ({"instances": [{"b64": base64.b64encode(b"hello, not an image").decode()}]}, 400, "not a JPEG or PNG"),
    ({"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
    ({"instances": [1], "inputs": [1]}, 400, "exactly one"),
    ({"signature_name": "pickle", "instances": [1]}, 400, "unknown signature_name"),
    ({"signature_name": "serving_uint8", "instances": [[[[0.5, 1, 2]] * SIZE] * SIZE]}, 400, "integers 0-255"),
    ({"instances": [[[[0, 0, 0]] * SIZE] * SIZE] * 17}, 400, "too many images"),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(server, body, status, words):
    url, _ = server
    r = predict(url, None, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                headers={"content-type": "application/json"})
    assert r.status_code == status and words in r.json()["error"], r.text
    assert predict(url, {"instances": images(1).tolist()}).status_code == 200


def test_unknown_model_version_oversize_and_method(server):
    url, _ = server
    assert "Servable not found" in predict(url, {"instances": images(1).tolist()}, "nope:predict").json()["error"]
    assert predict(url, {"instances": images(1).tolist()}, "flowers/versions/7:predict").status_code == 404
    assert httpx.get(f"{url}/v1/models/flowers/versions/x").status_code == 404
    big = b'{"instances": [' + b"0," * 150_000 + b"0]}"
    r = predict(url, None, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert httpx.get(f"{url}/v1/models/flowers:predict").status_code == 405
    assert predict(url, {"instances": images(1).tolist()}).status_code == 200


def test_bounded_concurrent_load_no_errors_no_mixups(server):
    url, runner = server
    x = np.rint(images(12, seed=3))
    expected = ColourRunner().predict(x)
    calls = runner.calls
    result = load(url, "flowers", x, expected, concurrency=6, requests=60, max_seconds=60)
    assert result["requests"] == 60 and result["errors"] == 0 and result["mismatches"] == 0
    assert result["latency_ms_p50"] <= result["latency_ms_p99"]
    assert runner.calls - calls < 60  # concurrent requests were batched together
    assert max(runner.batches) > 1


def test_parse_and_format_units():
    x, sig, columnar = parse_request(json.dumps({"inputs": images(2).tolist()}).encode(), SIZE, 4)
    assert x.shape == (2, SIZE, SIZE, 3) and sig == "serving_default" and columnar
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(b"[1, 2]", SIZE, 4)
    out = format_response(np.array([[0.1, 0.9]], np.float32), ["a", "b"], columnar=False)
    assert out == {"predictions": [{"probabilities": [pytest.approx(0.1), pytest.approx(0.9)], "class_index": 1,
                                    "class_name": "b"}]}


def test_pick_format_prefers_fastest_measured_float():
    bench = {"results": {"onnx": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 60.0}}},
                         "openvino-float32": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 50.0}}},
                         "tflite-int8": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 10.0}}}}}
    assert pick_format("auto", bench, ["onnx", "openvino-float32", "tflite-int8"]) == "openvino-float32"
    assert pick_format("auto", bench, ["onnx"]) == "onnx"
    assert pick_format("auto", {}, ["savedmodel", "keras"]) == "savedmodel"
    assert pick_format("tflite-int8", bench, []) == "tflite-int8"
