import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import HAS_GPU, stage_cli

from flowerpipe.bench import Budget, overhead, summarize, time_calls


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


def test_matmul_peak_is_2n3_over_the_median_call(monkeypatch):
    """The reported GFLOP/s is 2n^3 over the median timed call, for an n x n matmul each runtime really runs;
    the peak is the fastest of TensorFlow, NumPy and ONNX Runtime."""
    from flowerpipe import bench

    n, products = 64, []
    times = [[0.004, 0.001, 0.002], [0.5, 0.008, 0.008, 0.5], [0.003, 0.003, 0.003]]

    def fake_times(fn, warm, budget):  # runs the timed call, then reports fixed times (no clock, no flakiness)
        products.append(np.asarray(fn()))
        return times[len(products) - 1]

    monkeypatch.setattr(bench, "time_calls", fake_times)
    peak = bench.matmul_peak(n=n, seconds=0.1)
    assert len(products) == 3 and all(p.shape == (n, n) for p in products)
    assert np.allclose(products[1], products[2], rtol=1e-4) and np.allclose(products[0], products[1], rtol=1e-4)
    assert peak["tensorflow_gflops"] == round(2 * n**3 / 0.002 / 1e9, 2)
    assert peak["numpy_gflops"] == round(2 * n**3 / ((0.008 + 0.5) / 2) / 1e9, 2)
    assert peak["onnxruntime_gflops"] == round(2 * n**3 / 0.003 / 1e9, 2)
    assert peak["peak_gflops"] == peak["tensorflow_gflops"]


def conv_gflops(keras_path) -> float:
    """GFLOPs of one image through every convolution and dense layer (a multiply-add counts as two)."""
    import keras

    from flowerpipe.model import backbone_of, load_model

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
    assert record["matmul"]["peak_gflops"] > 0
    flops = record["model_gflop_per_image"]
    # TensorFlow's profiler against a count by hand of the convolutions' and the head's multiply-adds
    assert flops == pytest.approx(conv_gflops(trained / "models" / "model.keras"), rel=0.1)
    cell = record["results"]["savedmodel"]["cpu"]["b2"]
    assert cell["status"] == "ok" and cell["rounds"] == 2 and len(cell["latency_ms_median_rounds"]) == 2
    assert min(abs(cell["latency_ms_median"] - r) for r in cell["latency_ms_median_rounds"]) < 1e-3  # a round's own
    assert cell["latency_ms_median"] <= cell["latency_ms_p90"] <= cell["latency_ms_p99"]
    expected = flops * 2 / (cell["latency_ms_median"] / 1e3)
    assert cell["gflops"] == pytest.approx(expected, rel=0.01)
    assert cell["fraction_of_peak"] == pytest.approx(cell["gflops"] / record["matmul"]["peak_gflops"], rel=0.01)
    assert cell["peak_rss_mb"] > 100
    assert record["results"]["savedmodel"]["gpu"]["b1"]["status"] == ("ok" if HAS_GPU else "skipped")
    gpu_peak = record["matmul_gpu"]  # GPU cells are a share of the GPU's own float32 (float16) matmul peak
    if HAS_GPU:
        assert gpu_peak["status"] == "ok" and gpu_peak["float16_gflops"] > 0, gpu_peak
        on_gpu = record["results"]["savedmodel"]["gpu"]["b1"]
        assert on_gpu["fraction_of_peak"] == pytest.approx(on_gpu["gflops"] / gpu_peak["float32_gflops"], rel=0.01)
    else:
        assert gpu_peak["status"] == "skipped" and "fraction_of_peak" not in record["results"]["onnx"]["gpu"]["b1"]
    assert record["results"]["tensorrt-fp16"]["cpu"]["b1"]["status"] == "skipped"  # TensorRT: never on a CPU
    assert record["results"]["tensorrt-fp16"]["gpu"]["b1"]["status"] == ("ok" if HAS_GPU else "skipped")
    tensorflow = "tensorflow" if HAS_GPU else "tensorflow-cpu"  # the gpu profile's build, or the cpu one's
    assert record["environment"]["cores"] >= 1 and tensorflow in record["environment"]["versions"]
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
    from flowerpipe.bench import peak_rss_mb

    before = peak_rss_mb()
    block = np.ones(40_000_000)  # 320 MB touched
    assert peak_rss_mb() > before + 250 and block.sum() > 0


def test_timed_runs_wait_for_each_other(tmp_path, monkeypatch, capsys):
    """A second benchmark on the machine waits for the first to release the timing lock, and says so."""
    import threading

    from filelock import FileLock

    from flowerpipe.exclusive import timing_lock

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
