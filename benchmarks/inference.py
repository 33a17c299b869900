"""Print batch-1 (and batch-N) latency, throughput and fraction of the matmul peak for every CPU runtime.

Default: builds Xception with random weights at the given size (default 299), converts it to every CPU format
in a temp folder (int8 calibrated on random images: fine for speed, not for accuracy; bfloat16 where OpenVINO
computes it on this CPU), then times each runtime in its own process with the same harness as the benchmark
stage. With --project, times a pipeline project's own converted models (after `dvc repro`) and prints the
test accuracy and top-1 agreement with Keras that its evaluate stage measured beside each row.

Usage: python benchmarks/inference.py [IMAGE_SIZE] [BATCH ...]
       python benchmarks/inference.py --project DIR [BATCH ...]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from flowerpipe.errors import run_script
from flowerpipe.quiet import quiet_tensorflow

BUDGET = dict(warmup=5, iterations=30, min_seconds=5.0, max_seconds=40.0)


def random_model_variants(size: int, t: Path) -> tuple[Path, list, dict[str, str]]:
    """A random-weight Xception converted to every CPU format in t: (keras path, variants, {skipped: reason})."""
    import keras

    from flowerpipe.formats import onnx_format, openvino_format, tflite
    from flowerpipe.formats.base import ConvertContext, Skipped, Variant
    from flowerpipe.formats.savedmodel import export_probabilities
    from flowerpipe.model.build import build_model
    from flowerpipe.params import Model

    keras.utils.set_random_seed(0)
    build_model(Model(image_size=size, weights="none", width=1.0, middle_blocks=8), 5).save(t / "model.keras")
    calib = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    ctx = ConvertContext(t / "model.keras", export_probabilities(t / "model.keras", t / "sm"), size,
                         [f"class{i}" for i in range(5)], calib)
    variants, skipped = [Variant("keras", "keras", "", t / "model.keras")], {}
    for v in ("float32", "dynamic", "int8"):
        variants.append(Variant(f"tflite-{v}", "tflite", v, tflite.convert(ctx, v, t / f"m_{v}.tflite")))
    onnx = onnx_format.convert(ctx, t / "m.onnx")
    variants += [Variant("onnx", "onnx", "float32", onnx),
                 Variant("onnx-int8", "onnx", "int8", onnx_format.quantize_int8(ctx, onnx, t / "m8.onnx"))]
    for v in ("float32", "bfloat16", "int8"):
        try:
            path = openvino_format.convert(ctx, v, t / "ov" / v / "model.xml")
        except Skipped as why:
            skipped[f"openvino-{v}"] = str(why)
            continue
        variants.append(Variant(f"openvino-{v}", "openvino", v, path))
    return t / "model.keras", variants, skipped


def project_variants() -> tuple[Path, int, list, dict[str, str], dict[str, dict]]:
    """The project in the working folder, its built CPU variants: (keras path, image size, variants,
    {not timed: reason}, evaluate's records)."""
    from flowerpipe.formats.registry import conversion_status, unavailable, variants
    from flowerpipe.params import load
    from flowerpipe.pipeline.stage import read_json

    p = load("params.yaml")
    status = conversion_status(p)
    chosen, skipped = [], {}
    for v in variants(p):
        record = status.get(v.name, {})
        reason = (record.get("reason", "skipped") if record.get("status") == "skipped" else "") \
            or unavailable(v, "cpu") or ("" if v.path.exists() else "not built here: run `dvc repro` first")
        if reason:
            skipped[v.name] = reason
        else:
            chosen.append(v)
    evaluate = (read_json(Path(p.paths.reports) / "evaluate.json", {}) or {}).get("formats", {})
    return Path(p.paths.model), p.model.image_size, chosen, skipped, evaluate


def main() -> None:
    """Convert (or find the project's models), then time; print one row per runtime and batch size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("numbers", nargs="*", type=int, help="[IMAGE_SIZE] BATCH ... (with --project: BATCH ...)")
    ap.add_argument("--project", type=Path, help="a pipeline project folder whose models `dvc repro` converted")
    args = ap.parse_args()
    if any(n < 1 for n in args.numbers):
        ap.error("image size and batch sizes are positive integers")
    quiet_tensorflow()
    from flowerpipe.formats.registry import declaration
    from flowerpipe.measure import peaks
    from flowerpipe.measure.harness import Budget, achieved_gflops, model_flops, overhead, run_isolated, task_for
    from flowerpipe.measure.timing_lock import timing_lock
    from flowerpipe.params import ParamsError

    budget = Budget(**BUDGET)
    with tempfile.TemporaryDirectory() as tmp, timing_lock("benchmarks/inference.py"):
        if args.project:
            if not (args.project / "params.yaml").is_file():
                sys.exit(f"error: {args.project} has no params.yaml: not a pipeline project")
            batches = args.numbers or [1, 8]
            os.chdir(args.project)  # its params' paths are relative, for the timed processes too
            try:
                keras_path, size, variants, skipped, evaluate = project_variants()
            except ParamsError as err:
                sys.exit(f"error: {args.project}/{err}")
            if not keras_path.is_file():
                sys.exit(f"error: {args.project / keras_path} does not exist: run `dvc repro` there first")
        else:
            size, batches = (args.numbers or [299])[0], args.numbers[1:] or [1, 8]
            if size < 71:
                ap.error(f"image size {size}: Xception needs at least 71")
            (keras_path, variants, skipped), evaluate = random_model_variants(size, Path(tmp)), {}
        precision = {v.name: declaration(v.family).precision.get(v.option, "float32") for v in variants}
        peak = peaks.measure("cpu", peaks.needed(("cpu", x) for x in precision.values())["cpu"])
        flops = model_flops(keras_path, size)
        print(f"Xception {size}x{size}: {flops / 1e9:.2f} GFLOP/image; CPU matmul peaks "
              + ", ".join(f"{x} {p['gflops']:.0f} ({', '.join(f'{k} {g:.0f}' for k, g in p['by'].items())})"
                          for x, p in peak.items() if p["status"] == "ok")
              + f"; harness overhead {overhead(budget)['latency_ms_median'] * 1e3:.1f} us/call")
        head = ("runtime", "batch", "median ms", "p99 ms", "img/s", "GFLOP/s", "of peak", "accuracy", "agree")
        print(f"{head[0]:18s} " + " ".join(f"{h:>9s}" for h in head[1:]))
        for v in variants:
            rec = evaluate.get(v.name, {})
            scored = (f"{rec['accuracy']:9.4f} {rec['top1_agreement']:9.4f}" if rec.get("status") == "ok"
                      else f"{'':>9s} {'':>9s}")
            for b, c in run_isolated(task_for(v, "cpu", batches, size, budget, 0, 1)).items():
                if c["status"] != "ok":
                    print(f"{v.name:18s} {b:>5s}  skipped: {c.get('reason', '')}")
                    continue
                g = achieved_gflops(flops, int(b), c["latency_ms_median"])
                share = peaks.share(g, peak, "cpu", precision[v.name])[0]
                print(f"{v.name:18s} {b:>5s} {c['latency_ms_median']:10.2f} {c['latency_ms_p99']:9.2f} "
                      f"{c['throughput_ips']:9.2f} {g:9.1f} {share or float('nan'):9.1%} {scored}")
        for name, reason in skipped.items():
            print(f"{name:18s} not timed: {reason}")


if __name__ == "__main__":
    run_script(main)
