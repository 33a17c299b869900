"""Print TFRecord build throughput and tf.data read (decode + resize) throughput, in images/s.

Usage: python benchmarks/data_throughput.py PHOTO_FOLDER [IMAGE_SIZE]
"""

import argparse
import tempfile
import time
from pathlib import Path

from flowerpipe.errors import run_script
from flowerpipe.quiet import quiet_tensorflow


def main() -> None:
    """Build once into a temp folder, then read the train split twice (cold and warm page cache)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path, help="a folder of class folders of photos")
    ap.add_argument("size", type=int, nargs="?", default=180, help="image size to decode and resize to")
    args = ap.parse_args()
    if args.size < 1:
        ap.error("the image size is a positive integer")
    quiet_tensorflow()
    from flowerpipe.data.build import build
    from flowerpipe.data.tfrecord import dataset
    from flowerpipe.params import Split

    photos, size = args.photos, args.size
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        m = build(photos, Path(tmp) / "tfr", Split(), 64)
        secs = time.perf_counter() - t
        n = sum(m.count(s) for s in m.splits)
        mb = sum(s["bytes"] for s in m.splits.values()) / 1e6
        print(f"build: {n} images ({mb:.0f} MB) in {secs:.2f} s = {n / secs:.0f} images/s, {mb / secs:.0f} MB/s")
        for label in ("read (1st pass)", "read (2nd pass)"):
            t = time.perf_counter()
            count = sum(int(x.shape[0]) for x, _ in dataset(Path(tmp) / "tfr", "train", size, 64))
            secs = time.perf_counter() - t
            print(f"{label}: decode + resize to {size}: {count} images in {secs:.2f} s = {count / secs:.0f} images/s")


if __name__ == "__main__":
    run_script(main)
