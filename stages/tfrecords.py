"""tfrecords stage: check every image, split stratified by seed, write sharded TFRecords and a manifest."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=20,
    deps=["${paths.raw}"],
    params=["split", "tfrecords"],
    outs=["${paths.tfrecords}", {stage.record("data"): stage.NO_CACHE}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.data.build import build
    from flowerpipe.data.images import ImageCaps
    from flowerpipe.pipeline.outputs import check_outputs

    t = p.tfrecords
    out = check_outputs({"paths.tfrecords": p.paths.tfrecords, "paths.reports": Path(p.paths.reports) / "data.json"},
                        {"paths.raw": p.paths.raw})
    caps = ImageCaps(max_bytes=t.max_image_mb << 20, max_pixels=t.max_image_megapixels * 1_000_000)
    m = build(Path(p.paths.raw), out["paths.tfrecords"], p.split, t.shard_mb, t.workers, caps)
    counts = {s: m.count(s) for s in m.splits}
    stage.write_json(Path(p.paths.reports) / "data.json", {
        "classes": len(m.classes), "images": sum(counts.values()), **{f"{s}_images": n for s, n in counts.items()},
        "skipped": len(m.skipped), "reencoded": len(m.reencoded), "hidden_ignored": m.hidden_ignored,
    })
    print(f"{len(m.classes)} classes {m.classes}; " + ", ".join(f"{s}={n}" for s, n in counts.items())
          + f"; skipped {len(m.skipped)}" + (f"; ignored {m.hidden_ignored} hidden" if m.hidden_ignored else ""))


if __name__ == "__main__":
    stage.run(main)
