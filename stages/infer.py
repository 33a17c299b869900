"""infer stage: top-k predictions for data.test_images (or test-split samples) with infer.format."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=90,
    deps=["${paths.tfrecords}", stage.CPU_MODELS, stage.CPU_RECORDS],
    params=["data.test_images", *stage.SERVED_PARAMS, "infer"],
    outs=[{"${paths.reports}/predictions.csv": stage.NO_CACHE}, {stage.record("predictions"): stage.NO_CACHE}])


def sample_test_images(p: Params, out: Path, per_class: int = 2) -> Path:
    """Write a few test-split images per class as files, for when no folder of user photos is given."""
    import tensorflow as tf

    from flowerpipe.data.tfrecord import Manifest

    m = Manifest.read(p.paths.tfrecords)
    seen: dict[int, int] = {}
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/format": tf.io.FixedLenFeature([], tf.string)}
    files = [str(Path(p.paths.tfrecords) / s) for s in m.splits["test"]["shards"]]
    for rec in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(rec, spec)
        label = int(ex["image/class/label"])
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            name = f"{m.classes[label]}_{seen[label]}.{ex['image/format'].numpy().decode()}"
            (out / name).write_bytes(ex["image/encoded"].numpy())
    return out


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import tempfile

    from flowerpipe.data.tfrecord import Manifest
    from flowerpipe.formats.registry import find_built, load
    from flowerpipe.predict import list_images, predict_files

    classes = Manifest.read(p.paths.tfrecords).classes
    runner = load(find_built(p, p.infer.format), "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(p.data.test_images) if p.data.test_images else sample_test_images(p, Path(tmp))
        table, skipped = predict_files(runner, list_images([folder]), classes, p.model.image_size, p.infer.top_k)
    if not p.data.test_images and len(table):
        table["path"] = table["path"].map(lambda s: Path(s).name)  # temp folder: keep only the file name
    out = Path(p.paths.reports)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "predictions.csv", index=False)
    stage.write_json(out / "predictions.json", {
        "format": p.infer.format, "source": p.data.test_images or "test split samples", "images": len(table),
        "skipped": skipped, "predicted_counts": table["prediction"].value_counts().to_dict() if len(table) else {}})
    print(table.to_string(index=False, max_colwidth=40) if len(table) else "no readable images")


if __name__ == "__main__":
    stage.run(main)
