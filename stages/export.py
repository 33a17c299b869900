"""export stage: the trained .keras model as a versioned TF Serving SavedModel with class names."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=50,
    deps=["${paths.model}", "${paths.tfrecords}/manifest.json"],
    params=stage.SERVED_PARAMS,
    outs=["${paths.serving}", {stage.record("export"): stage.NO_CACHE}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.data.tfrecord import Manifest
    from flowerpipe.formats.base import size_mb, timed
    from flowerpipe.formats.savedmodel import export
    from flowerpipe.model.build import load_model
    from flowerpipe.pipeline.outputs import check_outputs
    from flowerpipe.serving import warmup

    classes = Manifest.read(p.paths.tfrecords).classes
    out = Path(p.paths.serving) / p.model.name / str(p.export.version)
    check_outputs({"paths.serving/model.name/export.version": out}, {"paths.model": p.paths.model})
    _, secs = timed(export, load_model(p.paths.model), classes, p.model.image_size, out,
                    lambda folder: warmup.write(folder, p.model.image_size))
    stage.write_json(Path(p.paths.reports) / "export.json", {
        "savedmodel": {"status": "ok", "path": str(out), "size_mb": size_mb(out), "seconds": round(secs, 2)}})
    print(f"SavedModel -> {out} ({size_mb(out)} MB), with TF Serving's warm-up requests ({warmup.FILE})")


if __name__ == "__main__":
    stage.run(main)
