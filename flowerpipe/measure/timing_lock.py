"""One timed run at a time on this machine: a lock that benchmarks and load tests hold while they measure."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def lock_path() -> Path:
    """A machine-wide lock file (FLOWERPIPE_TIMING_LOCK overrides), shared by every checkout and queued run."""
    return Path(os.environ.get("FLOWERPIPE_TIMING_LOCK") or Path(tempfile.gettempdir()) / "flowerpipe-timing.lock")


@contextmanager
def timing_lock(what: str) -> Iterator[None]:
    """Hold the machine's timing lock; if another run holds it, say so and wait for it."""
    lock = FileLock(str(lock_path()))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another timed run holds %s; waiting so that the two do not share cores", what, lock_path())
        print(f"{what}: waiting for another benchmark on this machine to finish", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
