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


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.decide import headline
    from flowerpipe.measure.serve_check import run

    checked = run(p, stage.read_json(Path(p.paths.reports) / "benchmark.json", {}) or {})
    for line in checked.lines():
        print(line)
    stage.write_json(Path(p.paths.reports) / "serve.json", checked.record())
    stage.write_json(Path(p.paths.metrics) / "serve.json", headline.serve(checked.levels))
    bad = checked.failures()
    if bad or not checked.agrees():
        raise stage.StageError(f"the server's answers differ from local inference ({bad or 'check'})")


if __name__ == "__main__":
    stage.run(main)
