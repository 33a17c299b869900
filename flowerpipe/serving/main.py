"""`flowerpipe serve`: find what to serve (a model folder alone, or the pipeline's params), load it, run uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from flowerpipe.errors import FormatError
from flowerpipe.params import Params, Serve
from flowerpipe.serving.repository import Repository, Settings, Source

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What to serve: a model name, where its versions come from, and fallbacks for a model without labels."""

    name: str
    source: Source
    classes: list[str] | None = None
    image_size: int = 0
    format: str | None = None  # the variant a shipped repository's manifest names (its files' names don't say)


def pick_format(requested: str, benchmark: dict, available: list[str], evaluate: dict | None = None,
                min_agreement: float = 1.0, min_accuracy_ratio: float = 0.0) -> str:
    """`serve.format`, or for 'auto' the lowest batch-1 CPU latency measured among the available formats above the
    deploy floors (flowerpipe recommend's rule): scored by evaluate at min_accuracy_ratio of the trained model's test
    accuracy and min_agreement top-1 agreement, or never scored but computing in float32 like the trained model."""
    from flowerpipe.decide.recommend import Floors, floor_reason
    from flowerpipe.formats.registry import FLOAT_FORMATS

    if requested != "auto":
        return requested
    scored = (evaluate or {}).get("formats", {})
    floors = Floors(min_accuracy_ratio, min_agreement)
    best, best_ms = None, float("inf")
    for name in available:
        cells = benchmark.get("results", {}).get(name, {}).get("cpu", {})
        if not cells or floor_reason(name, scored, floors):
            continue
        smallest = cells[min(cells, key=lambda k: int(k[1:]))]  # keys are "b<batch size>"
        if smallest.get("status") == "ok" and smallest["latency_ms_median"] < best_ms:
            best, best_ms = name, smallest["latency_ms_median"]
    if best:
        return best
    fallback = [n for n in FLOAT_FORMATS if n in available]
    if not fallback:
        raise FormatError("no float model format is built yet (run dvc repro)")
    return fallback[0]


def pipeline_format(p: Params, fmt: str | None = None) -> str:
    """What the pipeline serves: fmt or serve.format, auto deciding on the benchmark and evaluate records."""
    from flowerpipe.formats.registry import ALL_NAMES, built, find, unavailable
    from flowerpipe.jsonio import read_json

    reports = Path(p.paths.reports)
    servable = tuple(n for n in ALL_NAMES if not unavailable(find(p, n), "cpu"))
    return pick_format(fmt or p.serve.format, read_json(reports / "benchmark.json", {}) or {},
                       built(p, servable), read_json(reports / "evaluate.json", {}) or {},
                       p.serve.min_agreement, p.deploy.min_accuracy_ratio)


def plan_from_params(p: Params, fmt: str | None) -> Plan:
    """The pipeline's own model: serve.format (auto = fastest measured), labels from the model or the manifest."""
    from flowerpipe.data.tfrecord import Manifest
    from flowerpipe.formats.registry import find_built, savedmodel_dir

    name = pipeline_format(p, fmt)
    variant = find_built(p, name)
    try:
        classes = Manifest.read(p.paths.tfrecords).classes
    except (OSError, ValueError):
        classes = None  # no data here: the labels that travel with the model are used
    if name == "savedmodel":
        source = Source(base=savedmodel_dir(p).parent)
    else:
        source = Source(fixed=variant.path, version=p.export.version)
    return Plan(p.model.name, source, classes, p.model.image_size)


def _shipped(found, fmt: str | None) -> Plan:
    """A shipped model repository (flowerpipe.ship): its version folders watched, served as its manifest says."""
    if fmt and fmt != found.format:
        raise FormatError(f"{found.folder}: this repository ships {found.format}, not {fmt}")
    return Plan(found.name, Source(base=found.folder), found.classes, found.image_size, found.format)


def _pipeline_models(folder: Path, fmt: str | None) -> Plan:
    """A copied `models/` folder: the shipped repository when the pipeline wrote one (the run's decision), else
    serving/<name>/<N>/ and converted/..., laid out as the pipeline writes them."""
    from flowerpipe.formats.registry import FLOAT_FORMATS, built, find
    from flowerpipe.params import parse
    from flowerpipe.ship.repository import find as find_shipped

    shipped = find_shipped(folder / "ship" / "repository") if not fmt else None
    if shipped is not None:
        return _shipped(shipped, fmt)
    served = sorted(d for d in (folder / "serving").glob("*") if d.is_dir()) if (folder / "serving").is_dir() else []
    name = served[0].name if served else "flowers"
    base = folder / "serving" / name
    version = max(Source(base=base).scan(), default=1) if base.is_dir() else 1
    p = parse({"paths": {"model": str(folder / "model.keras"), "serving": str(folder / "serving"),
                         "converted": str(folder / "converted")}, "model": {"name": name},
               "export": {"version": version}})
    fmt = pick_format(fmt or "auto", {}, built(p, FLOAT_FORMATS))
    if fmt == "savedmodel":
        return Plan(name, Source(base=folder / "serving" / name))
    return Plan(name, Source(fixed=find(p, fmt).path, version=version))


def plan_from_path(path: Path, fmt: str | None, name: str | None) -> Plan:
    """A model file or folder alone: a shipped model repository, a pipeline models/ folder, a base of numbered
    versions, or one model."""
    from flowerpipe.serving.artifacts import detect
    from flowerpipe.ship.repository import find as find_shipped

    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    shipped = find_shipped(path, name)
    if shipped is not None:
        plan = _shipped(shipped, fmt)
    elif path.is_dir() and ((path / "serving").is_dir() or (path / "converted").is_dir()):
        plan = _pipeline_models(path, fmt)
    elif path.is_dir() and Source(base=path).scan():
        plan = Plan(path.resolve().name, Source(base=path))
    else:
        detect(path)  # one clear error now for a path that holds no model
        plan = Plan("flowers", Source(fixed=path))
    plan.name = name or plan.name
    return plan


def repository(plan: Plan, s: Serve, labels: dict[str, int] | None = None) -> Repository:
    """The repository for a plan with the serve params' batching and version policy."""
    from flowerpipe.serving.artifacts import load_served

    loader = functools.partial(load_served, requested=s.device, threads=s.threads, classes=plan.classes,
                               image_size=plan.image_size, fmt=plan.format)
    settings = Settings(max_batch=s.max_batch, window_ms=s.batch_window_ms, keep_versions=s.keep_versions,
                        labels={**s.version_labels, **(labels or {})})
    return Repository(plan.name, plan.source, loader, settings)


def serve(plan: Plan, s: Serve, host: str | None = None, port: int | None = None,
          labels: dict[str, int] | None = None, grpc_port: int | None = None) -> None:
    """Bind both ports, load the newest versions (one clear error if none loads), serve until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host = host or s.host
    sock = listen(host, s.port if port is None else port)  # a taken port fails before any model loads
    try:
        import uvloop  # uvicorn's fast event loop where it is installed (not on Windows); grpc.aio runs on it too

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    up: list[bool] = []  # set once uvicorn serves: Ctrl-C before that aborts the start (exit 130), after it stops
    try:
        run(_serve(plan, s, sock, labels, s.grpc_port if grpc_port is None else grpc_port, up))
    except KeyboardInterrupt:  # during the start (exit 130), or just before uvicorn takes the signals over
        if not up:
            raise
    finally:
        sock.close()  # (a version that fails to load, or the server's end)
    # Ctrl-C or SIGTERM is how a server is stopped: uvicorn drained the requests and the versions; exit 0.
    print("server stopped", file=sys.stderr, flush=True)


async def _serve(plan: Plan, s: Serve, sock, labels: dict[str, int] | None, grpc_port: int,
                 up: list[bool] | None = None) -> None:
    """REST (uvicorn) and gRPC on one event loop, over one Service: same versions, batchers, limits, metrics;
    `up` gets True once uvicorn serves."""
    import uvicorn

    from flowerpipe.serving.app import create_app
    from flowerpipe.serving.service import Limits, Service

    repo = repository(plan, s, labels)
    limits = Limits(s.max_body_mb << 20, s.timeout_s, s.decode_workers, s.poll_s if plan.source.watched else 0,
                    s.max_inflight)
    service = Service(repo, limits)
    host, port = sock.getsockname()[:2]
    grpc = None
    if grpc_port >= 0:
        from flowerpipe.serving.grpc_api import GrpcServer

        grpc = GrpcServer(service, host, grpc_port)
        await grpc.bind()  # a taken port fails before any model loads, as REST's does
    try:
        await repo.start()
    except BaseException:
        if grpc:
            await grpc.server.stop(None)
        raise
    latest = repo.available()[0]
    where = plan.source.base or plan.source.fixed
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {repo.name} v{latest.number} ({latest.model.format}) from {where} on http://{shown}:{port} "
          f"(TF Serving REST /v1/models/{repo.name}, KServe V2 /v2/models/{repo.name}, metrics "
          f"/monitoring/prometheus/metrics)" + (f" and gRPC {shown}:{grpc.port} (TF Serving PredictionService, "
                                                 "KServe V2 GRPCInferenceService, grpc.health.v1)" if grpc else ""),
          flush=True)
    config = uvicorn.Config(create_app(service, grpc=grpc), log_level="warning", timeout_graceful_shutdown=10)
    server = _server_class()(config)
    if up is not None:
        up.append(True)
    await server.serve(sockets=[sock])


@functools.cache
def _server_class():
    """uvicorn.Server whose SIGINT/SIGTERM stop it and end there (made on first use: uvicorn is imported late)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, handling SIGINT and SIGTERM on the event loop: the first drains and stops it, a second
        SIGINT forces the stop. Unlike uvicorn's own handlers, the signal is not raised again once it has stopped:
        whether that raise reached the code as KeyboardInterrupt or as a normal return depended on timing (asyncio's
        runner turns a SIGINT into cancelling its task), and SIGTERM, the normal stop under Kubernetes or systemd,
        ended the process with 143."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
                yield
                return
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    return Server


def listen(host: str, port: int):
    """A listening socket on host:port (port 0: any free one), or one OSError line saying why not."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
