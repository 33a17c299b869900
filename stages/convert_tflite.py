"""convert_tflite stage: TFLite float32, float16, dynamic-range and int8 (calibrated on the train split)."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.formats import tflite
    from flowerpipe.formats.convert import context, run_all

    fmt, settings = tflite.FORMAT, tflite.FORMAT.settings_of(p)
    Path(p.paths.converted, "tflite").mkdir(parents=True, exist_ok=True)
    with context(p, settings.calibration_images) as ctx:
        record = run_all(ctx, {fmt.name(o): (fmt.path(p, o), lambda o=o: tflite.convert(ctx, o, fmt.path(p, o)))
                               for o in settings.variants})
    stage.write_json(Path(p.paths.reports) / "convert_tflite.json", record)


if __name__ == "__main__":
    stage.run(main)
