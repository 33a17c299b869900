import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import HAS_GPU, stage_cli

from flowerpipe.measure.harness import Budget, overhead, summarize, time_calls


def test_summary_percentiles_are_ordered():
    s = summarize([0.010, 0.011, 0.012, 0.013, 0.050], batch=4)
    assert s["latency_ms_median"] == 12.0
    assert s["latency_ms_median"] <= s["latency_ms_p90"] <= s["latency_ms_p99"] <= 50.0
    assert s["throughput_ips"] == pytest.approx(4 * 5 / 0.096, rel=1e-3)


def test_budget_counts_iterations_and_time():
    calls = []
    times = time_calls(lambda: calls.append(1), lambda: None, Budget(warmup=2, iterations=5, min_seconds=0,
                                                                       max_seconds=10))
    assert len(times) == 5 and len(calls) == 7


def test_harness_times_the_call_and_adds_little():
    """A call that takes 5 ms is timed at 5 ms, warm-up excluded; the harness's own cost is far below that."""
    calls = []

    def five_ms():
        calls.append(time.perf_counter())
        time.sleep(0.005) if len(calls) > 2 else time.sleep(0.05)  # two slow warm-up calls, not timed

    s = summarize(time_calls(five_ms, lambda: None, Budget(2, 20, 0.0, 5.0)), batch=1)
    assert 5.0 <= s["latency_ms_median"] < 6.5 and s["latency_ms_p99"] < 40, s
    assert overhead(Budget(2, 200, 0.0, 5.0))["latency_ms_median"] < 0.05  # an identity call: microseconds


def test_a_peak_is_2n3_over_the_median_call_of_the_fastest_library(monkeypatch):
    """rate(): two warm-up calls, then ops over the median timed call; _best: the fastest library, a failing one
    noted; each library really multiplies what it is timed on."""
    from flowerpipe.measure import peaks

    clock = {"now": 0.0}
    durations = iter([9.0, 9.0, 0.004, 0.001, 0.002])  # two warm-ups (never timed), then three timed calls

    def call():
        clock["now"] += next(durations)

    monkeypatch.setattr(peaks.time, "perf_counter", lambda: clock["now"])
    assert peaks.rate(call, ops=2e9, seconds=0.0) == pytest.approx(2e9 / 0.002 / 1e9)  # median of 4, 1, 2 ms
    monkeypatch.undo()

    def broken():
        raise RuntimeError("no bf16 kernel\nmore")

    best = peaks._best({"slow": lambda: (lambda: None), "bad": broken}, ops=1.0, seconds=0.0)
    assert best["status"] == "ok" and best["gflops"] == best["by"]["slow"] and best["failed"] == {
        "bad": "RuntimeError: no bf16 kernel"}
    assert peaks._best({"bad": broken}, 1.0, 0.0) == {"status": "skipped",
                                                      "reason": "bad: RuntimeError: no bf16 kernel"}
    rng = np.random.default_rng(0)
    a, b = rng.random((64, 64), dtype=np.float32), rng.random((64, 64), dtype=np.float32)
    assert np.allclose(peaks._onnxruntime(a, b)(), a @ b, rtol=1e-4)
    assert np.allclose(next(iter(peaks._openvino(a, b, "f32")().values())), a @ b, rtol=1e-4)
    qa, qb = rng.integers(0, 256, (64, 64), dtype=np.uint8), rng.integers(-128, 128, (64, 64), dtype=np.int8)
    assert (peaks._onnxruntime(qa, qb, "MatMulInteger")() == qa.astype(np.int32) @ qb.astype(np.int32)).all()


def test_the_cpu_peak_runs_on_the_cpu_and_each_precision_has_its_own():
    from flowerpipe.measure import peaks
    from flowerpipe.measure.cpu import bf16_missing

    measured = {x: peaks.cpu_peak(x, n=128, seconds=0.05, isolated=False) for x in peaks.PRECISIONS["cpu"]}
    assert peaks.cpu_peak("int8", n=128, seconds=0.05)["status"] == "ok"  # in a fresh process (int8: no TensorFlow)
    assert set(measured) == {"float32", "bfloat16", "int8"}
    assert measured["float32"]["ran_on"].endswith("CPU:0")  # read from the op: a GPU machine places it on the GPU
    assert set(measured["float32"]["by"]) == {"tensorflow", "numpy", "onnxruntime", "openvino"}
    if bf16_missing():  # runtimes compute bfloat16 in float32 here: its peak is float32's, and says so
        assert measured["bfloat16"]["as"] == "float32"
    else:
        assert measured["bfloat16"]["ran_on"].endswith("CPU:0") and "tensorflow" in measured["bfloat16"]["by"]
    assert measured["int8"]["unit"] == "GOP/s" and measured["int8"]["gflops"] > 0


def test_each_cell_is_a_share_of_its_own_devices_and_precisions_peak():
    from flowerpipe.measure import peaks

    cpu = {"float32": {"status": "ok", "gflops": 100.0}, "bfloat16": {"status": "ok", "gflops": 400.0},
           "int8": {"status": "ok", "gflops": 800.0}}
    gpu = {"float32": {"status": "ok", "gflops": 20000.0}, "tf32": {"status": "ok", "gflops": 80000.0},
           "float16": {"status": "ok", "gflops": 160000.0}}
    assert peaks.share(50, cpu, "cpu", "float32") == (0.5, "cpu/float32")
    assert peaks.share(100, cpu, "cpu", "bfloat16") == (0.25, "cpu/bfloat16")  # not 1.0 of the float32 peak
    assert peaks.share(200, cpu, "cpu", "int8") == (0.25, "cpu/int8")
    assert peaks.share(50, cpu, "cpu", "float16") == (0.5, "cpu/float32")  # a float16 model runs in float32 here
    assert peaks.share(40000, gpu, "gpu", "float32") == (0.5, "gpu/tf32")  # float32 models use TF32 by default
    assert peaks.share(40000, gpu, "gpu", "float16") == (0.25, "gpu/float16")
    assert peaks.share(40000, gpu, "gpu", "int8") == (None, "no int8 matmul peak is measured on the gpu")
    skipped = {"tf32": {"status": "skipped", "reason": "no GPU"}}
    assert peaks.share(1, skipped, "gpu", "float32") == (None, "gpu tf32 peak: no GPU")
    cells = [("cpu", "float32"), ("cpu", "float16"), ("cpu", "int8"), ("gpu", "int8"), ("gpu", "float16")]
    assert peaks.needed(cells) == {"cpu": ["float32", "int8"], "gpu": ["float16"]}


def test_a_cell_is_skipped_for_its_conversion_or_device_and_a_timed_one_is_a_share_of_its_peak_in_batch_order():
    from pathlib import Path

    from flowerpipe.formats.base import Variant
    from flowerpipe.measure.benchmark import plan, with_shares

    onnx = Variant("onnx", "onnx", "float32", Path("m.onnx"))
    tensorrt = Variant("tensorrt-fp16", "tensorrt", "fp16", Path("m.engine"))
    converted = {"onnx": {"status": "skipped", "reason": "onnx-tf is not installed"}, "tensorrt-fp16": {"status": "ok"}}
    reasons = {(v.name, d): r for v, d, r in plan([onnx, tensorrt], ["cpu"], converted)}
    assert reasons[("onnx", "cpu")] == "onnx-tf is not installed"  # the conversion's reason, not the device's
    assert reasons[("tensorrt-fp16", "cpu")] and reasons[("tensorrt-fp16", "cpu")] != "onnx-tf is not installed"
    assert plan([onnx], ["cpu"], {"onnx": {"status": "skipped"}})[0][2] == "skipped by its conversion stage"
    assert plan([onnx], ["cpu"], {})[0][2] == ""
    timed = {"16": {"status": "ok", "latency_ms_median": 400.0}, "2": {"status": "ok", "latency_ms_median": 50.0},
             "8": {"status": "skipped", "reason": "out of memory"}}
    peak = {"cpu": {"float32": {"status": "ok", "gflops": 40.0}}}
    cells = with_shares(timed, 1e9, peak, "cpu", "float32")  # 1 GFLOP an image: 2 images in 50 ms is 40 GFLOP/s
    assert list(cells) == ["2", "8", "16"]
    assert cells["2"] == {"status": "ok", "latency_ms_median": 50.0, "gflops": 40.0, "peak": "cpu/float32",
                          "fraction_of_peak": 1.0}
    assert cells["16"]["fraction_of_peak"] == 1.0 and "gflops" not in cells["8"]


def test_a_gpu_peak_is_never_a_cpu_figure(monkeypatch):
    """Where TensorFlow says it has a GPU but runs the matmul elsewhere, the GPU peak is skipped with where it ran."""
    from flowerpipe.measure import devices, peaks

    monkeypatch.setattr(devices, "tensorflow_gpu_missing", lambda: "")  # pretend TensorFlow lists a GPU
    peak = peaks.gpu_peak("float32", n=64, seconds=0.01)
    if HAS_GPU:
        assert peak["status"] == "ok" and "GPU" in peak["ran_on"].upper(), peak
    else:
        assert peak["status"] == "skipped" and peak["reason"].endswith("CPU:0, not a GPU"), peak


def conv_gflops(keras_path) -> float:
    """GFLOPs of one image through every convolution and dense layer (a multiply-add counts as two)."""
    import keras

    from flowerpipe.model.build import backbone_of, load_model

    model = load_model(keras_path)
    total = 0
    for layer in [*backbone_of(model).layers, *model.layers]:
        if isinstance(layer, keras.layers.SeparableConv2D):
            k, cin = layer.kernel_size[0] * layer.kernel_size[1], layer.input.shape[-1]
            h, w, cout = layer.output.shape[1:]
            total += 2 * h * w * (k * cin + cin * cout)
        elif isinstance(layer, keras.layers.Conv2D):
            k, cin = layer.kernel_size[0] * layer.kernel_size[1], layer.input.shape[-1]
            h, w, cout = layer.output.shape[1:]
            total += 2 * h * w * k * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total / 1e9


@pytest.mark.slow
def test_benchmark_stage_schema_skips_and_headline(trained):
    record = json.loads((trained / "reports" / "benchmark.json").read_text())
    cpu_peaks = record["peaks"]["cpu"]
    assert cpu_peaks["float32"]["gflops"] > 0 and cpu_peaks["float32"]["ran_on"].endswith("CPU:0")
    flops = record["model_gflop_per_image"]
    # TensorFlow's profiler against a count by hand of the convolutions' and the head's multiply-adds
    assert flops == pytest.approx(conv_gflops(trained / "models" / "model.keras"), rel=0.1)
    cell = record["results"]["savedmodel"]["cpu"]["b2"]
    assert cell["status"] == "ok" and cell["rounds"] == 2 and len(cell["latency_ms_median_rounds"]) == 2
    assert min(abs(cell["latency_ms_median"] - r) for r in cell["latency_ms_median_rounds"]) < 1e-3  # a round's own
    assert cell["latency_ms_median"] <= cell["latency_ms_p90"] <= cell["latency_ms_p99"]
    expected = flops * 2 / (cell["latency_ms_median"] / 1e3)
    assert cell["gflops"] == pytest.approx(expected, rel=0.01)
    assert cell["peak"] == "cpu/float32"
    assert cell["fraction_of_peak"] == pytest.approx(cell["gflops"] / cpu_peaks["float32"]["gflops"], rel=0.01)
    int8 = record["results"]["openvino-int8"]["cpu"]["b1"]  # a share of the int8 peak, not of float32's
    assert int8["peak"] == "cpu/int8"
    assert int8["fraction_of_peak"] == pytest.approx(int8["gflops"] / cpu_peaks["int8"]["gflops"], rel=0.01)
    # (no share above 1 is a property of quiet runs: under a loaded machine a peak measured in a busy second reads
    # low; benchmarks print it, tests do not time)
    assert cell["peak_rss_mb"] > 100
    assert record["results"]["savedmodel"]["gpu"]["b1"]["status"] == ("ok" if HAS_GPU else "skipped")
    if HAS_GPU:  # GPU cells are a share of the GPU's own peak: TF32 for float32 models, float16 for float16 ones
        gpu_peaks = record["peaks"]["gpu"]
        assert gpu_peaks["tf32"]["status"] == "ok" and "GPU" in gpu_peaks["tf32"]["ran_on"].upper(), gpu_peaks
        on_gpu = record["results"]["savedmodel"]["gpu"]["b1"]
        assert on_gpu["peak"] == "gpu/tf32"
        assert on_gpu["fraction_of_peak"] == pytest.approx(on_gpu["gflops"] / gpu_peaks["tf32"]["gflops"], rel=0.01)
        assert record["results"]["onnx"]["gpu"]["b1"]["status"] == "ok"  # ONNX Runtime reached the GPU
    else:
        assert "gpu" not in record["peaks"] and "fraction_of_peak" not in record["results"]["onnx"]["gpu"]["b1"]
    assert record["results"]["tensorrt-fp16"]["cpu"]["b1"]["status"] == "skipped"  # TensorRT: never on a CPU
    assert record["results"]["tensorrt-fp16"]["gpu"]["b1"]["status"] == ("ok" if HAS_GPU else "skipped")
    tensorflow = "tensorflow" if HAS_GPU else "tensorflow-cpu"  # the gpu profile's build, or the cpu one's
    assert record["environment"]["cores"] >= 1 and tensorflow in record["environment"]["versions"]
    assert record["doctor"]["nvidia"]["gpus"] == record["environment"]["gpus"]  # flowerpipe doctor's report, stored
    assert np.isfinite(record["overhead"]["latency_ms_median"])
    # headline: batch-1 latency and best throughput of each headline format, the same figures as the grid
    head = json.loads((trained / "metrics" / "benchmark.json").read_text())
    for name in ("savedmodel", "tflite-int8", "openvino-int8"):
        cells = record["results"][name]["cpu"]
        assert head[name]["b1_ms"] == pytest.approx(cells["b1"]["latency_ms_median"], abs=0.01)
        assert head[name]["img_s"] == pytest.approx(max(c["throughput_ips"] for c in cells.values()), abs=0.1)
    # the throughput plot has one bar per runtime and batch size (never a sum over them), named by both
    plot = pd.read_csv(trained / "plots" / "benchmark.csv")
    timed = [(n, d, b) for n, ds in record["results"].items() for d, cs in ds.items() for b, c in cs.items()
             if c["status"] == "ok"]
    assert len(plot) == len(timed) and plot.cell.is_unique
    assert set(plot.cell) == {f"{n} {b}" for n, _, b in timed}
    scatter = pd.read_csv(trained / "plots" / "accuracy_latency.csv")
    assert scatter.format.is_unique and {"savedmodel", "onnx", "openvino-int8"} <= set(scatter.format)


def test_unknown_runtime_is_one_line(tmp_path):
    from conftest import write_params

    write_params(tmp_path, {"benchmark": {"runtimes": ["keras", "tflite-int4"]}})
    code, _, err = stage_cli("benchmark", tmp_path)
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: params.yaml: benchmark.runtimes: unknown format 'tflite-int4' (expected one of")


def test_peak_rss_is_this_process():
    from flowerpipe.measure.harness import peak_rss_mb

    before = peak_rss_mb()
    block = np.ones(40_000_000)  # 320 MB touched
    assert peak_rss_mb() > before + 250 and block.sum() > 0


def test_timed_runs_wait_for_each_other(tmp_path, monkeypatch, capsys):
    """A second benchmark on the machine waits for the first to release the timing lock, and says so."""
    import threading

    from filelock import FileLock

    from flowerpipe.measure.timing_lock import timing_lock

    monkeypatch.setenv("FLOWERPIPE_TIMING_LOCK", str(tmp_path / "timing.lock"))
    first = FileLock(str(tmp_path / "timing.lock"))
    first.acquire()
    entered = threading.Event()

    def second():
        with timing_lock("benchmark"):
            entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.5)  # still waiting while the first run measures
    first.release()
    assert entered.wait(5)
    thread.join(5)
    assert "waiting for another benchmark" in capsys.readouterr().out


def test_inference_benchmark_on_a_project_times_what_evaluate_scored(trained):
    """benchmarks/inference.py --project: every built CPU format is timed with its evaluate figures beside it;
    bfloat16 is timed where OpenVINO computes it here and otherwise listed with the reason; TensorRT never on CPU."""
    import contextlib
    import importlib.util

    from conftest import ROOT

    from flowerpipe.formats.openvino_format import bf16_missing

    spec = importlib.util.spec_from_file_location("inference_benchmark", ROOT / "benchmarks" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    with contextlib.chdir(trained):
        keras_path, size, chosen, skipped, evaluate = inference.project_variants()
        assert keras_path.is_file() and size == 71
    timed = [v.name for v in chosen]
    cpu_formats = {"keras", "savedmodel", "tflite-int8", "onnx", "onnx-int8", "openvino-float32", "openvino-int8"}
    assert cpu_formats <= set(timed)
    assert all(evaluate[name]["status"] == "ok" and 0 <= evaluate[name]["top1_agreement"] <= 1 for name in timed)
    assert not set(timed) & set(skipped) and all(name.startswith("tensorrt") for name in skipped
                                                 if name != "openvino-bfloat16")
    if reason := bf16_missing():
        assert skipped["openvino-bfloat16"] == reason
    else:
        assert "openvino-bfloat16" in timed


def test_benchmark_scripts_turn_a_users_mistake_into_one_line(tmp_path, capsys):
    import subprocess
    import sys

    from conftest import ROOT

    from flowerpipe.errors import run_script

    def missing():
        raise FileNotFoundError(f"{tmp_path / 'records'}/manifest.json: dataset manifest not found")

    with pytest.raises(SystemExit) as exit_:
        run_script(missing)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'records'}/manifest.json: dataset manifest not found\n"
    with pytest.raises(ZeroDivisionError):  # a bug stays a traceback
        run_script(lambda: 1 / 0)
    usage = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving.py"), "50"], capture_output=True,
                           text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert usage.returncode == 2 and usage.stderr.strip().splitlines()[-1] == (
        "serving.py: error: the image size is at least 71 (Xception's smallest) and requests at least 1")
