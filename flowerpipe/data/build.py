"""Build the sharded TFRecord dataset and its manifest from extracted class folders."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from pathlib import Path

from tqdm import tqdm

from flowerpipe.data import IMAGE_SUFFIXES
from flowerpipe.data.archive import NOT_UTF8, bad_class_folder, shown
from flowerpipe.data.download import find_class_root
from flowerpipe.data.images import Checked, ImageCaps, check_image
from flowerpipe.data.split import SPLITS, stratified_split
from flowerpipe.data.tfrecord import Manifest, write_shards
from flowerpipe.errors import UserError
from flowerpipe.params import Split
from flowerpipe.pipeline.outputs import atomic, clean_stale

log = logging.getLogger(__name__)


def _check(args: tuple[str, str, ImageCaps]) -> Checked:
    return check_image(Path(args[0]), args[1], args[2])


STOPS = {signal.SIGINT, signal.SIGTERM}


def _ignore_interrupts() -> None:
    """Workers leave SIGINT to the parent, which stops them all (a Ctrl-C reaches the whole process group);
    SIGTERM, held back while the pool started, is let through again: it is how the parent stops a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def utf8(name: str) -> bool:
    """Whether a file name (as the OS gave it) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(raw: Path) -> tuple[list[str], list[list[str]], int, list[dict[str, str]]]:
    """Class names, each class's files (sorted, relative to raw), hidden entries ignored, and files refused.

    Hidden files and folders (a leading dot) are ignored and counted; symbolic links are never followed;
    file names that are not UTF-8 are refused (they cannot be recorded in the manifest), and a class folder so
    named stops the stage with one line naming it (a class is never dropped or renamed silently).
    """
    root = find_class_root(raw)
    classes, files, hidden, refused = [], [], 0, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                    and not p.name.startswith((".", "__"))):
        if not utf8(d.name):
            photos = [p for p in d.rglob("*") if p.is_file()]
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in photos):
                bad_class_folder(d.name, str(raw), len(photos))
        found = []
        for folder, dirs, names in os.walk(d):  # os.walk does not follow links to folders
            hidden += sum(1 for n in dirs + names if n.startswith("."))
            dirs[:] = sorted(n for n in dirs if not n.startswith("."))
            for n in names:
                p = Path(folder) / n
                rel = p.relative_to(raw).as_posix()
                if n.startswith(".") or not p.is_file() or p.is_symlink():
                    continue
                if utf8(rel):
                    found.append(rel)
                else:
                    refused.append({"path": shown(rel), "reason": NOT_UTF8})
        if found and utf8(d.name):
            classes.append(d.name)
            files.append(sorted(found))
    return classes, files, hidden, refused


def check_all(raw: Path, rels: list[str], workers: int = 0, caps: ImageCaps = ImageCaps()) -> list[Checked]:
    """Check every file in parallel, keeping input order; an interruption stops every worker before returning."""
    workers = workers or (os.cpu_count() or 1)
    jobs = [(str(raw / r), r, caps) for r in rels]
    # Workers are started with SIGINT ignored (kept across exec), so a Ctrl-C while one is still starting up cannot
    # print its traceback. SIGINT and SIGTERM are held back in this process until the pool exists: one arriving
    # while the workers start is delivered just after, inside the try, so terminate() always sees every worker.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    pool = None
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_interrupts)
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held back is raised here
        it = pool.imap(_check, jobs, chunksize=32)
        result = list(tqdm(it, total=len(jobs), desc="check images", unit="img", disable=None))
        pool.close()
        return result
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # a second Ctrl-C waits until every worker has stopped
        try:
            if pool is not None:
                pool.terminate()  # on SIGINT/SIGTERM (or any error) no worker outlives the stage
                pool.join()
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def check_classes(classes: list[str], files: list[list[str]], good: list[list[str]], split: Split) -> None:
    """Stop with one line when a class has no usable image, or too few for every split it must feed."""
    need = 1 + (split.val > 0) + (split.test > 0)
    for name, all_files, kept in zip(classes, files, good, strict=True):
        if not kept:
            raise UserError(f"class {name!r} has no usable image ({len(all_files)} file(s), all skipped: see the "
                            "warnings above); remove the folder or add photos")
        parts = stratified_split([kept], split.val, split.test, split.seed)
        if len(kept) < need or any(not parts[s] for s, f in (("train", 1), ("val", split.val), ("test", split.test))
                                   if f > 0):
            raise UserError(f"class {name!r} has {len(kept)} usable image(s): too few for a train, val and test "
                            f"share at split.val={split.val} and split.test={split.test} (at least 3 per class "
                            "unless a fraction is 0)")


def build(raw: Path, out: Path, split: Split, shard_mb: int, workers: int = 0,
          caps: ImageCaps = ImageCaps()) -> Manifest:
    """Check, split and write TFRecords atomically; unreadable files are skipped and listed."""
    classes, files, hidden, refused = scan(raw)
    flat = [r for per_class in files for r in per_class]
    checked = {c.path: c for c in check_all(raw, flat, workers, caps)}
    skipped = refused + [{"path": c.path, "reason": c.reason} for c in checked.values() if not c.ok]
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    good = [[r for r in per_class if checked[r].ok] for per_class in files]
    check_classes(classes, files, good, split)
    parts = stratified_split(good, split.val, split.test, split.seed)
    clean_stale(out)
    with atomic(out) as tmp:
        tmp.mkdir()
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
                            split_params={"val": split.val, "test": split.test, "seed": split.seed},
                            hidden_ignored=hidden)
        manifest.write(tmp)
    return manifest
