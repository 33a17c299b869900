"""The server for real on loopback: both protocols, every route and failure, batching, versions and hot reload."""

import asyncio
import base64
import io
import json
import shutil
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flowerpipe.serving.app import InflightLimit, Limits, create_app
from flowerpipe.serving.batcher import Batcher
from flowerpipe.serving.client import client_predict, to_png_b64
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.main import pick_format
from flowerpipe.serving.repository import AVAILABLE, END, Loaded, Repository, Settings, Source
from flowerpipe.serving.tfs import parse_predict, route

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SIZE = 8


def colour_model(seed: int = 0):
    """A deterministic stand-in model: softmax over mean colour features (differs per seed)."""
    w = np.random.default_rng(seed).normal(0, 0.05, (3, len(CLASSES))).astype(np.float32)

    def predict(images):
        z = images.mean(axis=(1, 2)) @ w
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    return predict


class Recorder:
    """Wraps a model: records every batch, can be slowed down and made to fail on a marker pixel value."""

    def __init__(self, seed=0, delay=0.0):
        self.predict_fn, self.delay, self.batches, self.lock = colour_model(seed), delay, [], threading.Lock()

    def __call__(self, images):
        with self.lock:
            self.batches.append(images[:, 0, 0, 0].astype(int).tolist())
        time.sleep(self.delay)
        if (images == 13).all(axis=(1, 2, 3)).any():  # an all-13 image makes this model raise
            raise ArithmeticError("model blew up")
        return self.predict_fn(images)


def loader(path: Path) -> Loaded:
    """Versions are folders holding model.json: {"seed", "delay", "broken"}."""
    cfg = json.loads((path / "model.json").read_text())
    if cfg.get("broken"):
        raise ValueError("broken model file")
    rec = Recorder(cfg.get("seed", 0), cfg.get("delay", 0.0))
    return Loaded(rec, CLASSES, SIZE, "fake")


def write_version(base: Path, number: int, **cfg) -> None:
    (base / str(number)).mkdir(parents=True, exist_ok=True)
    (base / str(number) / "model.json").write_text(json.dumps(cfg))


class Running:
    """An app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        from flowerpipe.measure.loadtest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)


def serve(base: Path, labels=None, keep=2, timeout=5.0, poll=0.0, max_batch=16, window_ms=5.0, inflight=256):
    repo = Repository("flowers", Source(base=base), loader,
                      Settings(max_batch=max_batch, window_ms=window_ms, keep_versions=keep, labels=labels or {}))
    limits = Limits(max_body_bytes=200_000, timeout_s=timeout, poll_s=poll, max_inflight=inflight)
    return repo, Running(create_app(repo, limits))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "flowers"
    write_version(base, 1, seed=1, delay=0.01)
    write_version(base, 2, seed=2, delay=0.01)
    repo, running = serve(base, labels={"stable": 1, "canary": 2, "gone": 7})
    yield running.url, repo
    running.stop()


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float32)


def post(url, path, body=None, **kw):
    return httpx.post(f"{url}{path}", timeout=30, **kw, **({"json": body} if body is not None else {}))


def version_of(probs, x):
    """Which seed's model produced these probabilities."""
    return next(s for s in range(5) if np.allclose(probs, colour_model(s)(x), atol=1e-5))


# ---------------------------------------------------------------- TF Serving REST


def test_tfs_status_metadata_versions_and_labels(server):
    url, _ = server
    listed = httpx.get(f"{url}/v1/models").json()["models"][0]
    assert listed["name"] == "flowers" and [s["version"] for s in listed["model_version_status"]] == ["2", "1"]
    status = httpx.get(f"{url}/v1/models/flowers").json()["model_version_status"]
    assert status[0] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert httpx.get(f"{url}/v1/models/flowers/versions/1").json()["model_version_status"][0]["version"] == "1"
    assert httpx.get(f"{url}/v1/models/flowers/labels/stable").json()["model_version_status"][0]["version"] == "1"
    meta = httpx.get(f"{url}/v1/models/flowers/labels/canary/metadata").json()
    assert meta["model_spec"] == {"name": "flowers", "signature_name": "", "version": "2"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in sig["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "3"]
    assert set(sig["outputs"]) == {"probabilities", "class_index", "class_name"}
    assert meta["metadata"]["classes"] == CLASSES


def test_tfs_every_request_form_answers_like_the_model(server):
    url, _ = server
    x = images(3)
    v1, v2 = colour_model(1)(x), colour_model(2)(x)
    row = post(url, "/v1/models/flowers:predict", {"instances": x.tolist()}).json()["predictions"]
    col = post(url, "/v1/models/flowers:predict", {"inputs": {"image": x.tolist()}}).json()["outputs"]
    b64 = post(url, "/v1/models/flowers:predict", {"signature_name": "serving_bytes",
                                                   "instances": [to_png_b64(i) for i in x]}).json()["predictions"]
    named = post(url, "/v1/models/flowers:predict", {"instances": [{"image": i} for i in x.tolist()]}).json()
    uint8 = post(url, "/v1/models/flowers/versions/1:predict", {"signature_name": "serving_uint8",
                                                                "instances": x.astype(int).tolist()}).json()
    stable = post(url, "/v1/models/flowers/labels/stable:predict", {"instances": x.tolist()}).json()
    for probs, want in (([r["probabilities"] for r in row], v2), (col["probabilities"], v2),
                        ([r["probabilities"] for r in b64], v2),
                        ([r["probabilities"] for r in named["predictions"]], v2),
                        ([r["probabilities"] for r in uint8["predictions"]], v1),
                        ([r["probabilities"] for r in stable["predictions"]], v1)):
        assert np.allclose(probs, want, atol=1e-5)
    assert [r["class_name"] for r in row] == [CLASSES[i] for i in v2.argmax(1)] == col["class_name"]


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/models/flowers:predict", b"{not json", 400, "malformed JSON"),
    ("/v1/models/flowers:predict", {"instances": []}, 400, "non-empty"),
    ("/v1/models/flowers:predict", {"instances": [[[[1, 2]]]]}, 400, "wrong shape"),
    ("/v1/models/flowers:predict", {"instances": [[[["a", "b", "c"]] * SIZE] * SIZE]}, 400, "wrong dtype"),
    ("/v1/models/flowers:predict", {"instances": [[1, 2], [3]]}, 400, "wrong shape"),
    ("/v1/models/flowers:predict", {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400,
     "not a JPEG"),
    ("/v1/models/flowers:predict", {"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
    ("/v1/models/flowers:predict", {"instances": [{"b64": 7}]}, 400, "must be a string"),
    ("/v1/models/flowers:predict", {"instances": [1], "inputs": [1]}, 400, "exactly one"),
    ("/v1/models/flowers:predict", {"signature_name": "pickle", "instances": [1]}, 400, "unknown signature_name"),
    ("/v1/models/flowers:predict", {"signature_name": "serving_uint8", "instances": [[[[0.5, 1, 2]] * SIZE] * SIZE]},
     400, "integers 0-255"),
    ("/v1/models/flowers:predict", {"instances": [[[[0, 0, 0]] * SIZE] * SIZE] * 17}, 400, "too many images"),
    ("/v1/models/flowers:predict", b"[" * 100_000 + b"]" * 100_000, 400, "malformed JSON"),
    ("/v1/models/flowers:predict", b'{"instances": [[[[1e999, 0, 0]]]]}', 400, "wrong"),
    ("/v1/models/flowers:classify", {"instances": [1]}, 400, "no classify signature"),
    ("/v1/models/flowers:regress", {"instances": [1]}, 400, "no regress signature"),
    ("/v1/models/flowers/versions/x:predict", {"instances": [1]}, 400, "version must be a number"),
    ("/v1/models/flowers/versions/7:predict", {"instances": [1]}, 404, "Servable not found"),
    ("/v1/models/flowers/labels/nope:predict", {"instances": [1]}, 404, "unknown version label"),
    ("/v1/models/flowers/labels/gone:predict", {"instances": [1]}, 404, "Servable not found"),
    ("/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found"),
    ("/v1/models/flowers/metadata", {"instances": [1]}, 405, "only for :predict"),
    ("/v2/models/flowers/infer", b"{nope", 400, "malformed JSON"),
    ("/v2/models/flowers/infer", {"inputs": []}, 400, "exactly one tensor"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}, 400,
     "unknown input"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image", "datatype": "FP64", "shape": [1, 8, 8, 3],
                                              "data": [0] * 192}]}, 400, "FP32 or UINT8"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8, 3],
                                              "data": [0] * 191}]}, 400, "needs 192 values"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3],
                                              "data": [300] * 192}]}, 400, "0-255"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, -8, 3],
                                              "data": [0] * 192}]}, 400, "non-negative"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                              "data": ["%%%"]}]}, 400, "not valid base64"),
    ("/v2/models/flowers/infer", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8, 3],
                                              "data": [0] * 192}], "outputs": [{"name": "logits"}]}, 400,
     "unknown output"),
    ("/v2/models/flowers/versions/7/infer", {"inputs": []}, 404, "Servable not found"),
    ("/v2/models/nope/infer", {"inputs": []}, 404, "Servable not found"),
    ("/v2/health/live", {}, 405, "Method Not Allowed"),
    ("/nowhere", {}, 404, "unknown path /nowhere"),
])
def test_bad_requests_get_an_error_object_and_the_server_keeps_serving(server, path, body, status, words):
    url, _ = server
    r = post(url, path, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
             headers={"content-type": "application/json"})
    assert r.status_code == status and words in r.json()["error"], r.text
    assert post(url, "/v1/models/flowers:predict", {"instances": images(1).tolist()}).status_code == 200


def test_gzip_and_deflate_bodies_are_read_within_the_limit_once_decompressed(server):
    import gzip
    import zlib

    url, _ = server
    plain = json.dumps({"instances": images(2).tolist()}).encode()
    expected = post(url, "/v1/models/flowers:predict", content=plain).json()
    for encoding, packed in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):
        r = post(url, "/v1/models/flowers:predict", content=packed, headers={"content-encoding": encoding})
        assert r.status_code == 200 and r.json() == expected, r.text
    bomb = gzip.compress(b'{"instances": [' + b" " * 10_000_000 + b"]}")  # 10 KB that inflate to 10 MB
    for encoding, body, status, words in (("gzip", bomb, 413, "over the 200000 byte limit once decompressed"),
                                          ("br", plain, 415, "'br' is not supported"),
                                          ("gzip", plain, 400, "not valid gzip data"),
                                          ("gzip", gzip.compress(plain)[:-30], 400, "truncated gzip data")):
        r = post(url, "/v2/models/flowers/infer", content=body, headers={"content-encoding": encoding})
        assert r.status_code == status and words in r.json()["error"], r.text


def test_oversize_bodies_and_wrong_methods(server):
    url, _ = server
    big = b'{"instances": [' + b"0," * 150_000 + b"0]}"
    for path in ("/v1/models/flowers:predict", "/v2/models/flowers/infer"):
        r = post(url, path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]
    r = httpx.get(f"{url}/v1/models/flowers:predict")
    assert r.status_code == 405 and "POST" in r.json()["error"]
    assert httpx.get(f"{url}/v2/models/flowers/infer").json()["error"]


# ---------------------------------------------------------------- KServe V2 / Open Inference Protocol

TENSOR = {"type": "object", "required": ["name", "datatype", "shape"],
          "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                         "shape": {"type": "array", "items": {"type": "integer"}}}}
DATA = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/data"}, {"type": "number"}, {"type": "string"},
                                             {"type": "boolean"}]}}
# The response objects of the protocol's published OpenAPI document (kserve docs/predict-api/v2/rest_predict_v2.yaml).
SCHEMAS = {
    "server": {"type": "object", "required": ["name", "version", "extensions"],
               "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                              "extensions": {"type": "array", "items": {"type": "string"}}}},
    "model": {"type": "object", "required": ["name", "platform"],
              "properties": {"name": {"type": "string"}, "platform": {"type": "string"},
                             "versions": {"type": "array", "items": {"type": "string"}},
                             "inputs": {"type": "array", "items": TENSOR},
                             "outputs": {"type": "array", "items": TENSOR}}},
    "infer": {"$defs": {"data": DATA}, "type": "object", "required": ["model_name", "outputs"],
              "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                             "id": {"type": "string"}, "parameters": {"type": "object"},
                             "outputs": {"type": "array", "items": {
                                 "type": "object", "required": ["name", "shape", "datatype", "data"],
                                 "properties": {**TENSOR["properties"], "parameters": {"type": "object"},
                                                "data": {"$ref": "#/$defs/data"}}}}}},
    "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}


def test_v2_routes_answer_in_the_published_schema(server):
    import jsonschema

    url, _ = server
    jsonschema.validate(httpx.get(f"{url}/v2").json(), SCHEMAS["server"])
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    for path in ("/v2/models/flowers", "/v2/models/flowers/versions/1"):
        meta = httpx.get(f"{url}{path}").json()
        jsonschema.validate(meta, SCHEMAS["model"])
        assert meta["versions"] == ["2", "1"] and meta["inputs"][0]["shape"] == [-1, 8, 8, 3]
    assert httpx.get(f"{url}/v2/models/flowers/versions/1/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/flowers/ready").json()["version"] == "2"
    r = httpx.get(f"{url}/v2/models/flowers/versions/9/ready")
    assert r.status_code == 404
    jsonschema.validate(r.json(), SCHEMAS["error"])
    x = images(2)
    body = {"id": "req-1", "inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 8, 8, 3],
                                       "data": x.ravel().tolist()}]}
    answer = post(url, "/v2/models/flowers/versions/1/infer", body).json()
    jsonschema.validate(answer, SCHEMAS["infer"])
    assert answer["id"] == "req-1" and answer["model_version"] == "1"
    outs = {o["name"]: o for o in answer["outputs"]}
    assert np.allclose(np.reshape(outs["probabilities"]["data"], outs["probabilities"]["shape"]),
                       colour_model(1)(x), atol=1e-5)
    assert outs["class_name"]["data"] == [CLASSES[i] for i in colour_model(1)(x).argmax(1)]
    nested = dict(body, inputs=[dict(body["inputs"][0], datatype="UINT8", data=x.astype(int).tolist())])
    assert post(url, "/v2/models/flowers/infer", nested).status_code == 200
    jsonschema.validate(post(url, "/v2/models/flowers/infer", {"inputs": 3}).json(), SCHEMAS["error"])


def test_v2_binary_tensors_and_encoded_images(server):
    url, _ = server
    x = images(2)
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 8, 8, 3],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                   {"name": "class_name"}]}).encode()
    r = post(url, "/v2/models/flowers/infer", content=head + raw,
             headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 5 * 4
    assert np.allclose(np.frombuffer(r.content[n:], "<f4").reshape(2, 5), colour_model(2)(x), atol=1e-6)
    assert meta["outputs"][1]["data"] == [CLASSES[i] for i in colour_model(2)(x).argmax(1)]
    pngs = [base64.b64decode(to_png_b64(i)["b64"]) for i in x]
    blob = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
    head = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = post(url, "/v2/models/flowers/infer", content=head + blob,
             headers={"Inference-Header-Content-Length": str(len(head))})
    assert np.allclose(r.json()["outputs"][0]["data"], colour_model(2)(x).ravel(), atol=1e-5)
    lying = struct.pack("<I", len(pngs[0]) + 10) + blob[4:]  # the first element claims more bytes than there are
    plain = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]})
    for content, length, words in ((head + blob[:-3], len(head), "binary_data_size"),
                                   (head + lying, len(head), "runs past"),
                                   (head[:-1] + b" " + blob, len(head) - 1, "malformed JSON"),
                                   (plain.encode() + b"xyz", len(plain), "no input declares")):
        r = post(url, "/v2/models/flowers/infer", content=content,
                 headers={"Inference-Header-Content-Length": str(length)})
        assert r.status_code == 400 and words in r.json()["error"], r.text
    r = post(url, "/v2/models/flowers/infer", content=head, headers={"Inference-Header-Content-Length": "99999"})
    assert r.status_code == 400 and "byte count" in r.json()["error"]


def test_tritonclient_works_against_the_server(server):
    import tritonclient.http as triton

    url, _ = server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("flowers", "1")
    assert client.get_model_metadata("flowers")["inputs"][0]["name"] == "image"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    x = images(3)
    inp = triton.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    result = client.infer("flowers", [inp], model_version="1", request_id="t1")
    assert np.allclose(result.as_numpy("probabilities"), colour_model(1)(x), atol=1e-6)
    assert result.as_numpy("class_index").tolist() == colour_model(1)(x).argmax(1).tolist()
    assert [n.decode() for n in result.as_numpy("class_name")] == [CLASSES[i] for i in colour_model(1)(x).argmax(1)]
    pngs = np.array([base64.b64decode(to_png_b64(i)["b64"]) for i in x], dtype=np.object_)
    enc = triton.InferInput("image_bytes", [3], "BYTES")
    enc.set_data_from_numpy(pngs)
    out = client.infer("flowers", [enc], outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
    assert np.allclose(out.as_numpy("probabilities"), colour_model(2)(x), atol=1e-5)
    nope = triton.InferInput("nope", [1], "FP32")
    nope.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(Exception, match="unknown input"):
        client.infer("flowers", [nope])
    client.close()


def test_client_command_over_both_protocols(server, tmp_path):
    url, _ = server
    files = []
    for i, x in enumerate(images(2, seed=5)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(x.astype(np.uint8)).save(files[-1])
    tfs = client_predict(url, "flowers", files)
    v2 = client_predict(url, "flowers", files, protocol="v2")
    assert np.allclose([p["probabilities"] for p in tfs], [p["probabilities"] for p in v2], atol=1e-6)
    assert [p["class_name"] for p in tfs] == [p["class_name"] for p in v2]
    with pytest.raises(RequestError, match="404"):
        client_predict(url, "nope", files)
    with pytest.raises(RequestError, match="cannot reach"):
        client_predict("http://127.0.0.1:9", "flowers", files, timeout=2)


def test_client_command_names_the_classes_from_the_servers_metadata(server, tmp_path, capsys):
    from flowerpipe.cli import main

    url, _ = server
    Image.fromarray(images(1, seed=5)[0].astype(np.uint8)).save(tmp_path / "a.png")
    for protocol in ("tfs", "v2"):
        assert main(["client", str(tmp_path / "a.png"), "--url", url, "--protocol", protocol, "--top-k", "2"]) == 0
        line = capsys.readouterr().out.strip()
        top = line.split("(")[1].rstrip(")").split(", ")
        assert len(top) == 2 and all(t.split("=")[0] in CLASSES for t in top), line
    assert main(["client", str(tmp_path / "a.png"), "--url", url, "--classes", "a,b"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --classes names 2 classes, but the server answers 5 "
                                               "probabilities per image")
    (tmp_path / "empty").mkdir()
    assert main(["client", str(tmp_path / "empty"), "--url", url]) == 1
    assert capsys.readouterr().err.strip() == f"error: no image files in {tmp_path / 'empty'}"
    for bad in (["--top-k", "0"], ["--timeout", "nan"]):
        with pytest.raises(SystemExit):
            main(["client", str(tmp_path / "a.png"), "--url", url, *bad])
        assert "must be" in capsys.readouterr().err


class _Liar(threading.Thread):
    """A server on loopback that answers every POST with one fixed body (or stalls, or breaks off)."""

    def __init__(self, body: bytes, length: int | None = None, stall: float = 0.0):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(stall)
                self.send_response(200)
                self.send_header("Content-Length", str(length or len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(daemon=True)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def run(self):
        self.httpd.serve_forever()


@pytest.mark.parametrize("protocol, body, expected", [
    ("tfs", {"predictions": [{"foo": 1}]}, "neither probability lists nor objects"),
    ("tfs", {"predictions": [{"probabilities": "abc"}]}, "not lists of numbers"),
    ("tfs", {"predictions": [[[0.5, 0.5]]]}, r"shape \[1, 1, 2\] for 1 image"),
    ("tfs", {"predictions": [[0.1, None]]}, "not finite"),
    ("tfs", {"predictions": [{"probabilities": [1e999, 0]}]}, "not finite"),
    ("tfs", [1, 2], "a JSON list, not an object"),
    ("v2", {"outputs": [{"name": "probabilities", "shape": [2, 2], "data": [0.5] * 4}]}, r"shape \[2, 2\] for 1"),
    ("v2", {"outputs": [{"name": "probabilities", "shape": [1, 5], "data": [1, 2]}]}, "without a V2 'probabilities'"),
    ("tfs", b'{"predictions"', "broke off its answer"),
    ("tfs", None, "no answer from .* within 0.5 s"),
])
def test_client_refuses_what_a_lying_server_answers(tmp_path, protocol, body, expected):
    (tmp_path / "a.png").write_bytes(base64.b64decode(to_png_b64(images(1)[0])["b64"]))
    raw = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    liar = _Liar(raw, length=100 if isinstance(body, bytes) else None, stall=2.0 if body is None else 0.0)
    liar.start()
    try:
        with pytest.raises(RequestError, match=expected):
            client_predict(liar.url, "flowers", [tmp_path / "a.png"], timeout=0.5, protocol=protocol)
    finally:
        liar.httpd.shutdown()


def test_a_taken_port_is_one_line_before_any_model_loads_and_port_0_takes_a_free_one():
    import socket

    from flowerpipe.params import Serve
    from flowerpipe.serving.main import listen
    from flowerpipe.serving.main import serve as serve_main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen on 127.0.0.1:{port}: Address already in use"):
            serve_main(None, Serve(), "127.0.0.1", port)  # (no plan: nothing is loaded before the port is taken)
    with listen("127.0.0.1", 0) as free:
        assert free.getsockname()[1] > 0
    with pytest.raises(OSError, match="^cannot listen on no-such-host.invalid:80: "):
        listen("no-such-host.invalid", 80)


# ---------------------------------------------------------------- metrics


def test_prometheus_metrics_count_requests_latency_batches_and_queue(server):
    url, _ = server
    before = httpx.get(f"{url}/monitoring/prometheus/metrics").text
    post(url, "/v1/models/flowers:predict", {"instances": images(2).tolist()})
    post(url, "/v1/models/flowers:predict", {"instances": []})
    text = httpx.get(f"{url}/metrics").text

    def value(body, line_start):
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(line_start))

    ok = 'flowerpipe_requests_total{code="200",endpoint="tfs_predict"}'
    bad = 'flowerpipe_requests_total{code="400",endpoint="tfs_predict"}'
    assert value(text, ok) == value(before, ok) + 1 and value(text, bad) == value(before, bad) + 1
    assert value(text, 'flowerpipe_request_seconds_count{endpoint="tfs_predict"}') >= 2
    assert value(text, "flowerpipe_batch_size_sum") >= value(before, "flowerpipe_batch_size_sum") + 2
    assert "flowerpipe_queue_images 0.0" in text and "flowerpipe_model_versions_available 2.0" in text


# ---------------------------------------------------------------- batching


def run_batcher(jobs, max_batch=4, window_ms=50.0, delay=0.05, timeout=5.0, stagger=0.0):
    """Submit jobs (lists of image ids) in order; return (answers or errors, the model's batches)."""
    rec = Recorder(delay=delay)
    batcher = Batcher(rec, max_batch, window_ms)

    async def main():
        async def one(ids, i):
            await asyncio.sleep(i * stagger)
            x = np.zeros((len(ids), SIZE, SIZE, 3), np.float32) + np.array(ids, np.float32)[:, None, None, None]
            try:
                return await batcher.predict(x, timeout)
            except RequestError as exc:
                return exc

        out = await asyncio.gather(*(one(ids, i) for i, ids in enumerate(jobs)))
        await batcher.drain()
        return out

    return asyncio.run(main()), rec.batches, batcher


def test_batcher_is_first_in_first_out_and_never_lets_a_request_overtake():
    answers, batches, batcher = run_batcher([[1, 2, 3], [4, 5, 6], [7], [8, 9], [10]], stagger=0.002)
    assert batches == [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]  # [7] waited behind [4,5,6], which did not fit with [1,2,3]
    assert [len(a) for a in answers] == [3, 3, 1, 2, 1] and batcher.stats.batches == 3
    for ids, a in zip([[1, 2, 3], [4, 5, 6], [7], [8, 9], [10]], answers, strict=True):
        x = np.zeros((len(ids), SIZE, SIZE, 3), np.float32) + np.array(ids, np.float32)[:, None, None, None]
        assert np.allclose(a, colour_model(0)(x))


def test_batcher_deadline_gives_504_and_skips_the_expired_request():
    answers, batches, _ = run_batcher([[1], [2], [3]], max_batch=1, window_ms=0, delay=0.3, timeout=0.45)
    assert isinstance(answers[0], np.ndarray)
    assert all(isinstance(a, RequestError) and a.status == 504 and "deadline" in str(a) for a in answers[1:])
    assert [2] in batches and [3] not in batches  # [3] expired in the queue: the model never saw it


def test_a_caller_that_goes_away_is_dropped_from_the_queue():
    rec = Recorder(delay=0.2)
    batcher = Batcher(rec, 1, 0)

    def image(i):
        return np.full((1, SIZE, SIZE, 3), i, np.float32)

    async def main():
        first = asyncio.create_task(batcher.predict(image(1), 5))
        await asyncio.sleep(0.05)  # [1] is in the model
        gone = asyncio.create_task(batcher.predict(image(2), 5))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client that hung up while [2] waited
        third = await batcher.predict(image(3), 5)
        await batcher.drain()
        return await first, gone.cancelled(), third

    first, cancelled, third = asyncio.run(main())
    assert cancelled and rec.batches == [[1], [3]]  # the model never saw [2]
    assert np.allclose(first, colour_model(0)(image(1))) and np.allclose(third, colour_model(0)(image(3)))


def test_model_exception_fails_only_its_batch_with_500():
    answers, batches, batcher = run_batcher([[13], [1]], max_batch=1, window_ms=0, delay=0)
    assert isinstance(answers[0], RequestError) and answers[0].status == 500 and "blew up" in str(answers[0])
    assert isinstance(answers[1], np.ndarray) and batcher.stats.batches == 1


def test_a_dead_batcher_loop_fails_pending_requests_and_restarts(monkeypatch):
    calls = {"n": 0}
    real_take = Batcher._take

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug in the loop")
        return real_take(self)

    monkeypatch.setattr(Batcher, "_take", flaky)
    answers, _, batcher = run_batcher([[1], [2]], window_ms=20, delay=0)
    assert all(isinstance(a, RequestError) and a.status == 500 for a in answers)
    answers, _, _ = run_batcher([[3]], window_ms=0, delay=0)
    assert isinstance(answers[0], np.ndarray) and batcher.stats.restarts == 1


def test_concurrent_http_requests_each_get_their_own_answer_and_are_batched(server):
    url, repo = server
    x = images(48, seed=3)
    want = colour_model(2)(x)
    batcher = repo.resolve().batcher
    calls = batcher.stats.batches

    def one(i):
        r = post(url, "/v1/models/flowers:predict", {"instances": [x[i].tolist()]})
        return i, np.asarray(r.json()["predictions"][0]["probabilities"])

    with ThreadPoolExecutor(8) as pool:
        for i, probs in pool.map(one, range(48)):
            assert np.allclose(probs, want[i], atol=1e-6)
    assert batcher.stats.batches - calls < 48 and max(batcher.stats.sizes[-10:]) > 1


# ---------------------------------------------------------------- versions and hot reload


def test_hot_reload_while_requests_run(tmp_path):
    base = tmp_path / "flowers"
    write_version(base, 1, seed=1, delay=0.005)
    repo, running = serve(base, keep=2, poll=0.1)
    url, x = running.url, images(1, seed=9)
    stop, seen, failures = threading.Event(), set(), []

    def hammer():
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.post(f"{url}/v1/models/flowers:predict", json={"instances": x.tolist()}, timeout=30)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.add(version_of(r.json()["predictions"][0]["probabilities"], x))

    def wait_for(check, what):
        for _ in range(200):
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {httpx.get(f'{url}/v1/models/flowers').text}")

    def states():
        return {s["version"]: s["state"] for s in httpx.get(f"{url}/v1/models/flowers").json()["model_version_status"]}

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        (base / "2").mkdir()  # a version being copied in: no model file yet, so nothing is loaded
        time.sleep(0.5)
        assert "2" not in states()
        write_version(base, 2, seed=2, delay=0.005)
        wait_for(lambda: states().get("2") == AVAILABLE, "v2")
        wait_for(lambda: 2 in seen, "answers from v2")
        assert version_of(post(url, "/v1/models/flowers/versions/1:predict", {"instances": x.tolist()}).json()
                          ["predictions"][0]["probabilities"], x) == 1  # the old version keeps answering
        write_version(base, 3, broken=True)
        wait_for(lambda: states().get("3") == END, "v3 reported broken")
        status = {s["version"]: s for s in httpx.get(f"{url}/v1/models/flowers").json()["model_version_status"]}
        assert "broken model file" in status["3"]["status"]["error_message"]
        assert post(url, "/v1/models/flowers:predict", {"instances": x.tolist()}).status_code == 200
        write_version(base, 3, seed=3)  # fixed: loaded, and v1 falls out of keep_versions=2
        wait_for(lambda: states() == {"3": AVAILABLE, "2": AVAILABLE, "1": END}, "v3 loaded, v1 unloaded")
        shutil.rmtree(base / "3")
        wait_for(lambda: states() == {"3": END, "2": AVAILABLE, "1": AVAILABLE},
                 "v3 unloaded when its folder went, v1 back within keep_versions=2")
        seen.clear()
        wait_for(lambda: seen == {2}, "answers from v2 again")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        running.stop()
    assert not failures, failures[:3]


def test_a_broken_newest_version_at_start_falls_back_and_none_loading_is_one_error(tmp_path):
    base = tmp_path / "flowers"
    write_version(base, 1, seed=1)
    write_version(base, 2, broken=True)
    repo = Repository("flowers", Source(base=base), loader, Settings(keep_versions=1))
    asyncio.run(repo.start())
    assert [v.number for v in repo.available()] == [1] and repo.versions[2].state == END
    write_version(base, 1, broken=True)
    with pytest.raises(Exception, match="no version of flowers could be loaded"):
        asyncio.run(Repository("flowers", Source(base=base), loader, Settings()).start())


def test_units_route_parse_and_pick_format():
    assert route("flowers/labels/stable:predict").label == "stable"
    assert route("flowers/versions/3/metadata").version == 3
    with pytest.raises(RequestError):
        route("flowers/versions/3/extra")
    x, columnar = parse_predict(json.dumps({"inputs": images(2).tolist()}).encode(), SIZE, 4)
    assert x.shape == (2, SIZE, SIZE, 3) and columnar
    bench = {"results": {"onnx": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 60.0}}},
                         "openvino-float32": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 50.0}}},
                         "tflite-int8": {"cpu": {"b1": {"status": "ok", "latency_ms_median": 10.0}}}}}
    assert pick_format("auto", bench, ["onnx", "openvino-float32", "tflite-int8"]) == "openvino-float32"
    assert pick_format("auto", bench, ["onnx"]) == "onnx"
    assert pick_format("auto", {}, ["savedmodel", "keras"]) == "savedmodel"
    # bfloat16 is faster here, and eligible only with a measured top-1 agreement of at least min_agreement
    bench["results"]["openvino-bfloat16"] = {"cpu": {"b1": {"status": "ok", "latency_ms_median": 30.0}}}
    built = ["onnx", "openvino-float32", "openvino-bfloat16"]
    scored = {"formats": {"openvino-bfloat16": {"status": "ok", "top1_agreement": 0.996}}}
    assert pick_format("auto", bench, built, scored, 0.995) == "openvino-bfloat16"
    assert pick_format("auto", bench, built, scored, 0.999) == "openvino-float32"
    assert pick_format("auto", bench, built, {}, 0.995) == "openvino-float32"  # never scored: not eligible


def test_one_parser_reads_the_versions_of_requests_folders_and_labels(tmp_path):
    """A version is ASCII digits below 2**63 wherever it is written (a unicode digit is a 400, not a 500); a folder
    is a version only when its name is the number written plainly."""
    from flowerpipe.errors import UserError
    from flowerpipe.serving.command import _labels
    from flowerpipe.serving.repository import Source, requested_version

    assert [requested_version(t) for t in ("", None, "0", "7", "007")] == [None, None, 0, 7, 7]
    for bad in ("x", "-1", "1.0", " 1", "\u00b2", "\u0663", "1" * 19):
        with pytest.raises(RequestError, match="^version must be a number"):
            requested_version(bad)
        with pytest.raises(UserError, match="expected NAME=VERSION"):
            _labels([f"stable={bad}"])
    with pytest.raises(RequestError, match="^Malformed request: version must be a number, got '\u00b2'$"):
        route("flowers/versions/\u00b2:predict")
    assert _labels(["stable=1", "canary=0"]) == {"stable": 1, "canary": 0}
    for name in ("0", "01", "\u00b2", "\u0663", "1" * 19, "2", "10"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file")
    assert sorted(Source(base=tmp_path).scan()) == [2, 10]


def test_serving_decoder_matches_the_training_decoder(photos):
    from flowerpipe.data.images import load_image
    from flowerpipe.serving.decode import decode_image

    diffs = []
    for f in sorted(photos.rglob("*.jpg"))[:6]:
        raw = f.read_bytes()
        big = io.BytesIO()
        Image.open(io.BytesIO(raw)).resize((320, 240)).save(big, "JPEG", quality=92)
        for data in (raw, big.getvalue()):
            diffs.append(np.abs(decode_image(data, 47, "x") - load_image(data, 47)).mean())
    assert max(diffs) < 1.5, diffs  # grey levels: the two JPEG decoders round differently, the resize is the same


# ---------------------------------------------------------------- a real model, from a copied model folder alone


@pytest.mark.slow
def test_copied_model_folder_serves_alone_without_tensorflow_under_1000_mixed_requests(project, tmp_path):
    from flowerpipe.data.tfrecord import arrays
    from flowerpipe.measure.loadtest import check_answers, free_port, jpeg_requests, load, rss_mb, running_server
    from flowerpipe.serving.artifacts import load_artifact
    from flowerpipe.serving.decode import decode_all

    repo, _ = project
    shutil.copytree(repo / "models", tmp_path / "models")  # no params, no data, no DVC beside it
    shutil.rmtree(tmp_path / "models" / "converted" / "openvino")  # so that auto picks ONNX
    local = load_artifact(tmp_path / "models" / "converted" / "onnx" / "model.onnx")
    size = local.image_size
    x = np.rint(arrays(repo / "data" / "tfrecords", "test", size, limit=12)[0]).astype(np.float32)
    jpegs = jpeg_requests(x, sizes=(0, 2 * size, 5 * size))
    expected = local.predict(decode_all(jpegs, size))
    with running_server(["models"], free_port(), cwd=tmp_path) as server:
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "tensorflow" not in maps and "onnxruntime" in maps  # ONNX served without TensorFlow
        meta = httpx.get(f"{server.url}/v1/models/flowers/metadata").json()["metadata"]
        assert meta["format"] == "onnx" and meta["classes"] == local.classes
        answers = check_answers(server.url, "flowers", x, local.predict(x))
        assert all(a["top1_agreement"] == 1.0 and a["max_prob_diff"] < 1e-4 for a in answers.values()), answers
        warm = load(server.url, "flowers", jpegs, expected, 8, 200, pid=server.pid)
        first = load(server.url, "flowers", jpegs, expected, 8, 500, pid=server.pid)
        second = load(server.url, "flowers", jpegs, expected, 8, 500, pid=server.pid)
    for r in (warm, first, second):
        assert r["requests"] > 0 and r["errors"] == 0 and r["mismatches"] == 0, r
    assert first["requests"] + second["requests"] == 1000
    growth = second["rss_mb_after"] - first["rss_mb_after"]
    print(f"1000 requests at c8: {first['throughput_rps']:.0f} and {second['throughput_rps']:.0f} req/s, "
          f"p99 {second['latency_ms_p99']:.1f} ms, RSS {warm['rss_mb_after']:.0f} -> {first['rss_mb_after']:.0f} -> "
          f"{second['rss_mb_after']:.0f} MB")
    assert growth < 20, (first, second)  # steady: the second 500 requests do not add memory
    assert rss_mb(0) == 0.0


def test_hostile_images_are_400s_never_decoded_bombs(photos):
    from flowerpipe.serving.decode import decode_image

    bomb = io.BytesIO()
    Image.new("1", (8000, 7000)).save(bomb, "PNG")  # 56 megapixels in a few KB
    jpeg = next(photos.rglob("*.jpg")).read_bytes()
    for data, words in ((bomb.getvalue(), "pixels is over"), (jpeg[: len(jpeg) // 2], "could not be decoded"),
                        (b"", "empty image"), (b"GIF89a" + b"\0" * 20, "not a JPEG")):
        with pytest.raises(RequestError, match=words) as err:
            decode_image(data, SIZE, "instance 0")
        assert err.value.status == 400
    assert len(bomb.getvalue()) < 100_000


def inflight_limit(app) -> InflightLimit:
    """The app's InflightLimit middleware (its count of requests in flight), once the app has served a request."""
    layer = app.middleware_stack
    while not isinstance(layer, InflightLimit):
        layer = layer.app
    return layer


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll a condition until it holds; fail naming what was awaited if it never does within timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_client_that_stalls_mid_body_gets_408_and_blocks_no_one(tmp_path):
    """Two clients stall mid-body at serve.max_inflight 2: a third request is refused at once (503); when one stalled
    client goes, a request is answered while the other is still stalled, and that one gets 408 at its timeout.

    The test waits for states (the server's count of requests in flight), never for a length of time."""
    import socket

    base = tmp_path / "flowers"
    write_version(base, 1, seed=1)
    _, running = serve(base, timeout=2.0, inflight=2)
    limit = inflight_limit(running.server.config.app)
    head = b"POST /v1/models/flowers:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        with socket.create_connection(("127.0.0.1", running.port)) as s, \
                socket.create_connection(("127.0.0.1", running.port)) as s2:
            s.sendall(head + b"Content-Length: 1000\r\n\r\n{\"instances\": [")
            s2.sendall(head + b"Content-Length: 9\r\n\r\n{")
            wait_until(lambda: limit.inflight == 2, "both stalled requests in flight")
            busy = httpx.get(f"{running.url}/v1/models/flowers")  # a third is refused at once, in the error shape
            assert busy.status_code == 503 and "serve.max_inflight" in busy.json()["error"]
            s2.close()
            wait_until(lambda: limit.inflight == 1, "the closed client's request to end")
            assert post(running.url, "/v1/models/flowers:predict", {"instances": images(1).tolist()}).status_code == 200
            # answered while the other stalled request is still waiting for its body: it held up no one
            with pytest.raises(BlockingIOError):
                s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            s.settimeout(30)
            answer = ""
            while "}" not in answer:  # headers and body may come in separate segments
                chunk = s.recv(4096).decode()
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith("HTTP/1.1 408") and "not received within serve.timeout_s=2 s" in answer, answer
        wait_until(lambda: limit.inflight == 0, "the timed-out request to end")
    finally:
        running.stop()


def test_what_to_serve_is_found_from_the_folder_alone(tmp_path):
    from flowerpipe.errors import FormatError
    from flowerpipe.serving.main import plan_from_path

    models = tmp_path / "models"
    (models / "serving" / "roses" / "3").mkdir(parents=True)
    (models / "serving" / "roses" / "3" / "saved_model.pb").write_bytes(b"")
    (models / "converted" / "onnx").mkdir(parents=True)
    (models / "converted" / "onnx" / "model.onnx").write_bytes(b"")
    auto = plan_from_path(models, None, None)
    assert (auto.name, auto.source.fixed, auto.source.version) == ("roses", models / "converted/onnx/model.onnx", 3)
    saved = plan_from_path(models, "savedmodel", "flowers")
    assert saved.name == "flowers" and saved.source.watched and saved.source.base == models / "serving" / "roses"
    base = plan_from_path(models / "serving" / "roses", None, None)
    assert base.name == "roses" and base.source.scan() == {3: models / "serving" / "roses" / "3"}
    one = plan_from_path(models / "converted" / "onnx", None, None)
    assert not one.source.watched and one.source.scan() == {1: models / "converted" / "onnx"}
    with pytest.raises(FormatError, match="no model here"):
        plan_from_path(tmp_path, None, None)


def _tiny_onnx(folder: Path) -> Path:
    """A one-op-deep ONNX classifier of 8x8 images, with its labels.txt."""
    from onnx import TensorProto, helper, numpy_helper

    from flowerpipe.formats.base import write_labels

    w = numpy_helper.from_array(np.linspace(-0.05, 0.05, 15, dtype=np.float32).reshape(3, 5), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 5])], initializer=[w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    write_labels(path, CLASSES)
    return path


def test_serve_device_auto_gpu_and_formats_that_never_run_on_one(tmp_path):
    from conftest import HAS_GPU

    from flowerpipe.errors import FormatError
    from flowerpipe.formats.base import write_labels
    from flowerpipe.serving.artifacts import load_served

    onnx_path = _tiny_onnx(tmp_path)
    x = images(2)
    cpu = load_served(onnx_path, "cpu")
    auto = load_served(onnx_path, "auto")  # the GPU where ONNX Runtime really runs on one, else the CPU
    assert np.allclose(auto.predict(x), cpu.predict(x), atol=1e-4) and auto.format == "onnx"
    if HAS_GPU:
        assert np.allclose(load_served(onnx_path, "gpu").predict(x), cpu.predict(x), atol=1e-4)
    else:
        with pytest.raises(FormatError, match="cannot be served on the GPU: .*no NVIDIA GPU on this machine"):
            load_served(onnx_path, "gpu")
    lite = tmp_path / "lite" / "model.tflite"
    lite.parent.mkdir()
    lite.write_bytes(b"TFL3")
    write_labels(lite, CLASSES)
    with pytest.raises(FormatError, match="serve.device is gpu, but this format never runs on one"):
        load_served(lite, "gpu")
    if not HAS_GPU:  # a TensorRT engine runs on a GPU or nowhere: one line, not a CPU fallback
        engine = tmp_path / "tensorrt" / "model.engine"
        engine.parent.mkdir()
        engine.write_bytes(b"\0" * 64)
        write_labels(engine, CLASSES)
        with pytest.raises(FormatError, match="cannot be served here: no NVIDIA GPU on this machine"):
            load_served(engine, "auto")
