"""gRPC beside REST, checked with clients nobody here wrote: tritonclient.grpc and TF Serving's own API stubs."""

import asyncio
import base64
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from test_serve import CLASSES, SIZE, colour_model, images, loader, version_of, write_version

from flowerpipe.serving.app import create_app
from flowerpipe.serving.client import to_png_b64
from flowerpipe.serving.repository import Repository, Settings, Source
from flowerpipe.serving.service import Limits, Service


class Both:
    """REST and gRPC over one Service on one event loop, in a thread, each on a free loopback port."""

    def __init__(self, base, keep=2, poll=0.0, timeout=5.0, labels=None, max_body=200_000, delay_start=0.0):
        import uvicorn

        from flowerpipe.measure.loadtest import free_port
        from flowerpipe.serving.grpc_api import GrpcServer

        self.repo = Repository("flowers", Source(base=base), loader,
                               Settings(max_batch=16, window_ms=5.0, keep_versions=keep, labels=labels or {}))
        self.service = Service(self.repo, Limits(max_body_bytes=max_body, timeout_s=timeout, poll_s=poll))
        self.grpc = GrpcServer(self.service, "127.0.0.1", 0, grace_s=5.0)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service, grpc=self.grpc), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200 and self.grpc.port:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        self.target = f"127.0.0.1:{self.grpc.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    base = tmp_path_factory.mktemp("grpc") / "flowers"
    write_version(base, 1, seed=1, delay=0.01)
    write_version(base, 2, seed=2, delay=0.01)
    running = Both(base, labels={"stable": 1})
    yield running
    running.stop()


def pngs(x):
    return [base64.b64decode(to_png_b64(i)["b64"]) for i in x]


# ---------------------------------------------------------------- KServe V2 with NVIDIA's tritonclient.grpc


def test_tritonclient_grpc_live_ready_metadata_and_infer(both):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(both.target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("flowers", "1")
    meta = client.get_model_metadata("flowers", as_json=True)
    assert meta["name"] == "flowers" and meta["versions"] == ["2", "1"]
    assert [i["name"] for i in meta["inputs"]] == ["image", "image_bytes"]
    assert client.get_server_metadata(as_json=True)["name"] == "flowerpipe"
    x = images(3)
    inp = triton.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("flowers", [inp], model_version="1", request_id="g1")
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"
    assert np.allclose(result.as_numpy("probabilities"), colour_model(1)(x), atol=1e-6)
    assert result.as_numpy("class_index").tolist() == colour_model(1)(x).argmax(1).tolist()
    assert [n.decode() for n in result.as_numpy("class_name")] == [CLASSES[i] for i in colour_model(1)(x).argmax(1)]
    enc = triton.InferInput("image_bytes", [3], "BYTES")
    enc.set_data_from_numpy(np.array(pngs(x), dtype=np.object_))
    out = client.infer("flowers", [enc], outputs=[triton.InferRequestedOutput("probabilities")])
    assert np.allclose(out.as_numpy("probabilities"), colour_model(2)(x), atol=1e-5)
    assert out.as_numpy("class_name") is None  # only what was asked for
    u8 = triton.InferInput("image", list(x.shape), "UINT8")
    u8.set_data_from_numpy(x.astype(np.uint8))
    assert np.allclose(client.infer("flowers", [u8]).as_numpy("probabilities"), colour_model(2)(x), atol=1e-6)
    client.close()


def test_v2_grpc_answers_as_rest_and_typed_contents_work(both):
    from flowerpipe.serving import protos

    x = images(2, seed=3)
    rest = httpx.post(f"{both.url}/v2/models/flowers/infer", json={"inputs": [
        {"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}).json()
    with grpc.insecure_channel(both.target) as channel:
        infer = protos.stub(channel, protos.INFERENCE_SERVICE, "ModelInfer")
        req = protos.message("inference.ModelInferRequest")(model_name="flowers")
        t = req.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = infer(req)
    got = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(list(resp.outputs[0].shape))
    assert np.allclose(got, np.reshape(rest["outputs"][0]["data"], rest["outputs"][0]["shape"]), atol=1e-6)


# ---------------------------------------------------------------- TF Serving's own stubs (tensorflow-serving-api)


def tfs_request(signature, x, version=None, label=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "flowers"
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    if signature == "serving_bytes":
        req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(pngs(x)))
    else:
        req.inputs["image"].CopyFrom(tf.make_tensor_proto(x if signature == "serving_default" else x.astype(np.uint8)))
    return req


def test_tf_serving_stubs_predict_on_each_signature_metadata_and_status(both):
    pytest.importorskip("tensorflow_serving", reason="tensorflow-serving-api is installed by make test "
                                                     "(locks/nodeps.txt)")
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    x = images(2, seed=4)
    rest = httpx.post(f"{both.url}/v1/models/flowers:predict", json={"instances": x.tolist()}).json()
    with grpc.insecure_channel(both.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature in ("serving_default", "serving_uint8", "serving_bytes"):
            resp = stub.Predict(tfs_request(signature, x), 10)
            probs = tf.make_ndarray(resp.outputs["probabilities"])
            assert np.allclose(probs, colour_model(2)(x), atol=1e-5), signature
            assert np.allclose(probs, [p["probabilities"] for p in rest["predictions"]], atol=1e-5)
            assert [n.decode() for n in tf.make_ndarray(resp.outputs["class_name"])] == \
                [p["class_name"] for p in rest["predictions"]]
            assert resp.model_spec.version.value == 2 and resp.model_spec.signature_name == signature
        resp = stub.Predict(tfs_request("serving_default", x, label="stable"), 10)
        assert version_of(tf.make_ndarray(resp.outputs["probabilities"]), x) == 1
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        req.model_spec.name = "flowers"
        meta = stub.GetModelMetadata(req, 10)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sigs)
        assert set(sigs.signature_def) == {"serving_default", "serving_uint8", "serving_bytes"}
        image = sigs.signature_def["serving_uint8"].inputs["image"]
        assert image.dtype == tf.uint8.as_datatype_enum and [d.size for d in image.tensor_shape.dim] == [-1, 8, 8, 3]
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "flowers"}), 10)
        assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]  # AVAILABLE


# ---------------------------------------------------------------- malformed requests: one status and message each


def _infer_request(**kw):
    from flowerpipe.serving import protos

    req = protos.message("inference.ModelInferRequest")(model_name=kw.pop("model", "flowers"),
                                                         model_version=kw.pop("version", ""))
    if "inputs" in kw:
        for name, dtype, shape in kw["inputs"]:
            req.inputs.add(name=name, datatype=dtype, shape=shape)
    req.raw_input_contents.extend(kw.get("raw", []))
    return req


BAD_V2 = [
    ("wrong dtype", dict(inputs=[("image", "INT64", [1, SIZE, SIZE, 3])], raw=[b"\0" * SIZE * SIZE * 24]),
     "INVALID_ARGUMENT", "FP32 or UINT8"),
    ("wrong shape", dict(inputs=[("image", "FP32", [1, 4, 4, 3])], raw=[b"\0" * 4 * 4 * 12]),
     "INVALID_ARGUMENT", "shape must be"),
    ("truncated raw", dict(inputs=[("image", "FP32", [1, SIZE, SIZE, 3])], raw=[b"\0" * 100]),
     "INVALID_ARGUMENT", "bytes for"),
    ("empty", dict(), "INVALID_ARGUMENT", "exactly one tensor"),
    ("empty batch", dict(inputs=[("image", "FP32", [0, SIZE, SIZE, 3])], raw=[b""]), "INVALID_ARGUMENT",
     "batch of 0"),
    ("unknown model", dict(model="nope", inputs=[("image", "FP32", [1])]), "NOT_FOUND", "Servable not found"),
    ("unknown version", dict(version="9", inputs=[("image", "FP32", [1])]), "NOT_FOUND", "Specific(flowers, 9)"),
    ("bad version", dict(version="x", inputs=[("image", "FP32", [1])]), "INVALID_ARGUMENT", "must be a number"),
    ("lying BYTES", dict(inputs=[("image_bytes", "BYTES", [1])], raw=[b"\xff\0\0\0abc"]), "INVALID_ARGUMENT",
     "runs past"),
    ("not an image", dict(inputs=[("image_bytes", "BYTES", [1])], raw=[b"\3\0\0\0abc"]), "INVALID_ARGUMENT",
     "not a JPEG"),
    ("too many raw", dict(inputs=[("image", "FP32", [1, SIZE, SIZE, 3])], raw=[b"", b""]), "INVALID_ARGUMENT",
     "raw_input_contents has 2"),
]


@pytest.mark.parametrize("case,kw,code,words", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_malformed_v2_grpc_requests_are_one_status_and_the_server_stays_up(both, case, kw, code, words):
    from flowerpipe.serving import protos

    with grpc.insecure_channel(both.target) as channel:
        infer = protos.stub(channel, protos.INFERENCE_SERVICE, "ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            infer(_infer_request(**kw), timeout=10)
        assert err.value.code().name == code and words in err.value.details(), err.value.details()
        live = protos.stub(channel, protos.INFERENCE_SERVICE, "ServerLive")
        assert live(protos.message("inference.ServerLiveRequest")(), timeout=10).live


def test_malformed_tfs_grpc_requests_and_raw_bytes(both):
    from flowerpipe.serving import protos

    x = images(1)
    with grpc.insecure_channel(both.target) as channel:
        predict = protos.stub(channel, protos.PREDICTION_SERVICE, "Predict")
        req_cls = protos.message("tensorflow.serving.PredictRequest")

        def request(signature="", key="image", dtype=1, shape=(1, SIZE, SIZE, 3), content=None, name="flowers"):
            req = req_cls()
            req.model_spec.name, req.model_spec.signature_name = name, signature
            t = req.inputs[key]
            t.dtype = dtype
            for d in shape:
                t.tensor_shape.dim.add(size=d)
            t.tensor_content = x.astype("<f4").tobytes() if content is None else content
            return req

        splat = request(shape=(10**9, SIZE, SIZE, 3), content=b"")
        splat.inputs["image"].float_val.append(0.0)  # TF's convention: one value fills the shape
        cases = [(request(dtype=4), "INVALID_ARGUMENT", "expects image as DT_FLOAT but DT_UINT8"),
                 (request(key="pixels"), "INVALID_ARGUMENT", "alias not found"),
                 (request(shape=(1, 4, 4, 3), content=b"\0" * 192), "INVALID_ARGUMENT", "wrong shape"),
                 (request(content=b"\0" * 10), "INVALID_ARGUMENT", "tensor_content holds 10 bytes"),
                 (request(shape=(10**9, SIZE, SIZE, 3), content=b""), "INVALID_ARGUMENT", "this server takes at most"),
                 (splat, "INVALID_ARGUMENT", "this server takes at most"),  # one value filling a huge shape
                 (request(signature="classify"), "INVALID_ARGUMENT", "unknown signature_name"),
                 (request(name="nope"), "NOT_FOUND", "Servable not found"),
                 (req_cls(), "NOT_FOUND", "Servable not found")]
        for req, code, words in cases:
            with pytest.raises(grpc.RpcError) as err:
                predict(req, timeout=10)
            assert err.value.code().name == code and words in err.value.details(), err.value.details()
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x0a\xff\xff\xff", timeout=10)  # a length that runs past the message
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            predict(request(content=b"\0" * 300_000), timeout=10)  # over max_body_bytes
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        missing = channel.unary_unary("/tensorflow.serving.PredictionService/Classify")
        with pytest.raises(grpc.RpcError) as err:
            missing(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert predict(request(), timeout=10).outputs["probabilities"].tensor_shape.dim[1].size == len(CLASSES)


def test_grpc_health_checking_and_metrics(both):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(both.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    text = httpx.get(f"{both.url}/metrics").text
    assert 'flowerpipe_requests_total{code="OK",endpoint="grpc_tfs_predict"}' in text or \
        'endpoint="grpc_v2_infer"' in text


def test_a_client_deadline_is_honoured(tmp_path):
    import tritonclient.grpc as triton

    base = tmp_path / "flowers"
    write_version(base, 1, seed=1, delay=1.0)
    running = Both(base)
    try:
        client = triton.InferenceServerClient(running.target)
        inp = triton.InferInput("image", [1, SIZE, SIZE, 3], "FP32")
        inp.set_data_from_numpy(images(1))
        started = time.monotonic()
        with pytest.raises(Exception, match="(?i)deadline.exceeded"):
            client.infer("flowers", [inp], client_timeout=0.2)
        assert time.monotonic() - started < 0.9
        assert client.is_server_live()
    finally:
        running.stop()


def test_hot_reload_over_both_protocols_at_once_loses_no_request(tmp_path):
    """A new version appears, then the oldest is removed, while REST and gRPC clients send without pause."""
    import tritonclient.grpc as triton

    base = tmp_path / "flowers"
    write_version(base, 1, seed=1, delay=0.005)
    running = Both(base, keep=1, poll=0.1)
    x = images(2, seed=9)
    stop = threading.Event()
    errors, seen = [], set()

    def rest():
        with httpx.Client(timeout=20) as http:
            while not stop.is_set():
                r = http.post(f"{running.url}/v2/models/flowers/infer", json={"inputs": [
                    {"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
                if r.status_code != 200:
                    errors.append(("rest", r.status_code, r.text))
                else:
                    seen.add(("rest", version_of(np.reshape(r.json()["outputs"][0]["data"], (2, 5)), x)))

    def grpc_client():
        client = triton.InferenceServerClient(running.target)
        inp = triton.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                seen.add(("grpc", version_of(client.infer("flowers", [inp]).as_numpy("probabilities"), x)))
            except Exception as exc:  # noqa: BLE001 (every failure is the test's finding)
                errors.append(("grpc", repr(exc)))
        client.close()

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(f) for f in (rest, rest, grpc_client, grpc_client)]
            time.sleep(0.5)
            write_version(base, 2, seed=2, delay=0.005)
            for _ in range(100):
                if running.repo.available()[0].number == 2:
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            shutil.rmtree(base / "1")
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result()
    finally:
        stop.set()
        running.stop()
    assert errors == []
    assert {("rest", 1), ("rest", 2), ("grpc", 1), ("grpc", 2)} <= seen


def test_the_descriptors_are_those_of_the_pinned_published_protos():
    pytest.importorskip("tensorflow_serving", reason="tensorflow-serving-api is installed by make test")
    from tools.protos import OUT, published, render

    assert OUT.read_text() == render(published()), "run make protos"


def test_a_taken_grpc_port_is_one_line_before_any_model_loads(tmp_path):
    import socket

    from flowerpipe.params import Serve
    from flowerpipe.serving.main import Plan
    from flowerpipe.serving.main import serve as serve_main

    class Unloadable(Source):
        def scan(self):
            raise AssertionError("a model was looked for before the gRPC port was taken")

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen for gRPC on 127.0.0.1:{port}: "):
            serve_main(Plan("flowers", Unloadable(base=tmp_path)), Serve(), "127.0.0.1", 0, grpc_port=port)


def test_client_command_over_grpc_for_both_protocols(both, tmp_path, capsys):
    from PIL import Image

    from flowerpipe.cli import main

    x = images(2, seed=6)
    for i, img in enumerate(x):
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"{i}.png")
    expected = [CLASSES[i] for i in colour_model(2)(x).argmax(1)]
    for protocol in ("tfs", "v2"):
        assert main(["client", str(tmp_path), "--grpc", both.target, "--protocol", protocol]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert [line.split(": ")[1].split(" (")[0] for line in lines] == expected, lines
    assert main(["client", str(tmp_path), "--grpc", both.target, "--model", "nope"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: server answered NOT_FOUND: Servable not found")
    assert main(["client", str(tmp_path), "--grpc", "127.0.0.1:9", "--timeout", "3"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: cannot reach the gRPC server")


def test_shutdown_finishes_the_calls_in_flight_and_refuses_new_ones_unavailable(tmp_path):
    import tritonclient.grpc as triton
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    base = tmp_path / "flowers"
    write_version(base, 1, seed=1, delay=2.0)
    running = Both(base)
    x = images(1)
    with ThreadPoolExecutor(1) as pool:
        client = triton.InferenceServerClient(running.target)
        inp = triton.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        in_flight = pool.submit(client.infer, "flowers", [inp])
        time.sleep(0.3)  # the call is in the model, for 2 s
        running.server.should_exit = True  # what SIGTERM does
        seen = []
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(30):  # NOT_SERVING first, then the port refuses: UNAVAILABLE
                try:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(
                        health.Check(health_pb2.HealthCheckRequest(), timeout=2).status))
                except grpc.RpcError as exc:
                    seen.append(exc.code().name)
                    break
                time.sleep(0.05)
        assert seen[-1] == "UNAVAILABLE" and set(seen[:-1]) <= {"SERVING", "NOT_SERVING"}, seen
        assert not in_flight.done()  # refused while the call in flight still runs
        assert np.allclose(in_flight.result(timeout=10).as_numpy("probabilities"), colour_model(1)(x), atol=1e-6)
    running.thread.join(20)
    assert not running.thread.is_alive()


def test_client_reads_an_answer_without_probabilities_as_one_error_and_leaves_it_unchanged():
    from flowerpipe.serving import protos
    from flowerpipe.serving.errors import RequestError
    from flowerpipe.serving.grpc_client import probabilities

    answer = protos.message("tensorflow.serving.PredictResponse")()
    answer.outputs["scores"].dtype = protos.DT_FLOAT
    with pytest.raises(RequestError, match="without a 'probabilities' output"):
        probabilities(answer, "tfs")
    assert list(answer.outputs) == ["scores"]  # reading did not add an empty 'probabilities' entry
    answer.outputs["probabilities"].float_val.extend([0.25, 0.75])
    answer.outputs["probabilities"].tensor_shape.dim.add().size = 1
    answer.outputs["probabilities"].tensor_shape.dim.add().size = 2
    probs, names = probabilities(answer, "tfs")
    assert probs.tolist() == [[0.25, 0.75]] and names == []  # no class_name output: no names, no empty entry
    assert "class_name" not in answer.outputs
