"""The models a server answers for: version folders found on disk, loaded in the background, labelled, unloaded."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowerpipe.errors import FormatError
from flowerpipe.serving.batcher import Batcher
from flowerpipe.serving.errors import RequestError, not_found

log = logging.getLogger(__name__)

# TF Serving's version states (ManagerState) and how each shows in its status answer.
LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class Loaded:
    """A model ready to run: its runner's predict, class names, input size and format name."""

    predict: Callable[[np.ndarray], np.ndarray]
    classes: list[str]
    image_size: int
    format: str
    close: Callable[[], None] = lambda: None


@dataclass
class Version:
    """One version of the model: where it came from, its state, and (when available) what serves it."""

    number: int
    path: Path
    state: str = LOADING
    error: str = ""
    signature: tuple = ()
    model: Loaded | None = None
    batcher: Batcher | None = field(default=None, repr=False)

    def status(self) -> dict:
        """This version in TF Serving's GetModelStatus shape."""
        code = "OK" if not self.error else "UNKNOWN"
        return {"version": str(self.number), "state": self.state,
                "status": {"error_code": code, "error_message": self.error}}


def _unloaded(images: np.ndarray) -> np.ndarray:
    raise RuntimeError("this model version was unloaded")


def folder_signature(path: Path) -> tuple:
    """(files, bytes, newest mtime) of a folder: equal on two scans means nothing is still being copied in."""
    files = [f for f in Path(path).rglob("*") if f.is_file()] if Path(path).is_dir() else [Path(path)]
    stats = [f.stat() for f in files if f.exists()]
    return len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def warmup_batches(folder: Path, image_size: int, max_batch: int) -> list[np.ndarray] | None:
    """The image batches a version folder's warm-up file asks for (None when it has none), as its requests decode."""
    from google.protobuf.message import DecodeError

    from flowerpipe.serving import warmup
    from flowerpipe.serving.protos import message
    from flowerpipe.serving.tensors import tfs_images

    path = Path(folder) / warmup.FILE
    if not path.is_file():
        return None
    out = []
    for i, raw in enumerate(warmup.read(path)):
        try:
            log = message("tensorflow.serving.PredictionLog").FromString(raw)
        except DecodeError:
            raise FormatError(f"{path}: record {i} is not a PredictionLog") from None
        if not log.HasField("predict_log"):
            raise FormatError(f"{path}: record {i} is not a predict log (this model answers Predict only)")
        req = log.predict_log.request
        try:
            out.append(tfs_images(dict(req.inputs), req.model_spec.signature_name or "serving_default", image_size,
                                  max_batch))
        except RequestError as exc:
            raise FormatError(f"{path}: record {i}: {exc}") from None
    return out


def version_number(text: str) -> int | None:
    """The version number text names (ASCII digits, below 2**63: "1", "42"), else None: the one parser of versions
    in folder names, requests and labels."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def requested_version(text: str | None) -> int | None:
    """The version a request names (None when it names none), or a 400 RequestError."""
    if not text:
        return None
    if (number := version_number(text)) is None:
        raise RequestError(f"version must be a number, got {text!r}", 400)
    return number


class Source:
    """Where versions come from: numbered folders under a base folder (watched), or one fixed model."""

    def __init__(self, base: Path | None = None, fixed: Path | None = None, version: int = 1):
        self.base, self.fixed, self.version = base, fixed, version

    @property
    def watched(self) -> bool:
        """True when new version folders can appear."""
        return self.base is not None

    def scan(self) -> dict[int, Path]:
        """Version number -> path, as the disk is now: the folders named by a number written plainly (not 0, 01)."""
        if self.base is None:
            return {self.version: self.fixed}
        try:
            entries = list(self.base.iterdir())
        except OSError as exc:
            log.warning("cannot list %s: %s", self.base, exc)
            return {}
        return {n: e for e in entries if e.is_dir() and not e.name.startswith("0") and (n := version_number(e.name))}


@dataclass
class Settings:
    """How each loaded version is batched and how the repository follows the disk."""

    max_batch: int = 64
    window_ms: float = 0.0
    keep_versions: int = 2
    labels: dict[str, int] = field(default_factory=dict)


class Repository:
    """One model name's versions, as TF Serving manages them: the newest keep_versions available ones are served.

    New version folders are loaded in a thread while the current ones keep answering; a version becomes the
    latest only when its load and warm-up call succeeded. A version that fails to load is reported (state END
    with the error) and retried only when its folder changes.
    """

    def __init__(self, name: str, source: Source, loader: Callable[[Path], Loaded], settings: Settings,
                 on_batch: Callable[[int], None] | None = None):
        self.name, self.source, self.loader, self.settings = name, source, loader, settings
        self.on_batch = on_batch
        self.versions: dict[int, Version] = {}
        self._seen: dict[int, tuple] = {}  # version -> folder signature at the previous scan
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- lookups

    def available(self) -> list[Version]:
        """Available versions, newest first."""
        return sorted((v for v in self.versions.values() if v.state == AVAILABLE), key=lambda v: -v.number)

    def resolve(self, version: int | None = None, label: str | None = None) -> Version:
        """The version a request names (latest when none), or a 404 in TF Serving's words."""
        if label is not None:
            if label not in self.settings.labels:
                raise not_found(f"Labeled({self.name}, {label}): unknown version label")
            version = self.settings.labels[label]
        if version is None:
            ready = self.available()
            if not ready:
                raise RequestError(f"no version of {self.name} is available yet", 503)
            return ready[0]
        v = self.versions.get(version)
        if v is None or v.state != AVAILABLE:
            state = f" (state {v.state}{': ' + v.error if v.error else ''})" if v else ""
            raise not_found(f"Specific({self.name}, {version}){state}")
        return v

    def status(self, version: int | None = None, label: str | None = None) -> list[dict]:
        """TF Serving's model_version_status list: every version known, or the one asked for."""
        if version is None and label is None:
            return [v.status() for v in sorted(self.versions.values(), key=lambda v: -v.number)]
        if label is not None:
            return [self.resolve(label=label).status()]
        v = self.versions.get(version)
        if v is None:
            raise not_found(f"Specific({self.name}, {version})")
        return [v.status()]

    @property
    def queued_images(self) -> int:
        """Images waiting in every version's batcher."""
        return sum(v.batcher.queued_images for v in self.versions.values() if v.batcher)

    # ---------------------------------------------------------------- following the disk

    async def start(self) -> None:
        """Load the newest versions now (a broken newest one falls back to older); error if none loads."""
        found = self.source.scan()
        if not found:
            where = self.source.base or self.source.fixed
            raise FormatError(f"{where}: no version folders (numbered folders, e.g. {where}/1/)")
        for number in sorted(found, reverse=True):
            if len(self.available()) >= self.settings.keep_versions:
                break
            self._seen[number] = folder_signature(found[number])
            await self._load(number, found[number], self._seen[number])
        if not self.available():
            errors = "; ".join(f"v{v.number}: {v.error}" for v in self.versions.values())
            raise FormatError(f"no version of {self.name} could be loaded ({errors})")
        self._check_labels()

    async def refresh(self) -> None:
        """One scan: load new settled versions, retry changed failed ones, unload removed and surplus ones."""
        async with self._lock:
            found = self.source.scan()
            newest = self.available()[0].number if self.available() else 0
            keep = sorted(found, reverse=True)[: self.settings.keep_versions]
            for number in sorted(found):
                sig = folder_signature(found[number])
                settled, self._seen[number] = self._seen.get(number) == sig and sig[0] > 0, sig
                known = self.versions.get(number)
                wanted = number in keep or number > newest
                # An unloaded version comes back when wanted again (a newer one was removed); a failed one only
                # when its folder changed.
                retry = known is not None and known.state == END and (known.signature != sig or not known.error)
                if settled and wanted and (known is None or retry):
                    await self._load(number, found[number], sig)
            for number, v in list(self.versions.items()):
                if v.state == AVAILABLE and number not in found:
                    log.info("%s v%d: folder removed; unloading", self.name, number)
                    await self._unload(v)
            for v in self.available()[self.settings.keep_versions:]:
                await self._unload(v)
            self._check_labels()

    async def watch(self, interval: float) -> None:
        """Refresh every interval seconds, forever; a failing scan is logged and retried."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 (the watcher must outlive any one bad scan)
                log.exception("scanning %s failed", self.source.base)

    async def close(self) -> None:
        """Drain and unload every version."""
        for v in list(self.versions.values()):
            if v.state == AVAILABLE:
                await self._unload(v)

    async def _load(self, number: int, path: Path, sig: tuple) -> None:
        v = self.versions[number] = Version(number, path, signature=sig)
        log.info("%s v%d: loading %s", self.name, number, path)
        try:
            model = await asyncio.to_thread(self._load_and_warm, path)
        except Exception as exc:  # noqa: BLE001 (a broken version is reported, never fatal)
            v.state, v.error = END, f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, FormatError) else str(exc)
            log.error("%s v%d: failed to load: %s", self.name, number, v.error)
            return
        v.model = model
        v.batcher = Batcher(model.predict, self.settings.max_batch, self.settings.window_ms, self.on_batch)
        v.state = AVAILABLE
        log.info("%s v%d: available (%s, %d classes, %d px)", self.name, number, model.format, len(model.classes),
                 model.image_size)

    def _load_and_warm(self, path: Path) -> Loaded:
        """Load, then warm: the version folder's TF Serving warm-up records, or one black image where it has none."""
        model = self.loader(path)
        if model.image_size <= 0:
            raise FormatError(f"{path}: the model's input size is unknown")
        try:
            size = model.image_size
            batches = warmup_batches(path, size, self.settings.max_batch) or [np.zeros((1, size, size, 3), np.float32)]
            for images in batches:
                probs = np.asarray(model.predict(images))
                if probs.shape != (len(images), len(model.classes)):
                    raise FormatError(f"{path}: the model answers {list(probs.shape[1:])} values per image but its "
                                      f"labels file lists {len(model.classes)} classes")
        except BaseException:
            model.close()
            raise
        return model

    async def _unload(self, v: Version) -> None:
        v.state = UNLOADING
        log.info("%s v%d: unloading", self.name, v.number)
        if v.batcher:
            await v.batcher.drain()
        if v.model:
            with contextlib.suppress(Exception):
                v.model.close()
            # A handler may still hold this version: keep its names and size, drop the runtime (memory).
            v.model = dataclasses.replace(v.model, predict=_unloaded, close=lambda: None)
        if v.batcher:
            v.batcher.predict_fn = _unloaded
        v.state = END

    def _check_labels(self) -> None:
        for label, number in self.settings.labels.items():
            if number not in self.versions or self.versions[number].state != AVAILABLE:
                log.warning("%s: label %r points to version %d, which is not available", self.name, label, number)
