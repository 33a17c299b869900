"""convert_openvino stage: OpenVINO IR float32 and NNCF int8 (calibrated on the train split)."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.convert import context, run_all
    from flowerpipe.formats import openvino_format
    from flowerpipe.formats.registry import variants

    todo = variants(p, "openvino")
    with context(p, p.openvino.calibration_images) as ctx:
        record = run_all(ctx, {v.name: (v.path, lambda v=v: openvino_format.convert(ctx, v.option, v.path))
                          for v in todo})
    stage.write_json(Path(p.paths.reports) / "convert_openvino.json", record)


if __name__ == "__main__":
    stage.run(main)
