"""Write flowerpipe/serving/protos/descriptors.py from the published gRPC APIs' descriptors (`make protos`).

The sources, each the compiled form of its project's published .proto files, taken from the pinned wheels:
- TensorFlow Serving 2.21.0's tensorflow_serving/apis/*.proto: the tensorflow-serving-api 2.21.0 wheel;
- the TensorFlow 2.21.0 protos they import (tensorflow/core/..., xla/tsl/...): the tensorflow-cpu 2.21.0 wheel;
- KServe V2's grpc_predict_v2.proto (the Open Inference Protocol): the kserve 0.21.0 wheel;
- google/protobuf/*.proto: protobuf.
No registry package ships the .proto sources themselves; the descriptors are what protoc compiled from them, so
the messages and services built from them are wire-identical to those of TF Serving's and KServe's own stubs.
tensorflow-serving-api and kserve are installed without their dependencies by `make test` (locks/nodeps.txt).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "flowerpipe" / "serving" / "protos" / "descriptors.py"
TFS_MODULES = ("tensorflow_serving.apis.prediction_service_pb2", "tensorflow_serving.apis.model_service_pb2",
               "tensorflow_serving.apis.prediction_log_pb2")
KSERVE_PB2 = "protocol/grpc/grpc_predict_v2_pb2.py"  # inside the kserve package (its __init__ needs all of KServe)
SOURCES = ("tensorflow-serving-api", "tensorflow-cpu", "kserve", "protobuf")


def _kserve_file() -> bytes:
    """KServe's serialized descriptor, read from its generated module's source without running it (the module would
    add it to protobuf's default pool, where tritonclient's Triton protos already define the same `inference.*`)."""
    spec = importlib.util.find_spec("kserve")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("kserve is not installed: pip install --no-deps -r locks/nodeps.txt")
    path = Path(spec.submodule_search_locations[0]) / KSERVE_PB2
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise SystemExit(f"{path}: no AddSerializedFile call")


def published() -> list[bytes]:
    """Every file the APIs need, dependencies first, as serialized FileDescriptorProtos."""
    from google.protobuf import descriptor_pb2

    seen: dict[str, bytes] = {}

    def walk(fd) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            walk(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        seen[fd.name] = proto.SerializeToString(deterministic=True)

    for name in TFS_MODULES:
        walk(importlib.import_module(name).DESCRIPTOR)
    kserve = descriptor_pb2.FileDescriptorProto.FromString(_kserve_file())
    assert set(kserve.dependency) <= set(seen), kserve.dependency  # (it imports none)
    return [*seen.values(), kserve.SerializeToString(deterministic=True)]


def render(files: list[bytes]) -> str:
    """The descriptors module's text."""
    from google.protobuf import descriptor_pb2

    versions = ", ".join(f"{d} {md.version(d)}" for d in SOURCES)
    lines = ['"""The descriptors of TF Serving\'s and KServe V2\'s published gRPC protos (generated: do not edit)."""',
             "", f"# Made by `make protos` (tools/protos.py) from {versions}.", "# One serialized FileDescriptorProto a"
             " line, dependencies first; flowerpipe/serving/protos/__init__.py loads them.", "", "FILES = ("]
    for raw in files:
        name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
        lines.append(f"    {raw!r},  # {name}")
    return "\n".join([*lines, ")", ""])


def main(argv: list[str] | None = None) -> int:
    """Write the module (or, with --check, say whether it is current)."""
    parser = argparse.ArgumentParser(prog="python tools/protos.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the module is not what this makes")
    args = parser.parse_args(argv)
    files = published()
    text = render(files)
    if args.check:
        current = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'current' if current else 'out of date: run make protos'}")
        return 0 if current else 1
    OUT.write_text(text)
    print(f"{OUT}: written ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
