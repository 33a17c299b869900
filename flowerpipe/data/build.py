"""Build the sharded TFRecord dataset and its manifest from extracted class folders."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from flowerpipe.data.download import find_class_root
from flowerpipe.data.images import Checked, check_image
from flowerpipe.data.split import SPLITS, stratified_split
from flowerpipe.data.tfrecord import Manifest, atomic_dir, write_shards
from flowerpipe.params import Split

log = logging.getLogger(__name__)


def _check(args: tuple[str, str]) -> Checked:
    return check_image(Path(args[0]), args[1])


def scan(raw: Path) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted folder names) and each class's files as sorted paths relative to raw."""
    root = find_class_root(raw)
    classes, files = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        found = sorted(p.relative_to(raw).as_posix() for p in d.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if found:
            classes.append(d.name)
            files.append(found)
    return classes, files


def check_all(raw: Path, rels: list[str], workers: int = 0) -> list[Checked]:
    """Check every file in parallel, keeping input order."""
    workers = workers or (os.cpu_count() or 1)
    jobs = [(str(raw / r), r) for r in rels]
    with ProcessPoolExecutor(workers) as pool:
        it = pool.map(_check, jobs, chunksize=32)
        return list(tqdm(it, total=len(jobs), desc="check images", unit="img", disable=None))


def build(raw: Path, out: Path, split: Split, shard_mb: int, workers: int = 0) -> Manifest:
    """Check, split and write TFRecords atomically; unreadable files are skipped and listed."""
    classes, files = scan(raw)
    flat = [r for per_class in files for r in per_class]
    checked = {c.path: c for c in check_all(raw, flat, workers)}
    skipped = [{"path": c.path, "reason": c.reason} for c in checked.values() if not c.ok]
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    good = [[r for r in per_class if checked[r].ok] for per_class in files]
    parts = stratified_split(good, split.val, split.test, split.seed)
    tmp, commit, abort = atomic_dir(out)
    try:
        splits = {}
        for name in SPLITS:
            recs = [(checked[r], label) for r, label in parts[name]]
            per_class = [sum(1 for _, lab in recs if lab == i) for i in range(len(classes))]
            total = sum(len(c.data) for c, _ in recs)
            shards = write_shards(recs, classes, tmp, name, total, shard_mb) if recs else []
            splits[name] = {"count": len(recs), "per_class": dict(zip(classes, per_class, strict=True)),
                            "shards": shards, "bytes": total}
        manifest = Manifest(classes=classes, splits=splits, skipped=sorted(skipped, key=lambda s: s["path"]),
                            reencoded=sorted(c.path for c in checked.values() if c.reencoded),
                            split_params={"val": split.val, "test": split.test, "seed": split.seed})
        manifest.write(tmp)
    except BaseException:
        abort()
        raise
    commit()
    return manifest
