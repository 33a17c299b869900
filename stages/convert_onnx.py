"""convert_onnx stage: ONNX via tf2onnx, plus an ONNX Runtime static int8 model when onnx.int8 is set."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.convert import context, run_all
    from flowerpipe.formats import onnx_format

    fmt, settings = onnx_format.FORMAT, onnx_format.FORMAT.settings_of(p)
    fp32 = fmt.path(p, "float32")
    jobs = {"onnx": (fp32, lambda: onnx_format.convert(ctx, fp32, settings.opset))}
    if settings.int8:
        q = fmt.path(p, "int8")
        jobs["onnx-int8"] = (q, lambda: onnx_format.quantize_int8(ctx, fp32, q))
    with context(p, settings.calibration_images) as ctx:
        record = run_all(ctx, jobs)
    stage.write_json(Path(p.paths.reports) / "convert_onnx.json", record)


if __name__ == "__main__":
    stage.run(main)
