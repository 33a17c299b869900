import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_stage

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


def test_harness_overhead_is_tiny():
    assert overhead(Budget(2, 200, 0.0, 5.0))["latency_ms_median"] < 1.0


def test_matmul_peak_is_measured():
    from flowerpipe.bench import matmul_peak

    a, b = matmul_peak(n=256, seconds=0.05), matmul_peak(n=512, seconds=0.05)
    assert a["peak_gflops"] > 0 and b["peak_gflops"] > 0
    assert a["peak_gflops"] == max(a["tensorflow_gflops"], a["numpy_gflops"])
    assert a != b  # measured each time, not a constant


@pytest.mark.slow
def test_benchmark_stage_schema_skips_and_headline(trained):
    record = json.loads((trained / "reports" / "benchmark.json").read_text())
    assert record["matmul"]["peak_gflops"] > 0
    flops = record["model_gflop_per_image"]
    assert 0.5 < flops < 2.0  # Xception at 71x71: ~1 GFLOP (16.8 at 299x299, scaled by area)
    cell = record["results"]["keras"]["cpu"]["b2"]
    assert cell["status"] == "ok"
    assert cell["latency_ms_median"] <= cell["latency_ms_p90"] <= cell["latency_ms_p99"]
    expected = flops * 2 / (cell["latency_ms_median"] / 1e3)
    assert cell["gflops"] == pytest.approx(expected, rel=0.01)
    assert cell["fraction_of_peak"] == pytest.approx(cell["gflops"] / record["matmul"]["peak_gflops"], rel=0.01)
    assert cell["peak_rss_mb"] > 100
    assert record["results"]["keras"]["gpu"]["b1"]["status"] == "skipped"
    assert record["results"]["tensorrt-fp16"]["cpu"]["b1"]["status"] == "skipped"
    assert record["environment"]["cores"] >= 1 and "tensorflow-cpu" in record["environment"]["versions"]
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
    assert scatter.format.is_unique and {"keras", "onnx", "openvino-int8"} <= set(scatter.format)


def test_unknown_runtime_is_one_line(tmp_path):
    from conftest import write_params

    write_params(tmp_path, {"benchmark": {"runtimes": ["keras", "tflite-int4"]}})
    proc = run_stage("benchmark", tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown model format 'tflite-int4'")


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
