"""TFRecord schema, sharded writer, manifest, and the tf.data reader every stage uses."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data.images import Checked, decode_resize

MANIFEST = "manifest.json"


def _features(rec: Checked, label: int, class_name: str):
    import tensorflow as tf

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": b(rec.data),
        "image/format": b(rec.fmt.encode()),
        "image/class/label": i(label),
        "image/class/text": b(class_name.encode()),
        "image/height": i(rec.height),
        "image/width": i(rec.width),
        "image/source": b(rec.path.encode()),
        "image/sha256": b(rec.sha256.encode()),
    })).SerializeToString(deterministic=True)  # map order fixed: byte-identical rebuilds


def write_shards(records: Iterable[tuple[Checked, int]], classes: list[str], folder: Path, split: str,
                 total_bytes: int, shard_mb: int) -> list[str]:
    """Write one split's records round-robin into ceil(size / shard_mb) shards; return shard names."""
    import tensorflow as tf

    n = max(1, math.ceil(total_bytes / (shard_mb << 20)))
    names = [f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    writers = [tf.io.TFRecordWriter(str(folder / name)) for name in names]
    try:
        for k, (rec, label) in enumerate(records):
            writers[k % n].write(_features(rec, label, classes[label]))
    finally:
        for w in writers:
            w.close()
    return names


@dataclass
class Manifest:
    """The dataset's facts: class names in order, counts and shards per split."""

    classes: list[str]
    splits: dict[str, dict]
    skipped: list[dict[str, str]]
    reencoded: list[str]
    split_params: dict
    hidden_ignored: int = 0

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """Load folder/manifest.json."""
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path}: dataset manifest not found (run the tfrecords stage)")
        return cls(**json.loads(path.read_text()))

    def write(self, folder: Path) -> None:
        """Write manifest.json deterministically."""
        (folder / MANIFEST).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    def count(self, split: str) -> int:
        """Images in a split."""
        return int(self.splits[split]["count"])


def _parse(serialized, image_size: int):
    import tensorflow as tf

    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    return decode_resize(ex["image/encoded"], image_size), tf.cast(ex["image/class/label"], tf.int32)


def dataset(folder: str | Path, split: str, image_size: int, batch_size: int, *, shuffle: bool = False,
            seed: int = 0, repeat: bool = False, drop_remainder: bool = False, limit: int = 0):
    """A tf.data pipeline of (float32 0-255 images, int labels) batches for one split, each photo decoded and
    resized to image_size as every stage sees it (training decodes its split once: flowerpipe.training.input)."""
    import tensorflow as tf

    folder = Path(folder)
    manifest = Manifest.read(folder)
    files = [str(folder / s) for s in manifest.splits[split]["shards"]]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(4, len(files))),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if limit:
        ds = ds.take(limit)
    if shuffle:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(lambda s: _parse(s, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def arrays(folder: str | Path, split: str, image_size: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A whole split (or its first `limit` images) as numpy arrays."""
    xs, ys = [], []
    for x, y in dataset(folder, split, image_size, 64, limit=limit):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, image_size, image_size, 3), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys)
