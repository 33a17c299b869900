"""The training input: each photo decoded and resized once, then augmented a batch at a time inside the graph.

Decoding JPEGs and resizing them every epoch cost the from-scratch stage a third of its 2-core budget (issue 37).
Here the train split is decoded once into an in-memory uint8 cache of squares (the whole photo, resized with
antialiasing, as the evaluation path sees it), with each photo's source height and width. Every batch is then
gathered from the cache and augmented by vectorized ops in one resampling pass per image: the random resized crop
(or zoom), the flip and the rotation are one projective transform from the cached square to the training size;
contrast is per-image arithmetic. Every random number comes from a stateless seed per (train.seed, batch index):
the same params give the same batches, whatever tf.data's parallelism.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.data.images import decode_resize

log = logging.getLogger(__name__)

MAX_CACHE_SCALE = 2.0  # the cache's side is at most twice the training size (2,657 photos at 256 px: 0.5 GB)
ROTATION, ZOOM, CONTRAST = 0.08, 0.15, 0.15  # at train.augment_strength 1: a turn's share, zoom and contrast factors


def cache_side(image_size: int, crop_area: float = 1.0) -> int:
    """The cached squares' side: the training size without crops; with crops, the side at which the smallest crop
    (crop_area of the photo) maps 1:1 onto the training size, at most MAX_CACHE_SCALE times it (a multiple of 8)."""
    if crop_area >= 1.0:
        return image_size
    side = min(image_size / math.sqrt(crop_area), MAX_CACHE_SCALE * image_size)
    return int(math.ceil(side / 8) * 8)


@dataclass
class Cache:
    """A split decoded once: uint8 squares, labels, each source photo's (height, width), and the time it took."""

    images: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    seconds: float

    @property
    def megabytes(self) -> float:
        """The images' memory, MB."""
        return self.images.nbytes / 2**20


def build_cache(folder: str | Path, split: str, side: int) -> Cache:
    """Decode and resize every photo of a split once, in TFRecord order, into side x side uint8 squares."""
    import tensorflow as tf

    folder = Path(folder)
    manifest = tfrecord.Manifest.read(folder)
    files = [str(folder / s) for s in manifest.splits[split]["shards"]]
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
            "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0)}

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        img = tf.cast(tf.round(decode_resize(ex["image/encoded"], side)), tf.uint8)
        hw = tf.cast(tf.stack([ex["image/height"], ex["image/width"]]), tf.int32)
        return img, tf.cast(ex["image/class/label"], tf.int32), tf.where(hw > 0, hw, side)  # unknown: the side

    started = time.perf_counter()
    images, labels, sizes = [], [], []
    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for x, y, hw in ds.batch(256):
        images.append(x.numpy())
        labels.append(y.numpy())
        sizes.append(hw.numpy())
    if not images:
        return Cache(np.zeros((0, side, side, 3), np.uint8), np.zeros((0,), np.int32), np.zeros((0, 2), np.int32), 0.0)
    cache = Cache(np.concatenate(images), np.concatenate(labels), np.concatenate(sizes),
                  time.perf_counter() - started)
    log.info("input: %d %s photos decoded once into %dx%d uint8 (%.0f MB) in %.1f s", len(cache.labels), split, side,
             side, cache.megabytes, cache.seconds)
    return cache


@dataclass(frozen=True)
class Augment:
    """What happens to each training image (the train.* params, their meaning unchanged).

    crop_area < 1: a random resized crop keeping at least that share of the photo (aspect 3:4 to 4:3 in the
    source's pixels), widened where needed so that no side of it is upsampled more than max_upsample times from
    the source photo's own pixels (1 is never: small photos get milder crops). Else zoom in or out by up to
    ZOOM * strength when zoom is on. Then flips, rotations (up to ROTATION * strength of a turn, reflected at the
    edges) and contrast (up to CONTRAST * strength) when flips are on; nothing at all when augment is off.
    """

    image_size: int
    crop_area: float = 1.0
    max_upsample: float = 1.5
    strength: float = 1.0
    zoom: bool = True
    flip: bool = True  # False: crops (or zoom) only, no flip, rotation or contrast

    @property
    def identity(self) -> bool:
        """Whether the batches are the cached squares as they are."""
        return self.crop_area >= 1.0 and not self.zoom and not self.flip


def crop_boxes(aug: Augment, sizes, seed):
    """(width, height, centre x, centre y) of each image's crop, as shares of its photo (float32, shape (n,) each)."""
    import tensorflow as tf

    n = tf.shape(sizes)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def uniform(i, lo, hi):
        return tf.random.stateless_uniform([n], seeds[i], lo, hi)

    h, w = tf.cast(sizes[:, 0], tf.float32), tf.cast(sizes[:, 1], tf.float32)
    if aug.crop_area < 1.0:
        area = uniform(0, aug.crop_area, 1.0)
        ratio = tf.exp(uniform(1, math.log(3 / 4), math.log(4 / 3)))
        bw, bh = tf.sqrt(area * ratio * h / w), tf.sqrt(area * w / (ratio * h))
        # at most max_upsample training pixels per source pixel along each side
        least = aug.image_size / aug.max_upsample
        bw, bh = tf.maximum(bw, least / w), tf.maximum(bh, least / h)
        bw, bh = tf.minimum(bw, 1.0), tf.minimum(bh, 1.0)
        bh = tf.minimum(1.0, tf.maximum(bh, area / bw))  # a side clipped at the photo's edge: the other keeps the area
        bw = tf.minimum(1.0, tf.maximum(bw, area / bh))
        cx, cy = bw / 2 + uniform(2, 0, 1) * (1 - bw), bh / 2 + uniform(3, 0, 1) * (1 - bh)
        return bw, bh, cx, cy
    if aug.zoom:
        z = uniform(0, 1 - ZOOM * aug.strength, 1 + ZOOM * aug.strength)  # > 1: zoomed out, edges reflected
        return z, z, tf.fill([n], 0.5), tf.fill([n], 0.5)
    one, half = tf.ones([n]), tf.fill([n], 0.5)
    return one, one, half, half


def augment_batch(aug: Augment, images, sizes, seed):
    """A batch of cached uint8 squares -> float32 0-255 training images, augmented from a stateless seed."""
    import tensorflow as tf

    if aug.identity:
        return tf.cast(images, tf.float32)
    n, side, out = tf.shape(images)[0], tf.cast(tf.shape(images)[1], tf.float32), aug.image_size
    box_seed, flip_seed, turn_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    bw, bh, cx, cy = crop_boxes(aug, sizes, box_seed)
    fx, theta = tf.ones([n]), tf.zeros([n])
    if aug.flip:
        fx = tf.where(tf.random.stateless_uniform([n], flip_seed) < 0.5, -1.0, 1.0)
        limit = ROTATION * aug.strength * 2 * math.pi
        theta = tf.random.stateless_uniform([n], turn_seed, -limit, limit)
    # output pixel (x, y) -> centred, flipped, rotated (u, v) in [-1/2, 1/2] -> input pixel in the crop box;
    # pixel centres sit at integer coordinates in ImageProjectiveTransformV3
    cos, sin, u0 = tf.cos(theta), tf.sin(theta), 0.5 / out - 0.5
    sx, sy = bw * side, bh * side
    transforms = tf.stack([
        sx * cos * fx / out, -sx * sin / out, cx * side - 0.5 + sx * (cos * fx * u0 - sin * u0),
        sy * sin * fx / out, sy * cos / out, cy * side - 0.5 + sy * (sin * fx * u0 + cos * u0),
        tf.zeros([n]), tf.zeros([n])], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=[out, out],
                                              fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    x = tf.cast(x, tf.float32)
    if aug.flip:
        factor = tf.random.stateless_uniform([n, 1, 1, 1], contrast_seed, 1 - CONTRAST * aug.strength,
                                             1 + CONTRAST * aug.strength)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = tf.clip_by_value((x - mean) * factor + mean, 0.0, 255.0)
    return tf.ensure_shape(x, (None, out, out, 3))


def train_dataset(cache: Cache, aug: Augment, batch: int, seed: int):
    """Endless (float32 images, int labels) batches: the cache reshuffled every epoch (seeded), each batch augmented
    from the stateless seed (seed, batch index)."""
    import tensorflow as tf

    images, labels, sizes = (tf.convert_to_tensor(a) for a in (cache.images, cache.labels, cache.sizes))
    n = len(cache.labels)

    def load(step, index):
        x = augment_batch(aug, tf.gather(images, index), tf.gather(sizes, index), tf.stack([tf.cast(seed, tf.int64),
                                                                                           step]))
        return x, tf.gather(labels, index)

    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return order.batch(batch, drop_remainder=True).enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                                   deterministic=True)
