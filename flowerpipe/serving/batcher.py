"""First-in-first-out micro-batching: concurrent requests merged into one model call, under a supervisor."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from flowerpipe.serving.errors import RequestError

log = logging.getLogger(__name__)


class Unloading(RequestError):
    """This batcher's version is being unloaded: the request may be sent to the version that replaced it."""

    def __init__(self) -> None:
        super().__init__("this model version is being unloaded; retry", 503)


@dataclass
class Job:
    """One request's images and the future its handler awaits."""

    images: np.ndarray
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the batcher did, for the metrics endpoint and tests."""

    batches: int = 0
    restarts: int = 0
    sizes: list[int] = field(default_factory=list)


def _expire(future: asyncio.Future, timeout: float) -> None:
    """A request's deadline: a 504 unless it has been answered."""
    if not future.done():
        future.set_exception(RequestError(f"deadline exceeded: no answer within {timeout:g} s (server busy)", 504))


class Batcher:
    """Merges queued requests, oldest first, into model calls of at most max_batch images, one call at a time.

    A request never overtakes an earlier one: when the next request does not fit in the batch being formed it
    waits at the head of the queue for the next call. The model runs in its own thread; the loop runs under a
    supervisor that fails pending requests with a 500 and restarts it if it ever dies.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int, window_ms: float,
                 on_batch: Callable[[int], None] | None = None):
        self.predict_fn = predict
        self.max_batch = max_batch
        self.window = window_ms / 1000.0
        self.on_batch = on_batch or (lambda n: None)
        self.pending: collections.deque[Job] = collections.deque()
        self.queued_images = 0
        self.stats = BatchStats()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._busy = False
        self._closed = False

    async def predict(self, images: np.ndarray, timeout: float) -> np.ndarray:
        """Probabilities for images, computed with whatever else is queued; 504 after timeout seconds."""
        if self._closed:
            raise Unloading()
        if len(images) > self.max_batch:
            raise RequestError(f"too many images in one request: {len(images)} > {self.max_batch}")
        loop = asyncio.get_running_loop()
        self._start(loop)
        job = Job(images, loop.create_future())
        self.pending.append(job)
        self.queued_images += len(images)
        self._wake.set()
        # A job whose future is done (its deadline passed, or its caller went away) is dropped from the queue if it
        # has not started, and its result discarded if it has.
        deadline = loop.call_later(timeout, _expire, job.future, timeout)
        try:
            return await job.future
        finally:
            deadline.cancel()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._supervise(), name="batcher")

    async def _supervise(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the loop itself: nobody may wait forever
                log.exception("batcher loop failed; restarting it")
                self.stats.restarts += 1
                self._fail_pending(RequestError(f"batcher failed ({exc.__class__.__name__}); retry", 500))

    def _fail_pending(self, error: Exception) -> None:
        while self.pending:
            job = self.pending.popleft()
            if not job.future.done():
                job.future.set_exception(error)
        self.queued_images = 0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            until = loop.time() + self.window
            while self.queued_images < self.max_batch and (left := until - loop.time()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            jobs = self._take()
            if jobs:
                await self._run(jobs)

    def _take(self) -> list[Job]:
        """The oldest live jobs that fit in one batch, in arrival order."""
        jobs, n = [], 0
        while self.pending and n + len(self.pending[0].images) <= self.max_batch:
            job = self.pending.popleft()
            self.queued_images -= len(job.images)
            if job.future.done():  # its deadline passed while it waited
                continue
            jobs.append(job)
            n += len(job.images)
        return jobs

    async def _run(self, jobs: list[Job]) -> None:
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        self._busy = True
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.pool, self.predict_fn, batch)
            probs = np.asarray(probs)
            if probs.ndim != 2 or len(probs) != len(batch):
                raise ValueError(f"model returned shape {list(probs.shape)} for a batch of {len(batch)}")
        except Exception as exc:  # the model failed: every request in this batch gets a 500, the server lives
            log.error("model call failed on a batch of %d: %s: %s", len(batch), exc.__class__.__name__, exc)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(RequestError(f"model call failed: {exc.__class__.__name__}: {exc}", 500))
            return
        finally:
            self._busy = False
        self.stats.batches += 1
        self.stats.sizes.append(len(batch))
        del self.stats.sizes[:-1000]
        self.on_batch(len(batch))
        start = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(probs[start:start + len(j.images)])
            start += len(j.images)

    @property
    def idle(self) -> bool:
        """Nothing queued and no model call running."""
        return not self.pending and not self._busy

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let queued ones finish (up to timeout), then stop the loop and the model thread."""
        self._closed = True
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not self.idle and loop.time() < until:
            await asyncio.sleep(0.01)
        self._fail_pending(RequestError("this model version was unloaded; retry", 503))
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await loop.run_in_executor(None, self.pool.shutdown)
