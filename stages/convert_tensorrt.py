"""convert_tensorrt stage: TensorRT fp32/fp16/int8 via TF-TRT or ONNX -> TensorRT; a recorded skip without a GPU."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.formats import onnx_format, tensorrt_format
    from flowerpipe.formats.base import Skipped
    from flowerpipe.formats.convert import context, run_all, skipped

    settings = tensorrt_format.FORMAT.settings_of(p)
    out_dir = Path(p.paths.converted) / "tensorrt"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [tensorrt_format.FORMAT.name(x) for x in settings.precisions]
    env = tensorrt_format.probe()
    try:
        backend = tensorrt_format.select_backend(settings.backend, env)
    except Skipped as exc:
        print(f"convert_tensorrt: skipped: {exc}")
        record = {"backend": None, "status": "skipped", "reason": str(exc), "variants": skipped(names, str(exc))}
        stage.write_json(Path(p.paths.reports) / "convert_tensorrt.json", record)
        stage.write_json(out_dir / "status.json", record)  # the skip travels with the (otherwise empty) output
        return
    tensorrt_format.prepare_tensorflow(backend)  # before TensorFlow's first op: the GPU's memory stays TensorRT's
    stage.write_json(out_dir / "status.json", {"backend": backend, "status": "ok"})  # where find() looks
    asked = onnx_format.FORMAT.settings_of(p)
    onnx = {"float32": onnx_format.FORMAT.path(p, "float32"),  # each engine's source: TensorRT 11 is strongly typed
            "float16": onnx_format.FORMAT.path(p, "float16") if asked.float16 else None,
            "int8-symmetric": onnx_format.FORMAT.path(p, "int8-symmetric") if asked.int8_symmetric else None}
    with context(p, settings.calibration_images) as ctx:
        jobs = tensorrt_format.conversions(backend, ctx, settings.precisions, out_dir, onnx, settings.workspace_mb,
                                           settings.max_batch_size)
        record = {"backend": backend, "status": "ok", "variants": run_all(ctx, jobs)}
    stage.write_json(out_dir / "status.json", record)
    stage.write_json(Path(p.paths.reports) / "convert_tensorrt.json", record)


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
