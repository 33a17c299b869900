"""What every protocol shares: the repository, limits, decode pool, metrics, and one way to run a request."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from flowerpipe.serving.batcher import Unloading
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.metrics import Metrics
from flowerpipe.serving.repository import Repository, Version


@dataclass(frozen=True)
class Limits:
    """Per-request limits and the decode pool's size."""

    max_body_bytes: int = 32 << 20
    timeout_s: float = 30.0
    decode_workers: int = 0  # 0 = one per core
    poll_s: float = 2.0  # how often the model base folder is scanned for new versions (0 = never)
    max_inflight: int = 256  # requests answered at once; more get 503 before their body is read


class Service:
    """One model repository answered over REST and gRPC alike: same versions, batchers, limits and metrics."""

    def __init__(self, repo: Repository, limits: Limits = Limits()):
        self.repo, self.limits = repo, limits
        self.pool = ThreadPoolExecutor(limits.decode_workers or os.cpu_count() or 1, thread_name_prefix="decode")
        self.metrics = Metrics(lambda: repo.queued_images, lambda: len(repo.available()))
        repo.on_batch = self.metrics.batch.observe
        self.draining = False

    def model(self, name: str) -> Repository:
        """The repository when a request names its model; TF Serving's 404 otherwise."""
        if name != self.repo.name:
            raise RequestError(f"Servable not found for request: Latest({name}); this server has {self.repo.name!r}",
                               404)
        return self.repo

    async def decode(self, fn, *args):
        """fn(*args) in the decode pool, off the event loop (parsing, base64 and image decoding)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def deadline(self, start: float, client_s: float | None = None) -> float:
        """Seconds left for a request that started at `start`: serve.timeout_s, or the client's deadline if sooner."""
        left = self.limits.timeout_s - (asyncio.get_running_loop().time() - start)
        return max(0.001, min(left, client_s) if client_s is not None else left)

    async def predict(self, v: Version, images: np.ndarray, start: float, version: int | None = None,
                      label: str | None = None, client_s: float | None = None) -> tuple[Version, np.ndarray]:
        """(version that answered, probabilities); a request whose version is unloaded meanwhile goes on to the next."""
        for _ in range(3):
            try:
                return v, await v.batcher.predict(images, self.deadline(start, client_s))
            except Unloading:
                v = self.repo.resolve(version, label)  # the new latest, or a 404 when the named version has gone
                if v.model.image_size != images.shape[1]:
                    raise RequestError("the model version changed input size while this request waited; retry",
                                       503) from None
        raise Unloading()

    def close(self) -> None:
        """Stop the decode pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
