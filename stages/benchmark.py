"""benchmark stage: latency and throughput for every runtime x device x batch size, against a measured matmul peak."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=80,
    deps=[stage.MODELS, stage.RECORDS, stage.record("evaluate")],
    params=[*stage.SERVED_PARAMS, stage.WANTED, "benchmark", "headline.formats"],
    outs=[{"${paths.plots}/benchmark.csv": stage.NO_CACHE}, {"${paths.plots}/accuracy_latency.csv": stage.NO_CACHE},
          {stage.record("benchmark"): stage.NO_CACHE}],
    metrics=[{"${paths.metrics}/benchmark.json": stage.NO_CACHE}],
    plots=[{"Throughput (images/s) by runtime and batch size": {
        "template": "bar_horizontal", "x": "throughput_ips", "x_label": "images/s",
        "y_label": "runtime and batch size", "y": {"${paths.plots}/benchmark.csv": "cell"}}}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.decide import headline
    from flowerpipe.measure.benchmark import run, write_plots

    record, rows = run(p)
    stage.write_json(Path(p.paths.reports) / "benchmark.json", record)
    stage.write_json(Path(p.paths.metrics) / "benchmark.json",
                     headline.benchmark(record["results"], p.headline.formats))
    write_plots(rows, Path(p.paths.plots), Path(p.paths.reports) / "evaluate.json")


if __name__ == "__main__":
    stage.run(main)
