"""The shipped model repository: written from a run's records, parsed by Triton's own model_config.proto, served by
`flowerpipe serve` (as KServe mounts it, with tritonclient over REST and gRPC, hot-loading a new version), and its
KServe manifests read by the pinned kserve SDK's models with no unknown field."""

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import ROOT

from flowerpipe.measure.loadtest import free_ports, running_server
from flowerpipe.params import parse
from flowerpipe.ship import kserve, triton
from flowerpipe.ship.make import ship
from flowerpipe.ship.repository import find, read

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SIZE = 71  # the smallest input Xception takes (model.image_size is checked against it)
BENCH_ENV = {"cpu": "test CPU", "cores": 2, "threads": 2}


# ---------------------------------------------------------------- a run's records, without training anything


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, (3, len(CLASSES))).astype(np.float32)


def reference(images: np.ndarray, seed: int) -> np.ndarray:
    """What the ONNX model below computes: softmax over the mean colour times a seeded matrix."""
    z = images.mean(axis=(1, 2)) @ weights(seed)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def colour_onnx(path: Path, seed: int = 0) -> Path:
    """A real ONNX model, 'image' [N, 71, 71, 3] float32 -> 'probabilities' [N, 5], as the pipeline's are named."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"), numpy_helper.from_array(weights(seed), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    (path.parent / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return path


def openvino_ir(onnx_path: Path, out: Path) -> Path:
    """The same model as OpenVINO IR (model.xml + model.bin), converted by OpenVINO itself, its output named
    output_0 as the pipeline's IR (converted from the SavedModel) names it."""
    import openvino as ov

    out.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    model.outputs[0].get_tensor().set_names({"output_0"})
    ov.save_model(model, str(out), compress_to_fp16=False)
    (out.parent / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return out


def make_run(root: Path, fmt: str = "onnx-int8") -> object:
    """A project folder with one built model and the serve_check, recommend and benchmark records ship reads."""
    converted = root / "models" / "converted"
    onnx_file = colour_onnx(converted / "onnx" / ("model_int8.onnx" if fmt == "onnx-int8" else "model.onnx"))
    if fmt.startswith("openvino"):
        openvino_ir(onnx_file, converted / "openvino" / fmt.split("-", 1)[1] / "model.xml")
    reports = root / "reports"
    reports.mkdir(parents=True)
    serve = {"format": fmt, "load": {"c1": {"throughput_rps": 100.0}, "c8": {"throughput_rps": 300.0}},
             "tuning": {"budget_ms": 100.0, "best": {
                 "c1": {"max_batch": 8, "batch_window_ms": 0.0, "throughput_rps": 100.0, "latency_ms_p99": 12.0},
                 "c8": {"max_batch": 16, "batch_window_ms": 2.5, "throughput_rps": 300.0, "latency_ms_p99": 60.0},
                 "c32": {"none": "no setting answers c32 within p99 100 ms"}}}}
    decision = {"floors": {"min_accuracy_ratio": 0.99, "min_agreement": 0.995, "latency_budget_ms": 100.0},
                "formats": {fmt: {"status": "ok"}},
                "devices": {"cpu": {"latency": {"format": fmt, "batch_size": 1, "ms": 3.3, "ranking": [fmt]}}}}
    bench = {"environment": BENCH_ENV, "results": {fmt: {"cpu": {
        "b1": {"status": "ok", "peak_rss_mb": 300.0}, "b8": {"status": "ok", "peak_rss_mb": 420.0}}}}}
    for name, record in (("serve", serve), ("recommend", decision), ("benchmark", bench)):
        (reports / f"{name}.json").write_text(json.dumps(record))
    return parse({"paths": {p: str(root / v) for p, v in (("converted", "models/converted"), ("reports", "reports"),
                                                          ("ship", "models/ship"), ("serving", "models/serving"),
                                                          ("model", "models/model.keras"))},
                  "model": {"name": "flowers", "image_size": SIZE, "weights": "none"}, "export": {"version": 1},
                  "ship": {"storage_uri": "gs://bucket/flowers-run", "image": "registry.local/flowerpipe-serve:1"}})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The ship stage's output for an onnx-int8 decision."""
    root = tmp_path_factory.mktemp("run")
    return ship(make_run(root)), root


# ---------------------------------------------------------------- the repository


def test_the_repository_is_in_tritons_layout_and_carries_the_decision(shipped):
    s, root = shipped
    repo = root / "models" / "ship" / "repository"
    files = sorted(f.relative_to(repo).as_posix() for f in repo.rglob("*") if f.is_file())
    assert files == ["flowers/1/model.onnx", "flowers/config.pbtxt", "flowers/flowerpipe.json", "flowers/labels.txt"]
    manifest = json.loads((repo / "flowers" / "flowerpipe.json").read_text())
    # the variant travels in the manifest: Triton's file name model.onnx no longer says int8
    assert manifest["format"] == "onnx-int8" and manifest["precision"] == "int8" and manifest["version"] == 1
    assert manifest["decision"]["chosen_by"].startswith("recommend") and manifest["measured_on"] == BENCH_ENV
    assert manifest["serving"]["scale_target"] == 8 and manifest["serving"]["kept_setting"]["max_batch"] == 16
    assert s.classes == CLASSES and find(repo) == s == find(repo / "flowers") and not list(root.glob("models/.ship*"))


def test_a_format_triton_cannot_serve_ships_without_a_config_and_says_why(tmp_path):
    p = make_run(tmp_path, "onnx")
    shutil.rmtree(tmp_path / "models" / "converted" / "onnx")
    tflite = tmp_path / "models" / "converted" / "tflite" / "model_float32.tflite"
    tflite.parent.mkdir(parents=True)
    tflite.write_bytes(b"not opened by ship")  # ship copies files; serving it is tested elsewhere
    (tflite.parent / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    from flowerpipe.formats.registry import ALL_NAMES
    from flowerpipe.formats.registry import find as find_variant

    name = next(n for n in ALL_NAMES if n.startswith("tflite") and find_variant(p, n).path == tflite)
    record = json.loads((tmp_path / "reports" / "serve.json").read_text())
    (tmp_path / "reports" / "serve.json").write_text(json.dumps({**record, "format": name}))
    s = ship(p)
    assert not (s.folder / "config.pbtxt").exists() and (s.folder / "1" / "model.tflite").exists()
    assert "no backend for tflite" in s.manifest["triton"]["reason"]


# ---------------------------------------------------------------- Triton's config, parsed by Triton's proto


def parse_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # an unknown field raises ParseError


def test_onnx_config_parses_with_tritons_model_config_proto(shipped):
    s, _ = shipped
    from tritonclient.grpc import model_config_pb2 as pb

    c = parse_config((s.folder / "config.pbtxt").read_text())
    assert (c.name, c.backend, c.max_batch_size) == ("flowers", "onnxruntime", 16)  # serve_check's kept setting
    assert c.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("image", pb.TYPE_FP32, [SIZE, SIZE, 3])]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in c.output] == [
        ("probabilities", pb.TYPE_FP32, [len(CLASSES)], "labels.txt")]
    assert [(g.count, g.kind) for g in c.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]
    assert c.parameters["intra_op_thread_count"].string_value == "2"  # the threads it was measured with
    assert c.version_policy.latest.num_versions == 1


def test_openvino_config_parses_with_tritons_model_config_proto(tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    s = ship(make_run(tmp_path, "openvino-float32"))
    assert sorted(f.name for f in (s.folder / "1").iterdir()) == ["model.bin", "model.xml"]
    c = parse_config((s.folder / "config.pbtxt").read_text())
    assert c.backend == "openvino" and c.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in c.input] == [("image", [SIZE, SIZE, 3])]
    assert [(o.name, o.data_type) for o in c.output] == [("probabilities", pb.TYPE_FP32)]
    params = {k: v.string_value for k, v in c.parameters.items()}
    assert params == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"}
    # the shipped IR answers as 'probabilities' (Triton and flowerpipe alike), with the built IR's numbers
    import openvino as ov

    from flowerpipe.serving.artifacts import load_artifact

    assert ov.Core().read_model(str(s.folder / "1" / "model.xml")).outputs[0].get_names() == {"probabilities"}
    model = load_artifact(s.folder / "1", classes=s.classes, fmt=s.format)
    x = np.random.default_rng(4).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), reference(x, 0), atol=1e-5)
    assert model.format == "openvino-float32"


def test_a_config_with_an_unknown_field_does_not_parse():
    from google.protobuf.text_format import ParseError

    good = triton.render("m", "onnx", [triton.Tensor("image", "TYPE_FP32", (8, 8, 3))],
                         [triton.Tensor("probabilities", "TYPE_FP32", (5,))], triton.Tuning())
    parse_config(good)
    with pytest.raises(ParseError, match="max_batch"):
        parse_config(good.replace("max_batch_size", "max_batch"))


# ---------------------------------------------------------------- served by flowerpipe serve, as KServe mounts it


def runtime_args(mount: Path) -> list[str]:
    """The ServingRuntime's `flowerpipe serve` arguments with KServe's substitutions made (mount, {{.Name}})."""
    container = kserve.serving_runtime()["spec"]["containers"][0]
    assert container["args"][:3] == ["flowerpipe", "serve", kserve.MOUNT]
    return [str(mount), *(a.replace("{{.Name}}", "flowers") for a in container["args"][3:])]


def test_flowerpipe_serve_runs_the_runtimes_command_on_a_kserve_mount_and_agrees_with_tritons_config(shipped,
                                                                                                      tmp_path):
    """The repository's content copied as KServe's storage initializer puts it at /mnt/models, served with the
    ServingRuntime's own arguments; tritonclient (HTTP and gRPC) finds the tensors config.pbtxt declares."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    s, _ = shipped
    mount = tmp_path / "mnt" / "models"
    shutil.copytree(s.repository, mount)
    config = parse_config((mount / "flowers" / "config.pbtxt").read_text())
    port, grpc_port = free_ports(2)
    x = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.float32)
    with running_server(runtime_args(mount), port, grpc_port=grpc_port) as server:
        for client, mod in ((thttp.InferenceServerClient(server.url[len("http://"):]), thttp),
                            (tgrpc.InferenceServerClient(server.grpc), tgrpc)):
            meta = client.get_model_metadata("flowers", as_json=True) if mod is tgrpc else \
                client.get_model_metadata("flowers")
            assert meta["platform"] == "onnxruntime_onnx"
            if mod is thttp:  # the variant the manifest names, not what the file name model.onnx would say
                assert meta["parameters"]["format"] == "onnx-int8"
            declared = triton.v2_metadata(
                [triton.Tensor(i.name, "TYPE_FP32", tuple(i.dims)) for i in config.input],
                [triton.Tensor(o.name, "TYPE_FP32", tuple(o.dims)) for o in config.output])
            for kind in ("inputs", "outputs"):
                served = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta[kind]}
                for t in declared[kind]:
                    assert served[t["name"]] == (t["datatype"], t["shape"]), (kind, served)
            inp = mod.InferInput(config.input[0].name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = client.infer("flowers", [inp], outputs=[mod.InferRequestedOutput(config.output[0].name)])
            np.testing.assert_allclose(out.as_numpy(config.output[0].name), reference(x, 0), atol=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_server_cleanly_with_one_line_and_exit_0(shipped, sig):
    """Ctrl-C (a user) or SIGTERM (Kubernetes, systemd) is how `flowerpipe serve` is stopped: requests drain, one
    line says so, no traceback, exit 0."""
    s, _ = shipped
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "flowerpipe.serving.command", str(s.repository), "--host",
                             "127.0.0.1", "--port", str(port), "--grpc-port", "-1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)[-2000:]
        deadline, ready = time.time() + 120, False
        while not ready and time.time() < deadline:  # the line comes as uvicorn starts: signal once it answers
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
            time.sleep(0 if ready else 0.1)
        assert ready, "the server never answered /v2/health/ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == "server stopped", out[-2000:]
    assert "Traceback" not in out and "unloading" in out  # the versions were drained before the line


def test_a_new_version_folder_is_hot_loaded_while_clients_call(shipped, tmp_path):
    """v2 (other weights) copied in beside v1 under a temporary name and renamed: the server loads it and answers
    with it, and not one of the calls made meanwhile fails."""
    import httpx

    s, _ = shipped
    copy_ = tmp_path / "copy"
    shutil.copytree(s.repository, copy_)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"serve": {"poll_s": 0.2}}))
    x = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    port = free_ports(1)[0]
    answers, errors, stop = [], [], threading.Event()
    with running_server([str(copy_)], port, params_file=str(params)) as server:
        def call():
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"{server.url}/v2/models/flowers/infer", json=body)
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    answers.append(r.json())

        clients = [threading.Thread(target=call) for _ in range(2)]
        for t in clients:
            t.start()
        try:
            staged = copy_ / "flowers" / ".2.tmp"
            staged.mkdir()
            colour_onnx(staged / "model.onnx", seed=3)
            (staged / "labels.txt").unlink()  # the model folder's labels.txt serves every version
            staged.rename(copy_ / "flowers" / "2")
            while not any(a["model_version"] == "2" for a in answers):
                if not all(t.is_alive() for t in clients) or errors:
                    break
                stop.wait(0.05)  # a state is waited for: the first answer from v2
        finally:
            stop.set()
            for t in clients:
                t.join()
        status = httpx.get(f"{server.url}/v1/models/flowers").json()["model_version_status"]
    assert not errors, errors[:3]
    assert [v["version"] for v in status if v["state"] == "AVAILABLE"][0] == "2"
    last = answers[-1]
    assert last["model_version"] == "2"
    probs = np.array(last["outputs"][0]["data"]).reshape(2, -1)
    np.testing.assert_allclose(probs, reference(x, 3), atol=1e-5)
    assert {a["model_version"] for a in answers} <= {"1", "2"} and answers[0]["model_version"] == "1"


def test_a_copied_models_folder_serves_its_shipped_decision_not_a_static_rank(shipped, tmp_path):
    from flowerpipe.serving.main import plan_from_path

    s, root = shipped
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    plan = plan_from_path(models, None, None)
    assert plan.format == "onnx-int8" and plan.source.base == models / "ship" / "repository" / "flowers"
    assert plan.source.watched and plan.classes == CLASSES


# ---------------------------------------------------------------- KServe manifests, read by the pinned SDK


def kserve_models():
    """The pinned kserve SDK's generated models (kserve.models), loaded without kserve/__init__, which imports the
    SDK's server stack (installed --no-deps: locks/nodeps.txt). The models need only six and urllib3."""
    import importlib
    import importlib.util
    import types

    if "kserve.models" in sys.modules:
        return sys.modules["kserve.models"]
    spec = importlib.util.find_spec("kserve")
    if spec is None:
        pytest.skip("the kserve SDK is installed by make test (locks/nodeps.txt)")
    if "kserve" not in sys.modules:
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec  # find_spec("kserve") elsewhere in the session (tools/protos.py) reads it
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


# Kubernetes core types inside the KServe objects (the SDK takes them from the kubernetes client, not installed):
# their keys as KServe's CRDs declare them (kserve/kserve config/crd/full/serving.kserve.io_servingruntimes.yaml,
# read when this test was written), and the core types of their own keys.
K8S = {
    "V1ObjectMeta": ({"name", "namespace", "labels", "annotations"}, {}),
    "V1Container": ({"args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
                     "name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy",
                     "restartPolicyRules", "securityContext", "startupProbe", "stdin", "stdinOnce",
                     "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts",
                     "workingDir"},
                    {"ports": "list[V1ContainerPort]", "resources": "V1ResourceRequirements",
                     "readinessProbe": "V1Probe"}),
    "V1ContainerPort": ({"containerPort", "hostIP", "hostPort", "name", "protocol"}, {}),
    "V1ResourceRequirements": ({"claims", "limits", "requests"}, {}),
    "V1Probe": ({"exec", "failureThreshold", "grpc", "httpGet", "initialDelaySeconds", "periodSeconds",
                 "successThreshold", "tcpSocket", "terminationGracePeriodSeconds", "timeoutSeconds"},
                {"httpGet": "V1HTTPGetAction"}),
    "V1HTTPGetAction": ({"host", "httpHeaders", "path", "port", "scheme"}, {}),
}
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
# Values KServe accepts where the SDK's models take any string: the CRD's enum for scaleMetric, and the deployment
# modes pkg/constants names (Knative and Standard; Serverless and RawDeployment are their deprecated names).
ENUMS = {("V1beta1PredictorSpec", "scaleMetric"): {"cpu", "memory", "concurrency", "rps"}}
MODES = {"Knative", "Standard", "Serverless", "RawDeployment"}


def strict(data, type_name: str, where: str = ""):
    """The SDK model for data, refusing what the SDK's own deserializer (ApiClient.__deserialize_model) silently
    drops: a key its attribute_map does not know. Kubernetes core types are checked against the CRD's keys."""
    models = kserve_models()
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list"
        return [strict(x, type_name[5:-1], f"{where}[{i}]") for i, x in enumerate(data)]
    if type_name.startswith("dict("):
        assert isinstance(data, dict), f"{where}: expected a mapping"
        inner = type_name[5:-1].split(", ", 1)[1]
        return {k: strict(v, inner, f"{where}.{k}") for k, v in data.items()}
    if type_name in SCALARS:
        assert isinstance(data, SCALARS[type_name]), f"{where}: expected {type_name}, got {data!r}"
        return data
    if type_name in K8S:
        keys, nested = K8S[type_name]
        assert isinstance(data, dict) and not set(data) - keys, f"{where}: unknown {type_name} field " \
                                                                f"{sorted(set(data) - keys)}"
        for k, v in data.items():
            if k in nested:
                strict(v, nested[k], f"{where}.{k}")
        return data
    cls = getattr(models, type_name)
    by_json = {j: a for a, j in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    assert not unknown, f"{where or type_name}: unknown field {unknown} (not in the pinned SDK's {type_name})"
    for (owner, key), allowed in ENUMS.items():
        assert owner != type_name or key not in data or data[key] in allowed, f"{where}.{key}: {data[key]!r}"
    kwargs = {by_json[k]: strict(v, cls.openapi_types[by_json[k]], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)  # the SDK's own checks (client_side_validation) run here


KINDS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}


def manifests(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def parsed(doc: dict):
    assert doc["apiVersion"] in ("serving.kserve.io/v1beta1", "serving.kserve.io/v1alpha1")
    mode = doc["metadata"].get("annotations", {}).get(kserve.MODE)
    assert mode is None or mode in MODES, f"deploymentMode {mode!r}"
    return strict(doc, KINDS[doc["kind"]], doc["kind"])


def test_the_sdk_reads_every_manifest_and_refuses_an_unknown_field(shipped):
    s, _ = shipped
    files = [*sorted((s.repository.parent / "kserve").glob("*.yaml")), ROOT / "deploy" / "kserve-servingruntime.yaml",
             ROOT / "deploy" / "kserve-inferenceservice.yaml"]
    assert len(files) == 5
    for f in files:
        for doc in manifests(f):
            parsed(doc)
    doc = manifests(files[0])[0]
    bad = copy.deepcopy(doc)
    bad["spec"]["predictor"]["scaleMetrics"] = "concurrency"  # a typo the SDK's deserializer would drop
    with pytest.raises(AssertionError, match="scaleMetrics"):
        parsed(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["predictor"]["model"]["resources"]["request"] = {"cpu": "1"}
    with pytest.raises(AssertionError, match="request"):
        parsed(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["predictor"]["scaleMetric"] = "inflight"
    with pytest.raises(AssertionError, match="inflight"):
        parsed(bad)


def test_the_inference_services_follow_the_runs_decision(shipped):
    s, _ = shipped
    folder = s.repository.parent / "kserve"
    knative, = manifests(folder / "inferenceservice.yaml")
    standard, = manifests(folder / "inferenceservice-standard.yaml")
    runtimes = {d["metadata"]["name"]: d for d in manifests(folder / "servingruntime.yaml")}
    for isvc, mode in ((knative, "Knative"), (standard, "Standard")):
        pred = isvc["spec"]["predictor"]
        model = pred["model"]
        assert isvc["metadata"]["annotations"][kserve.MODE] == mode and isvc["metadata"]["name"] == "flowers"
        assert model["storageUri"] == "gs://bucket/flowers-run"  # the repository's content, uploaded
        assert model["resources"]["requests"] == {"cpu": "2", "memory": "768Mi"}  # measured threads; 1.5 x 420 MB
        runtime = runtimes[model["runtime"]]
        assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
        assert runtime["spec"]["containers"][0]["image"] == "registry.local/flowerpipe-serve:1"
    # Knative: concurrency scaling at what serve_check kept within the budget (c8; c32 had no setting in budget)
    assert (knative["spec"]["predictor"]["scaleMetric"], knative["spec"]["predictor"]["scaleTarget"]) == \
        ("concurrency", 8)
    ports = lambda isvc: runtimes[isvc["spec"]["predictor"]["model"]["runtime"]]["spec"]["containers"][0]["ports"]  # noqa: E731
    assert [p["name"] for p in ports(knative)] == ["http1"]  # a Knative revision exposes one port
    assert [p["name"] for p in ports(standard)] == ["http1", "h2c"]  # one service: REST first, then gRPC


def test_the_serving_runtime_is_what_kserve_expects_of_a_custom_runtime():
    rt, rest = manifests(ROOT / "deploy" / "kserve-servingruntime.yaml")
    spec = rt["spec"]
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    container, = spec["containers"]
    assert container["name"] == "kserve-container"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", 8080), ("h2c", 9000)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert f"--port={container['ports'][0]['containerPort']}" in container["args"]
    assert f"--grpc-port={container['ports'][1]['containerPort']}" in container["args"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"flowerpipe", "onnx", "openvino", "tflite"}
    assert "--grpc-port=-1" in rest["spec"]["containers"][0]["args"]
    assert "grpc-v2" not in rest["spec"]["protocolVersions"]


def test_the_slim_image_serves_the_formats_the_runtime_lists():
    """supportedModelFormats follow deploy/Dockerfile.serve's lock: ONNX Runtime, OpenVINO and LiteRT, no TensorFlow."""
    from test_dependencies import lock

    pins = lock("serve")
    assert {"onnxruntime", "openvino", "ai-edge-litert"} <= set(pins)
    assert not {"tensorflow", "tensorflow-cpu"} & set(pins)
    assert set(kserve.SLIM_FORMATS) == {"onnx", "openvino", "tflite"}


def test_the_tf_serving_variant_pins_the_exporting_tensorflow():
    isvc, = manifests(ROOT / "deploy" / "kserve-inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "kserve-tensorflow-serving" and model["runtimeVersion"] == kserve.locked_tensorflow()
    assert [p["name"] for p in model["ports"]] == ["http1", "h2c"]  # one Standard-mode service, REST and gRPC


def test_the_deploy_manifests_are_current():
    assert kserve.main(["--check"]) == 0, "run python -m flowerpipe.ship.kserve"


def test_read_names_a_broken_manifest(tmp_path):
    from flowerpipe.errors import FormatError

    (tmp_path / "flowerpipe.json").write_text("{}")
    with pytest.raises(FormatError, match="no format, family, image_size"):
        read(tmp_path)


def test_the_check_command_times_the_runtime_then_loads_the_server_and_finds_no_mismatch(shipped, tmp_path):
    from flowerpipe.ship.check import check

    s, _ = shipped
    record = check(s.repository, concurrency=2, requests=8, min_seconds=0.1)
    assert record["format"] == "onnx-int8" and record["triton_config"]["backend"] == "onnxruntime"
    assert record["runtime_batch2"]["images_per_s"] > 0
    for key in ("grpc_v2_c2", "rest_jpeg_c2"):
        assert record[key]["errors"] == 0 and record[key]["mismatches"] == 0 and record[key]["requests"] == 8


def test_a_savedmodel_ships_in_tf_servings_layout_with_the_exporting_tensorflow_pinned(tmp_path):
    p = make_run(tmp_path, "onnx")
    base = tmp_path / "models" / "serving" / "flowers" / "1"
    (base / "variables").mkdir(parents=True)
    (base / "saved_model.pb").write_bytes(b"copied, not opened")
    (base / "variables" / "variables.index").write_bytes(b"")
    (base / "assets").mkdir()
    (base / "assets" / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    record = json.loads((tmp_path / "reports" / "serve.json").read_text())
    (tmp_path / "reports" / "serve.json").write_text(json.dumps({**record, "format": "savedmodel"}))
    s = ship(p)
    assert (s.folder / "1" / "saved_model.pb").exists() and (s.folder / "1" / "variables" / "variables.index").exists()
    assert not (s.folder / "config.pbtxt").exists() and "25.03" in s.manifest["triton"]["reason"]
    isvc, = manifests(s.repository.parent / "kserve" / "inferenceservice.yaml")
    parsed(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == kserve.tensorflow_version() and model["storageUri"] == "gs://bucket/flowers-run/flowers"
