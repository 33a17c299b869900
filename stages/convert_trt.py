"""convert_trt stage: TensorRT fp32/fp16/int8 via TF-TRT or ONNX -> TensorRT; a recorded skip without a GPU."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.convert import context, run_all, skipped
    from flowerpipe.formats import tensorrt_format as trt
    from flowerpipe.formats.base import Skipped
    from flowerpipe.formats.registry import find

    out_dir = Path(p.paths.converted) / "tensorrt"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"tensorrt-{x}" for x in p.trt.precisions]
    env = trt.probe()
    try:
        backend = trt.select_backend(p.trt.backend, env)
    except Skipped as exc:
        print(f"convert_trt: skipped: {exc}")
        record = {"backend": None, "status": "skipped", "reason": str(exc), "variants": skipped(names, str(exc))}
        stage.write_json(Path(p.paths.reports) / "convert_trt.json", record)
        stage.write_json(out_dir / "status.json", record)  # the skip travels with the (otherwise empty) output
        return
    stage.write_json(out_dir / "status.json", {"backend": backend, "status": "ok"})  # where find() looks
    jobs = {}
    with context(p, p.trt.calibration_images) as ctx:
        for x in p.trt.precisions:
            out = out_dir / trt.filename(backend, x)
            if backend == "tftrt":
                jobs[f"tensorrt-{x}"] = (out, lambda x=x, out=out: trt.convert_tftrt(ctx, x, out, p.trt.workspace_mb))
            else:
                src = find(p, "onnx-int8" if x == "int8" and p.onnx.int8 else "onnx").path
                jobs[f"tensorrt-{x}"] = (out, lambda x=x, out=out, src=src: trt.convert_onnx(
                    src, x, out, p.model.image_size, p.trt.workspace_mb, p.trt.max_batch_size))
        record = {"backend": backend, "status": "ok", "variants": run_all(jobs)}
    stage.write_json(out_dir / "status.json", record)
    stage.write_json(Path(p.paths.reports) / "convert_trt.json", record)


if __name__ == "__main__":
    stage.run(main)
