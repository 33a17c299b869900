"""serve_check stage: run the server on loopback, check its answers, load it beside the benchmark, stop it."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=100,
    deps=["${paths.tfrecords}", stage.CPU_MODELS, stage.CPU_RECORDS, stage.record("benchmark"),
          stage.record("evaluate")],
    params=[*stage.SERVED_PARAMS, "serve", "deploy.min_accuracy_ratio", "deploy.latency_budget_ms"],
    outs=[{stage.record("serve"): stage.NO_CACHE}],
    metrics=[{"${paths.metrics}/serve.json": stage.NO_CACHE}])


def beside_benchmark(levels: dict[str, dict], cells: dict[str, dict]) -> dict[str, dict]:
    """Each load level next to the runtime's own figures: c1 against batch-1 latency, cN against batch-N images/s."""
    out = {}
    for level, r in levels.items():
        c = int(level[1:])
        row: dict = {}
        b1, bc = cells.get("b1", {}), cells.get(f"b{c}", {})
        if c == 1 and b1.get("status") == "ok":
            row["runtime_batch1_ms"] = b1["latency_ms_median"]
            row["added_ms_p50"] = round(r["latency_ms_p50"] - b1["latency_ms_median"], 3)
        if bc.get("status") == "ok":
            row[f"runtime_batch{c}_ips"] = bc["throughput_ips"]
            row["fraction_of_runtime"] = round(r["throughput_rps"] / bc["throughput_ips"], 3)
        out[level] = row
    return out


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import itertools
    import tempfile

    import numpy as np

    from flowerpipe.data.tfrecord import arrays
    from flowerpipe.decide import headline
    from flowerpipe.formats.registry import find_built, load
    from flowerpipe.measure.loadtest import (
        best_under_budget,
        check_answers,
        check_grpc_answers,
        free_ports,
        jpeg_requests,
        load_grpc,
        params_path,
        running_server,
        tuned_params,
    )
    from flowerpipe.measure.loadtest import load as load_test
    from flowerpipe.measure.timing_lock import timing_lock
    from flowerpipe.serving.decode import decode_all
    from flowerpipe.serving.main import pipeline_format

    bench = stage.read_json(Path(p.paths.reports) / "benchmark.json", {}) or {}
    fmt = pipeline_format(p)
    size = p.model.image_size
    images, _ = arrays(p.paths.tfrecords, "test", size, limit=16)
    images = np.rint(images).astype(np.float32)  # what a PNG round trip keeps exactly
    runner = load(find_built(p, fmt), "cpu", p.serve.threads)
    expected = runner.predict(images)
    jpegs = jpeg_requests(images, sizes=(0, 2 * size, 4 * size))  # the model's size, and larger photos
    expected_jpeg = runner.predict(decode_all(jpegs, size))  # the server decodes with this same code
    runner.close()
    port, grpc_port = free_ports(2)
    with running_server(["--format", fmt], port, params_file=params_path(), grpc_port=grpc_port) as server:
        answers = check_answers(server.url, p.model.name, images, expected)
        answers.update(check_grpc_answers(server.grpc, p.model.name, images, expected))
        with timing_lock("serve_check"):
            levels = {f"c{c}": load_test(server.url, p.model.name, jpegs, expected_jpeg, c, p.serve.requests,
                                         pid=server.pid) for c in p.serve.concurrency}
            grpc_levels = {f"c{c}": load_grpc(server.grpc, p.model.name, images, expected, c, p.serve.requests)
                           for c in p.serve.concurrency}
    settings = []  # the batcher settings tried: one server each, after the first has stopped, REST load as above
    with timing_lock("serve_check"), tempfile.TemporaryDirectory() as tmp:
        for max_batch, window in itertools.product(p.serve.tune_max_batch, p.serve.tune_batch_window_ms):
            tuned = tuned_params(params_path(), Path(tmp), max_batch, window)
            with running_server(["--format", fmt], free_ports(1)[0], params_file=tuned) as trial:
                settings.append({"max_batch": max_batch, "batch_window_ms": window, **{
                    f"c{c}": load_test(trial.url, p.model.name, jpegs, expected_jpeg, c, p.serve.requests)
                    for c in p.serve.concurrency}})
    best = best_under_budget(settings, list(levels), p.deploy.latency_budget_ms)
    compared = beside_benchmark(levels, bench.get("results", {}).get(fmt, {}).get("cpu", {}))
    for form, a in answers.items():
        print(f"{form:8s} top-1 agreement {a['top1_agreement']:.3f}  max|dp| {a['max_prob_diff']:.2e}")
    for level, r in levels.items():
        extra = ", ".join(f"{k} {v}" for k, v in compared[level].items())
        print(f"{level}: {r['requests']} b64 JPEG requests, {r['errors']} errors, {r['mismatches']} mismatches, "
              f"p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, {r['throughput_rps']:.1f} req/s"
              f"{'; ' + extra if extra else ''}")
    for level, r in grpc_levels.items():
        print(f"{level}: {r['requests']} gRPC uint8 pixel requests (TF Serving Predict), {r['errors']} errors, "
              f"{r['mismatches']} mismatches, p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, "
              f"{r['throughput_rps']:.1f} req/s")
    for level, b in best.items():
        print(f"{level}: best batcher setting within p99 {p.deploy.latency_budget_ms:g} ms: " + (
            b["none"] if "none" in b else f"max_batch {b['max_batch']}, batch_window_ms {b['batch_window_ms']:g}: "
            f"{b['throughput_rps']:.1f} req/s, p99 {b['latency_ms_p99']:.1f} ms"))
    stage.write_json(Path(p.paths.reports) / "serve.json", {
        "format": fmt, "images": int(len(images)), "answers": answers, "load": levels, "load_grpc": grpc_levels,
        "vs_benchmark": compared, "tuning": {"budget_ms": p.deploy.latency_budget_ms, "settings": settings,
                                             "best": best}})
    stage.write_json(Path(p.paths.metrics) / "serve.json", headline.serve(levels))
    bad = [f"{proto} {lv}" for proto, runs in (("REST", levels), ("gRPC", grpc_levels)) for lv, r in runs.items()
           if r["errors"] or r["mismatches"]]
    bad += [f"max_batch {t['max_batch']} window {t['batch_window_ms']:g} {lv}" for t in settings for lv in levels
            if t[lv]["errors"] or t[lv]["mismatches"]]
    if bad or any(a["top1_agreement"] < 1.0 for a in answers.values()):
        raise stage.StageError(f"the server's answers differ from local inference ({bad or 'check'})")


if __name__ == "__main__":
    stage.run(main)
