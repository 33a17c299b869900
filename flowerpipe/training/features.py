"""Backbone features of the train and val splits: extracted once by the features stage, reused by every head run."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.errors import UserError
from flowerpipe.jsonio import read_json, write_json
from flowerpipe.params import Model

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
RECORD = "features.json"
BATCH = 32  # extraction batch: not a param, so that no batch size change re-extracts


def key(m: Model, data_dir: Path) -> str:
    """What features belong to: the backbone's params (not the head's dropout or the served name) and the data."""
    backbone = {k: getattr(m, k) for k in ("arch", "image_size", "width", "middle_blocks", "weights")}
    h = hashlib.sha256(json.dumps(backbone, sort_keys=True).encode())
    h.update((Path(data_dir) / tfrecord.MANIFEST).read_bytes())
    return h.hexdigest()[:16]


def extract(extractor, data_dir: Path, image_size: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """(features, labels) per split from one inference pass of the extractor (splits without images left out),
    and the seconds it took."""
    t, out = time.perf_counter(), {}
    for split in SPLITS:
        xs, ys = [], []
        for x, y in tfrecord.dataset(data_dir, split, image_size, BATCH):
            xs.append(extractor(x, training=False).numpy())
            ys.append(y.numpy())
        if xs:
            out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out, time.perf_counter() - t


def save(folder: Path, feats: dict, feats_key: str, seconds: float) -> None:
    """Write one .npy pair per split and the record naming the key they belong to."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in feats.items():
        np.save(folder / f"{split}_features.npy", x)
        np.save(folder / f"{split}_labels.npy", y)
    write_json(folder / RECORD, {"status": "ok", "key": feats_key, "seconds": round(seconds, 2),
                                 **{split: {"images": len(y), "dim": int(x.shape[1])} for split, (x, y) in
                                    feats.items()}})


def skip(folder: Path, reason: str) -> None:
    """Record why no features were extracted (training from scratch, or caching off)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RECORD, {"status": "skipped", "reason": reason})


def load(folder: Path, feats_key: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The features saved for this key, or None (none saved, another backbone or data, or unreadable files)."""
    try:
        record = read_json(Path(folder) / RECORD, {}) or {}
        if record.get("status") != "ok" or record.get("key") != feats_key:
            return None
        return {split: (np.load(folder / f"{split}_features.npy"), np.load(folder / f"{split}_labels.npy"))
                for split in SPLITS if split in record}
    except (OSError, ValueError, UserError) as exc:  # UserError: a record that is not JSON (read_json)
        log.warning("%s: saved features unreadable (%s); extracting them again", folder, exc)
        return None

