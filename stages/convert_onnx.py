"""convert_onnx stage: tf2onnx; ONNX Runtime int8 (QDQ); the float16 and symmetric int8 models TensorRT builds from."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.formats import onnx_format
    from flowerpipe.formats.convert import context, run_all

    fmt, settings = onnx_format.FORMAT, onnx_format.FORMAT.settings_of(p)
    fp32 = fmt.path(p, "float32")
    jobs = {"onnx": (fp32, lambda: onnx_format.convert(ctx, fp32, settings.opset))}
    if settings.int8:
        q = fmt.path(p, "int8")
        jobs["onnx-int8"] = (q, lambda: onnx_format.quantize_int8(ctx, fp32, q))
    if settings.float16:  # TensorRT's fp16 source, made and scored on every machine
        h = fmt.path(p, "float16")
        jobs["onnx-float16"] = (h, lambda: onnx_format.convert_float16(fp32, h))
    if settings.int8_symmetric:  # TensorRT's int8 source: symmetric Q/DQ, calibrated like onnx-int8
        qs = fmt.path(p, "int8-symmetric")
        jobs["onnx-int8-symmetric"] = (qs, lambda: onnx_format.quantize_int8(ctx, fp32, qs, symmetric=True))
    with context(p, settings.calibration_images) as ctx:
        record = run_all(ctx, jobs)
    stage.write_json(Path(p.paths.reports) / "convert_onnx.json", record)


if __name__ == "__main__":
    stage.run(main)
