"""convert_onnx stage: ONNX via tf2onnx, plus an ONNX Runtime static int8 model when onnx.int8 is set."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.convert import context, run_all
    from flowerpipe.formats import onnx_format
    from flowerpipe.formats.registry import find

    fp32 = find(p, "onnx").path
    jobs = {"onnx": (fp32, lambda: onnx_format.convert(ctx, fp32, p.onnx.opset))}
    if p.onnx.int8:
        q = find(p, "onnx-int8").path
        jobs["onnx-int8"] = (q, lambda: onnx_format.quantize_int8(ctx, fp32, q))
    with context(p, p.onnx.calibration_images) as ctx:
        record = run_all(ctx, jobs)
    stage.write_json(Path(p.paths.reports) / "convert_onnx.json", record)


if __name__ == "__main__":
    stage.run(main)
