"""Print training images/s at two image sizes, and the frozen-phase speed-up of cached backbone features.

Random weights and random images (speed does not depend on them). Usage:
python benchmarks/training.py [SIZE_A SIZE_B] [BATCH]
"""

import sys
import time

import numpy as np

from flowerpipe.quiet import quiet_tensorflow


def images_per_second(model, x, y, batch: int, steps: int = 4) -> float:
    """Training throughput of model.fit over `steps` batches, after one warm-up step."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # trace and compile
    t = time.perf_counter()
    model.fit(x[: steps * batch], y[: steps * batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    """Full training at two sizes; then one frozen-backbone epoch with and without cached features."""
    quiet_tensorflow()
    import keras

    from flowerpipe.model import backbone_of, build_model, feature_extractor
    from flowerpipe.params import Model

    sizes = [int(s) for s in sys.argv[1:3]] or [160, 299]
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    rng = np.random.default_rng(0)
    for size in sizes:
        x = rng.uniform(0, 255, (4 * batch, size, size, 3)).astype(np.float32)
        y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, len(x))]
        keras.utils.set_random_seed(0)
        ips = images_per_second(build_model(Model(image_size=size, weights="none"), 5), x, y, batch)
        print(f"train Xception {size}x{size}, batch {batch}, whole network: {ips:.2f} images/s")
    size = sizes[0]
    n = 8 * batch
    x = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    model = build_model(Model(image_size=size, weights="none"), 5)
    backbone_of(model).trainable = False
    full = images_per_second(model, x, y, batch, steps=8)
    t = time.perf_counter()
    feats = feature_extractor(model).predict(x, batch_size=batch, verbose=0)
    extract = time.perf_counter() - t
    head = keras.Sequential([keras.Input((feats.shape[1],)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(5, activation="softmax")])
    cached = images_per_second(head, feats, y, batch, steps=8)
    epochs = 6
    full_secs, cached_secs = epochs * n / full, extract + epochs * n / cached
    print(f"frozen backbone at {size}: full forward passes {full:.1f} images/s; cached features {cached:.0f} images/s "
          f"after a one-off extraction of {n / extract:.1f} images/s")
    print(f"  {epochs} epochs of {n} images: {full_secs:.1f} s full vs {cached_secs:.1f} s cached = "
          f"{full_secs / cached_secs:.1f}x faster")


if __name__ == "__main__":
    main()
