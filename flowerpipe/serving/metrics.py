"""Prometheus metrics (prometheus_client): requests by route and code, latency, batch sizes, queue depth."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: one timestamp per counter is noise on a dashboard

PATHS = ("/monitoring/prometheus/metrics", "/metrics")  # TF Serving's monitoring path, and Triton's


def endpoint(path: str) -> str:
    """A bounded label for a request path (never the raw path: one series per client-made URL would grow forever)."""
    if path.startswith("/v1/"):
        return "tfs_" + ("predict" if path.endswith(":predict") else "other")
    if path.startswith("/v2"):
        return "v2_" + ("infer" if path.endswith("/infer") else "health" if "/health/" in path else "other")
    return "metrics" if path in PATHS else "other"


class Metrics:
    """One registry per app, so that several servers in one process (tests) keep their own counts."""

    def __init__(self, queue_depth: Callable[[], float], versions: Callable[[], float]):
        self.registry = CollectorRegistry()
        self.requests = Counter("flowerpipe_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("flowerpipe_request_seconds", "Time from request to answer, by endpoint",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("flowerpipe_batch_size", "Images per model call",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        Gauge("flowerpipe_queue_images", "Images waiting for a model call", registry=self.registry
              ).set_function(queue_depth)
        Gauge("flowerpipe_model_versions_available", "Model versions loaded and answering", registry=self.registry
              ).set_function(versions)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """A pure ASGI middleware that counts and times every HTTP request (status taken from the response start)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):  # noqa: D102 (the ASGI interface)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            name = endpoint(scope["path"])
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
