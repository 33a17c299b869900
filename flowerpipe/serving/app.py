"""One routing layer over the model repository: TF Serving REST, KServe V2, health and metrics; errors as {"error"}."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from flowerpipe import __version__
from flowerpipe.serving import tfs, v2
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.metrics import PATHS, MetricsMiddleware
from flowerpipe.serving.repository import Repository, Version, requested_version
from flowerpipe.serving.service import Limits, Service

__all__ = ["Limits", "create_app"]

log = logging.getLogger(__name__)
JSON = "application/json"


def error(message: str, status: int) -> JSONResponse:
    """TF Serving's and KServe's error shape."""
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int, timeout: float, timeout_s: float) -> bytes:
    """The request body: 413 as soon as it is over the limit (declared or streamed), 408 if not all in `timeout`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body over the {limit} byte limit", 413)
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise RequestError(f"request body over the {limit} byte limit", 413)

    try:
        await asyncio.wait_for(receive(), timeout)
    except TimeoutError:
        raise RequestError(f"request body not received within serve.timeout_s={timeout_s:g} s", 408) from None
    except ClientDisconnect:
        raise RequestError("the client disconnected before sending its whole body", 400) from None
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return bytes(body)
    return await asyncio.get_running_loop().run_in_executor(None, inflate, bytes(body), encoding, limit)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate (zlib) body decompressed within the byte limit: a compression bomb gets 413, not memory."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)", 415)
    stream = zlib.decompressobj(wbits=47)  # a gzip or a zlib header, whichever the body has
    try:
        out = stream.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"request body is not valid {encoding} data ({exc})", 400) from None
    if len(out) > limit:
        raise RequestError(f"request body over the {limit} byte limit once decompressed", 413)
    if not stream.eof:
        raise RequestError(f"request body is truncated {encoding} data", 400)
    return out


class InflightLimit:
    """A pure ASGI middleware: at most `limit` requests at once; the next gets 503 {"error"} at once."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.inflight = app, limit, 0

    async def __call__(self, scope, receive, send):  # noqa: D102 (the ASGI interface)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            return await error(f"server busy: {self.inflight} requests in flight (serve.max_inflight); retry",
                               503)(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _service(request: Request) -> Service:
    """The Service the app serves (app.state.service): the one state every handler shares."""
    return request.app.state.service


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the repository (and the gRPC server) with the app; at shutdown stop gRPC first, then drain the versions."""
    service, grpc = app.state.service, app.state.grpc
    repo, limits = service.repo, service.limits
    if not repo.available():
        await repo.start()
    if grpc is not None:
        await grpc.start()
    watcher = (asyncio.get_running_loop().create_task(repo.watch(limits.poll_s))
               if repo.source.watched and limits.poll_s > 0 else None)
    yield
    service.draining = True
    if grpc is not None:
        await grpc.stop()
    if watcher:
        watcher.cancel()
    await repo.close()  # uvicorn stopped taking requests and drained open ones first
    service.close()


# ---------------------------------------------------------------- errors, as {"error"} on every route


async def _request_error(_r: Request, exc: RequestError) -> JSONResponse:
    return error(str(exc), exc.status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        name = _service(request).repo.name
        return error(f"unknown path {request.url.path}; this server answers /v1/models/{name}..., "
                     f"/v2/models/{name}..., /v2/health/ready and {PATHS[0]}", 404)
    return error(str(exc.detail), exc.status_code)


async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
    return error(f"bad request: {exc.errors()[:1]}", 400)


async def _internal_error(_r: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error(f"internal error: {exc.__class__.__name__}", 500)


ERROR_HANDLERS = ((RequestError, _request_error), (HTTPException, _http_error),
                  (RequestValidationError, _validation_error), (Exception, _internal_error))

# ---------------------------------------------------------------- TF Serving REST

tfs_routes = APIRouter()


@tfs_routes.get("/v1/models")
async def list_models(request: Request):
    repo = _service(request).repo
    return {"models": [{"name": repo.name, "model_version_status": repo.status()}]}


@tfs_routes.get("/v1/models/{rest:path}")
async def tfs_get(rest: str, request: Request):
    r = tfs.route(rest)
    if r.action != "status" and r.action != "metadata":
        raise RequestError(f"{r.action} takes POST", 405)
    m = _service(request).model(r.name)
    if r.action == "status":
        return {"model_version_status": m.status(r.version, r.label)}
    v = m.resolve(r.version, r.label)
    return tfs.metadata(m.name, v.number, v.model.classes, v.model.image_size, v.model.format)


@tfs_routes.post("/v1/models/{rest:path}")
async def tfs_post(rest: str, request: Request):
    start = asyncio.get_running_loop().time()
    service = _service(request)
    limits = service.limits
    r = tfs.route(rest)
    if r.action in ("classify", "regress"):
        raise RequestError(f"this model has no {r.action} signature (its method is tensorflow/serving/predict); "
                           f"use POST /v1/models/{r.name}:predict", 400)
    if r.action != "predict":
        raise RequestError(f"POST is only for :predict, not {r.action}", 405)
    v = service.model(r.name).resolve(r.version, r.label)
    body = await read_body(request, limits.max_body_bytes, service.deadline(start), limits.timeout_s)
    images, columnar = await service.decode(tfs.parse_predict, body, v.model.image_size, v.batcher.max_batch)
    v, probs = await service.predict(v, images, start, r.version, r.label)
    return Response(tfs.predict_response(probs, v.model.classes, columnar), media_type=JSON)


# ---------------------------------------------------------------- KServe V2 / Open Inference Protocol

v2_routes = APIRouter()


@v2_routes.get("/v2")
@v2_routes.get("/v2/")
async def v2_server():
    return {"name": "flowerpipe", "version": __version__, "extensions": v2.EXTENSIONS}


@v2_routes.get("/v2/health/live")
async def v2_live():
    return {"live": True}


@v2_routes.get("/v2/health/ready")
async def v2_ready(request: Request):
    repo = _service(request).repo
    if not repo.available():
        return error(f"no version of {repo.name} is available", 503)
    return {"ready": True}


def v2_version(service: Service, name: str, version: str | None) -> Version:
    """The version a V2 path names (its number as text), or the one the repository serves by default."""
    return service.model(name).resolve(requested_version(version))


@v2_routes.get("/v2/models/{name}")
@v2_routes.get("/v2/models/{name}/versions/{version}")
async def v2_metadata(name: str, request: Request, version: str | None = None):
    service = _service(request)
    v = v2_version(service, name, version)
    return v2.model_metadata(name, [x.number for x in service.repo.available()], v.model.classes, v.model.image_size,
                             v.model.format)


@v2_routes.get("/v2/models/{name}/ready")
@v2_routes.get("/v2/models/{name}/versions/{version}/ready")
async def v2_model_ready(name: str, request: Request, version: str | None = None):
    v = v2_version(_service(request), name, version)
    return {"name": name, "version": str(v.number), "ready": True}


@v2_routes.post("/v2/models/{name}/infer")
@v2_routes.post("/v2/models/{name}/versions/{version}/infer")
async def v2_infer(name: str, request: Request, version: str | None = None):
    start = asyncio.get_running_loop().time()
    service = _service(request)
    limits = service.limits
    v = v2_version(service, name, version)
    body = await read_body(request, limits.max_body_bytes, service.deadline(start), limits.timeout_s)
    req = await service.decode(v2.parse_infer, body, request.headers.get(v2.HEADER), v.model.image_size,
                               v.batcher.max_batch)
    v, probs = await service.predict(v, req.images, start, requested_version(version))
    content, headers = v2.infer_response(name, v.number, req, probs, v.model.classes)
    return Response(content, headers=headers)


# ---------------------------------------------------------------- monitoring

monitoring_routes = APIRouter()


async def prometheus(request: Request):
    content, media = _service(request).metrics.render()
    return Response(content, media_type=media)


for _path in PATHS:
    monitoring_routes.add_api_route(_path, prometheus, methods=["GET"])


def create_app(repo: Repository | Service, limits: Limits = Limits(), grpc=None) -> FastAPI:
    """The REST server: every route answers from the repository, decoding in a thread pool, through the batchers.

    `grpc` (a flowerpipe.serving.grpc_api.GrpcServer over the same Service) starts and stops with the app: it stops
    taking calls before the versions drain.
    """
    service = repo if isinstance(repo, Service) else Service(repo, limits)
    app = FastAPI(title="flowerpipe", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(InflightLimit, limit=service.limits.max_inflight)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # added last: outermost, so it counts the 503s too
    app.state.service, app.state.grpc = service, grpc
    for exc_class, handler in ERROR_HANDLERS:
        app.add_exception_handler(exc_class, handler)
    for routes in (tfs_routes, v2_routes, monitoring_routes):
        app.include_router(routes)
    return app
