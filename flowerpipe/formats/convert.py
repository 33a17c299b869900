"""Shared conversion driver: build the context, run each variant, record status, time and size."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flowerpipe.data import tfrecord
from flowerpipe.formats.base import ConvertContext, Skipped, size_mb, timed, write_labels
from flowerpipe.params import Params

log = logging.getLogger(__name__)


@contextmanager
def context(p: Params, calibration_images: int) -> Iterator[ConvertContext]:
    """A ConvertContext with a probabilities-only SavedModel in a temp folder and training-split calibration data."""
    from flowerpipe.formats.savedmodel import export_probabilities

    manifest = tfrecord.Manifest.read(p.paths.tfrecords)
    calib, _ = tfrecord.arrays(p.paths.tfrecords, "train", p.model.image_size, limit=calibration_images)
    with tempfile.TemporaryDirectory(prefix="flowerpipe-convert-") as tmp:
        sm = export_probabilities(Path(p.paths.model), Path(tmp) / "probabilities")
        yield ConvertContext(keras_path=Path(p.paths.model), savedmodel_path=sm, image_size=p.model.image_size,
                             classes=manifest.classes, calibration=calib)


def run_all(ctx: ConvertContext, jobs: dict[str, tuple[Path, Callable[[], object]]]) -> dict[str, dict]:
    """Run each named conversion and label its model; a Skipped one is recorded, anything else propagates."""
    record: dict[str, dict] = {}
    for name, (out, job) in jobs.items():
        try:
            _, secs = timed(job)
        except Skipped as exc:
            record[name] = {"status": "skipped", "reason": str(exc)}
            print(f"{name}: skipped: {exc}")
            continue
        write_labels(out, ctx.classes)  # the model folder can then be served on its own
        record[name] = {"status": "ok", "seconds": round(secs, 2), "size_mb": size_mb(out), "path": str(out)}
        print(f"{name}: {size_mb(out)} MB in {secs:.1f}s -> {out}")
    return record


def skipped(names: list[str], reason: str) -> dict[str, dict]:
    """The record for variants that cannot be built here."""
    return {n: {"status": "skipped", "reason": reason} for n in names}
