"""gRPC beside REST: TF Serving's PredictionService and ModelService, KServe V2's GRPCInferenceService, health.

Same process, event loop, versions, batchers, limits and metrics as the REST server (a Service); errors are gRPC
status codes with REST's one-line messages.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

import grpc
import numpy as np
from google.protobuf import json_format

from flowerpipe import __version__
from flowerpipe.serving import protos, tfs, v2
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.protos import BadMessage, message
from flowerpipe.serving.repository import requested_version
from flowerpipe.serving.service import Service
from flowerpipe.serving.tensors import fill_tensor, tfs_images, v2_images, v2_response

log = logging.getLogger(__name__)

INLINE_BYTES = 1 << 20  # pixel tensors up to this size are parsed on the event loop: a thread hop costs more

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}

# ---------------------------------------------------------------- the server


class GrpcServer:
    """grpc.aio server on the Service's event loop; bind() early (a taken port fails before models load)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8500, grace_s: float = 10.0):
        self.service, self.host, self.port, self.grace_s = service, host, port, grace_s
        self.server: grpc.aio.Server | None = None
        self.health = None

    async def bind(self) -> int:
        """Create the server and bind its port (0: a free one); an OSError line if the port is taken."""
        if self.server is not None:
            return self.port
        from grpc_health.v1 import health, health_pb2_grpc

        limit = self.service.limits.max_body_bytes
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", limit),
                                               ("grpc.so_reuseport", 0)],
                                      maximum_concurrent_rpcs=self.service.limits.max_inflight)
        self.server.add_generic_rpc_handlers(self._handlers())
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        return self.port

    async def start(self) -> None:
        """Bind if not yet bound, start answering, and report SERVING to health checks."""
        await self.bind()
        await self.server.start()
        from grpc_health.v1 import health_pb2

        for name in ("", protos.PREDICTION_SERVICE, protos.MODEL_SERVICE, protos.INFERENCE_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """NOT_SERVING to health checks, refuse new calls (UNAVAILABLE), let running ones finish within grace_s."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_s)

    def _handlers(self) -> list:
        """Each protocol's servicer over the one Service, as grpc generic handlers."""
        return [*TfsServicer(self.service).handlers(), *V2Servicer(self.service).handlers()]


# ---------------------------------------------------------------- what every protocol's servicer shares


class Servicer:
    """The Service a protocol's methods answer from; each method wrapped into one status and message, counted."""

    def __init__(self, service: Service):
        self.s = service

    def rpc(self, endpoint: str, fn: Callable) -> Callable:
        """Wrap a handler: a request that did not parse, a RequestError or a bug becomes one status and message."""
        service, metrics = self.s, self.s.metrics
        answered, latency = metrics.requests.labels(endpoint, "OK"), metrics.latency.labels(endpoint)

        @functools.wraps(fn)
        async def call(request, context: grpc.aio.ServicerContext):
            start, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                if isinstance(request, BadMessage):
                    raise RequestError(request.text)
                if service.draining:
                    raise RequestError("the server is shutting down; retry elsewhere", 503)
                return await fn(request, context)
            except RequestError as exc:
                code = CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
                await context.abort(code, str(exc))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:  # noqa: BLE001 (a bug answers INTERNAL; the server stays up)
                log.exception("unhandled error in %s", fn.__name__)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"internal error: {exc.__class__.__name__}")
            finally:
                (answered if code is grpc.StatusCode.OK else metrics.requests.labels(endpoint, code.name)).inc()
                latency.observe(time.perf_counter() - start)
        return call

    async def parse(self, encoded: bool, req, fn: Callable, *args):
        """fn(*args) at once for a small pixel tensor (a copy and a cast); in the decode pool for encoded images
        or a large tensor, off the event loop."""
        if not encoded and req.ByteSize() <= INLINE_BYTES:
            return fn(*args)
        return await self.s.decode(fn, *args)


# ---------------------------------------------------------------- TF Serving: PredictionService, ModelService


def version_of(spec) -> tuple[int | None, str | None]:
    """(version, label) a TF Serving ModelSpec asks for; None where it names none."""
    return (spec.version.value if spec.HasField("version") else None), (spec.version_label or None)


def model_spec(name: str, version: int, signature: str = ""):
    """The ModelSpec a TF Serving response names: the model, the version that answered, the signature."""
    spec = message("tensorflow.serving.ModelSpec")(name=name, signature_name=signature)
    spec.version.value = version
    return spec


class TfsServicer(Servicer):
    """TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

    def handlers(self) -> list:
        """The two services' generic handlers."""
        rpc = self.rpc
        return [protos.handler(protos.PREDICTION_SERVICE, {
                    "Predict": rpc("grpc_tfs_predict", self.Predict),
                    "GetModelMetadata": rpc("grpc_tfs_other", self.GetModelMetadata)}),
                protos.handler(protos.MODEL_SERVICE, {
                    "GetModelStatus": rpc("grpc_tfs_other", self.GetModelStatus)})]

    async def Predict(self, req, ctx):  # noqa: N802 (the method's name in the published service)
        """Probabilities, class indices and names for pixels or encoded images, as output_filter asks."""
        s = self.s
        start = asyncio.get_running_loop().time()
        version, label = version_of(req.model_spec)
        v = s.model(req.model_spec.name).resolve(version, label)
        signature = req.model_spec.signature_name or "serving_default"
        images = await self.parse(signature == "serving_bytes", req, tfs_images, dict(req.inputs), signature,
                                  v.model.image_size, v.batcher.max_batch)
        wanted = list(req.output_filter) or ["probabilities", "class_index", "class_name"]
        if unknown := sorted(set(wanted) - set(v2.OUTPUTS)):
            raise RequestError(f"output tensor alias not found in signature: {unknown}; outputs are "
                               f"{list(v2.OUTPUTS)}")
        v, probs = await s.predict(v, images, start, version, label, ctx.time_remaining())
        index = probs.argmax(axis=1).astype(np.int32)
        values = {"probabilities": probs, "class_index": index,
                  "class_name": [v.model.classes[i] for i in index]}
        resp = message("tensorflow.serving.PredictResponse")(
            model_spec=model_spec(s.repo.name, v.number, signature))
        for name in dict.fromkeys(wanted):  # (a name asked twice is answered once)
            fill_tensor(resp.outputs[name], values[name])
        return resp

    async def GetModelMetadata(self, req, ctx):  # noqa: N802
        """The signature_def map, the only metadata field served."""
        s = self.s
        fields = list(req.metadata_field)
        if not fields:
            raise RequestError("GetModelMetadataRequest must specify at least one metadata_field")
        if fields != ["signature_def"]:
            raise RequestError(f"Metadata field {[f for f in fields if f != 'signature_def']} is not supported; "
                               "this server answers signature_def")
        v = s.model(req.model_spec.name).resolve(*version_of(req.model_spec))
        meta = tfs.metadata(s.repo.name, v.number, v.model.classes, v.model.image_size, v.model.format)
        sigs = json_format.ParseDict(meta["metadata"]["signature_def"],
                                     message("tensorflow.serving.SignatureDefMap")(), descriptor_pool=protos.POOL)
        resp = message("tensorflow.serving.GetModelMetadataResponse")(model_spec=model_spec(s.repo.name, v.number))
        resp.metadata["signature_def"].Pack(sigs)
        return resp

    async def GetModelStatus(self, req, ctx):  # noqa: N802
        """The state of each version (or of the one asked for)."""
        version, label = version_of(req.model_spec)
        status = self.s.model(req.model_spec.name).status(version, label)
        return json_format.ParseDict({"model_version_status": status},
                                     message("tensorflow.serving.GetModelStatusResponse")(),
                                     descriptor_pool=protos.POOL)


# ---------------------------------------------------------------- KServe V2: GRPCInferenceService


class V2Servicer(Servicer):
    """KServe V2's GRPCInferenceService: health, metadata and ModelInfer."""

    def handlers(self) -> list:
        """The service's generic handler."""
        rpc = self.rpc
        return [protos.handler(protos.INFERENCE_SERVICE, {
            "ServerLive": rpc("grpc_v2_health", self.ServerLive),
            "ServerReady": rpc("grpc_v2_health", self.ServerReady),
            "ModelReady": rpc("grpc_v2_health", self.ModelReady),
            "ServerMetadata": rpc("grpc_v2_other", self.ServerMetadata),
            "ModelMetadata": rpc("grpc_v2_other", self.ModelMetadata),
            "ModelInfer": rpc("grpc_v2_infer", self.ModelInfer)})]

    def version(self, name: str, version: str):
        """The version a V2 request names (its number as text), or the one served by default."""
        return self.s.model(name).resolve(requested_version(version))

    async def ServerLive(self, req, ctx):  # noqa: N802
        """Live as long as it answers."""
        return message("inference.ServerLiveResponse")(live=True)

    async def ServerReady(self, req, ctx):  # noqa: N802
        """Ready while some version is available."""
        return message("inference.ServerReadyResponse")(ready=bool(self.s.repo.available()))

    async def ModelReady(self, req, ctx):  # noqa: N802
        """Ready when the version asked for is available (an error otherwise)."""
        self.version(req.name, req.version)
        return message("inference.ModelReadyResponse")(ready=True)

    async def ServerMetadata(self, req, ctx):  # noqa: N802
        """The server's name, version and extensions."""
        return message("inference.ServerMetadataResponse")(name="flowerpipe", version=__version__,
                                                           extensions=v2.EXTENSIONS)

    async def ModelMetadata(self, req, ctx):  # noqa: N802
        """The model's versions, platform, inputs and outputs."""
        v = self.version(req.name, req.version)
        meta = v2.model_metadata(req.name, [x.number for x in self.s.repo.available()], v.model.classes,
                                 v.model.image_size, v.model.format)
        meta.pop("parameters")  # the gRPC message has no parameters: class names are the class_name output
        return json_format.ParseDict(meta, message("inference.ModelMetadataResponse")(), descriptor_pool=protos.POOL)

    async def ModelInfer(self, req, ctx):  # noqa: N802
        """Probabilities (and class indices and names, as asked) for pixels or encoded images."""
        start = asyncio.get_running_loop().time()
        v = self.version(req.model_name, req.model_version)
        encoded = any(t.name == "image_bytes" for t in req.inputs)
        images, outputs = await self.parse(encoded, req, v2_images, req, v.model.image_size, v.batcher.max_batch)
        requested = requested_version(req.model_version)
        v, probs = await self.s.predict(v, images, start, requested, None, ctx.time_remaining())
        return v2_response(req.model_name, v.number, req.id, outputs, probs, v.model.classes)
