"""convert_openvino stage: OpenVINO IR float32 and NNCF int8 (calibrated on the train split)."""

from functools import partial
from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.formats import openvino_format
    from flowerpipe.formats.convert import context, run_all

    fmt, settings = openvino_format.FORMAT, openvino_format.FORMAT.settings_of(p)
    with context(p, settings.calibration_images) as ctx:
        record = run_all(ctx, {fmt.name(o): (fmt.path(p, o), partial(openvino_format.convert, ctx, o, fmt.path(p, o)))
                               for o in settings.variants})
    stage.write_json(Path(p.paths.reports) / "convert_openvino.json", record)


if __name__ == "__main__":
    stage.run(main)
