"""What to ship: accuracy floors, ties within the timed rounds' spread, margins, the command and serve.format auto."""

import json

import pytest

from flowerpipe.decide.recommend import Floors, decide, headline, render
from flowerpipe.measure.harness import merge_rounds
from flowerpipe.serving.main import pick_format


def cell(ms, img_s, p99=None, rounds=None):
    c = {"status": "ok", "latency_ms_median": ms, "latency_ms_p99": p99 or ms * 1.2, "throughput_ips": img_s}
    if rounds:
        c["latency_ms_median_rounds"] = rounds
        c["throughput_ips_rounds"] = [round(1000 / r, 2) for r in rounds]
    return c


def records(int8_accuracy=0.70, int8_agreement=0.90):
    evaluate = {"formats": {
        "keras": {"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 80.0},
        "onnx": {"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 79.0},
        "openvino-float32": {"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 40.0},
        # a damaged int8 model: fast, small, and wrong
        "openvino-int8": {"status": "ok", "accuracy": int8_accuracy, "top1_agreement": int8_agreement,
                          "size_mb": 20.0},
        "tensorrt-fp16": {"status": "skipped", "reason": "no NVIDIA GPU on this machine"}}}
    benchmark = {"results": {
        "keras": {"cpu": {"b1": cell(50, 20), "b8": cell(300, 27)}},
        "onnx": {"cpu": {"b1": cell(25, 40, rounds=[24, 25, 27]), "b8": cell(160, 50, p99=210)}},
        "openvino-float32": {"cpu": {"b1": cell(30, 33, rounds=[29, 30, 31]), "b8": cell(150, 53, p99=180)}},
        "openvino-int8": {"cpu": {"b1": cell(8, 120), "b8": cell(50, 160)}},
        "tensorrt-fp16": {"cpu": {"b1": {"status": "skipped", "reason": "TensorRT runs on a GPU"}}}}}
    return evaluate, benchmark


def test_a_format_under_a_floor_is_marked_and_never_recommended_or_auto_served():
    evaluate, benchmark = records()
    d = decide(evaluate, benchmark, Floors(0.99, 0.995), budget_ms=100)
    assert d["formats"]["openvino-int8"]["status"] == "below_floor"
    assert "0.7000 is under 0.99 x" in d["formats"]["openvino-int8"]["reason"]
    cpu = d["devices"]["cpu"]
    assert "openvino-int8" not in cpu["latency"]["ranking"] + cpu["throughput"]["ranking"] + d["size"]["ranking"]
    assert cpu["latency"]["format"] == "onnx" and d["size"]["format"] == "openvino-float32"
    assert d["formats"]["tensorrt-fp16"]["status"] == "excluded"  # not scored here: neither below nor above
    assert "openvino-int8: test accuracy 0.7000" in render(d)
    # as accurate but agreeing less than serve.min_agreement: below the other floor
    evaluate, _ = records(int8_accuracy=0.80, int8_agreement=0.99)
    assert "agreement 0.9900 is under" in decide(evaluate, benchmark)["formats"]["openvino-int8"]["reason"]
    # serve.format auto follows the same floors: the damaged int8 model is the fastest, and never served
    built = ["onnx", "openvino-float32", "openvino-int8"]
    assert pick_format("auto", benchmark, built, records()[0], 0.995, 0.99) == "onnx"
    assert pick_format("auto", benchmark, built, records(0.80, 1.0)[0], 0.995, 0.99) == "openvino-int8"


def test_overlapping_rounds_are_a_tie_and_distinct_ones_a_margin():
    evaluate, benchmark = records()
    benchmark["results"]["openvino-float32"]["cpu"]["b1"] = cell(26, 38, rounds=[26, 26.5, 28])  # 24-27 vs 26-28
    latency = decide(evaluate, benchmark)["devices"]["cpu"]["latency"]
    assert latency["format"] == "onnx" and latency["tie"] and latency["tied_with"] == ["openvino-float32"]
    assert "a tie with openvino-float32" in render(decide(evaluate, benchmark))
    evaluate, benchmark = records()  # 24-27 against 29-31: a real difference
    latency = decide(evaluate, benchmark)["devices"]["cpu"]["latency"]
    assert not latency["tie"] and latency["runner_up"] == "openvino-float32" and latency["margin"] == 1.2


def test_the_budget_goal_and_the_headline_numbers():
    evaluate, benchmark = records()
    d = decide(evaluate, benchmark, budget_ms=200)
    assert d["devices"]["cpu"]["budget"]["format"] == "openvino-float32"  # b8 at p99 180 ms, 53 img/s
    assert d["devices"]["cpu"]["budget"]["batch_size"] == 8
    assert decide(evaluate, benchmark, budget_ms=5)["devices"]["cpu"]["budget"] == {
        "none": "no format answers within p99 5 ms on the cpu"}
    assert headline(d) == {"ship_b1_ms": 25, "ship_img_s": 53, "ship_budget_img_s": 53, "ship_mb": 40.0}
    assert all(isinstance(v, int | float) for v in headline(d).values())


def test_rounds_merge_into_the_median_round_with_their_spread():
    rounds = [{"1": cell(30, 33), "8": {"status": "skipped", "reason": "x"}},
              {"1": cell(25, 40), "8": {"status": "skipped", "reason": "x"}},
              {"1": cell(27, 37), "8": {"status": "skipped", "reason": "x"}}]
    merged = merge_rounds(rounds)
    assert merged["1"]["latency_ms_median"] == 27 and merged["1"]["rounds"] == 3
    assert merged["1"]["latency_ms_median_rounds"] == [30, 25, 27]
    assert merged["1"]["throughput_ips_rounds"] == [33, 40, 37]
    assert merged["8"] == {"status": "skipped", "reason": "x"}


def test_the_batcher_setting_kept_is_the_most_requests_within_the_budget():
    from flowerpipe.measure.loadtest import best_under_budget

    def level(rps, p99, errors=0):
        return {"throughput_rps": rps, "latency_ms_p99": p99, "errors": errors}

    settings = [{"max_batch": 8, "batch_window_ms": 0, "c1": level(30, 40), "c8": level(50, 180)},
                {"max_batch": 64, "batch_window_ms": 5, "c1": level(28, 45), "c8": level(70, 90)},
                {"max_batch": 64, "batch_window_ms": 0, "c1": level(40, 30, errors=1), "c8": level(90, 300)}]
    best = best_under_budget(settings, ["c1", "c8"], 100)
    assert best["c1"] == {"max_batch": 8, "batch_window_ms": 0, "throughput_rps": 30, "latency_ms_p99": 40}
    assert best["c8"]["max_batch"] == 64 and best["c8"]["batch_window_ms"] == 5  # 90 req/s is over the budget
    assert best_under_budget(settings, ["c8"], 50) == {"c8": {"none": "no setting answers c8 within p99 50 ms"}}


def test_serve_check_sets_each_level_beside_the_benchmark_and_fails_on_any_bad_level_or_setting():
    from flowerpipe.measure.serve_check import Checked, beside_benchmark

    def level(p50, rps, errors=0, mismatches=0):
        return {"requests": 40, "errors": errors, "mismatches": mismatches, "latency_ms_p50": p50,
                "latency_ms_p99": 2 * p50, "throughput_rps": rps}

    levels = {"c1": level(30.5, 33), "c8": level(80, 100)}
    cells = {"b1": cell(25, 40), "b8": cell(160, 50), "b4": cell(90, 44)}
    assert beside_benchmark(levels, cells) == {
        "c1": {"runtime_batch1_ms": 25, "added_ms_p50": 5.5, "runtime_batch1_ips": 40, "fraction_of_runtime": 0.825},
        "c8": {"runtime_batch8_ips": 50, "fraction_of_runtime": 2.0}}
    assert beside_benchmark(levels, {"b1": {"status": "skipped"}}) == {"c1": {}, "c8": {}}
    answers = {"rest": {"top1_agreement": 1.0, "max_prob_diff": 1e-6}}
    settings = [{"max_batch": 8, "batch_window_ms": 2.0, "c1": level(30, 33), "c8": level(90, 90, mismatches=1)}]
    checked = Checked("onnx", 16, answers, levels, {"c1": level(9, 110, errors=2), "c8": level(20, 400)}, settings,
                      best={}, compared=beside_benchmark(levels, cells), budget_ms=100)
    assert checked.failures() == ["gRPC c1", "max_batch 8 window 2 c8"] and checked.agrees()
    assert checked.lines()[1] == ("c1: 40 b64 JPEG requests, 0 errors, 0 mismatches, p50 30.5 ms, p99 61.0 ms, "
                                  "33.0 req/s; runtime_batch1_ms 25, added_ms_p50 5.5, runtime_batch1_ips 40, "
                                  "fraction_of_runtime 0.825")
    worse = Checked("onnx", 16, {**answers, "grpc": {"top1_agreement": 0.9375, "max_prob_diff": 0.2}}, levels, {}, [],
                    best={}, compared=beside_benchmark(levels, cells), budget_ms=100)
    assert worse.failures() == [] and not worse.agrees()
    assert worse.record()["tuning"] == {"budget_ms": 100, "settings": [], "best": {}}


def test_recommend_command_prints_text_and_json(tmp_path, capsys):
    from flowerpipe.cli import main

    evaluate, benchmark = records()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluate.json").write_text(json.dumps(evaluate))
    (tmp_path / "reports" / "benchmark.json").write_text(json.dumps(benchmark))
    params = tmp_path / "params.yaml"
    params.write_text(f"paths: {{reports: {tmp_path / 'reports'}}}\ndeploy: {{latency_budget_ms: 200}}\n")
    assert main(["--params", str(params), "recommend"]) == 0
    text = capsys.readouterr().out
    assert "lowest latency           onnx b1: 25.00 ms" in text and "openvino-int8: test accuracy" in text
    assert max(len(line) for line in text.splitlines()) <= 120
    assert main(["--params", str(params), "recommend", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["devices"]["cpu"]["budget"]["format"] == "openvino-float32"
    (tmp_path / "reports" / "benchmark.json").write_text(json.dumps(benchmark)[:100])  # truncated by hand
    assert main(["--params", str(params), "recommend"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "benchmark.json: not a JSON file flowerpipe wrote" in err
    (tmp_path / "reports" / "benchmark.json").unlink()
    assert main(["--params", str(params), "recommend"]) == 1
    assert "run dvc repro benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["deploy: {min_accuracy_ratio: 1.5}", "deploy: {latency_budget_ms: 0}"])
def test_deploy_params_are_checked(tmp_path, bad):
    from flowerpipe.params import ParamsError, load

    (tmp_path / "params.yaml").write_text(bad + "\n")
    with pytest.raises(ParamsError, match="deploy"):
        load(tmp_path / "params.yaml")


def test_the_report_lists_formats_and_benchmark_cells_in_the_registry_order_and_batch_sizes_as_numbers(tmp_path):
    from flowerpipe.decide.report import build

    evaluate, benchmark = records()
    benchmark["results"]["keras"]["cpu"]["b16"] = cell(600, 27)  # b16 after b8, not between b1 and b8
    evaluate["formats"] = dict(reversed(list(evaluate["formats"].items())))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluate.json").write_text(json.dumps(evaluate))
    (tmp_path / "reports" / "benchmark.json").write_text(json.dumps(benchmark))
    md = build(tmp_path / "reports", tmp_path / "plots", tmp_path / "out").read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[:5] == ["Data", "Training", "Every format on the test split (agreement is with the Keras model)",
                          "Benchmark (timed cells)", "Benchmark cells skipped here"] and titles[5] == "Environment"
    def rows(title: str) -> list[list[str]]:
        table = md.split(f"## {title}")[1].split("## ")[0].splitlines()[4:]  # past the title, header and rule
        return [[c.strip() for c in line.split("|")[1:4]] for line in table if line.startswith("|")]

    assert [r[0] for r in rows("Every format")] == ["keras", "onnx", "openvino-float32", "openvino-int8",
                                                    "tensorrt-fp16"]
    assert [(r[0], r[2]) for r in rows("Benchmark (timed cells)")][:4] == [("keras", "1"), ("keras", "8"),
                                                                          ("keras", "16"), ("onnx", "1")]
