"""tfrecords stage: check every image, split stratified by seed, write sharded TFRecords and a manifest."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.data.build import build

    m = build(Path(p.paths.raw), Path(p.paths.tfrecords), p.split, p.tfrecords.shard_mb, p.tfrecords.workers)
    counts = {s: m.count(s) for s in m.splits}
    stage.write_json(Path(p.paths.reports) / "data.json", {
        "classes": len(m.classes), "images": sum(counts.values()), **{f"{s}_images": n for s, n in counts.items()},
        "skipped": len(m.skipped), "reencoded": len(m.reencoded),
    })
    print(f"{len(m.classes)} classes {m.classes}; " + ", ".join(f"{s}={n}" for s, n in counts.items())
          + f"; skipped {len(m.skipped)}")


if __name__ == "__main__":
    stage.run(main)
